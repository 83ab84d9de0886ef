"""Driving the dashboard with Textual's Pilot: build it, wait for a condition, read a panel."""

import asyncio

from textual.widgets import Static

from mlxsmall.measure import UnavailableMeter
from mlxsmall.tui.app import DashboardApp

TIMEOUT_S = 120.0  # generous: the machine is shared; never a speed assertion


def make_app(path, **options):
    options.setdefault("meter", UnavailableMeter("test meter"))
    return DashboardApp(path, **options)


async def wait_for(pilot, condition, what: str, timeout: float = TIMEOUT_S):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def panel_text(app, selector) -> str:
    """The text of a panel (a selector or a widget class): its own, or its Static children's."""
    widget = app.query_one(selector)
    if isinstance(widget, Static):
        return str(widget.render())
    return "\n".join(str(child.render()) for child in widget.query(Static))

"""The power-meter interface: a cumulative energy counter, or an n/a one with a reason."""

from __future__ import annotations

from typing import Optional


class PowerMeter:
    """A cumulative energy counter. ``read_joules()`` is energy since the meter was opened,
    or None when unavailable (``reason`` says why)."""

    name = "n/a"
    available = False
    reason: Optional[str] = None

    def read_joules(self) -> Optional[float]:
        return None

    def close(self) -> None:
        pass

    def describe(self) -> str:
        """One line for a UI: the source name, or ``n/a (reason)``."""
        return self.name if self.available else f"n/a ({self.reason or 'no energy source'})"


class UnavailableMeter(PowerMeter):
    def __init__(self, reason: str):
        self.reason = reason

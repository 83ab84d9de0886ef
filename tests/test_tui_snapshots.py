"""Snapshots (pytest-textual-snapshot) of the dashboard's main screens at 80x24.

Deterministic on purpose: no model is loaded and every number on screen is fixed data pushed
through the same panels the live app uses. Refresh after an intended change with
``pytest tests/test_tui_snapshots.py --snapshot-update`` and look at the SVGs.
"""

from types import SimpleNamespace

import pytest

pytest.importorskip("pytest_textual_snapshot")

from mlxsmall.measure import MemorySnapshot, UnavailableMeter  # noqa: E402
from mlxsmall.tui.app import DashboardApp  # noqa: E402
from mlxsmall.tui.bench import BenchConfig, BenchReport, BenchRow, Stat  # noqa: E402
from mlxsmall.tui.metrics import RequestResult  # noqa: E402
from mlxsmall.tui.widgets import BenchView, ChatLog, ModelPanel  # noqa: E402

FACTS = SimpleNamespace(
    path="/models/SmolLM2-135M-Instruct", architecture="llama", layers=30, applications=30,
    hidden_size=576, parameters=134_515_008, unique_parameters=134_515_008,
    quantization={"group_size": 32, "bits": 4}, bits_per_weight=4.56, size_on_disk=93_066_816,
)

REPORT = BenchReport(
    model="/models/SmolLM2-135M-Instruct",
    config=BenchConfig(repeats=3),
    power_source="n/a (snapshot: no power source)",
    device="Device(cpu, 0)",
    created=0.0,
    rows=[
        BenchRow("q4", 128, 3, 128, Stat(118.2, 3.1), Stat(7.8, 0.1), Stat(1083, 28), 0.112),
        BenchRow("q4", 512, 3, 128, Stat(109.5, 2.2), Stat(7.5, 0.2), Stat(4676, 95), 0.190),
        BenchRow("fp32", 128, 3, 128, Stat(241.3, 5.0), Stat(16.9, 0.3), Stat(530, 11), 0.561),
        BenchRow("fp32", 512, 3, 128, Stat(228.8, 4.1), Stat(16.1, 0.4), Stat(2238, 40), 0.640),
    ],
)


def fixed_app() -> DashboardApp:
    return DashboardApp(None, meter=UnavailableMeter("snapshot: no power source"),
                        bench_config=BenchConfig(repeats=3))


async def fill_chat(pilot):
    await pilot.pause()  # let on_mount finish (it focuses the prompt)
    app = pilot.app
    app.query_one("#prompt").cursor_blink = False  # a blinking cursor makes snapshots flaky
    metrics = app.metrics
    metrics.prompt_tokens, metrics.prompt_tps = 31, 241.3
    metrics.generation_tokens, metrics.generation_tps, metrics.total_tokens = 64, 16.9, 192
    metrics.time_to_first_token = 0.128
    metrics.request_tps = [12.0 + (i % 7) * 0.8 for i in range(40)]
    metrics.requests = [RequestResult(31, 240.0, 64, tps, 0.13) for tps in (15.2, 16.4, 16.9)]
    metrics.memory = MemorySnapshot(active_gb=0.541, peak_gb=0.612, cache_gb=0.010, rss_gb=0.834)
    metrics.version += 1
    app.query_one(ModelPanel).show(FACTS, "fp32")
    log = app.query_one(ChatLog)
    log.add("notice", "/models/SmolLM2-135M-Instruct loaded. Type a prompt.")
    log.add("user", "What is the capital of France?")
    log.add("assistant", "The capital of France is Paris.")
    app.refresh_panels(force=True)
    await pilot.pause()


async def fill_bench(pilot):
    await pilot.pause()
    app = pilot.app
    app.query_one("#prompt").cursor_blink = False
    app.bench_report = REPORT
    app.query_one(BenchView).show(REPORT)
    app.query_one(BenchView).set_status("Done: 4 rows. Ctrl+S exports.")
    app.show_view("bench-tab")
    await pilot.pause()


def test_chat_screen_dark(snap_compare):
    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=fill_chat)


def test_chat_screen_light(snap_compare):
    async def light(pilot):
        await fill_chat(pilot)
        await pilot.press("ctrl+t")

    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=light)


def test_bench_screen(snap_compare):
    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=fill_bench)

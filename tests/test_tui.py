"""Pilot tests of the dashboard with a tiny real model: prompts stream, panels fill with real
numbers, MLX work stays on the worker thread, Esc stops, Ctrl+C quits mid-generation, the
bench tab sweeps and exports."""

import asyncio
import json
import re
import sys
import threading
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, TabbedContent

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from pilot_helpers import make_app, panel_text, wait_for

from mlxsmall import events
from mlxsmall.measure.sweep import BenchConfig
from mlxsmall.tui.widgets import ChatLog, MemoryPowerPanel, ModelPanel, SpeedPanel

SIZE = (80, 24)


async def load(pilot, app):
    await wait_for(pilot, lambda: app.session is not None and app.busy is None, "the model to load")


async def start_a_long_answer(pilot, app):
    await load(pilot, app)
    await pilot.click("#prompt")
    await pilot.press(*"go", "enter")
    await wait_for(pilot, lambda: app.metrics.generation_tokens >= 3, "tokens to stream")


@pytest.fixture
def tiny_llama(make_tiny_model):
    return make_tiny_model("llama")


def test_prompt_streams_tokens_and_panels_show_real_values(tiny_llama):
    threads = []
    unsubscribe = events.subscribe(
        lambda event: threads.append(threading.current_thread()) if event.kind == "generation" else None)

    async def scenario():
        app = make_app(tiny_llama, max_tokens=12)
        async with app.run_test(size=SIZE) as pilot:
            await load(pilot, app)
            facts = panel_text(app, ModelPanel)  # from the real model
            assert re.search(r"params\s+\d+(\.\d)?[KM] \(\d+(\.\d)?[KM] unique\)", facts), facts
            await pilot.click("#prompt")
            await pilot.press(*"hello", "enter")
            await wait_for(pilot, lambda: app.busy is None and app.metrics.requests, "the answer")
            await pilot.pause(0.2)
            metrics = app.metrics
            assert metrics.generation_tokens == 12
            assert len(metrics.request_tps) == 11  # one point per streamed token after the first
            assert metrics.generation_tps > 0 and metrics.prompt_tps > 0
            assert metrics.time_to_first_token > 0
            assert metrics.memory.active_gb > 0 and metrics.memory.rss_gb > 0
            reply = list(app.query_one(ChatLog).query(".assistant"))[-1]
            assert str(reply.render()) == metrics.text and metrics.text
            speed = panel_text(app, SpeedPanel)
            assert re.search(r"generation\s+\d+\.\d tok/s", speed)
            assert re.search(r"prompt\s+\d+\.\d tok/s", speed)
            assert re.search(r"TTFT\s+\d+ ms", speed)
            memory = panel_text(app, MemoryPowerPanel)
            assert re.search(r"MLX active \d\.\d{3} GB", memory)
            assert re.search(r"RSS\s+\d\.\d{3} GB", memory)
            assert "power      n/a" in memory and "test meter" in memory
            return app.worker.thread

    try:
        worker_thread = asyncio.run(scenario())
    finally:
        unsubscribe()
    assert threads and all(thread is worker_thread for thread in threads)  # never the UI thread
    assert not worker_thread.is_alive()  # quitting joined the worker


def test_escape_stops_generation_then_chat_continues(tiny_llama):
    async def scenario():
        app = make_app(tiny_llama, max_tokens=1500)
        async with app.run_test(size=SIZE) as pilot:
            await start_a_long_answer(pilot, app)
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.busy is None, "the generation to stop")
            assert app.metrics.generation_tokens < 1500
            assert not app.metrics.generating
            notices = [str(w.render()) for w in app.query_one(ChatLog).query(".notice")]
            assert "[stopped]" in notices
            # the session is usable again
            app.max_tokens = 4
            app.session.max_tokens = 4
            await pilot.press(*"again", "enter")
            await wait_for(pilot, lambda: app.busy is None and app.metrics.started == 2, "a second answer")

    asyncio.run(scenario())


def test_ctrl_c_quits_cleanly_mid_generation(tiny_llama):
    async def scenario():
        app = make_app(tiny_llama, max_tokens=1500)
        async with app.run_test(size=SIZE) as pilot:
            await start_a_long_answer(pilot, app)
            await pilot.press("ctrl+c")
        return app

    app = asyncio.run(scenario())
    assert app.return_code == 0
    assert not app.worker.thread.is_alive()


@pytest.mark.slow  # minutes on 2 cores (measured with --durations)
def test_bench_tab_sweeps_levels_and_exports(tiny_llama, tmp_path):
    bench = BenchConfig(prompt_lengths=(8, 16), generation_tokens=4, repeats=2)

    async def scenario():
        app = make_app(tiny_llama, bench_config=bench, export_dir=tmp_path / "out")
        async with app.run_test(size=SIZE) as pilot:
            await load(pilot, app)
            await pilot.press("ctrl+s")  # nothing to export yet: a warning, no files
            await pilot.press("ctrl+r")
            assert app.query_one(TabbedContent).active == "bench-tab"
            await wait_for(pilot, lambda: app.busy is None and app.bench_report, "the sweep")
            table = app.query_one(DataTable)
            assert table.row_count == 6  # fp32, q8, q4 x prompt 8, 16
            levels = [row.level for row in app.bench_report.rows]
            assert levels == ["fp32", "fp32", "q8", "q8", "q4", "q4"]
            assert all(row.runs == 2 and row.generation_tps.mean > 0 for row in app.bench_report.rows)
            await pilot.press("ctrl+s")
            await pilot.pause(0.1)
            await pilot.press("ctrl+o")
            assert app.query_one(TabbedContent).active == "chat-tab"
            assert app.focused is app.query_one("#prompt", Input)

    asyncio.run(scenario())
    files = sorted(p.suffix for p in (tmp_path / "out").iterdir())
    assert files == [".csv", ".json", ".md"]
    data = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert len(data["rows"]) == 6 and data["power_source"] == "n/a (test meter)"


def test_theme_toggle_and_bindings_in_footer():
    async def scenario():
        app = make_app(None)
        async with app.run_test(size=SIZE) as pilot:
            assert app.theme == "textual-dark"
            await pilot.press("ctrl+t")
            assert app.theme == "textual-light"
            shown = {binding.binding.action for binding in app.active_bindings.values() if binding.binding.show}
            assert {"quit", "stop", "toggle_view", "run_bench", "toggle_theme", "new_chat"} <= shown
            await pilot.click("#prompt")
            await pilot.press(*"hi", "enter")  # no model: a warning, nothing crashes
            await pilot.pause()

    asyncio.run(scenario())


def test_load_failure_is_one_line_in_the_model_panel(tmp_path):
    (tmp_path / "config.json").write_text("{not json")

    async def scenario():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.busy is None, "the load to fail")
            await pilot.pause(0.1)
            text = panel_text(app, ModelPanel)
            assert text.startswith("load failed:") and "config.json" in text
            assert "\n" not in text.strip()

    asyncio.run(scenario())


def test_raw_mode_completes_the_prompt_without_a_chat_template(tiny_llama):
    async def scenario():
        app = make_app(tiny_llama, chat=False, max_tokens=6)
        async with app.run_test(size=SIZE) as pilot:
            await load(pilot, app)
            await pilot.click("#prompt")
            await pilot.press(*"abc", "enter")
            await wait_for(pilot, lambda: app.busy is None and app.metrics.requests, "the completion")
            prompt_tokens = len(app.tokenizer.encode("abc"))
            assert app.metrics.prompt_tokens == prompt_tokens  # no template around it
            assert app.metrics.generation_tokens == 6

    asyncio.run(scenario())

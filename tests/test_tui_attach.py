"""`mlxsmall dashboard --attach`: the dashboard (Textual Pilot) watching a live `mlxsmall serve`."""

import asyncio
import sys
import threading
from pathlib import Path

import pytest
sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from loopback import free_port
from pilot_helpers import make_app, panel_text, wait_for
from serve_helpers import MODEL_ID, TIMEOUT, save_tiny_mobillama, serving
from textual.widgets import Input

from mlxsmall.tui.widgets import ChatLog, ModelPanel, SpeedPanel

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_tokenizer_dir):
    path = save_tiny_mobillama(tmp_path_factory.mktemp("attach") / "mobillama-tiny", tiny_tokenizer_dir)
    with serving(path, tmp_path_factory.mktemp("home")) as (_, url, _):
        yield url


@pytest.mark.slow  # a live server in a subprocess
def test_attached_dashboard_shows_the_servers_requests(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key="x", timeout=TIMEOUT, max_retries=0)
    queue_lengths = []

    async def scenario():
        app = make_app(None, attach=server, max_tokens=24)
        async with app.run_test(size=(100, 30)) as pilot:
            apply = app.metrics.apply

            def recording_apply(event):  # every queue length the feed reports, in order
                apply(event)
                if event.kind == "serve":
                    queue_lengths.append(event.get("queue"))

            app.metrics.apply = recording_apply
            await wait_for(pilot, lambda: app.metrics.server_model == MODEL_ID, "the server's hello")
            await wait_for(pilot, lambda: app.metrics.memory is not None, "the server's memory")
            assert "attached to" in panel_text(app, ModelPanel)

            # Three apps use the server at once: the dashboard sees them queue and run.
            def ask(i):
                client.chat.completions.create(model=MODEL_ID, max_tokens=40, temperature=0,
                                               messages=[{"role": "user", "content": f"Hello {i}"}])

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
            for thread in threads:
                thread.start()
            await wait_for(pilot, lambda: len(app.metrics.requests) >= 3, "three requests done")
            for thread in threads:
                thread.join(timeout=TIMEOUT)
            assert max(queue_lengths) >= 2, queue_lengths
            assert app.metrics.queue_length == 0
            last = app.metrics.requests[-1]
            assert last.generation_tps > 0 and last.time_to_first_token > 0 and last.generation_tokens > 1
            await pilot.pause(0.6)  # one redraw
            speed = panel_text(app, SpeedPanel)
            assert "tok/s" in speed and "TTFT" in speed and "queue" in speed

            # A prompt typed in the dashboard goes to the server; the answer streams back in.
            await pilot.click("#prompt")
            app.query_one("#prompt", Input).value = "Hi there"
            await pilot.press("enter")
            await wait_for(pilot, lambda: len(app._remote_messages) == 2 and app.busy is None,
                           "the remote chat to finish")
            log = panel_text(app, ChatLog)
            assert "Hi there" in log and "error" not in log, log
            assert app._remote_messages[-1]["role"] == "assistant"
            await wait_for(pilot, lambda: len(app.metrics.requests) >= 4, "the feed to report the dashboard's request")
            await wait_for(pilot, lambda: app.metrics.text.strip() == app._remote_messages[-1]["content"],
                           "the answer streamed from the feed")
            await pilot.press("ctrl+c")

    asyncio.run(scenario())


def test_unreachable_server_is_reported():
    port = free_port()  # a port nobody listens on

    async def scenario():
        app = make_app(None, attach=f"127.0.0.1:{port}")
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: "not reachable" in panel_text(app, ModelPanel), "the link status")
            await pilot.press("ctrl+c")

    asyncio.run(scenario())


def test_feed_events_round_trip_and_token_steps_merge():
    from mlxsmall.events import Event
    from mlxsmall.serve import merge_token_events, to_json
    from mlxsmall.measure import MemorySnapshot
    from mlxsmall.tui.attach import base_url, decode_event

    memory = MemorySnapshot(active_gb=0.1, peak_gb=0.2, cache_gb=0.0, rss_gb=0.5)
    event = Event("telemetry", {"memory": memory})
    assert decode_event({"kind": event.kind, "time": event.time, "fields": to_json(event.fields)}) == event

    steps = [Event("generation", {"phase": "start", "prompt_tokens": 3})]
    steps += [Event("generation", {"phase": "token", "text": t, "generation_tokens": i + 1}) for i, t in enumerate("abc")]
    steps += [Event("serve", {"phase": "done", "queue": 0})]
    merged = merge_token_events(steps)
    assert [e.kind for e in merged] == ["generation", "generation", "serve"]
    assert merged[1]["text"] == "abc" and merged[1]["generation_tokens"] == 3
    assert base_url("127.0.0.1:8080/v1/") == "http://127.0.0.1:8080"

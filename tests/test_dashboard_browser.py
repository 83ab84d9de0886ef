"""The iPad page: `mlxsmall dashboard --serve` (textual-serve) in a real browser (Debian's Chromium
driven by Playwright). Types a prompt, sees the answer stream and a tok/s number, opens the bench
tab, and keeps a screenshot (tests/artifacts/, or $MLXSMALL_TEST_ARTIFACTS)."""

import os
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from browser_helpers import chromium_available, open_page, start_dashboard_server, wait_until
from serve_helpers import clean_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not chromium_available(), reason="needs playwright and /usr/bin/chromium (scripts/install.sh)"),
]

ARTIFACTS = Path(os.environ.get("MLXSMALL_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
RATE = re.compile(r"(\d+\.\d) tok/s")


def expected_answer(model_dir, prompt, max_tokens):
    """The greedy answer the dashboard's chat mode gives (same session, same loop)."""
    from mlxsmall.chat import ChatSession
    from mlxsmall.hub import load

    model, tokenizer = load(model_dir)
    session = ChatSession(model, tokenizer, max_tokens=max_tokens, context_length=max(2048, max_tokens + 1024))
    return "".join(step.text for step in session.send(prompt)).strip()


def screen_fragment(answer: str) -> str:
    """The longest plain stretch of the (random model's) answer, as the page would show it."""
    runs = re.findall(r"[!-~]{3,}", answer)  # printable ASCII
    assert runs, f"the tiny model's answer has nothing plain to look for: {answer!r}"
    return max(runs, key=len)[:10]


def test_ipad_page_streams_an_answer_and_opens_the_bench_tab(make_tiny_model, tmp_path):
    from playwright.sync_api import sync_playwright

    model_dir = make_tiny_model("llama")
    answer = expected_answer(model_dir, "Hello", 24)
    # the longest printable stretch of the (random model's) answer must reach the page
    fragment = screen_fragment(answer)
    process, url = start_dashboard_server(model_dir, clean_env(tmp_path), "-m", "24")
    try:
        with sync_playwright() as playwright:
            context, page, screen = open_page(playwright, url, tmp_path / "chromium-profile")
            try:
                wait_until(lambda: "unique)" in screen.text, "the model to load in the page", timeout=300, page=page)
                page.focus(".xterm-helper-textarea")  # keys to the terminal; the app's prompt has focus
                before = len(screen.chunks)
                page.keyboard.type("Hello")
                page.keyboard.press("Enter")
                start = time.monotonic()
                wait_until(lambda: RATE.search(screen.text_since(before))
                           and fragment in screen.squeeze(screen.text_since(before)),
                           "the streamed answer and a tok/s number", page=page)
                page.wait_for_timeout(1500)  # the last redraws
                rate = screen.frames_per_second(start, time.monotonic())
                print(f"\npage updates while generating: {rate:.1f} websocket frames/s")
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "dashboard-chat.png"))

                before = len(screen.chunks)
                page.keyboard.press("Control+o")
                wait_until(lambda: "Sweep: prompt" in screen.text_since(before), "the bench tab", page=page)
                page.wait_for_timeout(500)
                shot = ARTIFACTS / "dashboard-bench.png"
                page.screenshot(path=str(shot))
                print(f"screenshots: {ARTIFACTS / 'dashboard-chat.png'} {shot}")
                assert shot.stat().st_size > 10_000  # a drawn page, not a blank one
            except AssertionError:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "dashboard-failure.png"))
                print(f"expected fragment {fragment!r}; the page received (last 2000 chars):\n"
                      f"{screen.squeeze(screen.text)[-2000:]}")
                raise
            finally:
                context.close()
    finally:
        process.terminate()
        process.wait(timeout=30)

"""Driving `mlxsmall dashboard --serve` (textual-serve) from Debian's Chromium with Playwright.

No browser download: Playwright launches /usr/bin/chromium (scripts/install.sh installs it).
The page draws the terminal on a canvas, so what it shows is read from what it receives: the
app's terminal output arrives as binary websocket frames, which are kept (ANSI stripped) in
``Page.screen_text``.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from loopback import free_port, urlopen

CHROMIUM = os.environ.get("MLXSMALL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[PX^_].*?\x1b\\|\x1b[@-Z\\-_]")


def chromium_available() -> bool:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False
    return Path(CHROMIUM).exists()


def start_dashboard_server(model_dir, env, *extra, timeout=120, log=subprocess.DEVNULL):
    """`mlxsmall dashboard MODEL --serve` on a free local port; returns (process, url)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlxsmall", "dashboard", str(model_dir), "--serve", "--host", "127.0.0.1",
         "--port", str(port), "--public-url", url, *extra],
        stdout=subprocess.DEVNULL, stderr=log, env=env,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlxsmall dashboard --serve exited with {process.returncode}")
        try:
            with urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("mlxsmall dashboard --serve did not answer")


class Screen:
    """What the page has received from the app: text (ANSI stripped) and frame times."""

    def __init__(self):
        self.chunks, self.frame_times = [], []

    def on_frame(self, payload):
        if isinstance(payload, (bytes, bytearray)):
            self.frame_times.append(time.monotonic())
            self.chunks.append(ANSI.sub("", bytes(payload).decode("utf-8", "replace")))

    @staticmethod
    def squeeze(text: str) -> str:
        """Without whitespace and box-drawing characters, so text wrapped over lines still matches."""
        return re.sub(r"[\s\u2500-\u259f]", "", text)

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def text_since(self, index: int) -> str:
        return "".join(self.chunks[index:])

    def frames_per_second(self, start: float, end: float) -> float:
        frames = sum(1 for t in self.frame_times if start <= t <= end)
        return frames / (end - start) if end > start else float("nan")


def open_page(playwright, url, profile_dir, size=(1100, 700)):
    """A fresh Chromium profile with the dashboard page loaded; returns (context, page, screen)."""
    context = playwright.chromium.launch_persistent_context(
        str(profile_dir), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": size[0], "height": size[1]},
    )
    # The page asks Google for a web font; offline, fail fast instead of waiting.
    context.route(re.compile(r"^https?://(?!127\.0\.0\.1)"), lambda route: route.abort())
    page = context.new_page()
    screen = Screen()
    page.on("websocket", lambda ws: ws.on("framereceived", screen.on_frame))
    page.goto(url, wait_until="domcontentloaded")
    return context, page, screen


def wait_until(condition, what, timeout=120.0, poll=0.1, page=None):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if page is not None:
            page.wait_for_timeout(poll * 1000)  # lets Playwright deliver events
        else:
            time.sleep(poll)

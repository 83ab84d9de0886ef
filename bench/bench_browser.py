"""What a browser costs: `mlxsmall dashboard --serve` watched from Chromium vs plain `mlxsmall generate`.

Same model, same prompt (raw completion, greedy), same number of tokens, one run; rounds
alternate (generate, browser, generate, browser, ...) so background load hits both sides alike.

- generate: the real `mlxsmall generate` command in a subprocess; decode tok/s from its stats line.
- browser: `mlxsmall dashboard MODEL --serve --raw` (textual-serve) with Debian's Chromium
  (headless, via Playwright) attached; the prompt is typed into the page and the tok/s is the one
  the page shows when the answer is done. The page's update rate is the number of websocket
  frames (screen updates) it receives per second while the answer streams, and while idle.

    python bench/bench_browser.py                      # offline default model
    python bench/bench_browser.py ./my-model --tokens 64 --rounds 3 --json out.json
"""

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from browser_helpers import open_page, start_dashboard_server, wait_until  # noqa: E402
from bench_serve import PROMPT, plain_generate  # noqa: E402  (the same prompt and `generate` run)

FINAL = re.compile(r"generation(\d+\.\d)tok/s(\(running\))?")


def browser_generate(page, screen):
    """Type the prompt; wait for the speed panel to show a final (not running) rate."""
    before = len(screen.chunks)
    page.keyboard.type(PROMPT)
    page.keyboard.press("Enter")
    start = time.monotonic()

    def finished():
        rates = FINAL.findall(screen.squeeze(screen.text_since(before)))
        return rates and any(running for _, running in rates) and not rates[-1][1]

    wait_until(finished, "the answer in the page", timeout=1800, poll=0.2, page=page)
    end = time.monotonic()
    rate = float(FINAL.findall(screen.squeeze(screen.text_since(before)))[-1][0])
    page.wait_for_timeout(3000)
    idle_start = time.monotonic()
    page.wait_for_timeout(5000)
    return {"tps": rate, "frames_per_s": screen.frames_per_second(start, end),
            "idle_frames_per_s": screen.frames_per_second(idle_start, time.monotonic())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None, help="model (default: the offline default model)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from mlxsmall.commands._common import model_path

    model = str(model_path(argparse.Namespace(model=args.model)))
    import os

    process, url = start_dashboard_server(model, dict(os.environ), "--raw", "-m", str(args.tokens), timeout=600)
    plain, browser = [], []
    try:
        with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
            context, page, screen = open_page(playwright, url, profile)
            wait_until(lambda: "unique)" in screen.text, "the model to load", timeout=600, page=page)
            page.focus(".xterm-helper-textarea")
            for round_ in range(args.rounds):
                plain.append(plain_generate(model, args.tokens))
                browser.append(browser_generate(page, screen))
                print(f"round {round_ + 1}: generate {plain[-1]['tps']:.1f} tok/s, browser-attached dashboard "
                      f"{browser[-1]['tps']:.1f} tok/s; page {browser[-1]['frames_per_s']:.1f} updates/s "
                      f"generating, {browser[-1]['idle_frames_per_s']:.1f} idle", flush=True)
            context.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    summary = {"model": model, "tokens": args.tokens, "rounds": args.rounds,
               "generate_tps": med(plain, "tps"), "browser_tps": med(browser, "tps"),
               "browser_vs_generate": med(browser, "tps") / med(plain, "tps"),
               "page_updates_per_s": med(browser, "frames_per_s"),
               "page_idle_updates_per_s": med(browser, "idle_frames_per_s"),
               "rounds_detail": {"generate": plain, "browser": browser}}
    print(f"median tok/s: generate {summary['generate_tps']:.1f}, dashboard with a browser attached "
          f"{summary['browser_tps']:.1f} -> ratio {summary['browser_vs_generate']:.3f}")
    print(f"page updates: {summary['page_updates_per_s']:.1f}/s while generating, "
          f"{summary['page_idle_updates_per_s']:.1f}/s idle")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""What the dashboard costs: generation tok/s inside the dashboard vs plain `mlxsmall generate`.

Same model, same prompt, greedy, same number of tokens, one process. Rounds alternate
(generate, dashboard, generate, dashboard, ...) so background load hits both sides alike;
the median of each side and their ratio are printed (target: dashboard >= 0.95x).

- plain: the real `mlxsmall generate` command, run in-process (`mlxsmall.cli.main`); its
  tok/s is parsed from the stats line it prints.
- dashboard: the real DashboardApp, headless at 80x24 (Textual still lays out and renders
  every refresh, it just writes nowhere), raw-completion mode, the prompt typed into the
  input; its tok/s is the one the speed panel shows.

On a shared, loaded machine the tok/s ratio is noise; the UI thread's share of the process
CPU during generation is printed too, as a load-independent bound on the overhead.

    python bench/bench_dashboard.py                       # offline default model
    python bench/bench_dashboard.py ./my-model --tokens 256 --rounds 5 --json out.json
"""

import argparse
import asyncio
import contextlib
import io
import json
import re
import statistics
import sys
import time

import mlxsmall  # noqa: F401  (loads OpenBLAS before MLX on Linux)

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


class DecodeCpu:
    """Process CPU seconds (all threads: MLX, BLAS, and the UI when there is one) per decoded
    token, from the first token to the last, read off the generation events. Under CPU
    contention wall-clock tok/s swings wildly; CPU per token barely moves, and on a machine
    whose cores generation saturates, tok/s scales with its inverse."""

    def __init__(self):
        from mlxsmall import events

        self.first = self.per_token = None
        self.unsubscribe = events.subscribe(self.on_event)

    def on_event(self, event):
        if event.kind != "generation":
            return
        tokens = event.get("generation_tokens", 0)
        if tokens == 1 and event.get("phase") == "token":
            self.first = time.process_time()
        elif event.get("phase") == "done" and self.first is not None and tokens > 1:
            self.per_token = (time.process_time() - self.first) / (tokens - 1)

    def close(self):
        self.unsubscribe()
        return self.per_token


def plain_generate(model: str, prompt: str, tokens: int) -> dict:
    from mlxsmall.cli import main

    out, err = io.StringIO(), io.StringIO()
    cpu = DecodeCpu()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["generate", model, "-p", prompt, "-m", str(tokens)])
    cpu_per_token = cpu.close()
    stats = re.search(r"generation: (\d+) tokens, ([\d.]+) tok/s", err.getvalue())
    if code != 0 or stats is None:
        raise SystemExit(f"mlxsmall generate failed ({code}): {err.getvalue().strip()}")
    return {"tokens": int(stats.group(1)), "tps": float(stats.group(2)), "text": out.getvalue().strip(),
            "cpu_per_token": cpu_per_token}


def dashboard_generate(model: str, prompt: str, tokens: int) -> dict:
    from mlxsmall.tui.app import DashboardApp

    async def scenario():
        cpu = DecodeCpu()
        app = DashboardApp(model, chat=False, max_tokens=tokens)
        async with app.run_test(size=(80, 24)) as pilot:
            while app.session is None or app.busy:
                if app.busy is None and app.session is None:
                    from mlxsmall.tui.widgets import ModelPanel

                    raise SystemExit(f"dashboard could not load the model: {app.query_one(ModelPanel).render()}")
                await asyncio.sleep(0.25)
            app.query_one("#prompt").value = prompt
            ui_cpu, all_cpu = time.thread_time(), time.process_time()  # this thread is the UI's
            await pilot.press("enter")
            while not app.metrics.requests or app.busy:
                await asyncio.sleep(0.25)
            ui_cpu, all_cpu = time.thread_time() - ui_cpu, time.process_time() - all_cpu
            await pilot.pause(0.2)
            request = app.metrics.requests[-1]
            text = app.metrics.text
        return {"tokens": request.generation_tokens, "tps": request.generation_tps, "text": text.strip(),
                "ui_cpu_share": ui_cpu / all_cpu if all_cpu > 0 else None, "cpu_per_token": cpu.close()}

    return asyncio.run(scenario())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None, help="model dir or alias (default: offline default)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens to generate per run (default 128)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    if args.model is None:
        from mlxsmall.hub import default_model_path

        args.model = str(default_model_path())
    print(f"model: {args.model}\nprompt: {args.prompt!r}, {args.tokens} tokens, greedy, "
          f"{args.rounds} alternating rounds after one warm-up each\n", file=sys.stderr)

    plain_generate(args.model, args.prompt, 8)  # warm-ups: imports, first-call costs
    dashboard_generate(args.model, args.prompt, 8)
    runs = {"generate": [], "dashboard": []}
    for round_ in range(args.rounds):
        for name, run in (("generate", plain_generate), ("dashboard", dashboard_generate)):
            result = run(args.model, args.prompt, args.tokens)
            runs[name].append(result)
            share = result.get("ui_cpu_share")
            print(f"round {round_ + 1} {name:9s} {result['tokens']:4d} tokens {result['tps']:7.2f} tok/s"
                  f"  {1000 * result['cpu_per_token']:6.1f} CPU-ms/token"
                  + (f"  UI thread {100 * share:.1f}% of process CPU" if share is not None else ""),
                  file=sys.stderr)

    if runs["generate"][0]["text"] != runs["dashboard"][0]["text"]:
        print("warning: the two paths produced different text", file=sys.stderr)
    median = {name: statistics.median(r["tps"] for r in results) for name, results in runs.items()}
    ratio = median["dashboard"] / median["generate"]
    share = statistics.median(r["ui_cpu_share"] for r in runs["dashboard"])
    cpu = {name: statistics.median(r["cpu_per_token"] for r in results) for name, results in runs.items()}
    print(f"\nmedian generation tok/s: generate {median['generate']:.2f}, dashboard {median['dashboard']:.2f}"
          f"  ->  dashboard/generate = {ratio:.3f}x (target >= 0.95x)")
    # Load-independent view of the cost: the share of CPU the UI thread took while generating.
    # When generation saturates the cores, the slowdown is about this share.
    print(f"UI thread share of process CPU during dashboard generation: {100 * share:.1f}% (median)")
    print(f"median CPU per decoded token: generate {1000 * cpu['generate']:.1f} ms, dashboard "
          f"{1000 * cpu['dashboard']:.1f} ms  ->  CPU-bound tok/s ratio = {cpu['generate'] / cpu['dashboard']:.3f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "tokens": args.tokens, "prompt": args.prompt,
                       "runs": {k: [{key: r.get(key) for key in ("tokens", "tps", "cpu_per_token", "ui_cpu_share")}
                                    for r in v] for k, v in runs.items()},
                       "median_tps": median, "ratio": ratio, "ui_cpu_share": share,
                       "median_cpu_per_token_s": cpu, "cpu_ratio": cpu["generate"] / cpu["dashboard"],
                       "time": time.time()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

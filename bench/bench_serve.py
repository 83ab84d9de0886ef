"""What serving costs: tok/s one OpenAI client sees from `mlxsmall serve` vs `mlxsmall generate`,
and the throughput of 4 concurrent clients vs 1.

Same model, same prompt, greedy, same number of tokens, one run. The server runs as the user
runs it (`mlxsmall serve` in a subprocess); rounds alternate (generate, one client, generate,
one client, ...) so background load hits both sides alike, and the medians and their ratio are
printed (target: client/generate >= 0.9).

- generate: the real `mlxsmall generate` command in a subprocess; its decode tok/s is parsed
  from the stats line it prints (mlx-lm's: tokens / time from the first token to the last).
- one client: the official `openai` client streaming a completion; decode tok/s as the client
  sees it, with mlx-lm's definition: tokens / (time of the last chunk - time of the first chunk).
- concurrency: 4 clients at once vs 1 client, tokens delivered per wall-clock second. The server
  serves one request at a time (one KV cache), so the expected ratio is about 1.0.

    python bench/bench_serve.py                      # offline default model
    python bench/bench_serve.py ./my-model --tokens 128 --rounds 5 --json out.json
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import threading
import time

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


def start_server(model, tokens):
    args = [sys.executable, "-m", "mlxsmall", "serve", "--port", "0", "--model-id", "bench", "-m", str(tokens)]
    process = subprocess.Popen(args + ([model] if model else []), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        match = re.search(r"(http://[\d.]+:\d+)/v1", line)
        if match:
            threading.Thread(target=lambda: process.stderr.read(), daemon=True).start()
            return process, match.group(1) + "/v1"
    raise SystemExit("mlxsmall serve did not start")


def process_cpu(pid) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (Linux)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def plain_generate(model, tokens):
    """Decode tok/s as printed, and CPU seconds of the whole command."""
    before = children_cpu()
    result = subprocess.run(
        [sys.executable, "-m", "mlxsmall", "generate", *([model] if model else []), "-p", PROMPT,
         "-m", str(tokens)], capture_output=True, text=True,
    )
    stats = re.search(r"generation: (\d+) tokens, ([\d.]+) tok/s", result.stderr)
    if result.returncode != 0 or stats is None:
        raise SystemExit(f"mlxsmall generate failed: {result.stderr.strip()}")
    return {"tokens": int(stats.group(1)), "tps": float(stats.group(2)), "cpu": children_cpu() - before}


def client_stream(client, tokens):
    start = time.perf_counter()
    first = last = None
    count = 0
    stream = client.completions.create(model="bench", prompt=PROMPT, max_tokens=tokens, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            count = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].text:
            last = time.perf_counter()
            first = first or last
    # mlx-lm's definition (what `mlxsmall generate` prints): tokens / time from the first token to the last
    decode = count / (last - first) if first and last and last > first else float("nan")
    return {"tokens": count, "tps": decode, "seconds": time.perf_counter() - start}


def concurrent(client, tokens, n):
    results = [None] * n

    def ask(i):
        results[i] = client_stream(client, tokens)

    start = time.perf_counter()
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {"clients": n, "tokens": sum(r["tokens"] for r in results), "seconds": wall,
            "throughput": sum(r["tokens"] for r in results) / wall}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None, help="model (default: the offline default model)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    import openai

    process, url = start_server(args.model, args.tokens)
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", timeout=600, max_retries=0)
        client_stream(client, 8)  # warm-up
        plain, served, one, four, cpu = [], [], [], [], []
        for round_ in range(args.rounds):
            plain.append(plain_generate(args.model, args.tokens))
            # CPU per decoded token, which load on the machine barely moves: generate's is the
            # difference between a long and a 1-token run (load and prompt cancel out); the
            # server's is its process CPU over one request (prompt included, so an upper bound).
            short = plain_generate(args.model, 1)
            before = process_cpu(process.pid)
            served.append(client_stream(client, args.tokens))
            server_cpu = (process_cpu(process.pid) - before) / served[-1]["tokens"]
            generate_cpu = (plain[-1]["cpu"] - short["cpu"]) / (plain[-1]["tokens"] - 1)
            cpu.append({"generate": generate_cpu, "server": server_cpu})
            one.append(concurrent(client, args.tokens, 1))
            four.append(concurrent(client, args.tokens, 4))
            print(f"round {round_ + 1}: generate {plain[-1]['tps']:.1f} tok/s, one client {served[-1]['tps']:.1f} "
                  f"tok/s; throughput 1 client {one[-1]['throughput']:.1f}, 4 clients "
                  f"{four[-1]['throughput']:.1f} tok/s; CPU ms/token: generate {generate_cpu * 1000:.1f}, "
                  f"server {server_cpu * 1000:.1f}", flush=True)
    finally:
        process.terminate()
        process.wait(timeout=30)

    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    summary = {
        "model": args.model or "default", "tokens": args.tokens, "rounds": args.rounds,
        "generate_tps": med(plain, "tps"), "client_tps": med(served, "tps"),
        "client_vs_generate": med(served, "tps") / med(plain, "tps"),
        "throughput_1": med(one, "throughput"), "throughput_4": med(four, "throughput"),
        "throughput_4_vs_1": med(four, "throughput") / med(one, "throughput"),
        "cpu_per_token_generate": med(cpu, "generate"), "cpu_per_token_server": med(cpu, "server"),
        "cpu_generate_vs_server": med(cpu, "generate") / med(cpu, "server"),
        "rounds_detail": {"generate": plain, "client": served, "one": one, "four": four, "cpu": cpu},
    }
    print(f"median decode tok/s: generate {summary['generate_tps']:.1f}, one client {summary['client_tps']:.1f} "
          f"-> ratio {summary['client_vs_generate']:.3f}")
    print(f"median throughput (tokens delivered / wall s): 1 client {summary['throughput_1']:.1f}, "
          f"4 clients {summary['throughput_4']:.1f} -> ratio {summary['throughput_4_vs_1']:.3f}")
    print(f"median CPU per token: generate {summary['cpu_per_token_generate'] * 1000:.1f} ms, server "
          f"{summary['cpu_per_token_server'] * 1000:.1f} ms -> speed ratio (generate CPU / server CPU) "
          f"{summary['cpu_generate_vs_server']:.3f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(summary, out, indent=2)


if __name__ == "__main__":
    main()

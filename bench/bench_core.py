"""Ours vs mlx-lm's llama on the same random weights, side by side in one process.

For MobileLLM-125M and MobiLlama-0.5B shapes at fp32/bf16/q8/q4: decode tok/s,
prompt tok/s, resident weight memory and peak memory during generation, with
ours/llama ratios. The llama is our model expanded (MobiLlama's FFN copied into
every layer, each copy its own buffer), i.e. what you would run without our
shared-FFN implementation. Runs alternate (ours, llama, ours, llama, ...) and
the median is reported, so that background load hits both sides alike.

    python bench/bench_core.py                     # everything (slow on CPU)
    python bench/bench_core.py --shapes mobilellm-125m --dtypes float32 q4
"""

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import mlxsmall  # noqa: F401  (loads OpenBLAS before MLX on Linux)
import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache

from mlxsmall.llama_expand import materialize, to_mlx_lm_llama
from mlxsmall.loading import build_model, cast_floating, weight_bytes
from mlxsmall.quantize import quantize_model

SHAPES = {
    "mobilellm-125m": dict(
        model_type="mobilellm", hidden_size=576, num_hidden_layers=30, intermediate_size=1536,
        num_attention_heads=9, num_key_value_heads=3, vocab_size=32000, share_embedding=True,
    ),
    "mobillama-0.5b": dict(
        model_type="mobillama", hidden_size=2048, num_hidden_layers=22, intermediate_size=5632,
        num_attention_heads=32, num_key_value_heads=4, vocab_size=32000, shared_ffn=True,
    ),
}
DTYPES = ["float32", "bfloat16", "q8", "q4"]


def prepare(model, config, dtype):
    if dtype.startswith("q"):
        quantize_model(model, config, bits=int(dtype[1:]), group_size=64)
    else:
        cast_floating(model, dtype)
    mx.eval(model.parameters())


def timed_run(model, prompt_tokens, decode_tokens):
    """(prompt tok/s, decode tok/s, peak bytes during the run)."""
    prompt = mx.random.randint(0, 32000, (prompt_tokens,))
    cache = make_prompt_cache(model)
    mx.synchronize()
    mx.reset_peak_memory()
    start = time.perf_counter()
    first = None
    for n, _ in enumerate(generate_step(prompt, model, max_tokens=decode_tokens, prompt_cache=cache)):
        if n == 0:
            first = time.perf_counter()
    end = time.perf_counter()
    return prompt_tokens / (first - start), (decode_tokens - 1) / (end - first), mx.get_peak_memory()


def bench_one(shape, dtype, prompt_tokens, decode_tokens, repeats):
    config = dict(SHAPES[shape], rms_norm_eps=1e-5, max_position_embeddings=2048)
    mx.random.seed(0)
    ours = build_model(config)
    prepare(ours, config, dtype)
    ours_bytes = weight_bytes(ours)

    llama = to_mlx_lm_llama(ours)
    materialize(llama)  # every expanded copy its own buffer, as an unshared checkpoint loads
    llama_bytes = weight_bytes(llama)
    results = {"ours": [], "llama": []}
    timed_run(ours, 8, 3), timed_run(llama, 8, 3)  # warm-up
    for _ in range(repeats):
        for name, model, other_bytes in (("ours", ours, llama_bytes), ("llama", llama, ours_bytes)):
            prompt_tps, decode_tps, peak = timed_run(model, prompt_tokens, decode_tokens)
            results[name].append((prompt_tps, decode_tps, peak - other_bytes))
    row = {"shape": shape, "dtype": dtype, "ours_weights_MB": ours_bytes / 1e6, "llama_weights_MB": llama_bytes / 1e6}
    for name in results:
        prompt, decode, peak = zip(*results[name])
        row[f"{name}_prompt_tps"] = statistics.median(prompt)
        row[f"{name}_decode_tps"] = statistics.median(decode)
        row[f"{name}_peak_MB"] = statistics.median(peak) / 1e6
    row["decode_ratio"] = row["ours_decode_tps"] / row["llama_decode_tps"]
    row["prompt_ratio"] = row["ours_prompt_tps"] / row["llama_prompt_tps"]
    row["weights_ratio"] = ours_bytes / llama_bytes
    row["peak_ratio"] = row["ours_peak_MB"] / row["llama_peak_MB"]
    del ours, llama
    gc.collect()
    mx.clear_cache()
    return row


def markdown(rows, device):
    lines = [
        f"Device: {device}. Ratios are ours / mlx-lm llama (same weights, same process).",
        "",
        "| shape | dtype | decode tok/s ours | decode tok/s llama | decode ratio | prompt ratio | weights MB ours / llama | weights ratio | peak ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['ours_decode_tps']:.1f} | {r['llama_decode_tps']:.1f} | "
            f"{r['decode_ratio']:.2f}x | {r['prompt_ratio']:.2f}x | {r['ours_weights_MB']:.0f} / {r['llama_weights_MB']:.0f} | "
            f"{r['weights_ratio']:.2f}x | {r['peak_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=DTYPES, choices=DTYPES)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    device = f"{mx.default_device()} ({sys.platform}, mlx {mx.__version__})"
    rows = []
    for shape in args.shapes:
        for dtype in args.dtypes:
            row = bench_one(shape, dtype, args.prompt_tokens, args.decode_tokens, args.repeats)
            rows.append(row)
            print(f"{shape} {dtype}: decode {row['ours_decode_tps']:.1f} vs {row['llama_decode_tps']:.1f} tok/s "
                  f"({row['decode_ratio']:.2f}x), prompt {row['prompt_ratio']:.2f}x, "
                  f"weights {row['weights_ratio']:.2f}x, peak {row['peak_ratio']:.2f}x", flush=True)
    print()
    print(markdown(rows, device))
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

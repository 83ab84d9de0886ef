"""mlxsmall bench: speed, memory and energy per token across precisions (llama-bench style)."""

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from ._common import check_model, check_output_file, model_path, non_negative_int, positive_int, printed_warnings

DEFAULT_PRECISIONS = ["fp16", "q8", "q6", "q4", "q3", "q2"]

EPILOG = """\
Each precision is made in memory from the model's stored weights exactly as `mlxsmall quantize`
writes it (q8..q2, group size 64; q4g32 for another group size; mixed_2_6 mixed_3_4 mixed_3_6
mixed_4_6 are mlx-lm's recipes) and runs as `load` runs it with quantized kernels (fp32 activations
on CPU); a quantized base model is dequantized first, with a warning. `stored` benchmarks the
model exactly as saved. Prompts are random token ids; end-of-sequence
is ignored so every run generates exactly -n tokens. Numbers are mean ± std over -r timed runs
after --warmup untimed ones. Energy per token comes from the dashboard's power sources
(RAPL, NVML, IOReport, powermetrics) and is n/a, with the reason, where none is readable.

examples:
  mlxsmall bench                                   # offline default model, fp16 q8 q6 q4 q3 q2
  mlxsmall bench --precisions fp32 q8 q4 -p 128 -n 32 -r 3
  mlxsmall bench mobillama --precisions q4 mixed_3_6 --baseline mlx-lm
  mlxsmall bench -o docs/eval/bench.json --plot docs/eval/bench.png
"""


def register(subparsers):
    parser = subparsers.add_parser(
        "bench", help="measure TTFT, tok/s, memory and energy across bit widths",
        description="Benchmark prompt processing and generation of a model at several precisions, "
        "llama-bench style (pp512/tg128 by default), optionally against mlx-lm's llama on the same weights.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", default=None,
                        help="model directory, alias or HF repo (default: the offline SmolLM2-135M-Instruct)")
    parser.add_argument("--precisions", nargs="+", default=DEFAULT_PRECISIONS, metavar="P",
                        help=f"precisions to compare (default: {' '.join(DEFAULT_PRECISIONS)}); "
                        "'stored' = as saved; MODEL@P benchmarks another model")
    parser.add_argument("-p", "--prompt-tokens", type=positive_int, default=512, help="prompt length (default 512)")
    parser.add_argument("-n", "--generation-tokens", type=positive_int, default=128,
                        help="tokens to generate (default 128)")
    parser.add_argument("-r", "--repetitions", type=positive_int, default=3,
                        help="timed runs per precision (default 3)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed warm-up runs (default 1)")
    parser.add_argument("--baseline", choices=["mlx-lm"], help="also time the same weights as mlx-lm's llama")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompt")
    parser.add_argument("-o", "--output", help="write results JSON here (and a .md table next to it)")
    parser.add_argument("--plot", help="write tok/s-vs-bits and memory-vs-bits plots to this PNG")
    parser.set_defaults(func=run)


DEFAULT = "<the default model>"  # stands for the base model while --precisions is checked


def run(args):
    from mlxsmall.eval.variants import parse_variant

    check_output_file(args.output, "-o")
    check_output_file(args.plot, "--plot")
    check_model(args.model)
    for spec in args.precisions:  # every precision and model named, before the base model converts
        variant = parse_variant(spec, args.model or DEFAULT)
        check_model(None if variant.model == DEFAULT else variant.model)
    from mlxsmall.atomic import write_text_atomic
    from mlxsmall.measure.bench import BenchOptions, bench_variants, options_dict
    from mlxsmall.measure import open_power_meter
    from mlxsmall.eval.report import bench_markdown, plot_bench, write_json

    base = str(model_path(args))
    variants = [parse_variant(spec, base) for spec in args.precisions]
    options = BenchOptions(prompt_tokens=args.prompt_tokens, generation_tokens=args.generation_tokens,
                           repetitions=args.repetitions, warmup=args.warmup, baseline=args.baseline, seed=args.seed)
    meter = open_power_meter()

    from rich.console import Console

    console = Console(stderr=True)
    console.print(f"energy: {meter.describe()}", markup=False)  # keeps `mlxsmall[nvidia]` as written
    with console.status("") as status:
        state = {"variant": ""}

        def on_variant(label):
            state["variant"] = label
            status.update(f"{label}: loading")

        def on_run(name):
            status.update(f"{state['variant']}: {name} done")

        done = []

        def on_row(row):
            console.print(f"{row['label']}: TTFT {row['ttft_ms_mean']:.0f} ± {row['ttft_ms_std']:.0f} ms, "
                          f"prompt {row['prompt_tps_mean']:.1f} ± {row['prompt_tps_std']:.1f} tok/s, "
                          f"generation {row['generation_tps_mean']:.1f} ± {row['generation_tps_std']:.1f} tok/s, "
                          f"peak {row['peak_memory_gb'] * 1000:.0f} MB")
            if args.output:  # keep finished variants if a long sweep is interrupted
                done.append(row)
                write_json(Path(args.output), {"options": options_dict(options), "rows": done, "partial": True})

        with printed_warnings(lambda line: console.print(line, markup=False, highlight=False)):
            rows = bench_variants(variants, options, meter=meter, on_variant=on_variant, on_run=on_run,
                                  on_row=on_row)

    table = bench_markdown(rows)
    print(table)
    if args.output:
        output = Path(args.output)
        write_json(output, {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "options": options_dict(options),
            "rows": rows,
        })
        write_text_atomic(output.with_suffix(".md"), table)
        print(f"results: {output} and {output.with_suffix('.md')}", file=sys.stderr)
    if args.plot:
        written = plot_bench(rows, Path(args.plot))
        print(f"plot: {written}" if written else "plot: n/a (no rows)", file=sys.stderr)
    return 0

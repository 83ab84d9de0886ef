"""mlxsmall eval: quality on QA, summarization, SQL, multiple choice, math, perplexity and safety."""

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from ._common import check_model, check_output_file, model_path, printed_warnings

EPILOG = """\
tasks (groups in brackets):
  [commonsense] arc_easy arc_challenge boolq piqa siqa hellaswag openbookqa winogrande
  [knowledge] mmlu   [reasoning] gsm8k   [qa] hotpotqa dolly   [summarization] cnn_dailymail xsum
  [code] sql   [perplexity] wikitext   [safety] safety        all = every task above
  [vqa] vqav2 textvqa gqa scienceqa   vision-language models only (images drawn offline)

Every task ships a small sample set written for mlxsmall (--data sample, the default,
offline); --data hub downloads the real dataset with the `datasets` package; --data PATH
reads your own (see "your own data" below).
Multiple choice is scored by log-likelihood exactly as lm-evaluation-harness does (its
prompts; acc: summed, acc_norm: divided by the length of the choice in characters).
Generation tasks (--protocol): default = our prompts, test-suite SQL execution accuracy,
SQuAD EM/F1, ROUGE-1/2/L; mobileaibench = MobileAIBench's prompts, caps and metrics
(SQL: Levenshtein ratio, clause F1; QA: EM, F1, BLEU; summaries: ROUGE-1/L); both = side by side.

examples:
  mlxsmall eval --tasks commonsense --limit 20
  mlxsmall eval --tasks arc_easy,gsm8k,safety --compare fp16 q8 q4 -o results/smol.json --plot results/smol.png
  mlxsmall eval mobillama-q4 --tasks mmlu --shots 5 --data hub --limit 200
  mlxsmall eval ./my-model --tasks wikitext --text-file notes.txt
  mlxsmall eval --tasks arc_easy --data my_questions.jsonl
  mlxsmall eval ./my-vlm --tasks vqa --limit 50
"""

DATA_HELP = """
your own data (--data PATH): a JSONL file with the documents of the one task you run, or
a directory with one file per task, <task>.jsonl (perplexity: <task>.txt, plain text).
One JSON object per line with the fields of the task's Hugging Face dataset, the format of
the shipped sample sets (eval/data); other fields are ignored, FIELD? is optional:
{fields}
"""


def register(subparsers):
    from mlxsmall.dtypes import BY_SHORT
    from mlxsmall.eval.data_files import describe
    from mlxsmall.quantize import SUPPORTED_BITS

    parser = subparsers.add_parser(
        "eval", help="evaluate quality on benchmark tasks, across bit widths",
        description="Score a model (or several precisions of it side by side) on QA, summarization, "
        "text-to-SQL, multiple choice, GSM8K, perplexity and trust & safety tasks; a vision-language model "
        "on visual question answering.",
        epilog=EPILOG + DATA_HELP.format(fields=describe()), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", default=None,
                        help="model directory, alias or HF repo (default: the offline SmolLM2-135M-Instruct)")
    parser.add_argument("--tasks", default="commonsense",
                        help="comma-separated tasks or groups (default: commonsense); see the list below")
    parser.add_argument("--compare", nargs="+", metavar="SPEC",
                        help=f"evaluate several variants side by side: precisions of MODEL (stored {' '.join(BY_SHORT)} "
                        f"{' '.join(f'q{bits}' for bits in reversed(SUPPORTED_BITS))} q4g32 mixed_3_6 ...) "
                        "or other models, optionally MODEL@PRECISION")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most N documents per task (perplexity: N windows)")
    parser.add_argument("--shots", type=int, default=0, help="few-shot examples per prompt (default 0)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="rows per forward pass for log-likelihoods (multiple choice: the choices of a few "
                        "documents, their shared contexts computed once)")
    parser.add_argument("--data", default="sample", metavar="sample|hub|PATH",
                        help="sample: the shipped sample sets (offline); hub: the full datasets via `datasets`; "
                        "PATH: your own JSONL file or directory of <task>.jsonl files (fields below)")
    parser.add_argument("--chat", choices=["auto", "on", "off"], default="auto",
                        help="generation prompts through the chat template (auto: when the tokenizer has one)")
    parser.add_argument("--max-tokens", type=int, default=None, help="override each generation task's budget")
    parser.add_argument("--protocol", choices=["default", "mobileaibench", "both"], default="default",
                        help="how generation tasks are prompted and scored (default: ours; mobileaibench: as the "
                        "MobileAIBench paper; both: side by side)")
    parser.add_argument("--window", type=int, default=512, help="perplexity window in tokens (default 512)")
    parser.add_argument("--text-file", help="also measure perplexity on this text file")
    parser.add_argument("--seed", type=int, default=0, help="seed for few-shot example choice")
    parser.add_argument("--keep-quantized", action="store_true",
                        help="on CPU, run quantized variants with quantized kernels (default: expand them to "
                        "fp32 first; same weights, several times faster there)")
    parser.add_argument("-o", "--output", help="write results JSON here (and a .md table next to it)")
    parser.add_argument("--plot", help="write a quality-vs-bits PNG here (needs variants with bit widths)")
    parser.add_argument("--list-tasks", action="store_true", help="list tasks and exit")
    parser.set_defaults(func=run)


DEFAULT = "<the default model>"  # stands for the base model while --compare is checked


def run(args):
    from mlxsmall.errors import MlxsmallError
    from mlxsmall.eval.data_files import check_data
    from mlxsmall.eval.tasks import resolve_tasks, text_file_task
    from mlxsmall.eval.variants import parse_variant

    if args.list_tasks:
        list_tasks()
        return 0
    for name in ("limit", "max_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise MlxsmallError(f"--{name.replace('_', '-')} must be at least 1")
    if args.shots < 0 or args.batch_size < 1 or args.window < 2:
        raise MlxsmallError("--shots must be >= 0, --batch-size >= 1 and --window >= 2")
    tasks = resolve_tasks([args.tasks]) if args.tasks else []
    if args.text_file:
        tasks.append(text_file_task(args.text_file))
    if not tasks:
        raise MlxsmallError("--tasks: nothing to evaluate")
    check_data(args.data, tasks)  # a bad --data file fails here, before a model loads
    if args.data == "hub":
        check_hub_data(tasks)
    check_output_file(args.output, "-o")
    check_output_file(args.plot, "--plot")
    check_model(args.model)
    for spec in args.compare or []:  # every spec and model named, before the base model converts
        variant = parse_variant(spec, args.model or DEFAULT)
        check_model(None if variant.model == DEFAULT else variant.model)

    # The heavy part (mlx-lm, transformers) only after every argument is checked.
    from mlxsmall.atomic import write_text_atomic
    from mlxsmall.eval.report import eval_markdown, plot_quality_vs_bits, write_json
    from mlxsmall.eval.runner import EvalOptions, options_dict

    base = str(model_path(args))
    variants = [parse_variant(spec, base) for spec in (args.compare or [base])]
    options = EvalOptions(limit=args.limit, shots=args.shots, batch_size=args.batch_size, data=args.data,
                          chat=args.chat, max_tokens=args.max_tokens, seed=args.seed, window=args.window,
                          protocol=args.protocol)
    with printed_warnings():
        runs = run_with_progress(variants, tasks, options, dense_on_cpu=not args.keep_quantized)

    table = eval_markdown(runs)
    print(table)
    if args.output:
        output = Path(args.output)
        record = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "options": options_dict(options),
            "tasks": [task.name for task in tasks],
            "runs": runs,
        }
        write_json(output, record)
        write_text_atomic(output.with_suffix(".md"), table)
        print(f"results: {output} and {output.with_suffix('.md')}", file=sys.stderr)
    if args.plot:
        written = plot_quality_vs_bits(runs, Path(args.plot))
        if written is None:
            print("plot: n/a (no variant has a bit width; use --compare fp16 q8 q4 ...)", file=sys.stderr)
        else:
            print(f"plot: {written}", file=sys.stderr)
    return 0


def check_hub_data(tasks) -> None:
    """--data hub: every task has a hub dataset and the `datasets` package is there (read only after
    the model loads)."""
    import importlib.util
    import os

    from mlxsmall.errors import MlxsmallError

    for task in tasks:
        if task.hub is None and not os.path.isabs(task.sample_file):  # --text-file tasks read their own file
            raise MlxsmallError(f"{task.name}: no hub dataset; run it with --data sample")
    if importlib.util.find_spec("datasets") is None:
        raise MlxsmallError("--data hub needs the `datasets` package (pip install datasets); "
                            "--data sample runs the shipped sample sets offline")


def run_with_progress(variants, tasks, options, *, dense_on_cpu):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mlxsmall.eval.runner import evaluate_variants

    console = Console(stderr=True)
    current = {"variant": None, "bar": None}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:

        def on_variant(variant):
            current["variant"] = variant.label
            console.print(f"[bold]{variant.label}[/bold]: loading")

        def on_task_start(task, total):
            current["bar"] = progress.add_task(f"{current['variant']} {task.name}", total=total)
            if not console.is_terminal:  # logs get a line per task instead of a live bar
                console.print(f"{current['variant']}: {task.name} ({total} steps)")

        def on_progress(name, advance, total):
            if current["bar"] is not None:
                progress.update(current["bar"], advance=advance, total=total)

        return evaluate_variants(variants, tasks, options, dense_on_cpu=dense_on_cpu, on_progress=on_progress,
                                 on_task_start=on_task_start, on_variant=on_variant)


def list_tasks():
    from mlxsmall.eval.tasks import TASKS

    for name, task in TASKS.items():
        hub = f"{task.hub.path}" if task.hub else "-"
        print(f"{name:15s} {task.group:14s} {task.description}  [hub: {hub}]")

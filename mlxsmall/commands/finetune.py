"""mlxsmall finetune: LoRA / DoRA / QLoRA / full finetuning on JSONL data."""

import argparse
import contextlib

from ..quantize import SUPPORTED_BITS
from ._common import add_dtype_argument, check_model, non_negative_int, number_in, positive_float, positive_int

dropout_rate = number_in(0, 1, high_open=True, name="dropout_rate")

EPILOG = """\
data (--data): a directory with train.jsonl (and valid.jsonl), one .jsonl file
(10% is held out for validation) or a Hugging Face dataset id (needs the
`datasets` package). One record per line, in any mlx-lm format:
  {"text": "..."}
  {"prompt": "...", "completion": "..."}          (chat template applied)
  {"messages": [{"role": "user", "content": "..."}, ...]}
Prompt tokens are masked out of the loss unless --no-mask-prompt.

shared weights: MobiLlama's one FFN gets ONE adapter used by every block
(--per-layer-adapters gives each block its own; fusing then unshares the
FFN); layer-shared MobileLLM blocks are stored once and adapted once.

output (-o DIR): adapters.safetensors + adapter_config.json (LoRA/DoRA/QLoRA)
or DIR/model (full), plus train_log.jsonl and checkpoints/. Resume a stopped
run with the same command and --resume.

data parallel: mlx.launch -n 2 --backend ring -- mlxsmall finetune ...
(the batch is split across processes; gradients are summed).

examples:
  mlxsmall finetune --data mlxsmall/train/samples -o adapters --steps 100
  mlxsmall finetune ./mobillama-05b --data data/ --method qlora --rank 16 -o qlora
  mlxsmall fuse ./mobillama-05b --adapters adapters -o mobillama-tuned
"""


def register(subparsers):
    parser = subparsers.add_parser(
        "finetune", help="finetune a model (LoRA, DoRA, QLoRA, full)",
        description="Finetune a model on instruction/chat/text data.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", default=None,
                        help="base model: directory, alias or HF repo id "
                             "(default: the offline SmolLM2-135M-Instruct model)")
    parser.add_argument("--data", required=True, help="JSONL file, directory or hub dataset id")
    parser.add_argument("-o", "--output", default="adapters", help="output directory (default: adapters)")
    method = parser.add_argument_group("method")
    method.add_argument("--method", choices=["lora", "dora", "qlora", "full"], default="lora",
                        help="lora (default), dora, qlora (LoRA on a 4-bit base) or full")
    method.add_argument("--rank", type=positive_int, default=8, help="adapter rank (default 8)")
    method.add_argument("--scale", type=float, default=20.0,
                        help="adapter scale, mlx-lm convention (default 20)")
    method.add_argument("--dropout", type=dropout_rate, default=0.0, help="adapter dropout (default 0)")
    method.add_argument("--keys", default=None,
                        help="comma-separated linear names to adapt "
                             "(default: q,k,v,o,gate,up,down projections)")
    method.add_argument("--per-layer-adapters", action="store_true",
                        help="own adapters per block for MobiLlama's shared FFN")
    method.add_argument("--qlora-bits", type=int, default=4, choices=SUPPORTED_BITS,
                        help="base precision for qlora when the base is not quantized (default 4)")
    add_dtype_argument(method, help="frozen base weights in this dtype (adapters and loss stay fp32)")
    add_data_arguments(parser)
    add_training_arguments(parser, steps=200, learning_rate=1e-4)
    parser.set_defaults(func=run)


def add_data_arguments(parser):
    group = parser.add_argument_group("data")
    group.add_argument("--max-length", type=positive_int, default=512, help="tokens per sequence (default 512)")
    group.add_argument("--pack", action="store_true", help="pack sequences into full rows")
    group.add_argument("--no-mask-prompt", action="store_true", help="train on prompt tokens too")


def add_training_arguments(parser, steps, learning_rate):
    group = parser.add_argument_group("training")
    group.add_argument("--steps", type=positive_int, default=steps, help=f"optimizer steps (default {steps})")
    group.add_argument("--batch-size", type=positive_int, default=4, help="global batch size (default 4)")
    group.add_argument("--grad-accumulation", type=positive_int, default=1,
                       help="micro-batches per optimizer step (default 1)")
    group.add_argument("--learning-rate", "--lr", type=positive_float, default=learning_rate,
                       help=f"peak learning rate (default {learning_rate})")
    group.add_argument("--min-learning-rate", type=float, default=0.0, help="cosine floor (default 0)")
    group.add_argument("--warmup", type=non_negative_int, default=None,
                       help="linear warm-up steps (default: 5%% of --steps)")
    group.add_argument("--optimizer", choices=["adamw", "adafactor"], default="adamw")
    group.add_argument("--weight-decay", type=float, default=0.0)
    group.add_argument("--max-grad-norm", type=float, default=0.0, help="clip gradients (0 = off)")
    group.add_argument("--grad-checkpoint", action="store_true",
                       help="recompute activations in the backward pass (less memory)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--eval-every", type=non_negative_int, default=50,
                       help="validation loss every N steps (0: at the start and the end)")
    group.add_argument("--val-batches", type=positive_int, default=8, help="validation batches per evaluation")
    group.add_argument("--save-every", type=non_negative_int, default=50,
                       help="checkpoint every N steps (0: at the end)")
    group.add_argument("--keep", type=non_negative_int, default=2, help="checkpoints to keep (default 2; 0: all)")
    group.add_argument("--resume", action="store_true",
                       help="continue from the latest checkpoint in the output directory")
    group.add_argument("--force", action="store_true",
                       help="start over, deleting earlier checkpoints in the output directory")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def train_config(args):
    from ..train.trainer import TrainConfig

    warmup = args.warmup if args.warmup is not None else max(args.steps // 20, 0)
    return TrainConfig(
        steps=args.steps, batch_size=args.batch_size, grad_accumulation=args.grad_accumulation,
        learning_rate=args.learning_rate, min_learning_rate=args.min_learning_rate,
        warmup_steps=warmup, optimizer=args.optimizer, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm, seed=args.seed, eval_every=args.eval_every,
        val_batches=args.val_batches, save_every=args.save_every, keep_checkpoints=args.keep,
        grad_checkpoint=args.grad_checkpoint,
    )


@contextlib.contextmanager
def training_progress(enabled=True, label="training"):
    """A rich progress bar fed by the trainer's "train" events (the trainer never prints)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .. import events

    console = Console(stderr=True)
    if not enabled:
        yield console
        return
    if not console.is_terminal:  # logs and pipes: plain lines instead of a live bar
        with events.subscribed(lambda event: print_line(console, event)):
            yield console
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val]}"),
        TextColumn("{task.fields[tps]} tok/s"), TextColumn("peak {task.fields[mem]}"),
        TimeRemainingColumn(), console=console, transient=False,
    )
    task = progress.add_task(label, total=None, loss="-", val="-", tps="-", mem="-")

    def on_event(event):
        if event.kind != "train":
            return
        fields = event.fields
        update = {"completed": fields.get("step", 0), "total": fields.get("total_steps")}
        if fields.get("loss") is not None:
            update["loss"] = f"{fields['loss']:.3f}"
        if fields.get("val_loss") is not None:
            update["val"] = f"{fields['val_loss']:.3f}"
        if fields.get("tokens_per_second") is not None:
            update["tps"] = f"{fields['tokens_per_second']:.0f}"
        if fields.get("peak_memory_gb") is not None:
            update["mem"] = f"{fields['peak_memory_gb']:.2f} GB"
        progress.update(task, **update)
        if fields.get("phase") == "checkpoint":
            progress.console.print(f"checkpoint: {fields['path']}")

    with events.subscribed(on_event), progress:
        yield console


def print_line(console, event):
    if event.kind != "train":
        return
    fields = event.fields
    phase, step, total = fields.get("phase"), fields.get("step"), fields.get("total_steps") or 1
    if phase == "step" and (step % max(total // 20, 1) == 0 or step == total):
        console.print(f"step {step}/{total}  loss {fields['loss']:.4f}  lr {fields['learning_rate']:.2e}  "
                      f"{fields['tokens_per_second']:.0f} tok/s  peak {fields['peak_memory_gb']:.2f} GB  "
                      f"eta {fields['eta_seconds']:.0f} s", highlight=False)
    elif phase in ("eval", "start") and fields.get("val_loss") is not None:
        console.print(f"step {step}/{total}  validation loss {fields['val_loss']:.4f}", highlight=False)
    elif phase == "checkpoint":
        console.print(f"checkpoint: {fields['path']}", highlight=False)


def format_loss(value):
    return "n/a (no validation data)" if value is None else f"{value:.4f}"


def check_data(data: str, seed: int = 0):
    """Refuse missing or malformed training data in a fraction of a second (before the model loads):
    returns the records of a local file or directory, read and checked, or None for a hub dataset."""
    from pathlib import Path

    from ..errors import MlxsmallError
    from ..hub import looks_like_path
    from ..train.data import find_split

    path = Path(data).expanduser()
    if path.is_dir():
        if find_split(path, "train") is None:
            raise MlxsmallError(f"{path}: no train.jsonl in this directory")
    elif not path.is_file():
        if looks_like_path(data) or "/" not in data:
            raise MlxsmallError(f"{data}: no such file or directory")
        import importlib.util

        if importlib.util.find_spec("datasets") is None:
            raise MlxsmallError(f"{data}: not a local file or directory; to use a hub dataset "
                                "install the 'datasets' package (pip install datasets)")
        return None
    from ..train.data import check_finetune_data

    return check_finetune_data(data, seed=seed)


def check_method(method: str, model) -> None:
    """A full finetune needs a float base: known without loading it for a local directory (its
    config.json) or an alias (its stored precision; the default model is 4-bit)."""
    import json
    from pathlib import Path

    from ..errors import MlxsmallError
    from ..quantize import is_quantized
    from ..registry import DEFAULT_MODEL, lookup

    if method != "full":
        return
    config_file = Path(model).expanduser() / "config.json" if model else None
    if config_file is not None and config_file.is_file():
        try:
            quantized = is_quantized(json.loads(config_file.read_text()))
        except ValueError:
            return  # the loader names the broken file
    else:
        entry = lookup(model or DEFAULT_MODEL)
        quantized = bool(entry and entry.bits)
    if quantized:
        raise MlxsmallError(f"{model or 'the default model'}: a full finetune needs a float model; this one is "
                            "quantized (use --method qlora, or dequantize it first)")


def check_output(output: str, *, resume: bool, force: bool) -> None:
    from pathlib import Path

    from ..errors import MlxsmallError
    from ..train.checkpoint import checkpoint_dirs

    output_dir = Path(output).expanduser()
    if output_dir.exists() and not output_dir.is_dir():
        raise MlxsmallError(f"{output_dir}: is a file; -o needs a directory")
    if not resume and not force and checkpoint_dirs(output_dir / "checkpoints"):
        raise MlxsmallError(f"{output_dir}: holds checkpoints of an earlier run; pass --resume "
                            "to continue it or --force to start over")


def run(args):
    check_model(args.model)  # before the seconds of loading the model, not after
    check_method(args.method, args.model)
    records = check_data(args.data, seed=args.seed)
    if records and not args.pack and len(records[0]) < args.batch_size:
        from ..errors import MlxsmallError

        raise MlxsmallError(f"{args.data}: {len(records[0])} training examples, fewer than --batch-size "
                            f"{args.batch_size}; lower --batch-size or add data")
    check_output(args.output, resume=args.resume, force=args.force)
    from ..train.finetune import FinetuneSettings, finetune
    from ._common import model_path, printed_warnings

    settings = FinetuneSettings(
        method=args.method, rank=args.rank, scale=args.scale, dropout=args.dropout,
        keys=args.keys.split(",") if args.keys else None,
        per_layer_adapters=args.per_layer_adapters, qlora_bits=args.qlora_bits,
        max_length=args.max_length, pack=args.pack, mask_prompt=not args.no_mask_prompt,
        dtype=args.dtype, train=train_config(args),
    )
    with training_progress(enabled=not args.quiet, label=args.method) as console, \
            printed_warnings(lambda line: console.print(line, markup=False, highlight=False)):
        result = finetune(str(model_path(args)), args.data, args.output, settings,
                          resume=args.resume, force=args.force, records=records)
    import mlx.core as mx

    if mx.distributed.init().rank() != 0:
        return 0
    console.print(f"validation loss: {format_loss(result.initial_val_loss)} -> "
                  f"{format_loss(result.final_val_loss)} after {result.steps} steps "
                  f"({result.trained_tokens} tokens)")
    if result.adapter_dir:
        console.print(f"adapters: {result.adapter_dir}  (merge: mlxsmall fuse MODEL "
                      f"--adapters {result.adapter_dir} -o DIR)")
    if result.model_dir:
        console.print(f"model: {result.model_dir}")
    return 0

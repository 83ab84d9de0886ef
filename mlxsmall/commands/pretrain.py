"""mlxsmall pretrain: train a MobileLLM / MobiLlama model from scratch."""

import argparse

from ._common import check_model, number_in, positive_float, positive_int
from .finetune import add_training_arguments, check_output, format_loss, train_config, training_progress

EPILOG = """\
configs (--config): scaled-down deep-and-thin `tiny`/`small`, and the paper
shapes: mobilellm 125m 350m 600m 1b 1.5b; mobillama 0.5b 0.8b.

corpus: text files (.txt/.md: one document each), JSONL files with a "text"
field, directories of those, or a Hugging Face dataset id (needs `datasets`).
Documents are tokenized, joined with EOS and packed into --max-length rows.

tokenizer (--tokenizer): a directory with tokenizer.json or a LLaMA
SentencePiece tokenizer.model (default: the offline default model's), or
tiktoken:NAME (e.g. tiktoken:gpt2; needs its BPE file cached).

distillation: --teacher MODEL adds a logit KL term to the loss
((1-alpha)*CE + alpha*T^2*KL); the teacher must share the tokenizer.

examples:
  mlxsmall pretrain --arch mobillama --config tiny corpus/ -o runs/tiny --steps 500
  mlxsmall pretrain --arch mobilellm --config tiny --layer-sharing corpus.jsonl -o runs/ls
  mlxsmall pretrain --arch mobilellm --config tiny corpus/ --teacher ./smollm2 -o runs/kd
  mlx.launch -n 2 --backend ring -- mlxsmall pretrain ... (data parallel)
"""


def register(subparsers):
    parser = subparsers.add_parser(
        "pretrain", help="pretrain a small model from scratch",
        description="Pretrain a MobileLLM or MobiLlama model from scratch on a text corpus.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("corpus", nargs="+", help="text/JSONL files, directories or hub dataset ids")
    parser.add_argument("--arch", choices=["mobillama", "mobilellm"], default="mobillama")
    parser.add_argument("--config", default="tiny", help="model size (default tiny; see below)")
    parser.add_argument("--layer-sharing", action="store_true",
                        help="MobileLLM block-wise layer sharing (each block applied twice)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer directory or tiktoken:NAME (default: the default model's)")
    parser.add_argument("-o", "--output", required=True, help="run directory (model in OUTPUT/model)")
    parser.add_argument("--max-length", type=positive_int, default=256, help="tokens per packed row (default 256)")
    parser.add_argument("--teacher", default=None, help="teacher model for distillation")
    parser.add_argument("--distill-alpha", type=number_in(0, 1, name="alpha"), default=0.5,
                        help="weight of the KL term")
    parser.add_argument("--distill-temperature", type=positive_float, default=2.0)
    add_training_arguments(parser, steps=1000, learning_rate=1e-3)
    parser.set_defaults(func=run)


def check_arguments(args) -> None:
    """Everything a user can get wrong, before MLX, mlx-lm or `datasets` is imported."""
    import importlib.util
    from pathlib import Path

    from ..errors import MlxsmallError
    from ..hub import looks_like_path, looks_like_repo_id
    from ..train.shapes import CONFIGS

    if args.config not in CONFIGS[args.arch]:
        raise MlxsmallError(f"unknown --config {args.config!r} for {args.arch}; choose one of "
                            f"{', '.join(CONFIGS[args.arch])}")
    if args.layer_sharing and args.arch != "mobilellm":
        raise MlxsmallError("--layer-sharing is a MobileLLM option")
    for source in args.corpus:
        if Path(source).expanduser().exists():
            continue
        if looks_like_path(source) or not looks_like_repo_id(source):
            raise MlxsmallError(f"{source}: no such file or directory")
        if importlib.util.find_spec("datasets") is None:
            raise MlxsmallError(f"{source}: not a local file or directory; to use a hub dataset "
                                "install the 'datasets' package (pip install datasets)")
    if args.tokenizer and not args.tokenizer.startswith("tiktoken:") and \
            not Path(args.tokenizer).expanduser().is_dir():
        raise MlxsmallError(f"--tokenizer: {args.tokenizer}: not a tokenizer directory (or use tiktoken:NAME)")
    check_model(args.teacher)
    check_output(args.output, resume=args.resume, force=args.force)


def run(args):
    check_arguments(args)
    import mlx.core as mx

    from ..train.pretrain import PretrainSettings, pretrain

    tokenizer = args.tokenizer
    if tokenizer is None:
        from ..hub import default_model_path

        tokenizer = str(default_model_path())
    settings = PretrainSettings(
        arch=args.arch, size=args.config, layer_sharing=args.layer_sharing,
        max_length=args.max_length, teacher=args.teacher, distill_alpha=args.distill_alpha,
        distill_temperature=args.distill_temperature, train=train_config(args),
    )
    with training_progress(enabled=not args.quiet, label="pretrain") as console:
        result = pretrain(args.corpus, tokenizer, args.output, settings,
                           resume=args.resume, force=args.force)
    if mx.distributed.init().rank() == 0:
        console.print(f"validation loss: {format_loss(result.initial_val_loss)} -> "
                      f"{format_loss(result.final_val_loss)} after {result.steps} steps "
                      f"({result.trained_tokens} tokens)")
        console.print(f"model: {result.model_dir}")
    return 0

"""The `mlxsmall` command: parses arguments and dispatches to one module per subcommand."""

import argparse
import importlib
import importlib.util
import os
import sys
import traceback

from . import __version__
from .errors import MlxsmallError

# One module per subcommand under mlxsmall/commands/, in the order `--help` lists them.
COMMANDS = [
    "generate", "chat", "info", "quantize", "convert", "export", "models",
    "dashboard", "serve", "eval", "bench", "finetune", "fuse", "pretrain", "vlm",
]

DESCRIPTION = """\
Run, quantize, convert, evaluate and finetune small on-device language models
(MobileLLM, MobiLlama, llama-family models like SmolLM2) with MLX.

examples:
  mlxsmall generate -p "What is the capital of France?"   # offline default model
  mlxsmall chat mobillama-q4                          # download, convert, quantize, chat
  mlxsmall info mobilellm-125m
  mlxsmall quantize ./my-model -o ./my-model-q4 --bits 4
  mlxsmall models                                     # every alias

Run `mlxsmall COMMAND --help` for the options of each command.
"""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="mlxsmall",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mlxsmall {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an unexpected error (also MLXSMALL_DEBUG=1)")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for name in COMMANDS:
        module_name = f"mlxsmall.commands.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    if argv is None and args.command in TORCH_FREE_COMMANDS:
        keep_torch_out()
    debug = args.debug or os.environ.get("MLXSMALL_DEBUG", "") not in ("", "0")
    from . import events

    unsubscribe = events.subscribe(print_progress)
    try:
        return args.func(args) or 0
    except MlxsmallError as error:
        if debug:
            traceback.print_exc()
        print(f"mlxsmall: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmlxsmall: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the last resort: one line, the traceback behind --debug
        if debug:
            traceback.print_exc()
        hint = "" if debug else "; --debug shows the traceback"
        print(f"mlxsmall: error: {describe_unexpected(error)}{hint}", file=sys.stderr)
        return 2
    finally:
        unsubscribe()


def print_progress(event) -> None:
    """The library reports downloads and conversions as "progress" events; the program shows them."""
    if event.kind == "progress":
        print(f"mlxsmall: {event.get('message')}", file=sys.stderr, flush=True)


def describe_unexpected(error: BaseException) -> str:
    """``<what> (<ExceptionType>)``, naming the file when the error or its traceback knows it."""
    what = " ".join(str(error).split()) or "unexpected error"
    filename = getattr(error, "filename", None)
    if isinstance(error, OSError) and filename and error.strerror:
        what = f"{filename}: {error.strerror}"
    elif filename and str(filename) not in what:
        what = f"{filename}: {what}"
    if len(what) > 300:
        what = what[:297] + "..."
    return f"{what} ({type(error).__name__})"


# Commands whose libraries all cope with torch looking absent. Not eval/bench/finetune/...:
# scipy (through rouge and the metrics) probes sys.modules["torch"] and fails on None.
TORCH_FREE_COMMANDS = {"generate", "chat", "info", "models", "convert", "quantize", "export", "fuse"}


def keep_torch_out():
    """Make torch look absent to this process: transformers (which mlx-lm imports for its
    tokenizer wrapper) imports torch whenever it is installed, which costs seconds at every
    start, and mlxsmall never uses it. Only for the `mlxsmall` program, not for library users."""
    if "torch" not in sys.modules:
        sys.modules["torch"] = None
        # As mlx-lm sets it: no "PyTorch was not found" advice from transformers.
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


if __name__ == "__main__":
    sys.exit(main())

"""The `mlxsmall` command: parses arguments and dispatches to one module per subcommand."""

import argparse
import importlib
import importlib.util
import sys

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
  mlxsmall generate -p "The capital of France is"     # offline default model
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
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
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
    try:
        return args.func(args) or 0
    except MlxsmallError as error:
        print(f"mlxsmall: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmlxsmall: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

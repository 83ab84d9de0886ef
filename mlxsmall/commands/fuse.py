"""mlxsmall fuse: merge finetuned adapters into the base model."""

import argparse

from ..quantize import GROUP_SIZES, SUPPORTED_BITS

EPILOG = """\
The result is a normal model directory (config.json + safetensors + tokenizer)
that every mlxsmall command loads. A quantized base stays quantized (the fused
layers are re-quantized); --dequantize writes full precision; --bits N
re-quantizes the whole fused model.

With per-layer adapters on MobiLlama's shared FFN the blocks no longer share
one FFN, so the fused model stores one FFN per layer (shared_ffn: false).

examples:
  mlxsmall fuse --adapters adapters -o smollm2-tuned
  mlxsmall fuse ./mobillama-05b --adapters qlora -o mobillama-tuned-q4
  mlxsmall fuse ./mobillama-05b --adapters lora -o mobillama-tuned-q4 --bits 4
"""


def register(subparsers):
    parser = subparsers.add_parser(
        "fuse", help="merge adapters into the base model",
        description="Merge LoRA/DoRA/QLoRA adapters into their base model.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", default=None,
                        help="base model (default: the one recorded in adapter_config.json)")
    parser.add_argument("--adapters", required=True, help="adapter directory from mlxsmall finetune")
    parser.add_argument("-o", "--output", required=True, help="output model directory")
    parser.add_argument("--bits", type=int, default=None, choices=SUPPORTED_BITS,
                        help="re-quantize the fused model to this many bits")
    parser.add_argument("--group-size", type=int, default=64, choices=GROUP_SIZES)
    parser.add_argument("--dequantize", action="store_true", help="write full precision")
    parser.add_argument("--force", action="store_true", help="replace the output directory")
    parser.set_defaults(func=run)


def check_arguments(args) -> None:
    from pathlib import Path

    from ..errors import MlxsmallError
    from ._common import check_model, check_new_output

    config = Path(args.adapters).expanduser() / "adapter_config.json"
    if not config.is_file():
        raise MlxsmallError(f"{config}: not found (is {args.adapters} an adapter directory "
                            "written by mlxsmall finetune?)")
    check_model(args.model)
    check_new_output(args.output, args.force)


def run(args):
    check_arguments(args)
    from ..train.fuse import fuse

    path = fuse(args.adapters, args.output, base=args.model, bits=args.bits,
                group_size=args.group_size, dequantize=args.dequantize, force=args.force)
    print(f"wrote {path}")
    return 0

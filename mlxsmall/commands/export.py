"""mlxsmall export: an mlxsmall model -> a Hugging Face checkpoint directory (safetensors)."""

import argparse

from ._common import add_dtype_argument

EPILOG = """\
Quantized layers are dequantized; MobiLlama's shared FFN is written under every
layer, as the upstream checkpoints store it, so HF -> mlxsmall -> HF reproduces
the original tensors. The tokenizer files are copied.

examples:
  mlxsmall export mobillama-q4 -o ./mobillama-hf
  mlxsmall export ./my-finetuned-model -o ./hf-model --dtype bfloat16
"""


def register(subparsers):
    parser = subparsers.add_parser(
        "export", help="export a model to Hugging Face layout (safetensors)",
        description="Write an mlxsmall model as a Hugging Face checkpoint directory.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="model directory, alias or HF repo id")
    parser.add_argument("-o", "--output", required=True, help="output directory")
    add_dtype_argument(parser, help="cast the weights (default: as stored / the quantization scales' dtype)")
    parser.add_argument("--force", action="store_true", help="replace the output directory if it exists")
    parser.set_defaults(func=run)


def run(args):
    from ._common import check_model, check_new_output

    check_model(args.model)
    check_new_output(args.output, args.force)
    from ..convert.export import export_hf
    from ..hub import resolve_model_path

    source = resolve_model_path(args.model)
    export_hf(source, args.output, dtype=args.dtype, overwrite=args.force, log=print)
    print(f"wrote {args.output}")
    return 0

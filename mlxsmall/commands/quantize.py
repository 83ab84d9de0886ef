"""mlxsmall quantize: write a quantized copy of a model."""

import argparse

from ..quantize import GROUP_SIZES, RECIPES, SUPPORTED_BITS, VISION_TOWER_MODES

EPILOG = f"""\
Shared weights stay shared: MobiLlama's FFN and layer-shared blocks are
quantized and stored once.

mixed recipes (llama.cpp Q*_K_M style): {', '.join(RECIPES)}
  low bits for most layers, high bits for the output head / embedding, the
  shared FFN and the value/down projections of the first and last blocks.

A vision-language model (`mlxsmall vlm`): the language model and projector are
quantized; --vision says what happens to the vision tower.

examples:
  mlxsmall quantize ./mobillama-05b -o ./mobillama-05b-q4 --bits 4
  mlxsmall quantize ./mobilellm-125m -o ./mobilellm-125m-mixed --mixed mixed_3_6
  mlxsmall quantize ./my-vlm -o ./my-vlm-q4 --bits 4 --vision fp16
"""


def register(subparsers):
    parser = subparsers.add_parser(
        "quantize", help="quantize a model (2-8 bits, mixed recipes)",
        description="Quantize a model into the mlx-lm compatible format.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="model directory, alias or HF repo id")
    parser.add_argument("-o", "--output", required=True, help="output directory")
    parser.add_argument("--bits", type=int, default=4, choices=SUPPORTED_BITS, help="bits per weight (default 4)")
    parser.add_argument("--group-size", type=int, default=64, choices=GROUP_SIZES,
                        help="weights sharing one scale and bias (default 64)")
    parser.add_argument("--mixed", choices=sorted(RECIPES), default=None, metavar="RECIPE",
                        help="mixed-precision recipe (overrides --bits per module)")
    parser.add_argument("--vision", choices=VISION_TOWER_MODES, default="fp16",
                        help="vision-language models: the vision tower kept unquantized in fp16 (default), "
                        "quantized like the rest, or kept as stored")
    parser.add_argument("--force", action="store_true", help="replace the output directory if it exists")
    parser.set_defaults(func=run)


def run(args):
    from ._common import check_model, check_new_output

    check_model(args.source)  # before the seconds of loading, not after
    check_new_output(args.output, args.force)
    from ..hub import resolve_model_path
    from ..loading import load_model, save_model
    from ..quantize import bits_per_weight, quantize_checkpoint
    from ._common import printed_warnings

    source = resolve_model_path(args.source)
    model, config = load_model(source)
    with printed_warnings():
        config = quantize_checkpoint(model, config, bits=args.bits, group_size=args.group_size, recipe=args.mixed,
                                     source=str(args.source), vision=args.vision)
    save_model(args.output, model, config, tokenizer_src_dir=source, overwrite=args.force)
    print(f"wrote {args.output}: {bits_per_weight(model):.2f} bits per weight")
    return 0

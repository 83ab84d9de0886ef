"""mlxsmall convert: a Hugging Face checkpoint or GGUF file -> an mlxsmall model directory."""

import argparse

from ._common import add_dtype_argument

EPILOG = """\
SOURCE can be
  a local HF checkpoint directory  config.json + *.safetensors or pytorch_model.bin (+ index)
                                   and tokenizer.json or a SentencePiece tokenizer.model
  a Hugging Face repo id or alias  downloaded first (only config, tokenizer and weights)
  a .gguf file                     llama-family GGUF (Q4_0/Q4_1/Q8_0 kept quantized, group 32)

Supported architectures: MobileLLM (incl. layer-share), MobiLlama (shared FFN and
per-layer 1B), plain llama (SmolLM2, TinyLlama, ...). .bin files are read without
torch by an unpickler that accepts only tensors and storages: a checkpoint that tries
to run code is refused and nothing runs.

examples:
  mlxsmall convert ./MobiLlama-05B-Chat -o ./mobillama-chat --chat-template fastchat-one-shot
  mlxsmall convert facebook/MobileLLM-125M -o ./mobilellm-125m-q4 -q --bits 4
  mlxsmall convert SmolLM2-135M-Instruct.Q4_1.gguf -o ./smollm2            # keeps Q4_1 as 4-bit
  mlxsmall convert SmolLM2-135M-Instruct.Q4_1.gguf -o ./smollm2-f32 --dtype float32
"""


def register(subparsers):
    from ..convert.chat_templates import TEMPLATES
    from ..quantize import SUPPORTED_BITS

    parser = subparsers.add_parser(
        "convert", help="convert a HF checkpoint, repo or GGUF file into an mlxsmall model",
        description="Convert a checkpoint into the mlxsmall (mlx-lm compatible) format.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="checkpoint directory, .gguf file, HF repo id or alias")
    parser.add_argument("-o", "--output", required=True, help="output model directory")
    add_dtype_argument(parser, help="cast the weights (GGUF: dequantize); default keeps the checkpoint's")
    parser.add_argument("-q", "--quantize", action="store_true", help="quantize (see --bits, --group-size)")
    parser.add_argument("--bits", type=int, default=4, choices=SUPPORTED_BITS,
                        help="bits per weight with -q (default 4)")
    parser.add_argument("--group-size", type=int, default=None, choices=[32, 64, 128],
                        help="weights per scale with -q (default 64; 32 for GGUF sources)")
    parser.add_argument("--chat-template", choices=["auto", "none"] + sorted(TEMPLATES), default="auto",
                        help="add a chat template the checkpoint lacks (auto: fastchat-one-shot for "
                             "MobiLlama chat checkpoints without one; none: never)")
    parser.add_argument("--shared-ffn", choices=["auto", "yes", "no"], default="auto",
                        help="MobiLlama: bind one shared FFN (auto: when every layer stores the same one)")
    parser.add_argument("--tokenizer", default=None, metavar="DIR",
                        help="GGUF: take the tokenizer files from this HF directory instead of the metadata")
    parser.add_argument("--force", action="store_true", help="replace the output directory if it exists")
    parser.set_defaults(func=run)


def _log(message):
    print(message, flush=True)


def check_arguments(args) -> None:
    from pathlib import Path

    from ..errors import MlxsmallError
    from ._common import check_model, check_new_output

    source = Path(args.source).expanduser()
    if source.is_file() and source.suffix != ".gguf":
        raise MlxsmallError(f"{source}: a file; pass its checkpoint directory (with config.json) or a .gguf file")
    if not source.is_file():
        check_model(args.source)
    if args.tokenizer and not Path(args.tokenizer).expanduser().is_dir():
        raise MlxsmallError(f"--tokenizer: {args.tokenizer}: no such directory")
    check_new_output(args.output, args.force)


def run(args):
    check_arguments(args)
    from ..hub import convert_model

    convert_model(args.source, args.output, dtype=args.dtype, bits=args.bits if args.quantize else None,
                  group_size=args.group_size, chat_template=None if args.chat_template == "none" else args.chat_template,
                  tokenizer_dir=args.tokenizer, shared_ffn={"auto": None, "yes": True, "no": False}[args.shared_ffn],
                  overwrite=args.force, log=_log)
    print(f"wrote {args.output}")
    return 0

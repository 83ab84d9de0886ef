"""mlxsmall generate: stream one completion to stdout."""

import sys

from ._common import (
    add_image_argument, add_model_argument, add_sampling_arguments, load_for_run, sampling_kwargs,
    vision_language_route,
)

EPILOG = """\
examples:
  mlxsmall generate -p "The capital of France is"
  mlxsmall generate mobillama-q4 -p "Write a haiku about the sea" --temp 0.7 --seed 1
  mlxsmall generate ./my-model -p "def fib(n):" --stop "\\n\\n" -m 64
  mlxsmall generate ./my-vlm --image photo.jpg -p "What colour is the car?"
  echo "Once upon a time" | mlxsmall generate -p -
"""


def register(subparsers):
    parser = subparsers.add_parser(
        "generate", help="generate text from a prompt",
        description="Stream a completion to stdout, then print speed and memory.",
        epilog=EPILOG, formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument("-p", "--prompt", required=True, help="prompt text, or - to read stdin")
    parser.add_argument("--chat", action="store_true",
                        help="wrap the prompt in the model's chat template as one user turn")
    add_image_argument(parser)
    add_sampling_arguments(parser)
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="also print the model path and settings")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print only the generated text")
    parser.set_defaults(func=run)


def run(args):
    from ..generation import stream_generate
    from ..loading import stop_strings

    if vision_language_route(args):
        from .vlm import run_generate

        args.no_chat = False
        return run_generate(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    model, tokenizer, path = load_for_run(args)
    if args.verbose:
        print(f"model: {path}  dtype: {args.dtype}", file=sys.stderr)
    if args.chat and getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    last = None
    try:
        for step in stream_generate(
            model, tokenizer, prompt, max_tokens=args.max_tokens,
            stop=args.stop + (stop_strings(path) if args.chat else []),
            **sampling_kwargs(args),
        ):
            sys.stdout.write(step.text)
            sys.stdout.flush()
            last = step
    except KeyboardInterrupt:
        print("\n[stopped]", file=sys.stderr)
    print()
    if last is not None and not args.quiet:
        print(format_stats(last), file=sys.stderr)
    return 0


def format_stats(step) -> str:
    return (
        f"prompt: {step.prompt_tokens} tokens, {step.prompt_tps:.1f} tok/s | "
        f"generation: {step.generation_tokens} tokens, {step.generation_tps:.1f} tok/s | "
        f"TTFT: {step.time_to_first_token * 1000:.0f} ms | peak memory: {step.peak_memory:.3f} GB"
    )

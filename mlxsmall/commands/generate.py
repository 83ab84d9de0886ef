"""mlxsmall generate: stream one completion to stdout."""

import sys
from contextlib import contextmanager

from ._common import (
    add_image_argument, add_model_argument, add_sampling_arguments, load_for_run, sampling_kwargs,
    vision_language_route,
)

EPILOG = """\
examples:
  mlxsmall generate -p "What is the capital of France?"      # chat template applied
  mlxsmall generate -p "The capital of France is" --raw      # plain completion
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
    template = parser.add_mutually_exclusive_group()
    template.add_argument("--chat", action="store_true",
                          help="wrap the prompt in the model's chat template as one user turn "
                          "(the default when the model has one)")
    template.add_argument("--raw", "--ignore-chat-template", dest="raw", action="store_true",
                          help="plain completion: feed the prompt as is, without the chat template")
    add_image_argument(parser)
    add_sampling_arguments(parser)
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="also print the model path and settings")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print only the generated text")
    parser.set_defaults(func=run)


def run(args):
    from ..errors import MlxsmallError

    vision = vision_language_route(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if vision:
        return run_with_images(args, prompt)
    if not prompt.strip():
        raise MlxsmallError("the prompt is empty: pass some text with -p (or -p - to read stdin)")

    from ..generation import encode_prompt, stream_generate
    from ..loading import read_config, stop_strings

    model, tokenizer, path = load_for_run(args)
    chat = not args.raw and bool(getattr(tokenizer, "chat_template", None))
    if args.verbose:
        print(f"model: {path}  weights: {weights_description(model)}  "
              f"prompt: {'chat template' if chat else 'raw'}", file=sys.stderr)
    if chat:
        prompt = apply_chat_template(tokenizer, [{"role": "user", "content": prompt}], path)
    tokens = encode_prompt(tokenizer, prompt)
    max_tokens = fit_context(len(tokens), args.max_tokens, read_config(path), path, args.quiet)
    with prefill_progress(len(tokens), quiet=args.quiet):
        last = print_stream(stream_generate(model, tokenizer, tokens, max_tokens=max_tokens,
                                            stop=args.stop + (stop_strings(path) if chat else []),
                                            **sampling_kwargs(args)))
    if last is not None and not args.quiet:
        print(format_stats(last), file=sys.stderr)
    return 0


def run_with_images(args, prompt: str):
    """A vision-language model: the images encoded (timed apart), then the one generation loop."""
    from ..images import image_processor_for, load_image
    from ..vlm import stream_generate_vlm

    images = [load_image(source) for source in args.image]  # a bad image fails before the model loads
    model, tokenizer, _ = load_for_run(args)
    last = print_stream(stream_generate_vlm(
        model, tokenizer, image_processor_for(model.vision_config), prompt, images, chat=False if args.raw else None,
        max_tokens=args.max_tokens, stop=args.stop, **sampling_kwargs(args)))
    if last is not None and not args.quiet:
        encode = f"{last.image_encode_time * 1000:.0f} ms" if last.image_tokens else "no image"
        print(f"image encode: {encode} ({last.image_tokens} image tokens) | TTFT (prefill, after encode): "
              f"{last.time_to_first_token * 1000:.0f} ms, {last.prompt_tokens} prompt tokens | generation: "
              f"{last.generation_tokens} tokens, {last.generation_tps:.1f} tok/s | peak memory: "
              f"{last.peak_memory:.3f} GB", file=sys.stderr)
    return 0


def print_stream(steps):
    """Write each step's text as it comes (Ctrl-C stops); returns the last step."""
    last = None
    try:
        for step in steps:
            sys.stdout.write(step.text)
            sys.stdout.flush()
            last = step
    except KeyboardInterrupt:
        print("\n[stopped]", file=sys.stderr)
    print()
    return last


def apply_chat_template(tokenizer, messages, path) -> str:
    """The prompt text; a template that fails (or that the Jinja sandbox blocks) is one line."""
    from jinja2 import TemplateError

    from ..errors import MlxsmallError

    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except TemplateError as error:
        source = path / "chat_template.jinja"
        source = source if source.is_file() else path / "tokenizer_config.json"
        raise MlxsmallError(f"{source}: the chat template failed: {error} ({type(error).__name__})") from None


def fit_context(prompt_tokens: int, max_tokens: int, config: dict, path, quiet: bool) -> int:
    """Refuse a prompt that fills the model's context; shorten the answer to what still fits."""
    from ..errors import MlxsmallError

    context = config.get("max_position_embeddings")
    if not isinstance(context, int) or context <= 0:
        return max_tokens
    if prompt_tokens >= context:
        raise MlxsmallError(
            f"the prompt is {prompt_tokens} tokens but the model's context is {context} "
            f"({path / 'config.json'}: max_position_embeddings); shorten it (nothing was truncated)"
        )
    if prompt_tokens + max_tokens > context:
        if not quiet:
            print(f"mlxsmall: note: generating at most {context - prompt_tokens} tokens "
                  f"(prompt {prompt_tokens} + answer fill the {context}-token context)", file=sys.stderr)
        return context - prompt_tokens
    return max_tokens


PROGRESS_FROM_TOKENS = 1024  # shorter prompts pre-fill in about a second


@contextmanager
def prefill_progress(prompt_tokens: int, quiet: bool):
    """Show the generation loop's pre-fill events on stderr for long prompts."""
    from .. import events

    if quiet or prompt_tokens < PROGRESS_FROM_TOKENS:
        yield
        return
    terminal = sys.stderr.isatty()

    def show(event):
        if event.get("phase") != "prefill":
            return
        done, total = event["processed"], event["total"]
        line = f"mlxsmall: pre-filling the prompt: {done}/{total} tokens"
        if terminal:
            print("\r" + line, end="\n" if done >= total else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    with events.subscribed(show):
        yield


def weights_description(model) -> str:
    """What the weights run as, e.g. ``float32`` or ``4-bit (group 32) + float16``."""
    from collections import Counter

    import mlx.core as mx
    from mlx.utils import tree_flatten

    floats = Counter(
        v.dtype for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)
    )
    dtype = str(floats.most_common(1)[0][0]).removeprefix("mlx.core.") if floats else "none"
    quantized = {(m.bits, m.group_size) for _, m in model.named_modules() if hasattr(m, "bits")
                 and hasattr(m, "group_size")}
    if not quantized:
        return dtype
    bits = ", ".join(f"{b}-bit (group {g})" for b, g in sorted(quantized))
    return f"{bits} + {dtype}"


def format_stats(step) -> str:
    return (
        f"prompt: {step.prompt_tokens} tokens, {step.prompt_tps:.1f} tok/s | "
        f"generation: {step.generation_tokens} tokens, {step.generation_tps:.1f} tok/s | "
        f"TTFT: {step.time_to_first_token * 1000:.0f} ms | peak memory: {step.peak_memory:.3f} GB"
    )

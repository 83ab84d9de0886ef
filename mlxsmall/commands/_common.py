"""Options shared by the commands that load and run a model."""

import argparse
import contextlib
import sys

from ..dtypes import BY_NAME, RUN_CHOICES, load_options


def add_model_argument(parser, required=False):
    help_text = (
        "model: a local model directory, an alias from `mlxsmall models` "
        "(e.g. mobillama-q4) or a Hugging Face repo id"
    )
    if required:
        parser.add_argument("model", help=help_text)
    else:
        parser.add_argument(
            "model", nargs="?", default=None,
            help=help_text + " (default: the offline SmolLM2-135M-Instruct model)",
        )
    add_dtype_argument(
        parser, running=True,
        help="weights at run time: auto = fp32 on CPU (fastest there), stored format elsewhere; "
        "stored = exactly as saved (keeps quantized kernels)",
    )


def add_dtype_argument(parser, help, running=False):
    """The one --dtype: a float name from `mlxsmall.dtypes`; commands that run a model also
    take auto (the default) and stored, the others default to keeping the stored dtype."""
    parser.add_argument("--dtype", choices=RUN_CHOICES if running else list(BY_NAME),
                        default="auto" if running else None, help=help)


def add_image_argument(parser):
    parser.add_argument("-i", "--image", action="append", default=[], metavar="PATH_OR_URL",
                        help="image file or URL for a vision-language model (repeatable; build one: `mlxsmall vlm`)")


def vision_language_route(args) -> bool:
    """True when the model is a vision-language model directory (its images go with the prompt);
    --image with a text-only model is an error."""
    from ..errors import MlxsmallError

    if args.model:
        from ..hub import check_name

        check_name(args.model)  # a missing path is "no such file", never "text-only"
    from ..loading import is_vision_language

    is_vlm = bool(args.model) and is_vision_language(args.model)
    if args.image and not is_vlm:
        raise MlxsmallError(
            f"--image needs a vision-language model; {args.model or 'the default model'} is text-only "
            "(build one with `mlxsmall vlm build --vision TOWER --lm MODEL -o DIR`)"
        )
    return is_vlm


def add_sampling_arguments(parser):
    group = parser.add_argument_group("sampling")
    group.add_argument("-m", "--max-tokens", type=positive_int, default=256, help="tokens to generate (default 256)")
    group.add_argument("-t", "--temperature", "--temp", type=float, default=0.0, help="0 = greedy (default)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1.0 = off)")
    group.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    group.add_argument("--repetition-penalty", type=float, default=None)
    group.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="stop when TEXT is generated (repeatable)")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (so that `-m 0` is an argument error, not a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def sampling_kwargs(args) -> dict:
    return dict(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        repetition_penalty=args.repetition_penalty, seed=args.seed,
    )


def model_path(args):
    """The model directory for ``args.model`` (the offline default when not given)."""
    from ..hub import resolve_model_path

    if args.model:
        return resolve_model_path(args.model)
    from ..hub import default_model_path

    return default_model_path()


def load_for_run(args):
    """``(model, tokenizer, path)`` following --dtype."""
    from ..hub import load

    path = model_path(args)
    model, tokenizer = load(path, **load_options(args.dtype))
    return model, tokenizer, path


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


@contextlib.contextmanager
def printed_warnings(write=None):
    """Show the library's ``warning`` events, each distinct one once, as ``warning: ...``
    (``write(line)``; default: a line on stderr)."""
    from .. import events

    shown = set()

    def show(event):
        if event.kind == "warning" and event["message"] not in shown:
            shown.add(event["message"])
            line = f"warning: {event['message']}"
            if write:
                write(line)
            else:
                print(line, file=sys.stderr)

    with events.subscribed(show):
        yield

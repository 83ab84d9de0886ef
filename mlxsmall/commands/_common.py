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

    check_model(args.model)  # a missing path is "no such file", never "text-only"
    check_images(args.image)
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
    group.add_argument("-t", "--temperature", "--temp", type=temperature, default=0.0, help="0 = greedy (default)")
    group.add_argument("--top-p", type=top_p, default=1.0, help="nucleus sampling (default 1.0 = off)")
    group.add_argument("--top-k", type=non_negative_int, default=0, help="keep the k most likely tokens (0 = off)")
    group.add_argument("--repetition-penalty", type=positive_float, default=None)
    group.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="stop when TEXT is generated (repeatable)")


def int_at_least(minimum: int, name: str):
    """argparse type: an integer >= ``minimum`` (so that `-m 0` is an argument error, not a traceback)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    parse.__name__ = name
    return parse


positive_int = int_at_least(1, "positive_int")
non_negative_int = int_at_least(0, "non_negative_int")


def number_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False, name: str = ""):
    """argparse type: a float in the interval from ``low`` to ``high`` (open ends as asked)."""
    if high == float("inf"):
        interval = f"{'greater than' if low_open else 'at least'} {low:g}"
    else:
        interval = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
        inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not inside:
            raise argparse.ArgumentTypeError(f"must be {interval}, not {text}")
        return value

    parse.__name__ = name or "number"
    return parse


temperature = number_in(0, float("inf"), high_open=True, name="temperature")
top_p = number_in(0, 1, low_open=True, name="top_p")
positive_float = number_in(0, float("inf"), low_open=True, high_open=True, name="positive_float")


def port_number(text: str) -> int:
    """argparse type for --port (serve and dashboard): 0..65535, 0 = any free port."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, not {value}")
    return value


# --------------------------------------------------------------------------- checks before loading
# Every command runs these first: a user's mistake is one line in a fraction of a second, before a
# model loads or mlx-lm / transformers are imported.


def check_model(name) -> None:
    """A model argument that cannot work: a missing path, a directory without config.json, a word
    that is no alias ("did you mean"). Repo ids pass (they are downloaded later); None is the default."""
    if not name:
        return
    from pathlib import Path

    from ..errors import MlxsmallError
    from ..hub import check_name

    check_name(str(name))
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise MlxsmallError(f"{path}: not a model directory (no config.json)")


def check_port_free(host: str, port: int) -> None:
    """The server's address can be bound, tried before the model loads: a port in use (or a host
    that is not this machine's) is one line now instead of after seconds of loading."""
    import socket

    from ..errors import MlxsmallError

    if port == 0:
        return
    try:
        family, kind, _, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise MlxsmallError(f"--host {host}: {error.strerror}") from None
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server binds
        try:
            probe.bind(address)
        except OSError as error:
            raise MlxsmallError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def check_new_output(output, force: bool) -> None:
    """An output directory that exists is replaced only with --force."""
    from pathlib import Path

    from ..errors import MlxsmallError

    path = Path(output).expanduser()
    if path.exists() and not force:
        raise MlxsmallError(f"{path}: already exists (pass --force to replace it)")


def check_output_file(path, option: str) -> None:
    """A file the command writes at the end (results, plots) can be written there: found out now,
    not after minutes of evaluation."""
    from pathlib import Path

    from ..errors import MlxsmallError

    if not path:
        return
    file = Path(path).expanduser()
    if file.is_dir():
        raise MlxsmallError(f"{option}: {path}: is a directory; give a file name")
    for parent in file.parents:
        if parent.exists():
            if not parent.is_dir():
                raise MlxsmallError(f"{option}: {path}: {parent} is a file, not a directory")
            break


def check_input_file(path, option: str) -> None:
    """An input file the command reads (--text-file, an image, ...) exists and is a file."""
    from pathlib import Path

    from ..errors import MlxsmallError

    file = Path(path).expanduser()
    if file.is_dir():
        raise MlxsmallError(f"{option}: {path}: is a directory, not a file")
    if not file.is_file():
        raise MlxsmallError(f"{option}: {path}: no such file")


def check_images(images) -> None:
    """Local --image files exist (URLs are fetched later)."""
    from pathlib import Path

    from ..errors import MlxsmallError

    for source in images:
        if not str(source).startswith(("http://", "https://")) and not Path(source).expanduser().is_file():
            raise MlxsmallError(f"--image: {source}: no such image file")


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

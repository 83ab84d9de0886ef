"""mlxsmall dashboard: the Textual dashboard, in this terminal or in a browser (--serve)."""

import argparse
import shlex
import sys

from ._common import (
    add_model_argument, add_sampling_arguments, check_model, check_port_free, model_path, port_number, positive_int,
    sampling_kwargs,
)

EPILOG = """\
what it shows:
  chat pane streaming tokens; generation tok/s (sparklines per step and per request),
  prompt tok/s, time to first token, MLX active/peak/cache memory, process RSS, power (W)
  and J/token with the source named (IOReport/powermetrics on macOS, RAPL/NVML on Linux,
  otherwise "n/a" and why), model facts; a Bench tab (Ctrl+O) that sweeps prompt 128/512 x
  generate 128 over the model's quantization levels, exportable as JSON/CSV/Markdown.

keys: Enter sends, Esc stops generation, Ctrl+N new chat, Ctrl+O chat/bench,
      Ctrl+R run bench, Ctrl+S export, Ctrl+T dark/light theme, Ctrl+C quits.

examples:
  mlxsmall dashboard                          # offline default model
  mlxsmall dashboard mobillama-q4 -m 128
  mlxsmall dashboard --serve --port 8000      # open http://<this-mac>:8000 on an iPad
  mlxsmall dashboard --attach http://127.0.0.1:8080   # watch a running `mlxsmall serve`
"""


def register(subparsers):
    parser = subparsers.add_parser(
        "dashboard", help="live tok/s, TTFT, memory and power while you chat (Textual)",
        description="Chat with a model and watch its speed, memory and power live.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument("--raw", action="store_true",
                        help="plain completion of each prompt instead of a chat with the model's template")
    add_sampling_arguments(parser)
    bench = parser.add_argument_group("bench tab")
    bench.add_argument("--bench-prompts", default="128,512", metavar="N,N",
                       help="prompt lengths of the sweep (default 128,512)")
    bench.add_argument("--bench-generate", type=positive_int, default=128, metavar="N",
                       help="tokens generated per run (default 128)")
    bench.add_argument("--bench-repeats", type=positive_int, default=3, metavar="N",
                       help="timed runs per cell after one warm-up (default 3)")
    bench.add_argument("--export-dir", default=".", metavar="DIR",
                       help="where Ctrl+S writes bench-*.json/.csv/.md (default: current directory)")
    parser.add_argument("--light", action="store_true", help="start in the light theme")
    attach = parser.add_argument_group("server")
    attach.add_argument("--attach", default=None, metavar="URL",
                        help="watch a running `mlxsmall serve` at URL (its tok/s, TTFT, queue and memory) "
                             "and chat through it, instead of loading a model here")
    attach.add_argument("--api-key", default=None, metavar="KEY", help="the server's --api-key, if it has one")
    serve = parser.add_argument_group("browser")
    serve.add_argument("--serve", action="store_true",
                       help="serve the dashboard over HTTP with textual-serve instead of drawing it here")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on with --serve (default all)")
    serve.add_argument("--port", type=port_number, default=8000, help="port for --serve (default 8000)")
    serve.add_argument("--public-url", default=None, metavar="URL",
                       help="the address browsers use, e.g. http://my-mac.local:8000 "
                            "(default: this machine's LAN address and --port)")
    parser.set_defaults(func=run)


def bench_config(args):
    from ..errors import MlxsmallError
    from ..measure.sweep import BenchConfig

    try:
        lengths = tuple(int(n) for n in args.bench_prompts.split(",") if n.strip())
    except ValueError:
        raise MlxsmallError(f"--bench-prompts: expected numbers like 128,512, got {args.bench_prompts!r}") from None
    if not lengths or min(lengths) < 1 or args.bench_generate < 1 or args.bench_repeats < 1:
        raise MlxsmallError("--bench-prompts, --bench-generate and --bench-repeats must be positive")
    return BenchConfig(prompt_lengths=lengths, generation_tokens=args.bench_generate, repeats=args.bench_repeats)


def serve_command(argv):
    """The command textual-serve runs for each browser session: this one, without --serve."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--serve":
            continue
        if arg in ("--host", "--port", "--public-url"):
            skip = True
            continue
        if arg.startswith(("--host=", "--port=", "--public-url=")):
            continue
        kept.append(arg)
    return shlex.join([sys.executable, "-m", "mlxsmall", *kept])


def lan_address() -> str:
    """This machine's address on its LAN (the interface of the default route), without sending
    anything; 127.0.0.1 when there is no network."""
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # UDP connect: picks a route, sends no packet
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def public_url(args) -> str:
    """Where the browser must connect back: the page's websocket and static files use it."""
    if args.public_url:
        return args.public_url.rstrip("/")
    host = lan_address() if args.host in ("0.0.0.0", "") else args.host
    return f"http://{host}:{args.port}"


def check_arguments(args) -> None:
    from pathlib import Path

    from ..errors import MlxsmallError

    if args.attach and args.model:
        raise MlxsmallError("--attach watches the server's model: give a MODEL or --attach, not both")
    if args.attach and not args.attach.startswith(("http://", "https://")):
        raise MlxsmallError(f"--attach: {args.attach}: not an http:// or https:// URL")
    check_model(args.model)
    if args.serve:
        check_port_free(args.host, args.port)
    if not Path(args.export_dir).expanduser().is_dir():
        raise MlxsmallError(f"--export-dir: {args.export_dir}: no such directory")


def run(args):
    check_arguments(args)
    config = bench_config(args)
    # resolves/downloads before the UI starts; errors stay one line
    path = None if args.attach else model_path(args)
    if args.serve:
        from textual_serve.server import Server

        argv = sys.argv[1:] if sys.argv[1:2] == ["dashboard"] else ["dashboard", *sys.argv[1:]]
        command = serve_command(argv)
        url = public_url(args)
        print(f"open {url} in a browser (an iPad on this network works); Ctrl+C stops", file=sys.stderr)
        Server(command, host=args.host, port=args.port, title="mlxsmall dashboard", public_url=url).serve()
        return 0

    from ..tui.app import run_dashboard

    run_dashboard(
        path, dtype=args.dtype, max_tokens=args.max_tokens, chat=not args.raw,
        sampling=sampling_kwargs(args), stop=args.stop, bench_config=config, export_dir=args.export_dir,
        theme="textual-light" if args.light else "textual-dark", attach=args.attach, api_key=args.api_key,
    )
    return 0

"""mlxsmall serve: an OpenAI-compatible HTTP server for one model."""

import argparse
import sys

from ._common import (
    add_model_argument, check_model, check_port_free, load_for_run, non_negative_int, port_number, positive_int,
    temperature, top_p,
)

EPILOG = """\
endpoints (OpenAI's API; any OpenAI client works with base_url http://HOST:PORT/v1):
  GET  /v1/models             the served model
  POST /v1/chat/completions   chat with the model's template and stop strings (stream: true for SSE)
  POST /v1/completions        plain completion of a prompt
  GET  /v1/mlxsmall/events    the live metrics feed (`mlxsmall dashboard --attach URL` shows it)
  GET  /health

Requests are served one at a time in arrival order (one KV cache, never shared); the rest wait.

examples:
  mlxsmall serve                                   # offline default model on 127.0.0.1:8080
  mlxsmall serve mobillama-q4 --port 8000
  mlxsmall serve --host 0.0.0.0 --api-key SECRET   # reachable from an iPad on this network
"""


def register(subparsers):
    parser = subparsers.add_parser(
        "serve", help="OpenAI-compatible HTTP server (chat/completions, streaming)",
        description="Serve a model over OpenAI's HTTP API, on the same generation loop as the CLI.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for the LAN)")
    parser.add_argument("--port", type=port_number, default=8080, help="port (default 8080)")
    parser.add_argument("--api-key", default=None, metavar="KEY",
                        help="require 'Authorization: Bearer KEY' on every request")
    parser.add_argument("--model-id", default=None, metavar="NAME",
                        help="the name /v1/models lists and requests may use (default: the directory name)")
    defaults = parser.add_argument_group("defaults for requests that do not say")
    defaults.add_argument("-m", "--max-tokens", type=positive_int, default=256, help="tokens to generate (default 256)")
    defaults.add_argument("-t", "--temperature", "--temp", type=temperature, default=0.0, help="0 = greedy (default)")
    defaults.add_argument("--top-p", type=top_p, default=1.0, help="nucleus sampling (default 1.0 = off)")
    defaults.add_argument("--top-k", type=non_negative_int, default=0, help="keep the k most likely tokens (0 = off)")
    defaults.add_argument("--stop", action="append", default=[], metavar="TEXT",
                          help="stop when TEXT is generated, for every request (repeatable)")
    parser.set_defaults(func=run)


def run(args):
    check_model(args.model)
    check_port_free(args.host, args.port)
    from ..errors import MlxsmallError
    from ..serve import make_server

    model, tokenizer, path = load_for_run(args)
    try:
        server = make_server(
            model, tokenizer, path, host=args.host, port=args.port, api_key=args.api_key,
            model_id=args.model_id, max_tokens=args.max_tokens, temperature=args.temperature,
            top_p=args.top_p, top_k=args.top_k, stop=args.stop,
        )
    except OSError as error:
        raise MlxsmallError(f"cannot listen on {args.host}:{args.port}: {error.strerror}") from None
    host, port = server.server_address[:2]
    print(f"serving {server.worker.model_id} on http://{host}:{port}/v1 (OpenAI API); Ctrl+C stops", file=sys.stderr, flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1") and args.api_key is None:
        print("note: listening beyond this machine without --api-key", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # Ctrl+C is how a server is stopped: not an error
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
        server.worker.close()
    return 0

"""mlxsmall models: list the model aliases and which are already converted in the cache."""

import argparse

EPILOG = """\
Any alias takes a precision suffix: -q4 / -q8 (quantize on conversion) or -bf16.
Short names: mobillama = mobillama-05b-chat, mobilellm = mobilellm-125m,
smollm2 = smollm2-135m-instruct (the offline default).

examples:
  mlxsmall chat mobillama-q4          # MobiLlama-05B-Chat, 4-bit
  mlxsmall generate mobilellm-350m-ls -p "Once upon a time"
"""


def register(subparsers):
    parser = subparsers.add_parser(
        "models", help="list model aliases (and which are cached)",
        description="List the model aliases mlxsmall knows.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cached", action="store_true", help="only models already converted")
    parser.set_defaults(func=run)


def run(args):
    from rich.console import Console
    from rich.table import Table

    from ..hub import cached_path, models_dir
    from ..registry import ENTRIES, SHORT_NAMES, SUFFIXES, lookup

    short = {full: name for name, full in SHORT_NAMES.items()}
    table = Table(title="model aliases (any takes -q4, -q8 or -bf16)", caption=f"cache: {models_dir()}")
    table.add_column("alias", no_wrap=True, style="bold")
    table.add_column("source")
    table.add_column("arch")
    table.add_column("stored as")
    table.add_column("cached", no_wrap=True)
    for alias, entry in ENTRIES.items():
        cached = [name for name in [alias] + [alias + s for s in SUFFIXES] if cached_path(lookup(name))]
        if args.cached and not cached:
            continue
        source = entry.repo.replace("pip:", "pip ").split("/")[0] + " (GGUF)" if entry.repo.startswith("pip:") else entry.repo
        stored = f"{entry.bits}-bit g{entry.group_size}" if entry.bits else "published"
        name = alias + (f" ({short[alias]})" if alias in short else "")
        table.add_row(name, source, entry.architecture + (" chat" if entry.chat_template else ""), stored,
                      " ".join(c.replace(alias, "") or "yes" for c in cached))
    Console().print(table)
    return 0

"""mlxsmall info: architecture, parameters, bits, size and memory of a model."""

import argparse
import json


def register(subparsers):
    parser = subparsers.add_parser(
        "info", help="show a model's architecture, size and memory",
        description="Architecture, parameters (all uses / stored once), bits per weight, "
        "size on disk and expected resident memory of a model.",
        epilog="examples:\n  mlxsmall info ./mobillama-q4\n  mlxsmall info mobilellm-125m --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", default=None,
                        help="model directory, alias or HF repo id (default: the offline default model)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def run(args):
    from ._common import check_model, model_path

    check_model(args.model)
    from rich.console import Console
    from rich.table import Table

    from ..info import model_facts

    args.dtype = "stored"
    facts = model_facts(model_path(args))
    if args.json:
        print(json.dumps(facts.as_dict(), indent=2))
        return 0
    quant = facts.quantization
    bits = (
        "none (full precision)" if not quant
        else f"{quant['bits']}-bit, group {quant['group_size']}"
        + (f", {sum(isinstance(v, dict) for v in quant.values())} module overrides" if any(isinstance(v, dict) for v in quant.values()) else "")
    )
    table = Table(show_header=False, box=None)
    rows = [
        ("model", facts.path),
        ("architecture", facts.architecture),
        ("blocks", f"{facts.layers} stored, {facts.applications} applied per token"),
        ("width", f"hidden {facts.hidden_size}, {facts.heads} heads, {facts.kv_heads} KV heads"),
        ("vocabulary", f"{facts.vocab_size:,}"),
        ("sharing", facts.sharing),
        ("parameters", f"{facts.parameters:,}"),
        ("unique parameters", f"{facts.unique_parameters:,}"),
        ("quantization", bits),
        ("bits per weight", f"{facts.bits_per_weight:.2f}"),
        ("size on disk", human_bytes(facts.size_on_disk)),
        ("resident weights", f"{human_bytes(facts.resident_bytes)} as stored, "
                             f"{human_bytes(facts.resident_bytes_fp32)} as fp32 (CPU default)"),
    ]
    for key, value in rows:
        table.add_row(f"[bold]{key}[/bold]", value)
    Console().print(table)
    return 0

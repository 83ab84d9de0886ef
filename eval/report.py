"""Results files: JSON for machines, a Markdown table for people, PNG plots.

Writes are atomic (temp file + rename). Plots use matplotlib's Agg backend and
never open a window.
"""

import json
import math
from pathlib import Path
from typing import List, Optional, Sequence

from mlxsmall.atomic import atomic_path, write_text_atomic

# Metrics where lower is better, so a reader of the table knows which way is good.
LOWER_IS_BETTER = {"perplexity", "word_perplexity", "bits_per_byte", "over_refusal_rate", "image_encode_ms"}
COUNT_METRICS = {"tokens", "harmful_prompts", "benign_prompts"}
RAW_METRICS = {"perplexity", "word_perplexity", "bits_per_byte", "image_encode_ms"}  # numbers, not percentages
# The one number per task that a quality-vs-bits plot shows.
HEADLINE = {"multiple_choice": "acc", "perplexity": "perplexity", "safety": "refusal_rate"}


def write_json(path: Path, data: dict) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def format_value(value, metric: str) -> str:
    if value is None:
        return "n/a"
    if metric in COUNT_METRICS:
        return str(int(value))
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if metric in RAW_METRICS:
        return f"{value:.3f}" if value < 100 else f"{value:.1f}" if value < 1e5 else f"{value:.3g}"
    return f"{100 * value:.1f}"


def headline_metric(result: dict) -> Optional[str]:
    kind = result.get("kind")
    if kind in HEADLINE and HEADLINE[kind] in result["metrics"]:
        return HEADLINE[kind]
    for name in ("execution_accuracy", "exact_match", "rougeL", "f1"):
        if name in result["metrics"]:
            return name
    return next(iter(result["metrics"]), None)


# The MobileLLM paper's headline: the average over its eight zero-shot commonsense tasks.
GROUP_AVERAGES = {"commonsense": ["arc_easy", "arc_challenge", "boolq", "piqa", "siqa", "hellaswag", "openbookqa",
                                  "winogrande"]}


def group_average(run: dict, members: Sequence[str], metric: str) -> Optional[float]:
    values = [run["tasks"][t]["metrics"].get(metric) for t in members]
    return None if any(v is None for v in values) else sum(values) / len(values)


def x_bits(run: dict) -> Optional[float]:
    """Measured bits per weight when known (q4 with group 32 costs 5, with 64 costs 4.5), else nominal."""
    return run.get("bits_per_weight") or run.get("bits")


def eval_markdown(runs: Sequence[dict]) -> str:
    """One row per task metric, one column per model variant. Rates are percentages."""
    labels = [run["label"] for run in runs]
    rows: List[List[str]] = []
    seen = []
    for run in runs:
        for task, result in run["tasks"].items():
            for metric in result["metrics"]:
                if (task, metric) not in seen:
                    seen.append((task, metric))
    for task, metric in seen:
        n = next((run["tasks"][task]["n"] for run in runs if task in run["tasks"]), "")
        arrow = " ↓" if metric in LOWER_IS_BETTER else ""
        unit = "" if metric in RAW_METRICS or metric in COUNT_METRICS else " %"
        cells = [
            format_value(run["tasks"][task]["metrics"].get(metric), metric) if task in run["tasks"] else "n/a"
            for run in runs
        ]
        rows.append([f"{task} (n={n})", f"{metric}{unit}{arrow}"] + cells)
    for group, members in GROUP_AVERAGES.items():
        if all(all(t in run["tasks"] for t in members) for run in runs):
            for metric in ("acc", "acc_norm"):
                cells = [format_value(group_average(run, members, metric), metric) for run in runs]
                rows.append([f"{group} average ({len(members)} tasks)", f"{metric} %"] + cells)
    header = ["task", "metric"] + labels
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    lines.append(f"{provenance(runs)}. Rates in percent; ↓ lower is better.")
    lines += item_notes(runs)
    return "\n".join(lines) + "\n"


def provenance(runs: Sequence[dict]) -> str:
    """Which data and which protocol produced the numbers, in one line."""
    sources = sorted({str(run["tasks"][t]["source"]) for run in runs for t in run["tasks"]})
    sources = [Path(s).name if "/" in s else s for s in sources]  # no absolute paths of this machine
    by_protocol: dict = {}
    for run in runs:
        for task, result in run["tasks"].items():
            names = by_protocol.setdefault(result.get("protocol", "default"), [])
            if task not in names:
                names.append(task)
    if len(by_protocol) == 1:
        protocols = next(iter(by_protocol))
    else:
        protocols = "; ".join(f"{p} ({', '.join(names)})" for p, names in by_protocol.items())
    return f"Data: {', '.join(sources)}. Protocol: {protocols}"


def item_notes(runs: Sequence[dict]) -> List[str]:
    """A line per task that skipped, failed on, or shortened some of its documents."""
    lines = []
    for run in runs:
        prefix = f"{run['label']}: " if len(runs) > 1 else ""
        for task, result in run["tasks"].items():
            parts = []
            if result.get("skipped"):
                reasons = "; ".join(f"{r} ({n})" for r, n in result.get("skip_reasons", {}).items())
                parts.append(f"{result['skipped']} skipped: {reasons}")
            if result.get("errors"):
                reasons = "; ".join(f"{r} ({n})" for r, n in result.get("error_reasons", {}).items())
                parts.append(f"{result['errors']} could not be scored: {reasons}")
            if result.get("truncated"):
                parts.append(f"{result['truncated']} shortened to fit the model's context")
            if parts:
                lines.append(f"{prefix}{task}: " + " | ".join(parts) + ".")
    return lines


def bench_markdown(rows: Sequence[dict]) -> str:
    """The efficiency table: mean ± std over the timed repetitions."""
    header = ["variant", "bits/weight", "weights MB", "TTFT ms", "prompt tok/s", "gen tok/s", "peak mem MB", "J/token (decode)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for row in rows:
        lines.append("| " + " | ".join([
            row["label"],
            _num(row.get("bits_per_weight"), 2),
            _mb(row.get("weights_gb")),
            _stat(row, "ttft_ms", 1),
            _stat(row, "prompt_tps", 1),
            _stat(row, "generation_tps", 1),
            _mb(row.get("peak_memory_gb")),
            _energy(row),
        ]) + " |")
    notes = sorted({row["energy_note"] for row in rows if row.get("energy_note")})
    lines.append("")
    first = rows[0] if rows else {}
    lines.append(
        f"pp{first.get('prompt_tokens', '?')}/tg{first.get('generation_tokens', '?')}, "
        f"{first.get('repetitions', '?')} timed runs after {first.get('warmup', '?')} warm-up; mean ± std."
    )
    for note in notes:
        lines.append(f"Energy: {note}.")
    baselines = [row for row in rows if row.get("baseline")]
    if baselines:
        lines.append("")
        lines.append("| variant | baseline | prompt tok/s ratio | gen tok/s ratio | TTFT ratio |")
        lines.append("|---|---|---|---|---|")
        for row in baselines:
            b = row["baseline"]
            lines.append(f"| {row['label']} | {b['name']} | {_num(b.get('prompt_tps_ratio'), 2)} | "
                         f"{_num(b.get('generation_tps_ratio'), 2)} | {_num(b.get('ttft_ratio'), 2)} |")
        lines.append("Ratio = mlxsmall / baseline (>1: mlxsmall faster for tok/s, slower for TTFT).")
    return "\n".join(lines) + "\n"


def _num(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mb(gigabytes) -> str:
    return "n/a" if gigabytes is None else f"{gigabytes * 1000:.1f}"


def _stat(row: dict, key: str, digits: int) -> str:
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def _energy(row: dict) -> str:
    value = row.get("joules_per_token_mean")
    return "n/a" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------------------------
# Plots


def display_name(model: str) -> str:
    """A model directory is shown by its name, never by a path of this machine."""
    return Path(str(model)).name or str(model) if ("/" in str(model) or "\\" in str(model)) else str(model)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as temp:
        fig.savefig(temp, dpi=120, bbox_inches="tight")
    return Path(path)


def plot_quality_vs_bits(runs: Sequence[dict], path: Path) -> Optional[Path]:
    """Headline metric per task against bits per weight (variants without a bit width are skipped)."""
    points = [run for run in runs if x_bits(run) is not None]
    if not points:
        return None
    plt = _pyplot()
    tasks = []
    for run in points:
        tasks += [t for t in run["tasks"] if t not in tasks]
    headlines = {}
    for task in tasks:
        series = [(x_bits(run), run["tasks"][task]) for run in points if task in run["tasks"]]
        metric = headline_metric(series[0][1])
        if metric is not None and any(result["metrics"].get(metric) is not None for _, result in series):
            headlines[task] = (metric, series)
    averages = [group for group, members in GROUP_AVERAGES.items()
                if any(all(t in run["tasks"] for t in members) for run in points)]
    wanted = []  # only the panels that will have a line: no empty axes
    if averages or any(m not in LOWER_IS_BETTER for m, _ in headlines.values()):
        wanted.append("quality")
    if any(m in LOWER_IS_BETTER for m, _ in headlines.values()):
        wanted.append("perplexity")
    if not wanted:
        return None
    fig, axes = plt.subplots(1, len(wanted), figsize=(5.5 * len(wanted) + 0.5, 4.2), squeeze=False)
    panels = dict(zip(wanted, axes[0]))
    left, right = panels.get("quality"), panels.get("perplexity")
    for task, (metric, series) in headlines.items():
        known = [(bits, result["metrics"][metric]) for bits, result in series
                 if result["metrics"].get(metric) is not None]
        xs, ys = [bits for bits, _ in known], [value for _, value in known]
        axis = right if metric in LOWER_IS_BETTER else left
        scale = 1 if metric in LOWER_IS_BETTER else 100
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        marker = "os^vDP*X"[len(axis.lines) // 10 % 8]
        axis.plot([xs[i] for i in order], [ys[i] * scale for i in order], marker=marker, label=f"{task} ({metric})",
                  alpha=0.55 if axis is left else 1.0, linewidth=1.2)
    for group, members in GROUP_AVERAGES.items():
        series = sorted((x_bits(run), group_average(run, members, "acc")) for run in points
                        if all(t in run["tasks"] for t in members))
        if series:
            left.plot([x for x, _ in series], [100 * y for _, y in series], color="black", linewidth=2.5,
                      marker="o", label=f"{group} average (acc)")
    if left is not None:
        left.set_title("quality vs bits (higher is better)")
        left.set_ylabel("score %")
    if right is not None:
        right.set_title("perplexity vs bits (lower is better)")
        right.set_ylabel("perplexity")
    ticks = sorted({round(x_bits(run), 2) for run in points})
    for axis in panels.values():
        axis.set_xlabel("bits per weight")
        axis.set_xscale("log", base=2)
        axis.set_xticks(ticks, [f"{t:g}" for t in ticks])
        axis.minorticks_off()
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7)
    fig.suptitle(f"{display_name(points[0].get('model', ''))} · {provenance(points)}", fontsize=9)
    result = _save(fig, path)
    plt.close(fig)
    return result


def plot_bench(rows: Sequence[dict], path: Path) -> Optional[Path]:
    """Generation/prompt tok/s and peak memory against bits per weight."""
    points = [row for row in rows if row.get("bits_per_weight") is not None]
    if not points:
        return None
    points = sorted(points, key=lambda row: row["bits_per_weight"])
    plt = _pyplot()
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [row["bits_per_weight"] for row in points]
    for key, label in (("generation_tps", "generation tok/s"), ("prompt_tps", "prompt tok/s")):
        ys = [row.get(f"{key}_mean") for row in points]
        errors = [row.get(f"{key}_std") or 0 for row in points]
        if any(y is not None for y in ys):
            speed.errorbar(xs, [y or 0 for y in ys], yerr=errors, marker="o", capsize=3, label=label)
    for x, row in zip(xs, points):
        speed.annotate(row["precision"] or row["label"], (x, row.get("generation_tps_mean") or 0), fontsize=7,
                       textcoords="offset points", xytext=(3, 3))
    speed.set_title("throughput vs bits")
    speed.set_ylabel("tokens / s")
    speed.set_yscale("log")
    memory.plot(xs, [(row.get("peak_memory_gb") or 0) * 1000 for row in points], marker="o", label="peak memory")
    memory.plot(xs, [(row.get("weights_gb") or 0) * 1000 for row in points], marker="s", label="weights")
    memory.set_title("memory vs bits")
    memory.set_ylabel("MB")
    for axis in (speed, memory):
        axis.set_xlabel("bits per weight (measured)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(f"{display_name(points[0].get('model', ''))} on {points[0].get('device', '')}", fontsize=9)
    result = _save(fig, path)
    plt.close(fig)
    return result

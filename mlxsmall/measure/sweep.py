"""The dashboard's speed sweep across quantization levels (the dashboard only draws it).

For each level (the stored weights, plus 8- and 4-bit quantized in memory when the stored
weights are floating point) and each prompt length (128, 512), generate 128 tokens greedily,
``repeats`` times after one warm-up run, and report mean ± std of prompt tok/s, generation
tok/s, time to first token, peak memory and energy per generated token (n/a without a power
source). Runs through the one generation loop, so the live panels move while it runs.

Call ``run_sweep`` on the MLX worker thread only.
"""

import csv
import io
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from mlxsmall.dtypes import short_name
from mlxsmall.measure import PowerMeter, UnavailableMeter


@dataclass(frozen=True)
class BenchConfig:
    prompt_lengths: Tuple[int, ...] = (128, 512)
    generation_tokens: int = 128
    repeats: int = 3
    warmup: bool = True
    levels: Optional[Tuple[str, ...]] = None  # None: available_levels(config)
    group_size: int = 64
    seed: int = 0


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample standard deviation; 0 for a single run

    @classmethod
    def of(cls, values: Sequence[float]) -> Optional["Stat"]:
        values = [v for v in values if v is not None]
        if not values:
            return None
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)

    def __str__(self):
        return f"{self.mean:.1f} ± {self.std:.1f}"


@dataclass(frozen=True)
class BenchRow:
    level: str
    prompt_length: int
    runs: int
    generated_tokens: float  # mean; below the target when the model emits EOS early
    prompt_tps: Stat
    generation_tps: Stat
    ttft_ms: Stat
    peak_memory_gb: float
    joules_per_token: Optional[Stat] = None


@dataclass
class BenchReport:
    model: str
    config: BenchConfig
    power_source: str
    rows: List[BenchRow] = field(default_factory=list)
    device: str = ""
    created: float = field(default_factory=time.time)


def available_levels(config: dict, on_cpu: bool) -> List[str]:
    """Levels worth comparing for a model with this config.

    Stored quantized: that level as stored, and fp32 (dequantized, the CPU default).
    Stored float: the run dtype (fp32 on CPU, the stored dtype elsewhere), q8 and q4.
    """
    quantization = config.get("quantization")
    if quantization:
        return [f"q{quantization.get('bits', '?')}", "fp32"]
    stored = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return ["fp32" if on_cpu else short_name(stored), "q8", "q4"]


def load_level(model_dir: Path, level: str, group_size: int = 64):
    """``(model, tokenizer)`` for one level, built as `mlxsmall bench` builds its variants
    (`mlxsmall.eval.variants`): a quantized level is what `mlxsmall quantize` writes, run as
    `load` runs it; the stored quantization level is the model as saved."""
    from mlxsmall.eval.variants import Variant, load_variant
    from mlxsmall.loading import read_config
    from mlxsmall.quantize import level_settings

    quantization = read_config(model_dir).get("quantization") or {}
    precision = level
    if quantization and level == f"q{quantization.get('bits')}":
        precision = None  # as stored
    elif "bits" in (level_settings(level) or {}) and "g" not in level and group_size != 64:
        precision = f"{level}g{group_size}"
    model, tokenizer, _ = load_variant(Variant(str(model_dir), precision))
    return model, tokenizer


def synthetic_prompt(tokenizer, length: int, seed: int) -> List[int]:
    """``length`` ordinary token ids (no special tokens), the same for every level."""
    vocab = getattr(tokenizer, "vocab_size", None) or len(tokenizer.get_vocab())
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= set(getattr(tokenizer, "eos_token_ids", []) or [])
    rng = random.Random(seed)
    low = min(100, vocab // 2)
    tokens = []
    while len(tokens) < length:
        token = rng.randrange(low, vocab)
        if token not in special:
            tokens.append(token)
    return tokens


def measure_once(model, tokenizer, prompt: List[int], max_tokens: int, meter: PowerMeter,
                 check_cancel: Callable[[], None] = lambda: None) -> dict:
    """One greedy run, measured as `mlxsmall bench` measures it (J/token: decode only)."""
    from mlxsmall.measure.bench import timed_request

    run = timed_request(model, tokenizer, prompt, max_tokens, meter, on_step=check_cancel)
    return dict(run, generated_tokens=run.pop("generated"))


def run_sweep(model_dir, bench: BenchConfig = BenchConfig(), meter: Optional[PowerMeter] = None,
              check_cancel: Callable[[], None] = lambda: None,
              on_row: Callable[[BenchRow, int, int], None] = lambda row, done, total: None,
              on_status: Callable[[str], None] = lambda text: None) -> BenchReport:
    """Run the sweep; ``on_row(row, done, total)`` after each (level, prompt length)."""
    import gc

    import mlx.core as mx

    from mlxsmall.loading import read_config, running_on_cpu

    model_dir = Path(model_dir)
    meter = meter or UnavailableMeter("no power meter given")
    config = read_config(model_dir)
    levels = list(bench.levels or available_levels(config, running_on_cpu()))
    report = BenchReport(str(model_dir), bench, meter.describe(), device=str(mx.default_device()))
    total = len(levels) * len(bench.prompt_lengths)
    for level in levels:
        on_status(f"loading {level}")
        model, tokenizer = load_level(model_dir, level, bench.group_size)
        prompts = {n: synthetic_prompt(tokenizer, n, bench.seed + n) for n in bench.prompt_lengths}
        if bench.warmup:
            on_status(f"{level}: warm-up")
            measure_once(model, tokenizer, prompts[bench.prompt_lengths[0]][:32], 8, meter, check_cancel)
        for length in bench.prompt_lengths:
            runs = []
            for repeat in range(bench.repeats):
                on_status(f"{level}: prompt {length}, run {repeat + 1}/{bench.repeats}")
                runs.append(measure_once(model, tokenizer, prompts[length], bench.generation_tokens,
                                         meter, check_cancel))
            row = BenchRow(
                level=level,
                prompt_length=length,
                runs=len(runs),
                generated_tokens=statistics.fmean(r["generated_tokens"] for r in runs),
                prompt_tps=Stat.of([r["prompt_tps"] for r in runs]),
                generation_tps=Stat.of([r["generation_tps"] for r in runs]),
                ttft_ms=Stat.of([r["ttft_ms"] for r in runs]),
                peak_memory_gb=max(r["peak_memory_gb"] for r in runs),
                joules_per_token=Stat.of([r["joules_per_token"] for r in runs]),
            )
            report.rows.append(row)
            on_row(row, len(report.rows), total)
        del model
        gc.collect()
        mx.clear_cache()
    on_status("done")
    return report


# --- export -----------------------------------------------------------------------------------

COLUMNS = ["level", "prompt", "gen", "prompt tok/s", "gen tok/s", "TTFT ms", "peak GB", "J/token"]


def row_cells(row: BenchRow, sep: str = " ± ") -> List[str]:
    """Table cells; ``sep="±"`` gives the compact form the 80-column table uses."""
    energy = row.joules_per_token
    return [
        row.level,
        str(row.prompt_length),
        f"{row.generated_tokens:.0f}",
        f"{row.prompt_tps.mean:.1f}{sep}{row.prompt_tps.std:.1f}",
        f"{row.generation_tps.mean:.1f}{sep}{row.generation_tps.std:.1f}",
        f"{row.ttft_ms.mean:.0f}{sep}{row.ttft_ms.std:.0f}",
        f"{row.peak_memory_gb:.3f}",
        f"{energy.mean:.3f}{sep}{energy.std:.3f}" if energy else "n/a",
    ]


def to_json(report: BenchReport) -> str:
    return json.dumps(asdict(report), indent=2)


def to_csv(report: BenchReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["level", "prompt_length", "runs", "generated_tokens",
                     "prompt_tps_mean", "prompt_tps_std", "generation_tps_mean", "generation_tps_std",
                     "ttft_ms_mean", "ttft_ms_std", "peak_memory_gb",
                     "joules_per_token_mean", "joules_per_token_std"])
    for row in report.rows:
        energy = row.joules_per_token
        writer.writerow([row.level, row.prompt_length, row.runs, row.generated_tokens,
                         row.prompt_tps.mean, row.prompt_tps.std,
                         row.generation_tps.mean, row.generation_tps.std,
                         row.ttft_ms.mean, row.ttft_ms.std, row.peak_memory_gb,
                         energy.mean if energy else "n/a", energy.std if energy else "n/a"])
    return out.getvalue()


def to_markdown(report: BenchReport) -> str:
    bench = report.config
    lines = [
        f"# mlxsmall bench: {Path(report.model).name}",
        "",
        f"device {report.device} · generate {bench.generation_tokens} tokens · "
        f"{bench.repeats} runs per cell (mean ± std){', warm-up excluded' if bench.warmup else ''} · "
        f"power: {report.power_source}",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(row_cells(row)) + " |" for row in report.rows]
    return "\n".join(lines) + "\n"


def export(report: BenchReport, directory, stem: Optional[str] = None) -> List[Path]:
    """Write ``stem.json``, ``stem.csv`` and ``stem.md`` atomically; returns their paths."""
    from mlxsmall.atomic import write_text_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = stem or time.strftime("bench-%Y%m%d-%H%M%S", time.localtime(report.created))
    paths = []
    for suffix, render in ((".json", to_json), (".csv", to_csv), (".md", to_markdown)):
        paths.append(write_text_atomic(directory / f"{stem}{suffix}", render(report)))
    return paths

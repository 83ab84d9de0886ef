"""Efficiency: time to first token, prompt and generation throughput, peak memory and
energy per token, llama-bench style (pp512/tg128), for several precisions of a model.

Each variant runs ``warmup`` untimed requests, then ``repetitions`` timed ones through
the one generation loop; numbers are mean ± std over the timed ones. The prompt is
random token ids (seeded), and end-of-sequence is ignored so that every run generates
exactly ``generation_tokens`` tokens. ``baseline="mlx-lm"`` runs the same weights as
mlx-lm's own llama in the same process, between our runs, and reports ratios.
"""

import gc
import platform
import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence

import mlx.core as mx

from mlxsmall.errors import MlxsmallError

BASELINES = ("mlx-lm",)


@dataclass
class BenchOptions:
    prompt_tokens: int = 512
    generation_tokens: int = 128
    repetitions: int = 3
    warmup: int = 1
    baseline: Optional[str] = None  # "mlx-lm"
    seed: int = 0


def random_prompt(vocab_size: int, length: int, seed: int) -> List[int]:
    """Token ids away from the ends of the vocabulary, where special tokens usually live."""
    low, high = min(100, vocab_size // 4), max(vocab_size - 100, vocab_size * 3 // 4)
    key = mx.random.key(seed)
    return mx.random.randint(low, high, (length,), key=key).tolist()


def device_name() -> str:
    device = mx.default_device()
    kind = "gpu" if device == mx.gpu else "cpu"
    return f"{platform.machine()} {kind} ({platform.system()})"


def _stats(values: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    present = [v for v in values if v is not None]
    if len(present) < len(values) or not present:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(present), "std": statistics.stdev(present) if len(present) > 1 else 0.0}


def timed_request(model, tokenizer, prompt: List[int], generation_tokens: int, meter) -> dict:
    """One request through ``mlxsmall.generation.stream_generate``, with energy split into
    prefill (up to the first token) and decode (the rest) when a meter is available."""
    from mlxsmall.generation import stream_generate

    mx.reset_peak_memory()
    start_joules = meter.read_joules() if meter else None
    first_joules = None
    last = None
    for step in stream_generate(model, tokenizer, prompt, max_tokens=generation_tokens):
        if last is None and meter:
            first_joules = meter.read_joules()
        last = step
    end_joules = meter.read_joules() if meter else None
    if last is None:
        raise MlxsmallError("the model produced no tokens")
    decoded = max(last.generation_tokens - 1, 0)
    prefill_j = decode_j = None
    if None not in (start_joules, first_joules, end_joules):
        prefill_j = (first_joules - start_joules) / max(last.prompt_tokens, 1)
        decode_j = (end_joules - first_joules) / decoded if decoded else None
    return {
        "ttft_ms": last.time_to_first_token * 1000,
        "prompt_tps": last.prompt_tps,
        "generation_tps": last.generation_tps,
        "generated": last.generation_tokens,
        "peak_memory_gb": last.peak_memory,
        "prefill_joules_per_token": prefill_j,
        "joules_per_token": decode_j,
    }


class _IgnoreEos:
    """Generate the full token budget: llama-bench's tg counts tokens, not answers."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __enter__(self):
        self.saved = set(self.tokenizer.eos_token_ids)
        self.tokenizer.eos_token_ids = set()

    def __exit__(self, *exc):
        self.tokenizer.eos_token_ids = self.saved


def bench_model(model, tokenizer, options: BenchOptions, meter=None,
                on_run: Optional[Callable[[str], None]] = None) -> dict:
    """Timings of one model: ``{"<metric>_mean", "<metric>_std", ...}`` plus raw runs."""
    vocab = getattr(getattr(model, "args", None), "vocab_size", None) or tokenizer.vocab_size
    prompt = random_prompt(int(vocab), options.prompt_tokens, options.seed)
    runs = []
    with _IgnoreEos(tokenizer):
        for index in range(options.warmup + options.repetitions):
            run = timed_request(model, tokenizer, prompt, options.generation_tokens, meter)
            if index >= options.warmup:
                runs.append(run)
            if on_run:
                on_run("warm-up" if index < options.warmup else f"run {index - options.warmup + 1}")
    row = {}
    for key in ("ttft_ms", "prompt_tps", "generation_tps", "joules_per_token", "prefill_joules_per_token"):
        stats = _stats([run[key] for run in runs])
        row[f"{key}_mean"], row[f"{key}_std"] = stats["mean"], stats["std"]
    row["peak_memory_gb"] = max(run["peak_memory_gb"] for run in runs)
    row["runs"] = runs
    return row


def _ratio(ours, theirs):
    if ours is None or not theirs:
        return None
    return ours / theirs


def bench_variants(variants, options: BenchOptions, *, meter=None,
                   on_variant: Optional[Callable[[str], None]] = None,
                   on_run: Optional[Callable[[str], None]] = None,
                   on_row: Optional[Callable[[dict], None]] = None) -> List[dict]:
    """One result row per variant (and its baseline), models loaded and freed one at a time."""
    from mlxsmall.loading import weight_bytes
    from mlxsmall.quantize import bits_per_weight

    from .variants import load_variant

    if options.baseline is not None and options.baseline not in BASELINES:
        raise MlxsmallError(f"--baseline must be one of {', '.join(BASELINES)}, got {options.baseline!r}")
    if meter is None:
        from mlxsmall.measure import open_power_meter

        meter = open_power_meter()
    rows = []
    for variant in variants:
        if on_variant:
            on_variant(variant.label)
        model, tokenizer, config = load_variant(variant)
        row = {
            "label": variant.label,
            "model": variant.model,
            "precision": variant.precision,
            "device": device_name(),
            "bits_per_weight": bits_per_weight(model),
            "weights_gb": weight_bytes(model) / 1e9,
            "prompt_tokens": options.prompt_tokens,
            "generation_tokens": options.generation_tokens,
            "repetitions": options.repetitions,
            "warmup": options.warmup,
            "energy_source": meter.describe(),
            "energy_note": None if meter.available else meter.describe(),
        }
        row.update(bench_model(model, tokenizer, options, meter, on_run))
        if options.baseline == "mlx-lm":
            row["baseline"] = bench_baseline(model, config, tokenizer, row, options, meter, on_variant, on_run)
        rows.append(row)
        if on_row:
            on_row(row)
        del model
        gc.collect()
        mx.clear_cache()
    return rows


def bench_baseline(model, config, tokenizer, ours: dict, options: BenchOptions, meter, on_variant, on_run) -> dict:
    """The same weights as mlx-lm's llama, timed the same way; ratios are ours / baseline."""
    from mlxsmall.llama_expand import to_mlx_lm_llama

    if on_variant:
        on_variant(f"{ours['label']} baseline mlx-lm llama")
    try:
        reference = to_mlx_lm_llama(model)
    except MlxsmallError as error:
        return {"name": "mlx-lm llama", "note": f"n/a ({error})"}
    theirs = bench_model(reference, tokenizer, options, meter, on_run)
    del reference
    return {
        "name": "mlx-lm llama",
        **{k: v for k, v in theirs.items() if k != "runs"},
        "prompt_tps_ratio": _ratio(ours["prompt_tps_mean"], theirs["prompt_tps_mean"]),
        "generation_tps_ratio": _ratio(ours["generation_tps_mean"], theirs["generation_tps_mean"]),
        "ttft_ratio": _ratio(ours["ttft_ms_mean"], theirs["ttft_ms_mean"]),
    }


def options_dict(options: BenchOptions) -> dict:
    return asdict(options)

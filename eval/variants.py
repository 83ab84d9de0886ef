"""Model variants for side-by-side runs: one model at several precisions.

A variant spec is ``[MODEL][@PRECISION]``; a bare precision applies to the base
model of the run; ``stored`` (or no precision) is the model exactly as saved. Precisions: the float
names of ``mlxsmall.dtypes`` (``fp16``...) and the levels of ``mlxsmall.quantize``'s one table
(``q4``, ``q4g32`` for group size 32, ``mixed_3_6``). A quantized variant is what ``mlxsmall quantize`` writes
(``mlxsmall.quantize.quantize_checkpoint`` on the stored weights), run the way ``load`` runs it
(``mlxsmall.loading.run_settings``: fp32 norms, scales and activations on CPU); a float variant is
what ``--dtype float16`` etc. run.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from mlxsmall.dtypes import BY_SHORT
from mlxsmall.errors import MlxsmallError
from mlxsmall.quantize import ACCEPTED, LEVEL, RECIPES, level_settings


@dataclass(frozen=True)
class Variant:
    model: str  # path, alias or repo id
    precision: Optional[str]  # None: as stored

    @property
    def label(self) -> str:
        name = Path(self.model).name or self.model
        return f"{name}@{self.precision}" if self.precision else name


def refusal(precision: str) -> Optional[str]:
    """None for a float name or a level `mlxsmall quantize` writes; otherwise why not, in quantize's words."""
    try:
        if precision in BY_SHORT or level_settings(precision) is not None:
            return None
        return f"use {', '.join(BY_SHORT)}, q<bits>[g<group size>] or a recipe; {ACCEPTED}"
    except MlxsmallError as error:
        return str(error)


def parse_variant(spec: str, base: Optional[str]) -> Variant:
    """``"q4"`` -> base model at 4 bits; ``"dir@fp16"``; ``"dir"`` or ``"stored"`` -> as stored."""
    model, _, precision = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if precision == "stored" or (not precision and model == "stored"):
        model, precision = ("" if model == "stored" else model), ""
    if not precision and (refusal(model) is None or (LEVEL.match(model) and not Path(model).exists())):  # "q7"
        model, precision = "", model
    if precision and refusal(precision):
        raise MlxsmallError(f"{spec}: unknown precision {precision!r}; {refusal(precision)}")
    model = model or base
    if not model:
        raise MlxsmallError(f"{spec}: name a model (MODEL@{precision}) or give a base model")
    return Variant(model, precision or None)


def nominal_bits(precision: Optional[str], config: Optional[dict] = None) -> Optional[float]:
    """Bits per weight the precision asks for (recipes: their low width), for plots."""
    if precision is None:
        quant = (config or {}).get("quantization")
        if quant:
            return float(quant.get("bits", 16))
        return None
    if precision in BY_SHORT:
        return float(BY_SHORT[precision].bits)
    settings = level_settings(precision)
    return float(settings.get("bits") or RECIPES[settings["recipe"]][0])


def load_variant(variant: Variant, *, dequantize_after: bool = False) -> Tuple[object, object, dict]:
    """``(model, tokenizer, config)`` for a variant; ``config["bits_per_weight"]`` is measured
    on the variant's weights as deployed (before any expansion for speed).

    ``dequantize_after`` runs a quantized variant as ``load`` does by default on CPU: expanded
    to dense fp32 (the same function, the weights are the quantized values, and MLX's dense CPU
    path is faster than its quantized kernels), which matters for quality runs. Without it the
    quantized kernels run, with the float weights ``load(dequantize=False)`` would give.
    """
    import mlx.core as mx

    from mlxsmall.hub import resolve_model_path
    from mlxsmall.loading import load_model, load_tokenizer, prepare_weights, run_settings
    from mlxsmall.quantize import bits_per_weight, quantize_checkpoint

    model_dir = resolve_model_path(variant.model)
    precision = variant.precision
    if precision is None:
        model, config = load_model(model_dir, lazy=True)
        config = dict(config, bits_per_weight=bits_per_weight(model))
        if dequantize_after:
            prepare_weights(model, config, dtype="float32", dequantize=True)
    elif precision in BY_SHORT:
        # As `--dtype float16` etc. run the model.
        model, config = load_model(model_dir, dtype=BY_SHORT[precision].name, dequantize=True, lazy=True)
        config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
        config["bits_per_weight"] = bits_per_weight(model)
    else:
        model, config = load_model(model_dir, lazy=True)
        config = quantize_checkpoint(model, config, source=str(variant.model), **level_settings(precision))
        # Measured before any expansion: what the variant costs when deployed quantized.
        config["bits_per_weight"] = bits_per_weight(model)
        dtype, dequantize = run_settings("auto", dequantize=dequantize_after)
        prepare_weights(model, config, dtype=dtype, dequantize=dequantize)
    mx.eval(model.parameters())
    return model, load_tokenizer(model_dir), config

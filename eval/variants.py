"""Model variants for side-by-side runs: one model at several precisions.

A variant spec is ``[MODEL][@PRECISION]``; a bare precision applies to the base
model of the run; ``stored`` (or no precision) is the model exactly as saved. Precisions: ``fp32``, ``fp16``, ``bf16``, ``q8``/``q6``/``q5``/
``q4``/``q3``/``q2`` (optionally ``q4g32`` for group size 32), and mlx-lm's mixed
recipes ``mixed_2_6``, ``mixed_3_4``, ``mixed_3_6``, ``mixed_4_6``. Quantization
happens in memory (``mlxsmall.quantize.quantize_model``) from fp16 weights, as
``mlxsmall quantize`` would write them.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from mlxsmall.errors import MlxsmallError

FLOAT_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
QUANT = re.compile(r"^q([2-8])(?:g(32|64|128))?$")
RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")
RECIPE_BITS = {"mixed_2_6": 2, "mixed_3_4": 3, "mixed_3_6": 3, "mixed_4_6": 4}


@dataclass(frozen=True)
class Variant:
    model: str  # path, alias or repo id
    precision: Optional[str]  # None: as stored

    @property
    def label(self) -> str:
        name = Path(self.model).name or self.model
        return f"{name}@{self.precision}" if self.precision else name


def is_precision(text: str) -> bool:
    return text in FLOAT_DTYPES or bool(QUANT.match(text)) or text in RECIPES


def parse_variant(spec: str, base: Optional[str]) -> Variant:
    """``"q4"`` -> base model at 4 bits; ``"dir@fp16"``; ``"dir"`` or ``"stored"`` -> as stored."""
    model, _, precision = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if precision == "stored" or (not precision and model == "stored"):
        model, precision = ("" if model == "stored" else model), ""
    if not precision and is_precision(model):
        model, precision = "", model
    if precision and not is_precision(precision):
        raise MlxsmallError(
            f"{spec}: unknown precision {precision!r}; use fp32, fp16, bf16, q8, q6, q5, q4, q3, q2 "
            f"(q4g32 for another group size) or one of {', '.join(RECIPES)}"
        )
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
    if precision in FLOAT_DTYPES:
        return {"fp32": 32.0, "fp16": 16.0, "bf16": 16.0}[precision]
    match = QUANT.match(precision)
    if match:
        return float(match.group(1))
    return float(RECIPE_BITS[precision])


def load_variant(variant: Variant, *, dequantize_after: bool = False) -> Tuple[object, object, dict]:
    """``(model, tokenizer, config)`` for a variant; ``config["bits_per_weight"]`` is measured
    on the variant's weights as deployed (before any expansion for speed).

    ``dequantize_after`` turns freshly quantized weights back into dense fp32 ones: the
    same function (the weights are the quantized values) but MLX's dense CPU path is
    several times faster than its quantized kernels, which matters for quality runs.
    """
    import mlx.core as mx
    from mlx_lm.utils import dequantize_model

    from mlxsmall.loading import cast_floating, load_model, load_tokenizer, resolve_model_path
    from mlxsmall.quantize import bits_per_weight, quantize_model

    model_dir = resolve_model_path(variant.model)
    precision = variant.precision
    if precision is None:
        model, config = load_model(model_dir, lazy=True)
        config = dict(config, bits_per_weight=bits_per_weight(model))
        if dequantize_after:
            dequantize_model(model)
            cast_floating(model, "float32")
        mx.eval(model.parameters())
        return model, load_tokenizer(model_dir), config

    model, config = load_model(model_dir, dequantize=True, lazy=True)
    config = dict(config)
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    if precision in FLOAT_DTYPES:
        cast_floating(model, FLOAT_DTYPES[precision])
    else:
        cast_floating(model, "float16")
        match = QUANT.match(precision)
        if match:
            bits, group = int(match.group(1)), int(match.group(2) or 64)
            config = quantize_model(model, config, bits=bits, group_size=group)
        else:
            config = quantize_model(model, config, bits=RECIPE_BITS[precision], recipe=precision)
        # Measured before any expansion: what the variant costs when deployed quantized.
        config["bits_per_weight"] = bits_per_weight(model)
        if dequantize_after:
            dequantize_model(model)
            cast_floating(model, "float32")
    mx.eval(model.parameters())
    config.setdefault("bits_per_weight", bits_per_weight(model))
    return model, load_tokenizer(model_dir), config

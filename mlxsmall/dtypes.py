"""The float formats of weights, one table of their names: ``name`` as MLX and config.json say
it ("bfloat16"), ``short`` as precision labels say it (bench/eval variants, the sweep, `info`)."""

from typing import NamedTuple, Optional

from .errors import MlxsmallError


class FloatType(NamedTuple):
    name: str
    short: str
    bits: int


FLOATS = (FloatType("float32", "fp32", 32), FloatType("float16", "fp16", 16), FloatType("bfloat16", "bf16", 16))
BY_NAME = {f.name: f for f in FLOATS}
BY_SHORT = {f.short: f for f in FLOATS}
RUN_CHOICES = ("auto", "stored", *BY_NAME)  # --dtype of the commands that run a model


def mx_dtype(name: str):
    """The MLX dtype of a long name (MLX imported only here, so `--help` stays fast)."""
    if name not in BY_NAME:
        raise MlxsmallError(f"unknown dtype {name!r}; choose one of {', '.join(BY_NAME)}")
    import mlx.core as mx

    return getattr(mx, name)


def short_name(name: str) -> str:
    """"bfloat16" -> "bf16"; a name outside the table as it is."""
    return BY_NAME[name].short if name in BY_NAME else name


def load_options(choice: Optional[str]) -> dict:
    """A `--dtype` choice as ``mlxsmall.load``'s arguments: auto (or None) follows the hardware,
    stored keeps the weights as saved (quantized kernels too), a float name casts every float
    weight and expands quantized layers."""
    if choice == "stored":
        return dict(dtype=None, dequantize=False)
    if choice in (None, "auto"):
        return dict(dtype="auto", dequantize=None)
    return dict(dtype=choice, dequantize=True)

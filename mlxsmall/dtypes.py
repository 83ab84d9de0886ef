"""The float formats weights are stored and run in: the one table of their names.

``name`` is what MLX and a config.json's ``torch_dtype`` say ("bfloat16"), ``short`` what
precision labels say (bench and eval variants, the dashboard sweep, `mlxsmall info`: "bf16").
MLX is imported only when a dtype object is asked for, so `--help` stays fast.
"""

from dataclasses import dataclass
from typing import Optional

from .errors import MlxsmallError


@dataclass(frozen=True)
class FloatType:
    name: str  # "bfloat16"
    short: str  # "bf16"
    bits: int

    @property
    def mx(self):
        import mlx.core as mx

        return getattr(mx, self.name)


FLOATS = (FloatType("float32", "fp32", 32), FloatType("float16", "fp16", 16), FloatType("bfloat16", "bf16", 16))
BY_NAME = {f.name: f for f in FLOATS}
BY_SHORT = {f.short: f for f in FLOATS}
NAMES = tuple(BY_NAME)  # what every --dtype accepts
# --dtype of the commands that run a model: auto follows the hardware, stored keeps the weights as saved.
RUN_CHOICES = ("auto", "stored") + NAMES


def float_type(name: str) -> FloatType:
    """The entry for a long name; one error line naming the accepted ones otherwise."""
    found = BY_NAME.get(name)
    if found is None:
        raise MlxsmallError(f"unknown dtype {name!r}; choose one of {', '.join(NAMES)}")
    return found


def short_name(name: str) -> str:
    """"bfloat16" -> "bf16"; a name outside the table as it is."""
    found = BY_NAME.get(name)
    return found.short if found else name


def load_options(choice: Optional[str]) -> dict:
    """A `--dtype` choice as ``mlxsmall.load``'s ``dtype``/``dequantize``: ``auto`` (or None)
    follows the hardware, ``stored`` keeps the weights exactly as saved (quantized kernels
    included), a float name casts every float weight and expands quantized layers."""
    if choice in (None, "auto"):
        return dict(dtype="auto", dequantize=None)
    if choice == "stored":
        return dict(dtype=None, dequantize=False)
    return dict(dtype=float_type(choice).name, dequantize=True)

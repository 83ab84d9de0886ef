"""Merge trained adapters into their base: a normal model in our format."""

from pathlib import Path
from typing import Optional

from ..errors import MlxsmallError
from ..loading import load_model, resolve_model_path, save_model
from ..quantize import is_quantized, quantize_model
from .adapters import fuse_adapters, load_adapters, read_adapter_config

QUANTIZATION_KEYS = ("quantization", "quantization_config")


def fuse(adapter_dir, output, *, base: Optional[str] = None, bits: Optional[int] = None,
         group_size: int = 64, dequantize: bool = False, force: bool = False) -> Path:
    """Write ``base`` + the adapters in ``adapter_dir`` as one model directory.

    The base defaults to the one recorded in ``adapter_config.json``. A QLoRA
    adapter is merged into the base quantized the way it was trained on, so
    the fused model computes what was trained. ``bits`` re-quantizes the fused
    model; ``dequantize`` writes it in full precision.
    """
    adapter_config = read_adapter_config(adapter_dir)
    base = base or adapter_config.get("base_model")
    if not base:
        raise MlxsmallError(f"{adapter_dir}: adapter_config.json names no base model; pass it")
    model_dir = resolve_model_path(base)
    model, config = load_model(model_dir)
    qlora = adapter_config.get("qlora")
    if qlora and not is_quantized(config):
        config = quantize_model(model, config, bits=qlora["bits"], group_size=qlora["group_size"])
    load_adapters(model, adapter_dir)
    config = fuse_adapters(model, config, dequantize=dequantize or bits is not None)
    if (dequantize or bits is not None) and is_quantized(config):
        from mlx_lm.utils import dequantize_model

        dequantize_model(model)
        config = {k: v for k, v in config.items() if k not in QUANTIZATION_KEYS}
    if bits is not None:
        config = quantize_model(model, config, bits=bits, group_size=group_size)
    return save_model(output, model, config, tokenizer_src_dir=model_dir, overwrite=force)

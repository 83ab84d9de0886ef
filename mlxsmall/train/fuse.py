"""Merge trained adapters into their base: a normal model in our format."""

from pathlib import Path
from typing import Optional

from ..errors import MlxsmallError
from ..hub import resolve_model_path
from ..loading import load_model, save_model
from ..quantize import is_quantized, quantize_model
from .adapters import CONFIG_FILE, fuse_adapters, load_adapters, read_adapter_config

QUANTIZATION_KEYS = ("quantization", "quantization_config")


def recorded_base(adapter_dir, adapter_config: dict) -> Path:
    """The base model ``adapter_config.json`` names: an absolute directory (what finetune
    writes), a path relative to the adapter directory or the current one (older adapters), or
    an alias / repo id."""
    source = Path(adapter_dir) / CONFIG_FILE
    base = adapter_config.get("base_model")
    if not base:
        raise MlxsmallError(f"{source}: field 'base_model' is missing; pass the base model "
                            f"(mlxsmall fuse BASE --adapters {adapter_dir} ...)")
    path = Path(base).expanduser()
    candidates = [path] if path.is_absolute() else [Path(adapter_dir) / path, path]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    if path.is_absolute() or base.startswith("."):
        raise MlxsmallError(f"{source}: base_model {base} is not a directory (moved?); pass the base "
                            f"model (mlxsmall fuse BASE --adapters {adapter_dir} ...)")
    return resolve_model_path(base)


def fuse(adapter_dir, output, *, base: Optional[str] = None, bits: Optional[int] = None,
         group_size: int = 64, dequantize: bool = False, force: bool = False) -> Path:
    """Write ``base`` + the adapters in ``adapter_dir`` as one model directory.

    The base defaults to the one recorded in ``adapter_config.json``. A QLoRA
    adapter is merged into the base quantized the way it was trained on, so
    the fused model computes what was trained. ``bits`` re-quantizes the fused
    model; ``dequantize`` writes it in full precision.
    """
    adapter_config = read_adapter_config(adapter_dir)
    model_dir = resolve_model_path(base) if base else recorded_base(adapter_dir, adapter_config)
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

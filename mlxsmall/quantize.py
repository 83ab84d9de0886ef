"""Quantization into the one mlx-lm compatible format.

``config["quantization"] = {"group_size": G, "bits": B, "<module.path>": {...}}``
with per-module overrides for mixed precision. Shared weights stay shared:
MobiLlama's FFN is one module (``model.shared_mlp``) and layer-shared blocks
are stored once, so each is quantized and stored once.
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Callable, Optional, Union

from .errors import MlxsmallError

if TYPE_CHECKING:
    import mlx.nn as nn

# The one table of what quantize writes; `quantize`, `convert -q`, the bench/eval variants
# (q4, q4g32, mixed_3_6) and the dashboard sweep all read it.
SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
# mlx-lm's recipe names (low bits, high bits), llama.cpp Q*_K_M-like choices.
RECIPES = {"mixed_2_6": (2, 6), "mixed_3_4": (3, 4), "mixed_3_6": (3, 6), "mixed_4_6": (4, 6)}
ACCEPTED = (f"quantize takes --bits {'/'.join(map(str, SUPPORTED_BITS))}, --group-size "
            f"{'/'.join(map(str, GROUP_SIZES))} or --mixed {'/'.join(RECIPES)}")
LEVEL = re.compile(r"^q(\d+)(?:g(\d+))?$")  # a level name: q4 (group 64), q4g32
LAYER_INDEX = re.compile(r"\blayers\.(\d+)\.")
# A vision-language model's vision tower: quantized like the rest, kept unquantized in float16, or kept as is.
VISION_TOWER_MODES = ("fp16", "quantize", "keep")


def check_settings(bits: int = 4, group_size: int = 64, recipe: Optional[str] = None) -> None:
    """Refuse what quantize cannot write, in one line naming what it can."""
    if recipe is not None and recipe not in RECIPES:
        problem = f"unknown recipe {recipe!r}"
    elif bits not in SUPPORTED_BITS:
        problem = f"{bits} bits is not supported"
    elif group_size not in GROUP_SIZES:
        problem = f"group size {group_size} is not supported"
    else:
        return
    raise MlxsmallError(f"{problem}: {ACCEPTED}")


def level_settings(name: str) -> Optional[dict]:
    """quantize's settings for a level name (``q4``, ``q4g32``, ``mixed_3_6``; group 64 unless
    named); None for a name that is no level (fp16, a path). A level quantize would refuse
    raises ``check_settings``'s error."""
    if name in RECIPES:
        return dict(recipe=name, group_size=64)
    match = LEVEL.match(name)
    if match is None:
        return None
    settings = dict(bits=int(match.group(1)), group_size=int(match.group(2) or 64))
    check_settings(**settings)
    return settings


def is_quantized(config: dict) -> bool:
    return bool(config.get("quantization"))


def mixed_recipe(recipe: str, num_layers: int, group_size: int) -> Callable:
    """Per-module bits for a mixed recipe.

    More bits where errors hurt most: the value and down projections of the
    first and last eighth of the blocks (and every third one between), the
    output head / shared embedding, and the shared FFN, which every block uses.
    """
    check_settings(recipe=recipe, group_size=group_size)
    low, high = RECIPES[recipe]

    def more_bits_for_layer(index: int) -> bool:
        eighth = num_layers // 8
        return index < eighth or index >= 7 * num_layers // 8 or (index - eighth) % 3 == 2

    def predicate(path: str, module: nn.Module) -> dict:
        bits = low
        match = LAYER_INDEX.search(path)
        if "shared_mlp" in path or "lm_head" in path or "embed_tokens" in path:
            bits = high
        elif match and ("v_proj" in path or "down_proj" in path):
            bits = high if more_bits_for_layer(int(match.group(1))) else low
        return {"group_size": group_size, "bits": bits}

    return predicate


def quantize_model(
    model: nn.Module,
    config: dict,
    bits: int = 4,
    group_size: int = 64,
    recipe: Optional[str] = None,
    predicate: Optional[Callable[[str, nn.Module], Union[bool, dict]]] = None,
) -> dict:
    """Quantize ``model`` in place; return the config with its ``quantization`` block.

    ``recipe`` (e.g. "mixed_3_6") or ``predicate(path, module) -> bool | dict``
    choose per-module settings; modules whose input size is not a multiple of
    the group size stay in full precision.
    """
    check_settings(bits, group_size, recipe)
    if is_quantized(config):
        raise MlxsmallError("the model is already quantized: dequantize it first")
    if recipe is not None:
        predicate = mixed_recipe(recipe, len(model.layers), group_size)
        bits = RECIPES[recipe][0]

    block = {"group_size": group_size, "bits": bits}
    config = copy.deepcopy(config)
    config["quantization"] = dict(block)

    def choose(path: str, module: nn.Module):
        if not hasattr(module, "to_quantized") or module.weight.shape[-1] % group_size:
            return False
        choice = predicate(path, module) if predicate is not None else True
        if isinstance(choice, dict):
            if choice != block:
                config["quantization"][path] = choice
        elif choice is False:
            return False
        return choice

    import mlx.nn as nn  # here, so that `mlxsmall quantize --help` does not load MLX

    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=choose)
    config["quantization_config"] = config["quantization"]
    return config


def quantize_vlm(model: nn.Module, config: dict, *, bits: int = 4, group_size: int = 64,
                 recipe: Optional[str] = None, vision: str = "fp16") -> dict:
    """Quantize a vision-language model's language model and projector; the vision tower follows
    ``vision`` (``VISION_TOWER_MODES``): "quantize" (as the rest), "fp16" (kept unquantized in float16)
    or "keep" (unquantized, dtype as is). Unquantized vision modules are written as
    ``"<path>": false`` overrides in the quantization block."""
    if vision not in VISION_TOWER_MODES:
        raise MlxsmallError(f"vision tower mode {vision!r}: choose {', '.join(VISION_TOWER_MODES)}")
    by_recipe = mixed_recipe(recipe, len(model.layers), group_size) if recipe is not None else None
    kept = []

    def predicate(path, module):
        if path.startswith("vision_tower.") and vision != "quantize":
            kept.append(path)
            return False
        return by_recipe(path, module) if by_recipe else True

    config = quantize_model(model, config, bits=RECIPES[recipe][0] if recipe else bits, group_size=group_size,
                            predicate=predicate)
    for path in kept:
        config["quantization"][path] = False
    if vision == "fp16":
        import mlx.core as mx
        from mlx.utils import tree_map

        model.vision_tower.update(tree_map(lambda p: p.astype(mx.float16) if mx.issubdtype(p.dtype, mx.floating)
                                           else p, model.vision_tower.parameters()))
    return config


def quantize_checkpoint(
    model: nn.Module, config: dict, bits: int = 4, group_size: int = 64, recipe: Optional[str] = None,
    source: str = "the model", vision: str = "fp16",
) -> dict:
    """What ``mlxsmall quantize`` writes: the stored weights quantized in place (their float
    dtype kept, norms untouched); a vision-language model's vision tower as ``vision`` says
    (``quantize_vlm``). A quantized source is expanded first, with a ``warning``
    event: its rounding errors stay, so re-quantizing a 4-bit model is not an 8-bit one."""
    if is_quantized(config):
        from mlx_lm.utils import dequantize_model

        from . import events

        stored = config["quantization"]
        events.publish(
            "warning",
            message=f"{source} is already quantized ({stored.get('bits')}-bit, group {stored.get('group_size')}): "
            "dequantizing it first; its rounding stays, so this is not what quantizing the original gives",
        )
        dequantize_model(model)
        config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    if hasattr(model, "vision_tower"):
        return quantize_vlm(model, config, bits=bits, group_size=group_size, recipe=recipe, vision=vision)
    return quantize_model(model, config, bits=bits, group_size=group_size, recipe=recipe)


def bits_per_weight(model: nn.Module) -> float:
    from mlx_lm.utils import compute_bits_per_weight

    return compute_bits_per_weight(model)

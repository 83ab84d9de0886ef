"""LoRA / DoRA adapters on our models, with mlx-lm's adapter layers.

mlx-lm's ``linear_to_lora_layers`` walks ``model.layers`` block by block; our
shared weights need one more rule: a module used in several places gets ONE
adapter. MobiLlama's FFN lives once at ``model.shared_mlp`` and every block
calls it, so adapting it there adapts every block with the same low-rank
update; layer-shared MobileLLM stores each block once, so its adapter is
applied in both applications. ``per_layer=True`` gives MobiLlama blocks their
own FFN adapters around the one frozen shared base (fusing then unshares the
FFN, since the blocks no longer compute the same function).
"""

import json
from pathlib import Path
from typing import Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.dora import DoRALinear
from mlx_lm.tuner.lora import LoRALinear

from ..errors import MlxsmallError
from . import checkpoint as ckpt

DEFAULT_KEYS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_LAYERS = (LoRALinear, DoRALinear)
ADAPTER_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"


class LayerMLP(nn.Module):
    """A block's own view of the shared FFN: the same SwiGLU, its own projections
    (adapter layers wrapping the shared frozen linears). Borrows MLP's forward."""

    def __init__(self, gate_proj, up_proj, down_proj, forward):
        super().__init__()
        self.gate_proj = gate_proj
        self.up_proj = up_proj
        self.down_proj = down_proj
        self._forward = forward

    def __call__(self, x):
        return self._forward(self, x)


def shares_ffn(model) -> bool:
    return getattr(getattr(model, "model", None), "shared_mlp", None) is not None and \
        getattr(model.args, "shared_ffn", False)


def adapter_targets(model, keys: Sequence[str], skip=()):
    """``(path, linear)`` for every adaptable linear, each module object once."""
    seen, targets = set(id(m) for m in skip), []
    for path, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.QuantizedLinear)):
            continue
        if not (path.startswith("model.layers.") or path.startswith("model.shared_mlp.")):
            continue
        if path.rsplit(".", 1)[-1] not in keys or id(module) in seen:
            continue
        seen.add(id(module))
        targets.append((path, module))
    return targets


def make_adapter(linear, method: str, rank: int, scale: float, dropout: float):
    layer = DoRALinear if method == "dora" else LoRALinear
    return layer.from_base(linear, r=rank, scale=scale, dropout=dropout)


def apply_adapters(model, *, method: str = "lora", rank: int = 8, scale: float = 20.0,
                   dropout: float = 0.0, keys: Optional[Sequence[str]] = None,
                   per_layer: bool = False) -> dict:
    """Freeze ``model`` and add adapters in place; returns the adapter config
    (mlx-lm's ``adapter_config.json`` fields plus ours)."""
    if method not in ("lora", "dora"):
        raise MlxsmallError(f"unknown adapter method {method!r}; use lora or dora")
    keys = tuple(keys or DEFAULT_KEYS)
    model.freeze()
    skip = []
    if per_layer:
        if getattr(model.args, "layer_sharing", False):
            raise MlxsmallError("--per-layer-adapters: layer-shared MobileLLM applies each stored "
                                "block twice with the same weights; adapters are per stored block")
        if shares_ffn(model):
            skip = [m for _, m in model.model.shared_mlp.named_modules()]
            split_shared_ffn(model, method, rank, scale, dropout, keys)
    targets = adapter_targets(model, keys, skip)
    if not targets and not per_layer:
        raise MlxsmallError(f"no linear layers named {', '.join(keys)} to adapt")
    model.update_modules(tree_unflatten(
        [(path, make_adapter(m, method, rank, scale, dropout)) for path, m in targets]))
    return {
        "fine_tune_type": method,
        "num_layers": len(model.layers),
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": dropout, "keys": list(keys)},
        "per_layer_adapters": bool(per_layer),
    }


def split_shared_ffn(model, method, rank, scale, dropout, keys):
    """Give each MobiLlama block its own adapted FFN around the shared frozen base."""
    shared = model.model.shared_mlp
    forward = type(shared).__call__
    for block in model.layers:
        projections = {}
        for name in ("gate_proj", "up_proj", "down_proj"):
            base = getattr(shared, name)
            projections[name] = make_adapter(base, method, rank, scale, dropout) if name in keys else base
        block.mlp = LayerMLP(forward=forward, **projections)
    # Blocks now call their own `mlp`; the shared module stays as the frozen base.
    model.args.shared_ffn = False


def adapter_weights(model) -> dict:
    return dict(tree_flatten(model.trainable_parameters()))


def save_adapters(directory: Path, model, adapter_config: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ckpt.save_safetensors_atomic(directory / ADAPTER_FILE, adapter_weights(model))
    ckpt.write_json_atomic(directory / CONFIG_FILE, adapter_config)
    return directory


def read_adapter_config(directory: Path) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise MlxsmallError(f"{path}: not found (is {directory} an adapter directory "
                            "written by mlxsmall finetune?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MlxsmallError(f"{path}: not valid JSON ({error})") from None


def load_adapters(model, directory: Path) -> dict:
    """Add the adapters saved in ``directory`` to ``model``; returns their config."""
    directory = Path(directory)
    config = read_adapter_config(directory)
    if config.get("fine_tune_type", "lora") not in ("lora", "dora"):
        raise MlxsmallError(f"{directory / CONFIG_FILE}: fine_tune_type "
                            f"{config.get('fine_tune_type')!r} has no adapters to load")
    params = config.get("lora_parameters", {})
    apply_adapters(model, method=config.get("fine_tune_type", "lora"), rank=params.get("rank", 8),
                   scale=params.get("scale", 20.0), dropout=params.get("dropout", 0.0),
                   keys=params.get("keys"), per_layer=config.get("per_layer_adapters", False))
    path = directory / ADAPTER_FILE
    if not path.is_file():
        raise MlxsmallError(f"{path}: not found")
    weights = mx.load(str(path))
    expected = {k: v.shape for k, v in tree_flatten(model.trainable_parameters())}
    for name, value in weights.items():
        if name not in expected:
            raise MlxsmallError(f"{path}: {name} is not an adapter weight of this model")
        if tuple(value.shape) != tuple(expected[name]):
            raise MlxsmallError(f"{path}: {name} has shape {tuple(value.shape)}, the model "
                                f"expects {tuple(expected[name])} (different base model?)")
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise MlxsmallError(f"{path}: missing adapter weight {missing[0]}")
    model.load_weights(list(weights.items()), strict=False)
    mx.eval(model.parameters())
    return config


def fuse_adapters(model, config: dict, *, dequantize: bool = False) -> dict:
    """Merge every adapter into its base linear (in place); returns the model's new config."""
    fused = [(path, module.fuse(dequantize=dequantize)) for path, module in model.named_modules()
             if isinstance(module, ADAPTER_LAYERS)]
    if fused:
        model.update_modules(tree_unflatten(fused))
    config = dict(config)
    if any(isinstance(block.get("mlp"), LayerMLP) for block in model.layers):
        # Per-layer adapters made the FFNs differ: store them per layer.
        del model.model["shared_mlp"]
        model.args.shared_ffn = False
        config["shared_ffn"] = False
    model.unfreeze()
    return config

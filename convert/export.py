"""Our model format -> Hugging Face layout (safetensors + HF config + tokenizer).

The inverse of `convert.hf`: quantized layers are dequantized, MobiLlama's one shared FFN is
written back under every layer (`model.layers.{i}.mlp.*`, as the upstream state dict has it) and
the config gets the upstream model_type/architectures back, so HF -> mlxsmall -> HF reproduces
the checkpoint's tensors (minus `rotary_emb.inv_freq` buffers and MobileLLM's redundant lm_head,
which carry no information).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
from mlx.utils import tree_flatten

from mlxsmall.atomic import atomic_directory
from mlxsmall.errors import MlxsmallError

from mlxsmall.convert.tokenizer import COPIED_FILES

OUR_FIELDS = ("quantization", "quantization_config", "shared_ffn", "layer_sharing_kv", "model_file")
HF_ARCHITECTURES = {
    "mobilellm": ("mobilellm", "MobileLLMForCausalLM"),
    "mobillama": ("llama", "MobiLlamaForCausalLM"),
    "llama": ("llama", "LlamaForCausalLM"),
}


def hf_weights(model, config: dict) -> dict:
    """The model's tensors under upstream HF names."""
    weights = dict(tree_flatten(model.parameters()))
    if config["model_type"] == "mobillama" and config.get("shared_ffn", True):
        shared = {k[len("model.shared_mlp."):]: v for k, v in weights.items() if k.startswith("model.shared_mlp.")}
        weights = {k: v for k, v in weights.items() if not k.startswith("model.shared_mlp.")}
        for i in range(config["num_hidden_layers"]):
            for name, value in shared.items():
                weights[f"model.layers.{i}.mlp.{name}"] = value
    return weights


def hf_config(config: dict, dtype) -> dict:
    out = {k: v for k, v in config.items() if k not in OUR_FIELDS}
    model_type, architecture = HF_ARCHITECTURES[config["model_type"]]
    out["model_type"] = model_type
    out["architectures"] = [architecture]
    out["torch_dtype"] = str(dtype).split(".")[-1]
    return out


def export_hf(model_path, dst, *, dtype: Optional[str] = None, overwrite: bool = False,
              log: Callable[[str], None] = lambda message: None) -> Path:
    """Write model dir `model_path` (our format) as a HF checkpoint dir `dst` (atomic)."""
    from mlx_lm.utils import make_shards

    from mlxsmall.loading import load_model

    model_path, dst = Path(model_path), Path(dst)
    if dst.exists() and not overwrite:  # before the slow load; atomic_directory checks again
        raise MlxsmallError(f"{dst}: already exists (pass --force to replace it)")
    log(f"reading {model_path}")
    model, config = load_model(model_path, dtype=dtype, dequantize=True)
    weights = hf_weights(model, config)
    floats = [v.dtype for v in weights.values() if mx.issubdtype(v.dtype, mx.floating)]
    out_config = hf_config(config, max(set(floats), key=floats.count) if floats else mx.float32)

    with atomic_directory(dst, overwrite=overwrite, action="export") as tmp:
        shards = make_shards(weights)
        names = (["model.safetensors"] if len(shards) == 1 else
                 [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
        weight_map = {}
        for name, shard in zip(names, shards):
            log(f"writing {name}")
            mx.save_safetensors(str(tmp / name), shard, metadata={"format": "pt"})
            weight_map.update({key: name for key in shard})
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())},
                     "weight_map": dict(sorted(weight_map.items()))}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        (tmp / "config.json").write_text(json.dumps(out_config, indent=2, sort_keys=True))
        for name in COPIED_FILES:
            if (model_path / name).exists():
                shutil.copy2(model_path / name, tmp / name)
    return dst

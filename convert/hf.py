"""Hugging Face checkpoint directory -> our model format (docs/architecture.md).

Reads `config.json`, the weights (`*.safetensors` or `pytorch_model.bin`, either possibly sharded
with an index) and the tokenizer; maps the upstream config onto one of our architectures; lets the
model's own `sanitize` fix the checkpoint quirks (MobiLlama's FFN copies, inv_freq buffers,
MobileLLM's redundant lm_head); optionally casts or quantizes; saves atomically.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx

from mlxsmall.atomic import work_directory
from mlxsmall.errors import MlxsmallError

from mlxsmall.loading import read_config
from mlxsmall.safetensors_io import load_safetensors_checkpoint, safetensors_files
from mlxsmall.convert.torch_bin import load_torch_bin_checkpoint

SUPPORTED = (
    "mobilellm (model_type 'mobilellm', MobileLLMForCausalLM), "
    "mobillama (model_type 'llama' with MobiLlamaForCausalLM), "
    "llama (LlamaForCausalLM: SmolLM2, TinyLlama, ...)"
)
# Upstream fields that only make sense with the upstream code.
DROPPED_FIELDS = ("auto_map", "quantization_config", "quantization", "_name_or_path")
MLP_KEYS = ("gate_proj", "up_proj", "down_proj")


def load_checkpoint_weights(src: Path) -> dict:
    """All tensors of a checkpoint dir, safetensors preferred over pytorch .bin."""
    src = Path(src)
    if safetensors_files(src):
        return load_safetensors_checkpoint(src)
    if (src / "pytorch_model.bin").exists() or (src / "pytorch_model.bin.index.json").exists():
        return load_torch_bin_checkpoint(src)
    raise MlxsmallError(f"{src}: no weights (*.safetensors or pytorch_model.bin) found")


def detect_architecture(config: dict, source="config.json") -> str:
    """Our model_type for an upstream config, or MlxsmallError listing what is supported."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    auto_map = " ".join(str(v) for v in (config.get("auto_map") or {}).values()).lower()
    if model_type == "mobilellm" or "MobileLLMForCausalLM" in architectures:
        return "mobilellm"
    if model_type == "mobillama" or "MobiLlamaForCausalLM" in architectures or "mobillama" in auto_map:
        return "mobillama"
    if model_type == "llama" and (not architectures or "LlamaForCausalLM" in architectures):
        return "llama"
    raise MlxsmallError(
        f"{source}: unsupported architecture (model_type {model_type!r}, architectures "
        f"{architectures}); supported: {SUPPORTED}"
    )


def _head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def kv_heads_from_weights(config: dict, weights: dict) -> Optional[int]:
    """Key/value heads as the k_proj weight shape says (config fields can be wrong: MobiLlama)."""
    k_proj = weights.get("model.layers.0.self_attn.k_proj.weight")
    if k_proj is None:
        return None
    return k_proj.shape[0] // _head_dim(config)


def mlp_layout(weights: dict, num_layers: int) -> str:
    """"shared" when every layer stores the same FFN, "per-layer" when no copy repeats layer 0's.

    A mix (some copies equal to layer 0, some not) is a damaged shared-FFN checkpoint: error
    naming the first layer that differs.
    """
    def same(a, b):
        return a is b or (a.shape == b.shape and mx.array_equal(a, b).item())

    def same_as_first(i):
        return all(same(weights[f"model.layers.{i}.mlp.{k}.weight"], weights[f"model.layers.0.mlp.{k}.weight"])
                   for k in MLP_KEYS)

    try:
        equal = [same_as_first(i) for i in range(1, num_layers)]
    except KeyError as error:
        raise MlxsmallError(f"checkpoint: missing MLP weight {error}") from None
    if all(equal):
        return "shared"
    if not any(equal):
        return "per-layer"
    first = equal.index(False) + 1
    raise MlxsmallError(
        f"model.layers.{first}.mlp differs from model.layers.0.mlp while other layers repeat it: "
        "the shared FFN copies are not identical (corrupt checkpoint?)"
    )


def map_config(upstream: dict, weights: dict, *, shared_ffn: Optional[bool] = None,
               source="config.json") -> dict:
    """Our config.json for an upstream one (HF field names kept; quirks resolved from weights)."""
    from mlxsmall.loading import check_dimensions

    arch = detect_architecture(upstream, source)
    config = {k: v for k, v in copy.deepcopy(upstream).items() if k not in DROPPED_FIELDS}
    config["model_type"] = arch
    if config.get("rope_scaling", 0) is None:
        del config["rope_scaling"]  # null upstream; transformers warns about the field when present
    for field in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "vocab_size"):
        if field not in config:
            raise MlxsmallError(f"{source}: missing field {field!r}")
    shapes = {name: tensor.shape for name, tensor in weights.items()}
    # Upstream num_key_value_heads can be wrong (MobiLlama): checked once it is read off the weights.
    check_dimensions({**config, "num_key_value_heads": None}, shapes, source)
    kv_heads = kv_heads_from_weights(config, weights)
    if kv_heads:
        config["num_key_value_heads"] = kv_heads
    check_dimensions(config, shapes, source)
    if arch == "mobillama":
        if shared_ffn is None:
            shared_ffn = mlp_layout(weights, config["num_hidden_layers"]) == "shared" \
                if "model.layers.0.mlp.gate_proj.weight" in weights else True
        config["shared_ffn"] = bool(shared_ffn)
        config["architectures"] = ["MobiLlamaForCausalLM"]
    if arch == "llama" and "lm_head.weight" not in weights and not config.get("tie_word_embeddings"):
        config["tie_word_embeddings"] = True  # no output head stored: the embedding is the head
    return config


def _checkpoint_error(src: Path, error: Exception) -> MlxsmallError:
    return MlxsmallError(f"{src}: {' '.join(str(error).split())}")


def build_converted_model(src: Path, *, shared_ffn: Optional[bool] = None, dtype: Optional[str] = None):
    """(model, config) for a HF checkpoint dir, weights loaded and checked (nothing written)."""
    from mlxsmall.loading import build_model, cast_floating

    src = Path(src)
    upstream = read_config(src)
    detect_architecture(upstream, src / "config.json")  # refuse unknown ones before reading weights
    weights = load_checkpoint_weights(src)
    config = map_config(upstream, weights, shared_ffn=shared_ffn, source=src / "config.json")
    model = build_model(config, src / "config.json")
    try:
        weights = model.sanitize(weights)
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as error:
        raise _checkpoint_error(src, error) from None
    stored = {v.dtype for v in weights.values() if mx.issubdtype(v.dtype, mx.floating)}
    if dtype is not None:
        cast_floating(model, dtype)
        config["torch_dtype"] = dtype
    elif len(stored) == 1:
        config["torch_dtype"] = str(stored.pop()).split(".")[-1]
    mx.eval(model.parameters())
    return model, config


def guess_chat_template(src: Path, upstream: dict) -> Optional[str]:
    """FastChat one_shot for a MobiLlama chat checkpoint whose tokenizer has no template; else None."""
    from mlxsmall.convert.tokenizer import _read_json

    name = f"{src.name} {upstream.get('_name_or_path', '')}".lower()
    has_template = (src / "chat_template.jinja").exists() or "chat_template" in _read_json(src / "tokenizer_config.json")
    if detect_architecture(upstream) == "mobillama" and "chat" in name and not has_template:
        return "fastchat-one-shot"
    return None


def convert_hf(
    src,
    dst,
    *,
    dtype: Optional[str] = None,
    bits: Optional[int] = None,
    group_size: int = 64,
    chat_template: Optional[str] = None,
    shared_ffn: Optional[bool] = None,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> Path:
    """Convert HF checkpoint dir `src` into our format at `dst` (atomic). Returns `dst`.

    `chat_template`: a name from `mlxsmall.convert.chat_templates` (e.g. "fastchat-one-shot")
    for checkpoints whose tokenizer carries none, or "auto" (`guess_chat_template`).
    """
    from mlxsmall.loading import save_model
    from mlxsmall.quantize import quantize_model

    from mlxsmall.convert.chat_templates import STOP_STRINGS, get_template
    from mlxsmall.convert.tokenizer import write_tokenizer

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise MlxsmallError(f"{src}: not a checkpoint directory")
    if dst.exists() and not overwrite:
        raise MlxsmallError(f"{dst}: already exists (pass --force to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    log(f"reading {src}")
    model, config = build_converted_model(src, shared_ffn=shared_ffn, dtype=dtype)
    log(f"architecture {config['model_type']}"
        + (f" (shared_ffn={config['shared_ffn']})" if "shared_ffn" in config else ""))
    if bits:
        log(f"quantizing to {bits} bits (group {group_size})")
        config = quantize_model(model, config, bits=bits, group_size=group_size)
    if chat_template == "auto":
        chat_template = guess_chat_template(src, read_config(src))
        if chat_template:
            log(f"chat template {chat_template} (MobiLlama chat checkpoint without one)")
    with work_directory(dst.parent) as work:
        template = get_template(chat_template) if chat_template else None
        write_tokenizer(src, Path(work), chat_template=template,
                        stop_strings=STOP_STRINGS.get(chat_template or ""),
                        eos_token_id=config.get("eos_token_id"))
        log(f"saving {dst}")
        save_model(dst, model, config, tokenizer_src_dir=work, overwrite=overwrite)
    return dst

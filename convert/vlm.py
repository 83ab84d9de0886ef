"""Vision-language checkpoints in: HF CLIP / SigLIP vision towers and LLaVA-layout models.

- `load_vision_tower(dir or repo id)`: a HF `CLIPVisionModel` / `CLIPModel` / `SiglipVisionModel` / `SiglipModel`
  directory -> (our vision_config, weights). Mean/std come from its `preprocessor_config.json`.
- `vlm_config(text_config, vision_config, **options)`: the config.json of a VLM (LLaVA field names).
- `build_vlm(vision_dir, lm_dir, dst)`: a new VLM from a vision tower + one of our LMs, with a freshly
  initialised projector (train it: `mlxsmall vlm train`). `mlxsmall vlm build` calls this.
- `convert_llava(src, dst)`: a HF LLaVA checkpoint (`vision_tower`, `multi_modal_projector`,
  `language_model`; classic or transformers>=4.52 key layout) into our format.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

from mlxsmall.errors import MlxsmallError
from mlxsmall.loading import VISION_LANGUAGE_TYPE, build_model, load_model, read_config, save_model

# HF config defaults: HF config.json files leave out fields equal to these.
HF_VISION_DEFAULTS = {
    "clip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, image_size=224, patch_size=32, num_channels=3,
                              layer_norm_eps=1e-5, hidden_act="quick_gelu"),
    "siglip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, image_size=224, patch_size=16, num_channels=3,
                                layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
}
VISION_MODEL_TYPES = {"clip": "clip_vision_model", "siglip": "siglip_vision_model",
                      "clip_vision_model": "clip_vision_model", "siglip_vision_model": "siglip_vision_model"}
LLAVA_DEFAULTS = dict(image_token_index=32000, vision_feature_layer=-2,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu")


def read_json(path: Path, required: bool = True):
    if not path.is_file():
        if required:
            raise MlxsmallError(f"{path}: not found")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MlxsmallError(f"{path}: not valid JSON ({error})") from None


def read_checkpoint(directory: Path) -> dict:
    """All tensors of a HF checkpoint directory: safetensors first, else pytorch_model.bin (no torch)."""
    from mlxsmall.safetensors_io import load_safetensors_checkpoint, safetensors_files

    if safetensors_files(directory):
        return load_safetensors_checkpoint(directory)
    if (directory / "pytorch_model.bin").exists() or (directory / "pytorch_model.bin.index.json").exists():
        from mlxsmall.convert.torch_bin import load_torch_bin_checkpoint

        return load_torch_bin_checkpoint(directory)
    raise MlxsmallError(f"{directory}: no *.safetensors or pytorch_model.bin weights")


def checkpoint_dir(src) -> Path:
    """The local checkpoint directory (the resolver, `mlxsmall.hub.checkpoint_dir`, downloads repo ids)."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    raise MlxsmallError(f"{src}: no such checkpoint directory")


def vision_config_from_hf(config: dict, preprocessor: dict | None, source: str) -> dict:
    """Our vision_config from a HF config (vision-only, or a CLIP/SigLIP/LLaVA config with `vision_config`)."""
    model_type = config.get("model_type")
    if model_type in ("clip", "siglip", "llava") or "vision_config" in config:
        sub = dict(config.get("vision_config") or {})
        model_type = sub.get("model_type") or VISION_MODEL_TYPES.get(model_type, "clip_vision_model")
        config = sub
    model_type = VISION_MODEL_TYPES.get(model_type)
    if model_type is None:
        raise MlxsmallError(f"{source}: model_type {config.get('model_type')!r} is not a CLIP or SigLIP vision model")
    vision = dict(HF_VISION_DEFAULTS[model_type])
    vision.update({k: v for k, v in config.items() if k in vision or k in ("image_mean", "image_std")})
    vision["model_type"] = model_type
    if preprocessor:
        for key in ("image_mean", "image_std"):
            if key in preprocessor:
                vision[key] = list(preprocessor[key])
    return vision


def load_vision_tower(src) -> tuple[dict, dict]:
    """``(vision_config, weights)`` of a HF CLIP/SigLIP (vision) checkpoint; keys ``vision_model.*``."""
    from mlxsmall.models.vision import VisionModel

    src = checkpoint_dir(src)
    config = read_json(src / "config.json")
    preprocessor = read_json(src / "preprocessor_config.json", required=False)
    vision_config = vision_config_from_hf(config, preprocessor, str(src / "config.json"))
    weights = VisionModel.sanitize(read_checkpoint(src))
    if not weights:
        raise MlxsmallError(f"{src}: no vision_model.* weights (is this a CLIP/SigLIP checkpoint?)")
    return vision_config, weights


def prefixed_quantization(block: dict, prefix: str) -> dict:
    return {(k if k in ("group_size", "bits", "mode") else prefix + k): v for k, v in block.items()}


def vlm_config(text_config: dict, vision_config: dict, **options) -> dict:
    """The config.json of a VLM: LLaVA field names; eos copied up so the tokenizer loader finds it."""
    config = {"model_type": VISION_LANGUAGE_TYPE, "text_config": dict(text_config),
              "vision_config": dict(vision_config)}
    config.update({k: v for k, v in options.items() if v is not None})
    if "eos_token_id" in text_config:
        config["eos_token_id"] = text_config["eos_token_id"]
    return config


def build_vlm(vision_src, lm_src, dst, *, projector_type: str = "mlp2x_gelu", pool_stride: int = 2,
              feature_layer: int = -2, seed: int = 0, overwrite: bool = False) -> Path:
    """Assemble vision tower + projector (random init) + our LM into a VLM directory at ``dst``."""
    lm_dir = checkpoint_dir(lm_src)
    language_model, text_config = load_model(lm_dir)
    vision_config, vision_weights = load_vision_tower(vision_src)
    text_config = {k: v for k, v in text_config.items() if k not in ("quantization", "quantization_config")}
    config = vlm_config(text_config, vision_config, vision_feature_layer=feature_layer,
                        projector_type=projector_type, projector_pool_stride=pool_stride)
    mx.random.seed(seed)
    model = build_model(config)
    try:
        model.vision_tower.load_weights(list(vision_weights.items()), strict=True)
    except ValueError as error:
        raise MlxsmallError(f"{vision_src}: vision weights do not match its config ({error})") from None
    model.language_model = language_model
    quantization = read_config(lm_dir).get("quantization")
    if quantization:
        config["quantization"] = prefixed_quantization(quantization, "language_model.")
    mx.eval(model.parameters())
    return save_model(dst, model, config, tokenizer_src_dir=lm_dir, overwrite=overwrite)


def convert_llava(src, dst, *, overwrite: bool = False) -> Path:
    """A HF LLaVA-layout checkpoint (llama-family LM + CLIP/SigLIP tower) into our format."""
    src = checkpoint_dir(src)
    hf = read_json(src / "config.json")
    if "text_config" not in hf or "vision_config" not in hf:
        raise MlxsmallError(f"{src / 'config.json'}: not a LLaVA config (needs text_config and vision_config)")
    preprocessor = read_json(src / "preprocessor_config.json", required=False)
    vision_config = vision_config_from_hf(hf, preprocessor, str(src / "config.json"))
    text_config = dict(hf["text_config"])
    text_config.setdefault("model_type", "llama")
    rope = text_config.pop("rope_parameters", None)  # transformers>=5 spelling of rope_theta / rope_scaling
    if isinstance(rope, dict):
        text_config.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
        if rope.get("rope_type", "default") != "default":
            text_config.setdefault("rope_scaling", rope)
    if hf.get("tie_word_embeddings") is not None:
        text_config.setdefault("tie_word_embeddings", hf["tie_word_embeddings"])
    options = {k: hf.get(k, v) for k, v in LLAVA_DEFAULTS.items()}
    if isinstance(options["vision_feature_layer"], list):
        raise MlxsmallError(f"{src / 'config.json'}: multi-layer vision_feature_layer is not supported")
    config = vlm_config(text_config, vision_config, **options)
    if "eos_token_id" in hf:
        config["eos_token_id"] = hf["eos_token_id"]
    model = build_model(config)
    try:
        weights = model.sanitize(read_checkpoint(src))
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as error:
        raise MlxsmallError(f"{src}: weights do not match the LLaVA config ({' '.join(str(error).split())})") from None
    mx.eval(model.parameters())
    return save_model(dst, model, config, tokenizer_src_dir=src, overwrite=overwrite)

"""CLIP and SigLIP vision transformers (the image encoders of small VLMs), pure MLX.

Parameter paths follow HF `CLIPVisionModel` / `SiglipVisionModel`
(`vision_model.embeddings.patch_embedding.weight`, `vision_model.encoder.layers.0.self_attn.q_proj.weight`, ...),
so converting a checkpoint is `sanitize()` away. Images are NHWC (MLX convolution layout).

The VLM reads features from one encoder layer, as LLaVA does: `hidden_states[feature_layer]` in HF's
numbering (index 0 is the embedding output, -1 the last layer, -2 the penultimate), before the final
layer norm, with CLIP's class token dropped.
"""

from dataclasses import dataclass, field
from typing import List, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import BaseModelArgs

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Published encoder shapes (HF config.json values). SigLIP uses mean = std = 0.5.
PRESETS = {
    "clip-vit-b16-224": dict(model_type="clip_vision_model", hidden_size=768, intermediate_size=3072,
                             num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16),
    "clip-vit-l14-224": dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                             num_hidden_layers=24, num_attention_heads=16, image_size=224, patch_size=14),
    "clip-vit-l14-336": dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                             num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14),
    "siglip-b16-224": dict(model_type="siglip_vision_model", hidden_size=768, intermediate_size=3072,
                           num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16,
                           layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                           image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
    "siglip-so400m-384": dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                              num_hidden_layers=27, num_attention_heads=16, image_size=384, patch_size=14,
                              layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                              image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
}

# Top-level names of a bare vision transformer state dict (transformers>=5 CLIPVisionModel.save_pretrained).
BARE_TOP_LEVEL = ("embeddings", "pre_layrnorm", "encoder", "post_layernorm", "head")



def quick_gelu(x):
    return x * mx.sigmoid(1.702 * x)


# Plain (not mx.compile'd) forms of nn.gelu / nn.gelu_approx: on a CPU build the first call of a
# compiled function JIT-compiles C++ (seconds), which costs more than it saves for a vision tower.
def gelu(x):
    return x * (1 + mx.erf(x * 0.7071067811865476)) * 0.5


def gelu_tanh(x):
    return 0.5 * x * (1 + mx.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": gelu, "gelu_pytorch_tanh": gelu_tanh, "gelu_new": gelu_tanh}


@dataclass
class VisionConfig(BaseModelArgs):
    model_type: str = "clip_vision_model"  # or "siglip_vision_model"
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    image_mean: List[float] = field(default_factory=lambda: list(CLIP_MEAN))
    image_std: List[float] = field(default_factory=lambda: list(CLIP_STD))

    def __post_init__(self):
        if self.model_type not in ("clip_vision_model", "siglip_vision_model"):
            raise ValueError(f"vision_config.model_type {self.model_type!r}: expected clip_vision_model or siglip_vision_model")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"vision_config.hidden_act {self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")

    @property
    def is_clip(self) -> bool:
        return self.model_type == "clip_vision_model"

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2


class Attention(nn.Module):
    def __init__(self, dims: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dims // num_heads) ** -0.5
        self.q_proj = nn.Linear(dims, dims)
        self.k_proj = nn.Linear(dims, dims)
        self.v_proj = nn.Linear(dims, dims)
        self.out_proj = nn.Linear(dims, dims)

    def __call__(self, x):
        B, L, D = x.shape
        q, k, v = (p(x).reshape(B, L, self.num_heads, -1).transpose(0, 2, 1, 3)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, L, D))


class MLP(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.act = ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.self_attn = Attention(config.hidden_size, config.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layers = [EncoderLayer(config) for _ in range(config.num_hidden_layers)]


class Embeddings(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.is_clip = config.is_clip
        if self.is_clip:
            self.class_embedding = mx.zeros((config.hidden_size,))
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size,
                                         stride=config.patch_size, bias=not config.is_clip)
        num_positions = config.num_patches + (1 if config.is_clip else 0)
        self.position_embedding = nn.Embedding(num_positions, config.hidden_size)

    def __call__(self, pixel_values):
        patches = self.patch_embedding(pixel_values)  # (B, gh, gw, D)
        B, _, _, D = patches.shape
        x = patches.reshape(B, -1, D)
        if self.is_clip:
            cls = mx.broadcast_to(self.class_embedding.astype(x.dtype), (B, 1, D))
            x = mx.concatenate([cls, x], axis=1)
        # Called, not read as .weight, so that a quantized position table works too.
        return x + self.position_embedding(mx.arange(x.shape[1])).astype(x.dtype)


class VisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.is_clip = config.is_clip
        self.embeddings = Embeddings(config)
        if config.is_clip:
            self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # sic: HF spelling
        self.encoder = Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, pixel_values, feature_layer: Optional[int] = None):
        """Returns HF `hidden_states[feature_layer]` (None: the last layer's output after the final norm)."""
        x = self.embeddings(pixel_values)
        if self.is_clip:
            x = self.pre_layrnorm(x)
        num_layers = len(self.encoder.layers)
        if feature_layer is None:
            stop = num_layers
        else:
            stop = feature_layer % (num_layers + 1)  # hidden_states has num_layers + 1 entries
        for layer in self.encoder.layers[:stop]:  # layers after the chosen one are never run
            x = layer(x)
        if feature_layer is None:
            x = self.post_layernorm(x)
        return x


class VisionModel(nn.Module):
    """`VisionModel(config)(pixels_nhwc)` -> patch features (B, num_patches, hidden_size), class token dropped."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.vision_model = VisionTransformer(config)

    def __call__(self, pixel_values, feature_layer: Optional[int] = -2, keep_class_token: bool = False):
        x = self.vision_model(pixel_values, feature_layer)
        if self.config.is_clip and not keep_class_token:
            x = x[:, 1:]
        return x

    @staticmethod
    def sanitize(weights):
        """HF CLIP/SigLIP vision keys -> ours: conv weight to NHWC layout, drop buffers,
        SigLIP's pooling head and (for full CLIPModel/SiglipModel checkpoints) the text tower."""
        out = {}
        for key, value in weights.items():
            if key.split(".", 1)[0] in BARE_TOP_LEVEL:
                key = "vision_model." + key  # transformers 5 saves CLIPVisionModel without the prefix
            if not key.startswith("vision_model."):
                continue
            if key.endswith("position_ids") or key.startswith("vision_model.head."):
                continue
            if key.endswith("patch_embedding.weight") and value.shape[2] == value.shape[3] != value.shape[1]:
                value = value.transpose(0, 2, 3, 1)  # torch (O, C, kh, kw) -> MLX (O, kh, kw, C)
            out[key] = value
        return out

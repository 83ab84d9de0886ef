"""A small vision-language model, LLaVA-style: vision tower -> projector -> one of our LMs. Pure MLX.

The composite only wires the parts together (`vision.py`, `projector.py`, and the LM module named by
`text_config.model_type`). Projected image tokens replace the positions of the image placeholder token
in the text embedding sequence; from there on it is the plain LM, so the KV cache and the one generation
loop work unchanged (pass the spliced sequence as `input_embeddings`).

Checkpoint keys are LLaVA's: `vision_tower.vision_model.*`, `multi_modal_projector.linear_{1,2}.*`,
`language_model.model.*` (+ `language_model.lm_head.*`). `sanitize()` also takes the transformers>=4.52
LLaVA layout (`model.vision_tower.*`, `model.language_model.*`, `lm_head.*`).
"""

from dataclasses import dataclass
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import BaseModelArgs

from .projector import MultiModalProjector
from .vision import VisionConfig, VisionModel


@dataclass
class ModelArgs(BaseModelArgs):
    text_config: dict
    vision_config: dict
    model_type: str = "llava"
    # The placeholder id repeated once per image token in the input ids. It never goes through the
    # embedding table (those rows are replaced), so it may lie outside the vocabulary (default: vocab_size).
    image_token_index: Optional[int] = None
    vision_feature_layer: int = -2  # HF hidden_states index: -2 = penultimate layer (LLaVA)
    vision_feature_select_strategy: str = "default"  # "default" drops CLIP's class token, "full" keeps it
    projector_type: str = "mlp2x_gelu"  # or "pool_mlp2x_gelu" (token compression)
    projector_pool_stride: int = 2
    projector_hidden_act: str = "gelu"

    def __post_init__(self):
        if self.image_token_index is None:
            self.image_token_index = self.text_config["vocab_size"]
        if not isinstance(self.vision_feature_layer, int):
            raise ValueError(f"vision_feature_layer must be one integer, got {self.vision_feature_layer!r}")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy {self.vision_feature_select_strategy!r}: "
                             "expected 'default' or 'full'")


def splice_image_features(text_embeddings, image_mask, image_features):
    """Put the rows of ``image_features`` (num_images, tokens, D), in order, at the True positions of
    ``image_mask`` (B, L); every other position keeps its text embedding."""
    B, L, D = text_embeddings.shape
    rows = image_features.reshape(-1, image_features.shape[-1])
    flat_mask = image_mask.reshape(-1)
    count = int(flat_mask.sum().item())
    if count != rows.shape[0]:
        raise ValueError(f"the prompt has {count} image-token positions but the images give {rows.shape[0]} "
                         "feature rows (expand each image placeholder to the model's num_image_tokens)")
    index = mx.maximum(mx.cumsum(flat_mask.astype(mx.int32)) - 1, 0)
    placed = rows[index].reshape(B, L, D).astype(text_embeddings.dtype)
    return mx.where(image_mask[..., None], placed, text_embeddings)


def language_model_module(model_type: str):
    from . import get_architecture  # the one model_type -> module table

    return get_architecture(model_type)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.vision_config = VisionConfig.from_dict(args.vision_config)
        self.vision_tower = VisionModel(self.vision_config)
        arch = language_model_module(args.text_config["model_type"])
        self.language_model = arch.Model(arch.ModelArgs.from_dict(args.text_config))
        self.multi_modal_projector = MultiModalProjector(
            self.vision_config.hidden_size, args.text_config["hidden_size"],
            args.projector_type, args.projector_pool_stride, args.projector_hidden_act)

    @property
    def num_image_tokens(self) -> int:
        """How many placeholder positions one image fills in the prompt."""
        patches = self.vision_config.num_patches
        if self.vision_config.is_clip and self.args.vision_feature_select_strategy == "full":
            return patches + 1
        return self.multi_modal_projector.num_tokens(patches)

    def vision_features(self, pixel_values):
        """Encoder features before the projector: (num_images, patches, vision hidden)."""
        keep_cls = self.args.vision_feature_select_strategy == "full"
        return self.vision_tower(pixel_values, self.args.vision_feature_layer, keep_class_token=keep_cls)

    def encode_image(self, pixel_values):
        """(num_images, H, W, C) normalised pixels -> (num_images, num_image_tokens, text hidden)."""
        return self.multi_modal_projector(self.vision_features(pixel_values))

    def embed_inputs(self, inputs, pixel_values=None, image_features=None):
        """Token ids (B, L) -> embeddings (B, L, D) with image tokens spliced in at the placeholders.

        ``image_features`` (already projected) skips the vision tower, e.g. to reuse an encoded image.
        """
        if inputs.ndim == 1:
            inputs = inputs[None]
        mask = inputs == self.args.image_token_index
        text = self.language_model.model.embed_tokens(mx.where(mask, 0, inputs))
        if image_features is None:
            if pixel_values is None:
                return text
            image_features = self.encode_image(pixel_values)
        return splice_image_features(text, mask, image_features)

    def __call__(self, inputs, cache=None, input_embeddings=None, pixel_values=None):
        if input_embeddings is None and pixel_values is not None:
            input_embeddings = self.embed_inputs(inputs, pixel_values)
        return self.language_model(inputs, cache=cache, input_embeddings=input_embeddings)

    @property
    def layers(self):
        return self.language_model.layers

    def make_cache(self):
        return self.language_model.make_cache()

    def sanitize(self, weights):
        parts = {"vision_tower.": {}, "multi_modal_projector.": {}, "language_model.": {}}
        for key, value in weights.items():
            key = upstream_to_llava_key(key)
            for prefix, part in parts.items():
                if key.startswith(prefix):
                    part[key[len(prefix):]] = value
                    break
            else:
                raise ValueError(f"unexpected weight {key!r}: not under vision_tower, "
                                 "multi_modal_projector or language_model")
        parts["vision_tower."] = self.vision_tower.sanitize(parts["vision_tower."])
        parts["language_model."] = self.language_model.sanitize(parts["language_model."])
        return {prefix + key: value for prefix, part in parts.items() for key, value in part.items()}


class ImageTokenTable(nn.Module):
    """A VLM seen as a plain token model, for token-only loops (the shared trainer, the chat session with
    its KV-cache reuse). Each image token has its own id from ``first_image_id`` on, which indexes a row
    of ``table``: already projected features (``project=False``, chat) or pooled vision features that go
    through the projector here (``project=True``, training, so the projector gets gradients). Ids are
    position-independent, so prefill chunking and cache trimming cannot misplace an image."""

    def __init__(self, vlm: Model, table, first_image_id: int, project: bool):
        super().__init__()
        self.vlm = vlm
        self.image_table = table
        self.first_image_id = first_image_id
        self.project = project

    def __call__(self, inputs, cache=None, input_embeddings=None):
        if input_embeddings is None:
            is_image = inputs >= self.first_image_id
            text = self.vlm.language_model.model.embed_tokens(mx.where(is_image, 0, inputs))
            rows = self.image_table[mx.where(is_image, inputs - self.first_image_id, 0)]
            if self.project:
                rows = self.vlm.multi_modal_projector.project(rows)
            input_embeddings = mx.where(is_image[..., None], rows.astype(text.dtype), text)
        return self.vlm.language_model(inputs, cache=cache, input_embeddings=input_embeddings)

    @property
    def layers(self):
        return self.vlm.language_model.layers

    @property
    def args(self):
        return self.vlm.language_model.args

    def make_cache(self):
        return self.vlm.language_model.make_cache()


def upstream_to_llava_key(key: str) -> str:
    """transformers>=4.52 LlavaForConditionalGeneration keys -> the classic LLaVA layout we store."""
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model."):]
    if key.startswith("model.vision_tower.") or key.startswith("model.multi_modal_projector."):
        return key[len("model."):]
    if key.startswith("lm_head."):
        return "language_model." + key
    return key

"""MobiLlama (MBZUAI): a LLaMA-style decoder whose blocks keep their own
attention but all call ONE SwiGLU FFN (`model.shared_mlp`), held in memory once.

The "large-base" 1B variant is a plain per-layer-FFN LLaMA: ``shared_ffn: false``.

Checkpoint facts this module encodes (SPEC.md): attention is full multi-head
whatever ``num_key_value_heads`` says; RoPE theta is always 10000 (the
reference code ignores ``rope_theta``); the output head is untied.
"""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import create_attention_mask

from . import mobilellm
from .mobilellm import MLP, ModelFacts, TransformerBlock, count_parameters, drop_rotary_buffers

REFERENCE_ROPE_THETA = 10000.0


@dataclass
class ModelArgs(mobilellm.ModelArgs):
    """MobileLLM's arguments with one FFN for every block (``shared_ffn``), full multi-head
    attention whatever ``num_key_value_heads`` says, RoPE theta 10000 whatever ``rope_theta``
    says, an untied output head and no layer sharing."""

    shared_ffn: bool = True

    def __post_init__(self):
        # The reference code reads none of these fields; a config that sets them still
        # describes the same function.
        self.num_key_value_heads = self.num_attention_heads
        self.head_dim = None
        self.rope_theta = REFERENCE_ROPE_THETA
        self.rope_traditional, self.rope_scaling = False, None
        self.attention_bias = self.mlp_bias = False
        self.share_embedding = self.tie_word_embeddings = False
        self.layer_sharing = False
        super().__post_init__()


class MobiLlamaModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [
            TransformerBlock(args, own_mlp=not args.shared_ffn)
            for _ in range(args.num_hidden_layers)
        ]
        if args.shared_ffn:
            self.shared_mlp = MLP(args.hidden_size, args.intermediate_size)
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, inputs, cache=None, input_embeddings=None):
        h = input_embeddings if input_embeddings is not None else self.embed_tokens(inputs)
        if cache is None:
            cache = [None] * len(self.layers)
        mask = create_attention_mask(h, cache[0])
        shared_mlp = self.shared_mlp if self.args.shared_ffn else None
        for layer, slot in zip(self.layers, cache):
            h = layer(h, mask, slot, mlp=shared_mlp)
        return self.norm(h)


class Model(ModelFacts, nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = MobiLlamaModel(args)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(self, inputs: mx.array, cache=None, input_embeddings=None) -> mx.array:
        return self.lm_head(self.model(inputs, cache, input_embeddings))

    def sanitize(self, weights: dict) -> dict:
        weights = drop_rotary_buffers(weights)
        if self.args.shared_ffn and not any(k.startswith("model.shared_mlp.") for k in weights):
            weights = fold_layer_mlps(weights, self.args.num_hidden_layers)
        return weights

    @property
    def applied_parameters(self) -> int:
        """The shared FFN counted once per block, as the paper's "duplicated" figure does
        (SPEC.md: 534,865,920 unique vs 1,261,529,088 for 05B)."""
        if not self.args.shared_ffn:
            return self.unique_parameters
        return self.unique_parameters + count_parameters(self.model.shared_mlp) * (len(self.layers) - 1)

    @property
    def sharing(self) -> str:
        return "one FFN shared by all blocks" if self.args.shared_ffn else "none (per-layer FFN)"


def fold_layer_mlps(weights: dict, num_layers: int) -> dict:
    """Turn the upstream per-layer MLP copies into the one ``model.shared_mlp``.

    The official model hands one LlamaMLP to every layer, so its state dict
    repeats ``model.layers.{i}.mlp.*``. Every copy must be identical: a
    checkpoint whose copies differ is not a shared-FFN model.
    """
    weights = dict(weights)
    for i in range(num_layers):
        prefix = f"model.layers.{i}.mlp."
        for key in [k for k in weights if k.startswith(prefix)]:
            name = key[len(prefix):]
            value = weights.pop(key)
            shared_key = "model.shared_mlp." + name
            reference = weights.get(shared_key)
            if reference is None:
                weights[shared_key] = value
            elif reference.shape != value.shape or not mx.array_equal(reference, value).item():
                raise ValueError(
                    f"{key} differs from model.layers.0.mlp.{name}: the FFN copies are not "
                    f"identical, so this is not a shared-FFN checkpoint (use shared_ffn: false)"
                )
    return weights

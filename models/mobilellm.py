"""MobileLLM (Meta): a deep-and-thin LLaMA-style decoder with grouped-query
attention, embedding sharing and immediate block-wise layer sharing.

Plain llama-family checkpoints of the same design (SmolLM2: tied embeddings,
RoPE theta 1e5) run through this module too (`model_type: "llama"`).

Layer sharing (`layer_sharing: true`) applies every stored block twice in a
row (b0, b0, b1, b1, ...). Two cache semantics, see SPEC.md:

- ``layer_sharing_kv="shared"``: the second application uses its own queries
  but attends to the keys/values of the first application; one KV cache entry
  per stored block. This is the function the released weights were trained
  and evaluated with.
- ``layer_sharing_kv="own"``: each of the 2L applications computes and caches
  its own keys/values (the official ``use_cache=False`` forward).
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional, Union

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.activations import swiglu
from mlx_lm.models.base import (
    BaseModelArgs,
    create_attention_mask,
    scaled_dot_product_attention,
)
from mlx_lm.models.cache import KVCache
from mlx_lm.models.rope_utils import initialize_rope

LAYER_SHARING_KV_MODES = ("shared", "own")


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    vocab_size: int
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_traditional: bool = False
    rope_scaling: Optional[Dict[str, Union[float, str]]] = None
    max_position_embeddings: Optional[int] = None
    attention_bias: bool = False
    mlp_bias: bool = False
    # MobileLLM writes share_embedding=true next to tie_word_embeddings=false;
    # either flag means the output projection is the input embedding.
    share_embedding: bool = False
    tie_word_embeddings: bool = False
    layer_sharing: bool = False
    layer_sharing_kv: str = "shared"

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.layer_sharing_kv not in LAYER_SHARING_KV_MODES:
            raise ValueError(
                f"layer_sharing_kv must be one of {LAYER_SHARING_KV_MODES}, "
                f"got {self.layer_sharing_kv!r}"
            )

    @property
    def output_uses_embedding(self) -> bool:
        return self.share_embedding or self.tie_word_embeddings

    @property
    def shared_kv(self) -> bool:
        """The second application of a block attends to the first one's keys/values."""
        return self.layer_sharing and self.layer_sharing_kv == "shared"


class RecordingCache:
    """Wraps a block's cache slot (or nothing) during its first application and
    keeps the keys/values it attended to, so the second application can reuse
    them. Everything else (``bits``, ``make_mask``...) is the wrapped cache's."""

    def __init__(self, inner):
        self.inner = inner
        self.start = inner.offset if inner is not None else 0
        self.keys_values = None

    @property
    def offset(self):
        return self.start

    def update_and_fetch(self, keys, values):
        if self.inner is not None:
            keys, values = self.inner.update_and_fetch(keys, values)
        self.keys_values = (keys, values)
        return keys, values

    def __getattr__(self, name):
        return getattr(self.__dict__["inner"], name)


class ReusedKV:
    """The cache seen by a block's second application under ``shared`` KV."""

    def __init__(self, recording: RecordingCache):
        self.recording = recording

    @property
    def offset(self):
        return self.recording.start

    def fetch(self):
        return self.recording.keys_values

    def __getattr__(self, name):
        return getattr(self.__dict__["recording"].inner, name)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dim = args.hidden_size
        self.n_heads = args.num_attention_heads
        self.n_kv_heads = args.num_key_value_heads
        self.head_dim = args.head_dim
        self.scale = self.head_dim**-0.5
        bias = args.attention_bias
        self.q_proj = nn.Linear(dim, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, dim, bias=bias)
        self.rope = initialize_rope(
            self.head_dim,
            args.rope_theta,
            args.rope_traditional,
            args.rope_scaling,
            args.max_position_embeddings,
        )

    def __call__(self, x: mx.array, mask=None, cache: Optional[Any] = None) -> mx.array:
        B, L, _ = x.shape
        offset = cache.offset if cache is not None else 0
        queries = self.q_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        queries = self.rope(queries, offset=offset)
        if isinstance(cache, ReusedKV):
            # Second application of a shared block: no key/value projections.
            keys, values = cache.fetch()
        else:
            keys = self.k_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
            values = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
            keys = self.rope(keys, offset=offset)
            if cache is not None:
                keys, values = cache.update_and_fetch(keys, values)
        output = scaled_dot_product_attention(
            queries, keys, values, cache=cache, scale=self.scale, mask=mask
        )
        return self.o_proj(output.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class TransformerBlock(nn.Module):
    """Pre-norm attention + SwiGLU block. ``own_mlp=False`` leaves the FFN out
    so that the caller can hand in one shared across blocks (MobiLlama)."""

    def __init__(self, args: ModelArgs, own_mlp: bool = True):
        super().__init__()
        self.self_attn = Attention(args)
        if own_mlp:
            self.mlp = MLP(args.hidden_size, args.intermediate_size, args.mlp_bias)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x, mask=None, cache=None, mlp=None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), mask, cache)
        mlp = mlp if mlp is not None else self.mlp
        return h + mlp(self.post_attention_layernorm(h))


class MobileLLMModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, inputs, cache=None, input_embeddings=None):
        h = input_embeddings if input_embeddings is not None else self.embed_tokens(inputs)
        sharing = self.args.layer_sharing and self.args.layer_sharing_kv
        if cache is None:
            cache = [None] * (2 * len(self.layers) if sharing == "own" else len(self.layers))
        mask = create_attention_mask(h, cache[0])
        if sharing == "own":
            for i, layer in enumerate(self.layers):
                h = layer(h, mask, cache[2 * i])
                h = layer(h, mask, cache[2 * i + 1])
        elif sharing == "shared":
            for layer, slot in zip(self.layers, cache):
                first = RecordingCache(slot)
                h = layer(h, mask, first)
                h = layer(h, mask, ReusedKV(first))
        else:
            for layer, slot in zip(self.layers, cache):
                h = layer(h, mask, slot)
        return self.norm(h)


def drop_rotary_buffers(weights: dict) -> dict:
    return {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}


class ModelFacts:
    """What callers ask a model (loader, info, trainer, llama expansion), answered from its args:
    shared by MobileLLM and MobiLlama, whose args say which sharing applies."""

    @property
    def layers(self):
        return self.model.layers

    @property
    def applications(self) -> int:
        """How many block applications one forward pass makes (the effective depth)."""
        return len(self.layers) * (2 if self.args.layer_sharing else 1)

    @property
    def cache_slots(self) -> int:
        """KV cache entries: one per stored block, or one per application with ``own`` KV."""
        if self.args.layer_sharing and not self.args.shared_kv:
            return 2 * len(self.layers)
        return len(self.layers)

    def make_cache(self):
        return [KVCache() for _ in range(self.cache_slots)]

    @property
    def unique_parameters(self) -> int:
        """Parameters stored once (quantized weights count their original elements)."""
        return count_parameters(self)

    @property
    def applied_parameters(self) -> int:
        """Parameters as the papers count them: a layer-shared block counts once (125M-LS is 125M)."""
        return self.unique_parameters


class Model(ModelFacts, nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = MobileLLMModel(args)
        if not args.output_uses_embedding:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(self, inputs: mx.array, cache=None, input_embeddings=None) -> mx.array:
        out = self.model(inputs, cache, input_embeddings)
        if self.args.output_uses_embedding:
            return self.model.embed_tokens.as_linear(out)
        return self.lm_head(out)

    def sanitize(self, weights: dict) -> dict:
        weights = drop_rotary_buffers(weights)
        if self.args.output_uses_embedding and "lm_head.weight" in weights:
            head = weights.pop("lm_head.weight")
            embedding = weights.get("model.embed_tokens.weight")
            if embedding is not None and not (
                head.shape == embedding.shape and mx.array_equal(head, embedding).item()
            ):
                raise ValueError(
                    "lm_head.weight differs from model.embed_tokens.weight, but the config "
                    "shares the embedding (share_embedding/tie_word_embeddings): refusing to "
                    "drop a real output head"
                )
        return weights

    @property
    def sharing(self) -> str:
        """What this model shares, in a few words (for `mlxsmall info` and the dashboard)."""
        if self.args.layer_sharing:
            return f"layer sharing x2 ({self.args.layer_sharing_kv} KV)"
        if self.args.output_uses_embedding:
            return "embedding shared with output"
        return "none"


def count_parameters(module: nn.Module) -> int:
    """Elements of every parameter, stored once; quantized layers count the elements they
    stand for (``packed * 32 / bits``), as mlx-lm's ``get_total_parameters`` does."""

    def elements(leaf) -> int:
        if hasattr(leaf, "bits"):
            bias = leaf.get("bias")
            return leaf.weight.size * 32 // leaf.bits + (bias.size if bias is not None else 0)
        return sum(value.size for _, value in tree_flatten(leaf.parameters()))

    leaves = tree_flatten(module.leaf_modules(), is_leaf=lambda m: isinstance(m, nn.Module))
    return sum(elements(leaf) for _, leaf in leaves)

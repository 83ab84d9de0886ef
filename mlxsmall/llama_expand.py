"""The same weights as a plain mlx-lm llama: the independent reference our
tests compare against, and the baseline our benchmarks measure against.

MobiLlama's shared FFN is copied into every layer; layer-shared MobileLLM
blocks are duplicated in order (b0, b0, b1, b1, ...), which is the ``own``
KV semantics. The ``shared`` KV semantics has no llama equivalent.
"""

import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from mlx_lm.utils import infer_quant_config

from .errors import MlxsmallError


def llama_args(model) -> llama.ModelArgs:
    block = model.args
    if block.shared_kv:
        raise MlxsmallError(
            "layer sharing with shared KV has no plain-llama equivalent; "
            "expand a model with layer_sharing_kv='own'"
        )
    return llama.ModelArgs(
        model_type="llama",
        hidden_size=block.hidden_size,
        num_hidden_layers=model.applications,
        intermediate_size=block.intermediate_size,
        num_attention_heads=block.num_attention_heads,
        num_key_value_heads=block.num_key_value_heads,
        head_dim=block.head_dim,
        rms_norm_eps=block.rms_norm_eps,
        vocab_size=block.vocab_size,
        rope_theta=block.rope_theta,
        rope_traditional=block.rope_traditional,
        rope_scaling=block.rope_scaling,
        max_position_embeddings=block.max_position_embeddings,
        tie_word_embeddings=block.output_uses_embedding,
    )


def expanded_weights(model) -> dict:
    """Our parameters renamed for the expanded llama (arrays shared, not copied)."""
    weights = dict(tree_flatten(model.parameters()))
    repeat = model.applications // len(model.layers)
    out = {}
    for key, value in weights.items():
        if key.startswith("model.layers."):
            _, _, index, rest = key.split(".", 3)
            for copy in range(repeat):
                out[f"model.layers.{int(index) * repeat + copy}.{rest}"] = value
        elif key.startswith("model.shared_mlp."):
            rest = key[len("model.shared_mlp."):]
            for layer in range(len(model.layers)):
                out[f"model.layers.{layer}.mlp.{rest}"] = value
        else:
            out[key] = value
    return out


def to_mlx_lm_llama(model) -> llama.Model:
    """An mlx-lm ``llama.Model`` computing the same function with unshared weights.

    Quantized models expand to a llama quantized the same way (read from the
    weights). The arrays are
    shared with ``model`` until ``materialize`` (each copy its own buffer).
    """
    reference = llama.Model(llama_args(model))
    weights = expanded_weights(model)
    if any(key.endswith(".scales") for key in weights):
        nn.quantize(
            reference,
            class_predicate=lambda path, module: (
                f"{path}.scales" in weights and infer_quant_config(path, module, weights)
            ),
        )
    reference.load_weights(list(weights.items()), strict=True)
    return reference


def materialize(model) -> None:
    """Give every expanded copy its own buffer, as a real unshared checkpoint has."""
    import mlx.core as mx

    params = tree_flatten(model.parameters())
    model.load_weights([(key, value + 0) for key, value in params])
    mx.eval(model.parameters())

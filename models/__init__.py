"""Pure MLX model definitions (no I/O): one module per architecture.

Each module follows mlx-lm's interface: ``ModelArgs`` (HF config field names,
``ModelArgs.from_dict``), ``Model(args)`` with ``__call__(inputs, cache=None,
input_embeddings=None)``, ``sanitize(weights)``, ``layers`` and ``make_cache()``.
"""

from . import mobilellm, mobillama

# config.json `model_type` -> module. Plain llama-family checkpoints share
# MobileLLM's code path (same block, no sharing).
ARCHITECTURES = {
    "mobilellm": mobilellm,
    "mobillama": mobillama,
    "llama": mobilellm,
}


def get_architecture(model_type: str):
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(
            f"unknown model_type {model_type!r}; supported: {supported}"
        ) from None

"""mlxsmall: small on-device language models (MobileLLM, MobiLlama) in MLX.

    from mlxsmall import load, generate, stream_generate
    model, tokenizer = load("mobillama-q4")          # alias, local dir or HF repo
    print(generate(model, tokenizer, "Hello", max_tokens=32))
"""

from ._blas import preload_openblas

preload_openblas()

__version__ = "0.1.0"
__all__ = ["load", "generate", "stream_generate", "__version__"]


def __getattr__(name):
    # Lazy so that `import mlxsmall.models` stays light and never pulls the CLI.
    if name == "load":
        from .hub import load

        return load
    if name in ("generate", "stream_generate"):
        from . import generation

        return getattr(generation, name)
    raise AttributeError(f"module 'mlxsmall' has no attribute {name!r}")

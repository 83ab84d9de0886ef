"""The one checkpoint loader and saver for every mlxsmall model.

Format: a directory with ``config.json`` + ``model*.safetensors`` (+ index) +
tokenizer files, exactly what mlx-lm reads and writes (docs/architecture.md).
Loading is mlx-lm's ``load_model`` with our architectures plugged in; what we
add is checking the input first, so that a bad config or a truncated file is
one clear error line instead of a traceback from inside MLX.
"""

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Optional, Tuple, Union

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map
from mlx_lm.utils import dequantize_model, load_model as mlx_lm_load_model, save_config
from mlx_lm.utils import save_model as mlx_lm_save_weights

from .atomic import atomic_directory
from .dtypes import mx_dtype
from .safetensors_io import read_header
from .errors import MlxsmallError
from .mlx_lm_model_file import add_model_file
from .models import ARCHITECTURES, vlm

# config.json `model_type` -> the models/ module the loader builds: our language models, and the
# vision-language model (LLaVA layout), a vision tower + projector + one of them (its text_config).
VISION_LANGUAGE_TYPE = "llava"
MODEL_TYPES = {**ARCHITECTURES, VISION_LANGUAGE_TYPE: vlm}

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


# --------------------------------------------------------------------------- config


def read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise MlxsmallError(f"{path}: not found (a model directory needs a config.json)")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, RecursionError) as error:  # bad JSON or UTF-8, huge numbers, deep nesting
        raise MlxsmallError(f"{path}: not valid JSON ({' '.join(str(error).split())[:100]})") from None
    if not isinstance(config, dict):
        raise MlxsmallError(f"{path}: expected a JSON object")
    return config


def is_vision_language(path) -> bool:
    """True when ``path`` is a local vision-language model directory (`generate`/`chat` route it)."""
    config_path = Path(path).expanduser() / "config.json"
    return config_path.is_file() and read_config(config_path.parent).get("model_type") == VISION_LANGUAGE_TYPE


def stop_strings(model_dir) -> list:
    """Stop strings the model's ``generation_config.json`` asks for (e.g. "###" for FastChat)."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return []
    try:
        stops = json.loads(path.read_text(encoding="utf-8")).get("stop_strings") or []
    except (ValueError, AttributeError, RecursionError):  # mlx-lm reads it too: checked before it does
        raise MlxsmallError(f"{path}: not a valid generation config (a JSON object)") from None
    if isinstance(stops, str):
        return [stops]
    if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
        raise MlxsmallError(f"{path}: stop_strings must be a string or a list of strings")
    return stops


def architecture_for(config: dict, source: str = "config.json"):
    """The models/ module that implements this config (mlx-lm ``_get_classes`` style)."""
    model_type = config.get("model_type")
    if model_type is None:
        raise MlxsmallError(f"{source}: missing field 'model_type'")
    if not isinstance(model_type, str):
        raise MlxsmallError(f"{source}: model_type must be a string")
    if model_type not in MODEL_TYPES:
        raise MlxsmallError(f"{source}: unknown model_type {model_type!r}; supported: {', '.join(sorted(MODEL_TYPES))}")
    return MODEL_TYPES[model_type]


def model_args(config: dict, source: str = "config.json"):
    arch = architecture_for(config, source)
    if arch is vlm and isinstance(config.get("text_config"), dict):
        if config["text_config"].get("model_type") == VISION_LANGUAGE_TYPE:
            raise MlxsmallError(f"{source}: text_config: a vision-language model cannot be the language model")
        model_args(config["text_config"], f"{source}: text_config")
    required = [
        f.name
        for f in dataclasses.fields(arch.ModelArgs)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in config]
    if missing:
        raise MlxsmallError(f"{source}: missing field(s) {', '.join(map(repr, missing))}")
    try:
        return arch.ModelArgs.from_dict(config)
    except (ValueError, TypeError, AttributeError, KeyError, ZeroDivisionError, OverflowError) as error:
        raise MlxsmallError(f"{source}: {error}") from None


def build_model(config: dict, source: str = "config.json") -> nn.Module:
    """A randomly initialised model for this config (no weights read)."""
    args = model_args(config, source)
    try:
        return architecture_for(config).Model(args)
    except (ValueError, TypeError, AttributeError, KeyError, ZeroDivisionError, OverflowError) as error:
        raise MlxsmallError(f"{source}: cannot build the model ({' '.join(str(error).split())[:120]})") from None


DIMENSIONS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "head_dim")
LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.")


def check_dimensions(config: dict, shapes: dict, source) -> None:
    """The config's dimensions against the stored tensors' shapes, before anything is built.

    A config that lies (0 heads, 2^31 layers, a head count that does not divide the hidden size)
    is one line here instead of a model built for minutes or a division by zero inside MLX.
    """
    for field in DIMENSIONS:
        value = config.get(field)
        if value is None and field in ("num_key_value_heads", "head_dim"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise MlxsmallError(f"{source}: {field} = {str(value)[:40]} is not a positive integer")
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    if not config.get("head_dim") and config["hidden_size"] % heads:
        raise MlxsmallError(f"{source}: num_attention_heads = {heads} does not divide hidden_size = {config['hidden_size']}")
    if heads % kv_heads:
        raise MlxsmallError(f"{source}: num_key_value_heads = {kv_heads} does not divide num_attention_heads = {heads}")
    largest = max((max(shape, default=0) for shape in shapes.values()), default=0)
    for field in DIMENSIONS:
        if field != "num_hidden_layers" and (config.get(field) or 0) > largest:
            raise MlxsmallError(f"{source}: {field} = {config[field]} is larger than any stored tensor dimension")
    layers = {int(match.group(1)) for name in shapes for match in [LAYER_KEY.match(name)] if match}
    if len(layers) != config["num_hidden_layers"] or (layers and max(layers) != len(layers) - 1):
        stored = f"layers 0..{max(layers)}" if layers else "no layers"
        raise MlxsmallError(f"{source}: num_hidden_layers = {config['num_hidden_layers']} but the weights hold {stored}")


# --------------------------------------------------------------------------- weights


def weight_files(model_dir: Path):
    files = sorted(Path(model_dir).glob("model*.safetensors"))
    if not files:
        raise MlxsmallError(f"{model_dir}: no model*.safetensors weight files")
    return files


# --------------------------------------------------------------------------- load


def load_model(
    path: Union[str, Path],
    *,
    dtype: Optional[str] = None,
    dequantize: bool = False,
    lazy: bool = False,
    model_config: Optional[dict] = None,
) -> Tuple[nn.Module, dict]:
    """Load a model directory in our format. Returns ``(model, config)``.

    ``dtype`` casts floating-point weights ("float32", "float16", "bfloat16");
    ``dequantize`` turns quantized layers back into dense ones (on CPU, MLX's
    dense fp32 path is several times faster than its quantized kernels).
    """
    model_dir = Path(path)
    config = read_config(model_dir)
    if model_config:
        config.update(model_config)
    source = str(model_dir / "config.json")
    model_args(config, source)  # clear errors before mlx-lm sees it
    quantization = config.get("quantization")
    if quantization is not None and not (
            isinstance(quantization, dict) and all(
                isinstance(quantization.get(key), int) and not isinstance(quantization.get(key), bool)
                for key in ("group_size", "bits"))):
        raise MlxsmallError(f"{source}: quantization must be an object with integer group_size and bits")
    stop_strings(model_dir)
    headers = {f: read_header(f) for f in weight_files(model_dir)}
    shapes = {k: v["shape"] for h in headers.values() for k, v in h.items()}
    if config["model_type"] == VISION_LANGUAGE_TYPE:  # its language model's dimensions, against its tensors
        text_shapes = {k[len("language_model."):]: v for k, v in shapes.items() if k.startswith("language_model.")}
        check_dimensions(config["text_config"], text_shapes, f"{source}: text_config")
    else:
        check_dimensions(config, shapes, source)

    def get_classes(config):
        arch = architecture_for(config)
        return arch.Model, arch.ModelArgs

    try:
        # model_file (the copy of models/ written for mlx-lm) is not for us: our classes load it.
        model, config = mlx_lm_load_model(
            model_dir, lazy=True, strict=True, model_config={**(model_config or {}), "model_file": None},
            get_model_classes=get_classes,
        )
        config.pop("model_file", None)
    except (ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError, OverflowError) as error:
        raise MlxsmallError(f"{model_dir}: {describe_weight_error(error, headers)}") from None
    prepare_weights(model, config, dtype=dtype, dequantize=dequantize)
    if not lazy:
        mx.eval(model.parameters())
    return model, config


def prepare_weights(model: nn.Module, config: dict, *, dtype: Optional[str], dequantize: bool) -> nn.Module:
    """Cast floating weights to ``dtype`` (None: keep) and optionally expand quantized layers."""
    if dtype is not None:
        # Before dequantizing, so that fp16 scales do not round the fp32 weights.
        cast_floating(model, dtype)
    if dequantize and "quantization" in config:
        dequantize_model(model)
    return model


def run_settings(dtype: Optional[str] = "auto", dequantize: Optional[bool] = None) -> Tuple[Optional[str], bool]:
    """``(dtype, dequantize)`` that ``load`` applies: "auto" follows the hardware.

    On CPU every float weight runs as fp32 (norms, scales and the hidden state
    included: MLX's CPU quantized matmul is ~30x slower with fp16 inputs) and
    quantized layers are expanded unless ``dequantize=False``; elsewhere the
    stored format is kept.
    """
    cpu = running_on_cpu()
    if dequantize is None:
        dequantize = cpu
    if dtype == "auto":
        dtype = "float32" if cpu else None
    return dtype, dequantize


def describe_weight_error(error: Exception, headers: dict) -> str:
    """One line from mlx's load_weights error, naming the file of the key."""
    message = " ".join(str(error).split())
    for file, header in headers.items():
        for key in header:
            if key != "__metadata__" and f"{key} " in message + " ":
                return f"{file.name}: {key}: {message}"
    return message


def cast_floating(model: nn.Module, dtype: str) -> nn.Module:
    target = mx_dtype(dtype)
    # Quantized layers keep their packed uint32 weights; only floats are cast.
    model.update(
        tree_map(
            lambda p: p.astype(target) if mx.issubdtype(p.dtype, mx.floating) else p,
            model.parameters(),
        )
    )
    return model


def load_tokenizer(path: Union[str, Path]):
    """mlx-lm's TokenizerWrapper for the tokenizer files in a model directory."""
    from mlx_lm.tokenizer_utils import load as load_tokenizer_wrapper

    model_dir = Path(path)
    if not any((model_dir / name).exists() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise MlxsmallError(f"{model_dir}: no tokenizer files (tokenizer.json or tokenizer.model)")
    config = read_config(model_dir)
    eos = config.get("eos_token_id")
    from transformers.utils import logging as transformers_logging

    # AutoTokenizer reads config.json and warns that it does not know our model types.
    transformers_logging.set_verbosity_error()
    try:
        return load_tokenizer_wrapper(model_dir, eos_token_ids=eos)
    except (OSError, ValueError) as error:
        raise MlxsmallError(f"{model_dir}: cannot load the tokenizer ({error})") from None


def running_on_cpu() -> bool:
    return mx.default_device() == mx.cpu


# --------------------------------------------------------------------------- save


def save_model(
    dst: Union[str, Path],
    model: nn.Module,
    config: dict,
    *,
    tokenizer=None,
    tokenizer_src_dir: Optional[Union[str, Path]] = None,
    overwrite: bool = False,
) -> Path:
    """Write a model directory atomically: into a temp dir beside ``dst``, then rename.

    An interrupted or failed save (Ctrl-C, full disk) leaves ``dst`` as it was.
    """
    with atomic_directory(dst, overwrite=overwrite, action="save the model") as tmp:
        mlx_lm_save_weights(tmp, model)
        # keep_vision_config: mlx-lm drops vision_config by default; VLMs (models/vlm.py) need it.
        config = add_model_file(tmp, dict(config))  # lets mlx-lm itself open the directory
        save_config(config, tmp / "config.json", keep_vision_config=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        elif tokenizer_src_dir is not None:
            for name in TOKENIZER_FILES:
                src = Path(tokenizer_src_dir) / name
                if src.exists():
                    shutil.copy2(src, tmp / name)
    return Path(dst)


# --------------------------------------------------------------------------- facts


def weight_bytes(model: nn.Module) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


__all__ = [
    "ARCHITECTURES", "MODEL_TYPES", "build_model", "load_model",
    "load_tokenizer", "model_args", "read_config", "save_model", "weight_bytes",
]

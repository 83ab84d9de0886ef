"""Facts about a model directory: what `mlxsmall info` and the dashboard show."""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from .dtypes import short_name
from .errors import MlxsmallError
from .loading import load_model, weight_bytes
from .quantize import bits_per_weight


@dataclass
class ModelFacts:
    path: str
    architecture: str
    layers: int
    applications: int  # block applications per token (2x stored blocks with layer sharing)
    hidden_size: int
    heads: int
    kv_heads: int
    vocab_size: int
    parameters: int  # every use counted (an unshared model of the same function)
    unique_parameters: int  # stored once
    quantization: Optional[dict]
    bits_per_weight: float
    size_on_disk: int  # bytes of weight files
    resident_bytes: int  # weights as stored, in memory
    resident_bytes_fp32: int  # weights dequantized to fp32 (the CPU default)
    sharing: str

    def as_dict(self):
        return asdict(self)


def model_facts(path) -> ModelFacts:
    path = Path(path)
    model, config = load_model(path, lazy=True)
    if "text_config" in config:
        raise MlxsmallError(f"{path / 'config.json'}: a vision-language model; `mlxsmall info` describes "
                            "language models (docs/vlm.md)")
    unique = model.unique_parameters
    disk = sum(f.stat().st_size for f in path.glob("model*.safetensors"))
    return ModelFacts(
        path=str(path),
        architecture=config["model_type"],
        layers=len(model.layers),
        applications=model.applications,
        hidden_size=config["hidden_size"],
        heads=config["num_attention_heads"],
        kv_heads=model.args.num_key_value_heads,
        vocab_size=config["vocab_size"],
        parameters=model.applied_parameters,
        unique_parameters=unique,
        quantization=config.get("quantization"),
        bits_per_weight=bits_per_weight(model),
        size_on_disk=disk,
        resident_bytes=weight_bytes(model),
        resident_bytes_fp32=unique * 4,
        sharing=model.sharing,
    )


def weights_dtype(model) -> str:
    """The dtype the weights run in: fp32, fp16, bf16 or quantized."""
    from mlx.utils import tree_flatten

    for _, value in tree_flatten(model.parameters()):
        name = str(value.dtype).replace("mlx.core.", "")
        return "quantized" if name == "uint32" else short_name(name)
    return ""

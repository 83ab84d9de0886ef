"""llama-family GGUF file -> our model format.

`mx.load(path, return_metadata=True)` does the heavy lifting: Q4_0/Q4_1/Q8_0 tensors come back as
MLX-quantized triples (`weight`, `scales`, `biases`; group 32, which is GGUF's block size), others
as floats, plus the metadata (hyperparameters, tokenizer, chat template). What is left here:

- names: `blk.N.attn_q` -> `model.layers.N.self_attn.q_proj` and so on;
- llama.cpp stores Q/K rows permuted for its interleaved RoPE; our models use HF's rotate_half
  convention, so the rows are un-permuted (weights, scales and biases alike: quantization groups
  run along a row, so a row permutation moves whole groups);
- the quantization is kept as is (bits per module read off the tensor shapes) unless `dtype`
  dequantizes or `bits` requantizes;
- the gpt2-BPE tokenizer in the metadata becomes a `tokenizer.json` (via `tokenizers`), with the
  chat template, bos/eos and special tokens from the metadata.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn

from mlxsmall.errors import MlxsmallError

GGUF_GROUP_SIZE = 32
SUPPORTED_ARCHITECTURES = ("llama",)
TENSOR_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# llama.cpp pre-tokenizer name -> (split digits one by one, byte-level regex) — the ones we know.
PRE_TOKENIZERS = {"smollm": True, "gpt2": False, "default": False}


def read_gguf(path: Path):
    path = Path(path)
    if not path.is_file():
        raise MlxsmallError(f"{path}: no such file")
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise MlxsmallError(f"{path}: not a GGUF file (bad magic)")
    try:
        weights, metadata = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError, OSError) as error:
        raise MlxsmallError(f"{path}: cannot read GGUF ({' '.join(str(error).split())}); truncated or unsupported?") from None
    return weights, metadata


def _value(metadata, key, default=None):
    value = metadata.get(key, default)
    if isinstance(value, mx.array):
        value = value.item() if value.size == 1 else value.tolist()
    return value


def gguf_config(metadata: dict, weights: dict, source) -> dict:
    arch = _value(metadata, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise MlxsmallError(f"{source}: GGUF architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")

    def field(name, default=None, required=True):
        value = _value(metadata, f"{arch}.{name}", default)
        if value is None and required:
            raise MlxsmallError(f"{source}: GGUF metadata lacks {arch}.{name}")
        return value

    heads = int(field("attention.head_count"))
    hidden = int(field("embedding_length"))
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if tokens else int(field("vocab_size"))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(field("block_count")),
        "intermediate_size": int(field("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(field("attention.head_count_kv", heads)),
        "head_dim": int(field("rope.dimension_count", hidden // heads)),
        "vocab_size": vocab,
        "rms_norm_eps": float(field("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(field("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(field("context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in weights,
        "hidden_act": "silu",
    }
    for key, name in (("bos_token_id", "bos"), ("eos_token_id", "eos")):
        value = _value(metadata, f"tokenizer.ggml.{name}_token_id")
        if value is not None:
            config[key] = int(value)
    return config


def _unpermute(tensor: mx.array, heads: int) -> mx.array:
    """Undo llama.cpp's `permute` of Q/K rows (its rows are (head, d/2, 2); HF's are (head, 2, d/2))."""
    rows = tensor.shape[0]
    return (tensor.reshape(heads, rows // heads // 2, 2, *tensor.shape[1:])
            .swapaxes(1, 2).reshape(tensor.shape))


def rename_weights(weights: dict, config: dict, source) -> dict:
    out = {}
    for name, tensor in weights.items():
        parts = name.split(".")
        if parts[0] == "blk":
            index, base, leaf = parts[1], parts[2], ".".join(parts[3:])
            if base not in TENSOR_NAMES:
                raise MlxsmallError(f"{source}: unexpected GGUF tensor {name!r}")
            key = f"model.layers.{index}.{TENSOR_NAMES[base]}.{leaf}"
            if base == "attn_q":
                tensor = _unpermute(tensor, config["num_attention_heads"])
            elif base == "attn_k":
                tensor = _unpermute(tensor, config["num_key_value_heads"])
        elif parts[0] in TENSOR_NAMES:
            key = f"{TENSOR_NAMES[parts[0]]}.{'.'.join(parts[1:])}"
        elif parts[0] == "rope_freqs":
            continue  # llama3-style rope factors; not used by our llama-family models
        else:
            raise MlxsmallError(f"{source}: unexpected GGUF tensor {name!r}")
        out[key] = tensor
    return out


def quantization_block(weights: dict) -> Optional[dict]:
    """mlx-lm `quantization` config for the quantized triples (group 32, bits from shapes)."""
    modules = {}
    for key, scales in weights.items():
        if key.endswith(".scales"):
            module = key[: -len(".scales")]
            packed = weights[module + ".weight"]
            in_features = scales.shape[-1] * GGUF_GROUP_SIZE
            modules[module] = packed.shape[-1] * 32 // in_features
    if not modules:
        return None
    bits = Counter(modules.values()).most_common(1)[0][0]
    block = {"group_size": GGUF_GROUP_SIZE, "bits": bits}
    for module, module_bits in sorted(modules.items()):
        if module_bits != bits:
            block[module] = {"group_size": GGUF_GROUP_SIZE, "bits": module_bits}
    return block


def build_gguf_model(path, *, dtype: Optional[str] = None):
    """(model, config, metadata) for a GGUF file: weights loaded, quantization kept unless `dtype`."""
    from mlx_lm.utils import dequantize_model

    from mlxsmall.loading import build_model, cast_floating

    path = Path(path)
    raw, metadata = read_gguf(path)
    config = gguf_config(metadata, raw, path)
    weights = rename_weights(raw, config, path)
    quantization = quantization_block(weights)
    model = build_model(config)
    if quantization:
        def predicate(module_path, module):
            if f"{module_path}.scales" not in weights:
                return False
            return quantization.get(module_path, {"group_size": GGUF_GROUP_SIZE, "bits": quantization["bits"]})

        nn.quantize(model, group_size=GGUF_GROUP_SIZE, bits=quantization["bits"], class_predicate=predicate)
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as error:
        raise MlxsmallError(f"{path}: {' '.join(str(error).split())}") from None
    if dtype is not None:
        if quantization:
            dequantize_model(model)
            config.pop("quantization", None)
            config.pop("quantization_config", None)
        cast_floating(model, dtype)
        config["torch_dtype"] = dtype
    mx.eval(model.parameters())
    return model, config, metadata


def write_gguf_tokenizer(metadata: dict, dst: Path, source) -> None:
    """tokenizer.json + tokenizer_config.json from GGUF metadata (gpt2-style byte-level BPE)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = _value(metadata, "tokenizer.ggml.model")
    if kind == "llama":
        return write_gguf_sentencepiece(metadata, dst, source)
    if kind != "gpt2":
        raise MlxsmallError(
            f"{source}: GGUF tokenizer {kind!r} is not supported (gpt2-style BPE and llama "
            "SentencePiece are); pass --tokenizer DIR with the model's HF tokenizer files"
        )
    tokens = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    types = _value(metadata, "tokenizer.ggml.token_type") or [1] * len(tokens)
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                     ignore_merges=False))
    pre = _value(metadata, "tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if PRE_TOKENIZERS.get(pre):
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    # 3 = control, 4 = user-defined (llama.cpp's token types).
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind in zip(tokens, types) if kind == 3])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                          for t, kind in zip(tokens, types) if kind == 4])

    def token(key):
        index = _value(metadata, f"tokenizer.ggml.{key}_token_id")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    bos, eos = token("bos"), token("eos")
    if _value(metadata, "tokenizer.ggml.add_bos_token", False) and bos:
        bos_id = tokens.index(bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    dst.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(dst / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos, "eos_token": eos, "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "add_bos_token": bool(_value(metadata, "tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_value(metadata, "llama.context_length", 2048)),
    }
    template = _value(metadata, "tokenizer.chat_template")
    if template:
        config["chat_template"] = template
        (dst / "chat_template.jinja").write_text(template)
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))


def write_gguf_sentencepiece(metadata: dict, dst: Path, source) -> None:
    """LLaMA SentencePiece tokenizer stored in GGUF (pieces, scores, types) -> `tokenizer.model`,
    then the same conversion as a checkpoint's tokenizer.model (tokenizer.json beside it).

    GGUF keeps the pieces, scores and types of the original model (llama.cpp's token types are
    SentencePiece's), so the proto is rebuilt with LLaMA's normalizer settings.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_model

    from .tokenizer import convert_sentencepiece, set_chat_template

    tokens = metadata["tokenizer.ggml.tokens"]
    scores = _value(metadata, "tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = _value(metadata, "tokenizer.ggml.token_type") or [1] * len(tokens)
    proto = sp_model.ModelProto()
    for text, score, kind in zip(tokens, scores, types):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, float(score), int(kind) if 1 <= int(kind) <= 6 else 1
    spec = proto.trainer_spec
    spec.model_type = sp_model.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = any(int(kind) == 6 for kind in types)
    for field, key, default in (("unk_id", "unknown", 0), ("bos_id", "bos", 1), ("eos_id", "eos", 2)):
        value = _value(metadata, f"tokenizer.ggml.{key}_token_id", default)
        setattr(spec, field, int(value))
    spec.pad_id = int(_value(metadata, "tokenizer.ggml.padding_token_id", -1))
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = bool(_value(metadata, "tokenizer.ggml.add_space_prefix", True))
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "tokenizer.model").write_bytes(proto.SerializeToString())
        (work / "tokenizer_config.json").write_text(json.dumps({
            "add_bos_token": bool(_value(metadata, "tokenizer.ggml.add_bos_token", True)),
            "add_eos_token": bool(_value(metadata, "tokenizer.ggml.add_eos_token", False)),
            "model_max_length": int(_value(metadata, "llama.context_length", 2048)),
        }))
        dst.mkdir(parents=True, exist_ok=True)
        convert_sentencepiece(work, dst)
    template = _value(metadata, "tokenizer.chat_template")
    if template:
        set_chat_template(dst, template)


def convert_gguf(
    path,
    dst,
    *,
    dtype: Optional[str] = None,
    bits: Optional[int] = None,
    group_size: int = GGUF_GROUP_SIZE,
    tokenizer_dir=None,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> Path:
    """Convert a llama-family GGUF file into our format at `dst` (atomic). Returns `dst`.

    Default: keep GGUF's Q4_0/Q4_1/Q8_0 as MLX-quantized weights (group 32). `dtype` dequantizes;
    `bits` requantizes (from the dequantized weights; keep group 32 for 4-bit: 64 hurts).
    """
    from mlx_lm.utils import dequantize_model

    from mlxsmall.loading import save_model
    from mlxsmall.quantize import quantize_model

    from .tokenizer import COPIED_FILES

    path, dst = Path(path), Path(dst)
    if dst.exists() and not overwrite:
        raise MlxsmallError(f"{dst}: already exists (pass --force to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    log(f"reading {path}")
    model, config, metadata = build_gguf_model(path, dtype=dtype)
    if bits:
        existing = config.get("quantization")
        if existing and existing.get("bits") == bits and existing.get("group_size") == group_size:
            pass  # already that (modules GGUF stores with more bits, e.g. a Q8_0 embedding, keep them)
        else:
            if existing:
                dequantize_model(model)
                config.pop("quantization"), config.pop("quantization_config", None)
            log(f"quantizing to {bits} bits (group {group_size})")
            config = quantize_model(model, config, bits=bits, group_size=group_size)
    with tempfile.TemporaryDirectory(prefix=".mlxsmall-tokenizer-", dir=dst.parent) as work:
        work = Path(work)
        if tokenizer_dir is not None:
            import shutil

            for name in COPIED_FILES:
                if (Path(tokenizer_dir) / name).exists():
                    shutil.copy2(Path(tokenizer_dir) / name, work / name)
        else:
            write_gguf_tokenizer(metadata, work, path)
        log(f"saving {dst}")
        save_model(dst, model, config, tokenizer_src_dir=work, overwrite=overwrite)
    return dst

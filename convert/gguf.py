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
import mmap
import struct
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn

from mlxsmall.atomic import work_directory
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


# GGUF value types (gguf spec): scalar type -> size in bytes; 8 is a string, 9 an array.
VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY, UINT32, FLOAT64 = 8, 9, 4, 12
# ggml tensor types MLX's GGUF reader decodes: type -> (name, elements per block, bytes per block).
TENSOR_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2), 2: ("Q4_0", 32, 18),
                3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34)}
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME (bytes, llama.cpp refuses longer tensor names)
MAX_ELEMENTS = 1 << 40
_U64 = struct.Struct("<Q")


class _Cursor:
    """Reads the GGUF header from a memory map, every length checked against the bytes left."""

    def __init__(self, data, path):
        self.data, self.path, self.pos = data, path, 0

    def fail(self, what):
        return MlxsmallError(f"{self.path}: GGUF {what} (corrupt, truncated or not a llama.cpp GGUF file)")

    def take(self, count, what):
        if count > len(self.data) - self.pos:
            raise self.fail(f"{what} runs past the end of the file")
        start = self.pos
        self.pos += count
        return start

    def unpack(self, fmt, size, what):
        return struct.unpack_from(fmt, self.data, self.take(size, what))[0]

    def string(self, what):
        length = self.unpack("<Q", 8, what)
        start = self.take(length, what)
        try:
            return str(self.data[start:start + length], "utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None

    def _strings(self, count, what):
        # The tokenizer's ~100k strings: one tight loop (3x faster than calling `string` each time).
        data, pos, end, unpack = self.data, self.pos, len(self.data), _U64.unpack_from
        for index in range(count):
            if pos + 8 > end:
                raise self.fail(f"{what}[{index}] runs past the end of the file")
            (length,) = unpack(data, pos)
            pos += 8
            if length > end - pos:
                raise self.fail(f"{what}[{index}] runs past the end of the file")
            try:
                str(data[pos:pos + length], "utf-8")
            except UnicodeDecodeError:
                raise self.fail(f"{what}[{index}] is not UTF-8") from None
            pos += length
        self.pos = pos

    def value(self, kind, what):
        if kind == FLOAT64:
            raise MlxsmallError(f"{self.path}: GGUF {what} is a float64, which MLX's GGUF reader cannot read "
                                "(it crashes on one); llama.cpp writes float32")
        if kind == STRING:
            return self.string(what)
        if kind in VALUE_SIZES:
            fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[VALUE_SIZES[kind]]
            return self.unpack(fmt, VALUE_SIZES[kind], what)
        if kind == ARRAY:
            item = self.unpack("<I", 4, what)
            count = self.unpack("<Q", 8, what)
            if item == FLOAT64:
                return self.value(FLOAT64, what)
            if item == STRING:
                if count > (len(self.data) - self.pos) // 8:
                    raise self.fail(f"{what}: {count} strings cannot fit in the file")
                self._strings(count, what)
            elif item in VALUE_SIZES:
                self.take(count * VALUE_SIZES[item], f"{what} ({count} values)")
            else:
                raise self.fail(f"{what}: array of value type {item} is not supported")
            return None
        raise self.fail(f"{what}: unknown value type {kind}")


def check_gguf(path: Path) -> dict:
    """Validate the whole GGUF structure in Python before MLX's C reader sees the file.

    Counts against the file size, every key/value type and string length, each tensor's dims,
    type, byte size, offset (aligned, inside the file, not overlapping another tensor) and the
    alignment itself. Returns `{tensor name: (dims, type name)}`, dims in GGUF order (ne0 first).
    """
    with open(path, "rb") as handle:
        try:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            data = b""
    try:
        return _check_gguf(_Cursor(data, path), len(data))
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


def _check_gguf(cursor: _Cursor, size: int) -> dict:
    if cursor.unpack("4s", 4, "magic") != b"GGUF":
        raise MlxsmallError(f"{cursor.path}: not a GGUF file (bad magic)")
    version = cursor.unpack("<I", 4, "version")
    if version not in (2, 3):
        raise cursor.fail(f"version {version} is not supported (2 and 3 are)")
    tensor_count = cursor.unpack("<Q", 8, "tensor count")
    kv_count = cursor.unpack("<Q", 8, "metadata count")
    # The smallest key/value takes 13 bytes, the smallest tensor info 29: counts beyond that are lies.
    if kv_count > (size - cursor.pos) // 13 or tensor_count > (size - cursor.pos) // 29:
        raise cursor.fail(f"header counts ({tensor_count} tensors, {kv_count} metadata keys) exceed the file size")
    alignment, keys = 32, set()
    for index in range(kv_count):
        key = cursor.string(f"metadata key #{index}")
        if key in keys:
            raise cursor.fail(f"metadata key {key!r} appears twice")
        keys.add(key)
        kind = cursor.unpack("<I", 4, f"metadata {key}")
        value = cursor.value(kind, f"metadata {key}")
        if key == "general.alignment":
            if kind != UINT32 or value == 0 or value & (value - 1):
                raise cursor.fail(f"general.alignment must be a nonzero power of two (uint32), got {value!r}")
            alignment = value
    tensors, spans = {}, []
    for index in range(tensor_count):
        name = cursor.string(f"tensor name #{index}")
        if len(name.encode()) >= MAX_NAME or name in tensors:
            raise cursor.fail(f"tensor name {name[:80]!r} is too long or appears twice")
        n_dims = cursor.unpack("<I", 4, f"tensor {name} dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cursor.fail(f"tensor {name} has {n_dims} dims (1 to {MAX_DIMS} allowed)")
        dims = [cursor.unpack("<Q", 8, f"tensor {name} dims") for _ in range(n_dims)]
        kind = cursor.unpack("<I", 4, f"tensor {name} type")
        offset = cursor.unpack("<Q", 8, f"tensor {name} offset")
        if kind not in TENSOR_TYPES:
            raise MlxsmallError(f"{cursor.path}: GGUF tensor {name} has type {kind}, which is not supported "
                                f"({', '.join(t[0] for t in TENSOR_TYPES.values())} are)")
        type_name, block, block_bytes = TENSOR_TYPES[kind]
        count = 1
        for dim in dims:
            count *= dim
        if not 0 < count <= MAX_ELEMENTS or dims[0] % block:
            raise cursor.fail(f"tensor {name} has invalid dims {dims} for type {type_name}")
        if offset % alignment:
            raise cursor.fail(f"tensor {name} offset {offset} is not a multiple of the alignment {alignment}")
        tensors[name] = (tuple(dims), type_name)
        spans.append((offset, offset + count // block * block_bytes, name))
    data_start = -(-cursor.pos // alignment) * alignment
    # llama.cpp and the gguf package lay the tensors out back to back, each padded to the
    # alignment: a changed type, dim or offset shows up as an overlap or a gap.
    end = 0
    for start, stop, name in sorted(spans):
        if start != -(-end // alignment) * alignment:
            where = "overlaps the tensor before it" if start < end else "leaves a gap after the tensor before it"
            raise cursor.fail(f"tensor {name} at offset {start} {where}")
        if data_start + stop > size:
            raise cursor.fail(f"tensor {name} ends at byte {data_start + stop}, past the end of the file ({size})")
        end = stop
    if size - (data_start + end) >= alignment:
        raise cursor.fail(f"{size - data_start - end} bytes follow the last tensor (a tensor's size or type is wrong)")
    return tensors


def read_gguf(path: Path):
    """(weights, metadata, tensor infos) of a GGUF file whose whole structure was checked first."""
    path = Path(path)
    if not path.is_file():
        raise MlxsmallError(f"{path}: no such file")
    infos = check_gguf(path)
    try:
        weights, metadata = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError, OSError) as error:
        raise MlxsmallError(f"{path}: cannot read GGUF ({' '.join(str(error).split())}); truncated or unsupported?") from None
    return weights, metadata, infos


def _value(metadata, key, default=None):
    value = metadata.get(key, default)
    if isinstance(value, mx.array):
        value = value.item() if value.size == 1 else value.tolist()
    return value


def _metadata_error(source, key, value, expected):
    return MlxsmallError(f"{source}: GGUF metadata {key} = {str(value)[:60]} is not {expected}")


def _count(metadata, key, source, default=None):
    """A positive integer field (dimension, count)."""
    value = _value(metadata, key, default)
    if value is None:
        raise MlxsmallError(f"{source}: GGUF metadata lacks {key}")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _metadata_error(source, key, value, "a positive integer")
    return value


def _number(metadata, key, source, default):
    value = _value(metadata, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise _metadata_error(source, key, value, "a positive number")
    return float(value)


def _string_list(metadata, key, source, required=False):
    value = metadata.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise _metadata_error(source, key, type(value).__name__, "a list of strings")
    return value


def _int_list(metadata, key, source, length):
    value = _value(metadata, key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != length or not all(isinstance(v, int) for v in value):
        raise _metadata_error(source, key, type(value).__name__, f"a list of {length} integers")
    return value


def _token_id(metadata, key, source, vocab):
    value = _value(metadata, key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab):
        raise _metadata_error(source, key, value, f"a token id below {vocab}")
    return value


def _text(metadata, key, source):
    value = metadata.get(key)
    if value is not None and not isinstance(value, str):
        raise _metadata_error(source, key, type(value).__name__, "a string")
    return value


def gguf_config(metadata: dict, infos: dict, source) -> dict:
    """Our config for a GGUF file, every dimension checked against the tensors' dims first."""
    arch = _value(metadata, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise MlxsmallError(f"{source}: GGUF architecture {str(arch)[:40]!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")

    heads = _count(metadata, f"{arch}.attention.head_count", source)
    hidden = _count(metadata, f"{arch}.embedding_length", source)
    kv_heads = _count(metadata, f"{arch}.attention.head_count_kv", source, heads)
    if hidden % heads and f"{arch}.rope.dimension_count" not in metadata:
        raise _metadata_error(source, f"{arch}.attention.head_count", heads, f"a divisor of embedding_length {hidden}")
    if heads % kv_heads:
        raise _metadata_error(source, f"{arch}.attention.head_count_kv", kv_heads, f"a divisor of head_count {heads}")
    head_dim = _count(metadata, f"{arch}.rope.dimension_count", source, hidden // heads)
    if head_dim % 2:
        raise _metadata_error(source, f"{arch}.rope.dimension_count", head_dim, "even")
    tokens = _string_list(metadata, "tokenizer.ggml.tokens", source)
    vocab = len(tokens) if tokens else _count(metadata, f"{arch}.vocab_size", source)
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": _count(metadata, f"{arch}.block_count", source),
        "intermediate_size": _count(metadata, f"{arch}.feed_forward_length", source),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "rms_norm_eps": _number(metadata, f"{arch}.attention.layer_norm_rms_epsilon", source, 1e-5),
        "rope_theta": _number(metadata, f"{arch}.rope.freq_base", source, 10000.0),
        "max_position_embeddings": _count(metadata, f"{arch}.context_length", source, 2048),
        "tie_word_embeddings": "output.weight" not in infos,
        "hidden_act": "silu",
    }
    for key, name in (("bos_token_id", "bos"), ("eos_token_id", "eos")):
        value = _token_id(metadata, f"tokenizer.ggml.{name}_token_id", source, vocab)
        if value is not None:
            config[key] = value
    check_gguf_shapes(config, infos, source)
    return config


def check_gguf_shapes(config: dict, infos: dict, source) -> None:
    """Every tensor's dims as the config says (GGUF order: ne0 = input features), every block there.

    Done before any model is built, so that a lying `block_count` or head count is one line, not
    millions of layers or a reshape error deep inside MLX.
    """
    hidden, ffn, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q_rows = config["num_attention_heads"] * config["head_dim"]
    kv_rows = config["num_key_value_heads"] * config["head_dim"]
    expected = {"token_embd": (hidden, vocab), "output": (hidden, vocab), "output_norm": (hidden,)}
    block = {"attn_q": (hidden, q_rows), "attn_k": (hidden, kv_rows), "attn_v": (hidden, kv_rows),
             "attn_output": (q_rows, hidden), "ffn_gate": (hidden, ffn), "ffn_up": (hidden, ffn),
             "ffn_down": (ffn, hidden), "attn_norm": (hidden,), "ffn_norm": (hidden,)}
    layers = config["num_hidden_layers"]
    for name, (dims, _) in infos.items():
        parts = name.split(".")
        if parts[0] == "rope_freqs":
            continue
        if parts[-1] != "weight":
            raise MlxsmallError(f"{source}: unexpected GGUF tensor {name!r}")
        if parts[0] == "blk" and len(parts) == 4 and parts[1].isdigit() and parts[2] in block:
            if int(parts[1]) >= layers:
                raise MlxsmallError(f"{source}: GGUF tensor {name} is beyond block_count {layers}")
            want = block[parts[2]]
        elif len(parts) == 2 and parts[0] in expected:
            want = expected[parts[0]]
        else:
            raise MlxsmallError(f"{source}: unexpected GGUF tensor {name!r}")
        if tuple(dims) != want:
            raise MlxsmallError(f"{source}: GGUF tensor {name} has dims {list(dims)}, the metadata says {list(want)}")
    required = [f"blk.{i}.{base}.weight" for i in range(min(layers, len(infos) + 1)) for base in block]
    missing = [name for name in ["token_embd.weight", "output_norm.weight", *required] if name not in infos]
    if missing:
        raise MlxsmallError(f"{source}: GGUF tensor {missing[0]} is missing (block_count {layers})")


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
    raw, metadata, infos = read_gguf(path)
    config = gguf_config(metadata, infos, path)
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
    tokens = _string_list(metadata, "tokenizer.ggml.tokens", source, required=True)
    merges = _string_list(metadata, "tokenizer.ggml.merges", source) or []
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    vocab = {t: i for i, t in enumerate(tokens)}
    bad = next((m for m, pair in zip(merges, pairs) if len(pair) != 2 or pair[0] not in vocab
                or pair[1] not in vocab or "".join(pair) not in vocab), None)
    if bad is not None:
        raise _metadata_error(source, "tokenizer.ggml.merges", repr(bad), "a merge of two tokens of the vocabulary")
    types = _int_list(metadata, "tokenizer.ggml.token_type", source, len(tokens)) or [1] * len(tokens)
    try:
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=False))
    except Exception as error:  # tokenizers raises plain Exception for a vocabulary it rejects
        raise MlxsmallError(f"{source}: GGUF tokenizer metadata rejected by tokenizers ({error})") from None
    pre = _text(metadata, "tokenizer.ggml.pre", source) or "default"
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
        index = _token_id(metadata, f"tokenizer.ggml.{key}_token_id", source, len(tokens))
        return tokens[index] if index is not None else None

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
        "model_max_length": _count(metadata, "llama.context_length", source, 2048),
    }
    template = _text(metadata, "tokenizer.chat_template", source)
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

    from mlxsmall.convert.tokenizer import convert_sentencepiece, set_chat_template

    tokens = _string_list(metadata, "tokenizer.ggml.tokens", source, required=True)
    scores = _value(metadata, "tokenizer.ggml.scores") or [0.0] * len(tokens)
    if not isinstance(scores, list) or len(scores) != len(tokens) or \
            not all(isinstance(v, (int, float)) for v in scores):
        raise _metadata_error(source, "tokenizer.ggml.scores", type(scores).__name__, f"a list of {len(tokens)} numbers")
    types = _int_list(metadata, "tokenizer.ggml.token_type", source, len(tokens)) or [1] * len(tokens)
    proto = sp_model.ModelProto()
    for text, score, kind in zip(tokens, scores, types):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, float(score), int(kind) if 1 <= int(kind) <= 6 else 1
    spec = proto.trainer_spec
    spec.model_type = sp_model.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = any(int(kind) == 6 for kind in types)
    for field, key, default in (("unk_id", "unknown", 0), ("bos_id", "bos", 1), ("eos_id", "eos", 2)):
        value = _token_id(metadata, f"tokenizer.ggml.{key}_token_id", source, len(tokens))
        setattr(spec, field, default if value is None else value)
    pad = _token_id(metadata, "tokenizer.ggml.padding_token_id", source, len(tokens))
    spec.pad_id = -1 if pad is None else pad
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
            "model_max_length": _count(metadata, "llama.context_length", source, 2048),
        }))
        dst.mkdir(parents=True, exist_ok=True)
        try:
            convert_sentencepiece(work, dst)
        except (MlxsmallError, RuntimeError, OSError, ValueError) as error:
            reason = str(error).split(": ", 1)[-1] if isinstance(error, MlxsmallError) else str(error)
            raise MlxsmallError(f"{source}: GGUF SentencePiece tokenizer metadata: {' '.join(reason.split())[:160]}") from None
    template = _text(metadata, "tokenizer.chat_template", source)
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

    from mlxsmall.convert.tokenizer import COPIED_FILES

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
    with work_directory(dst.parent) as work:
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

"""GGUF import on a synthetic llama-family file written the way llama.cpp's converter writes one
(Q/K rows permuted for interleaved RoPE, gpt2-BPE tokenizer in the metadata)."""

import json
import sys
from pathlib import Path

import mlxsmall  # noqa: F401
import mlx.core as mx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from fixtures_convert import reference_logits
from mlxsmall.convert.gguf import convert_gguf
from mlxsmall.errors import MlxsmallError
from mlxsmall.loading import load_model, load_tokenizer

LAYERS, HIDDEN, HEADS, KV_HEADS, FFN = 2, 64, 4, 2, 128
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def llama_cpp_permute(weights, heads):
    # convert_hf_to_gguf.py: LlamaModel.permute
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_gguf(path, tokenizer_dir, architecture="llama", seed=0):
    """A tiny SmolLM2-like GGUF (tied embeddings, rope theta 1e5); returns its HF-layout tensors."""
    tokenizer = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    specials = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    vocab.update(specials)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS

    def matrix(rows, cols):
        return rng.standard_normal((rows, cols)).astype(np.float32) * cols ** -0.5

    hf = {"model.embed_tokens.weight": rng.standard_normal((len(tokens), HIDDEN)).astype(np.float32) * 0.5,
          "model.norm.weight": 1 + 0.1 * rng.standard_normal(HIDDEN).astype(np.float32)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        hf[p + "self_attn.q_proj.weight"] = matrix(HEADS * head_dim, HIDDEN)
        hf[p + "self_attn.k_proj.weight"] = matrix(KV_HEADS * head_dim, HIDDEN)
        hf[p + "self_attn.v_proj.weight"] = matrix(KV_HEADS * head_dim, HIDDEN)
        hf[p + "self_attn.o_proj.weight"] = matrix(HIDDEN, HEADS * head_dim)
        hf[p + "mlp.gate_proj.weight"] = matrix(FFN, HIDDEN)
        hf[p + "mlp.up_proj.weight"] = matrix(FFN, HIDDEN)
        hf[p + "mlp.down_proj.weight"] = matrix(HIDDEN, FFN)
        hf[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(HIDDEN).astype(np.float32)
        hf[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(HIDDEN).astype(np.float32)

    gguf = {"token_embd.weight": hf["model.embed_tokens.weight"], "output_norm.weight": hf["model.norm.weight"]}
    for key, value in hf.items():
        if key.startswith("model.layers."):
            _, _, index, rest = key.split(".", 3)
            module = rest[: -len(".weight")]
            if module == "self_attn.q_proj":
                value = llama_cpp_permute(value, HEADS)
            elif module == "self_attn.k_proj":
                value = llama_cpp_permute(value, KV_HEADS)
            gguf[f"blk.{index}.{GGUF_NAMES[module]}.weight"] = value
    types = [3 if t in specials else 1 for t in tokens]
    metadata = {
        "general.architecture": architecture,
        "general.name": "tiny",
        f"{architecture}.block_count": mx.array(LAYERS, dtype=mx.uint32),
        f"{architecture}.context_length": mx.array(512, dtype=mx.uint32),
        f"{architecture}.embedding_length": mx.array(HIDDEN, dtype=mx.uint32),
        f"{architecture}.feed_forward_length": mx.array(FFN, dtype=mx.uint32),
        f"{architecture}.attention.head_count": mx.array(HEADS, dtype=mx.uint32),
        f"{architecture}.attention.head_count_kv": mx.array(KV_HEADS, dtype=mx.uint32),
        f"{architecture}.attention.layer_norm_rms_epsilon": mx.array(1e-5, dtype=mx.float32),
        f"{architecture}.rope.freq_base": mx.array(100000.0, dtype=mx.float32),
        f"{architecture}.rope.dimension_count": mx.array(head_dim, dtype=mx.uint32),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": mx.array(types, dtype=mx.int32),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": mx.array(specials["<|im_start|>"], dtype=mx.uint32),
        "tokenizer.ggml.eos_token_id": mx.array(specials["<|im_end|>"], dtype=mx.uint32),
        "tokenizer.chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    }
    mx.save_gguf(str(path), {k: mx.array(v) for k, v in gguf.items()}, metadata)
    config = dict(num_hidden_layers=LAYERS, num_attention_heads=HEADS, hidden_size=HIDDEN,
                  rope_theta=100000.0, tie_word_embeddings=True)
    return {k: v.astype(np.float64) for k, v in hf.items()}, config


def test_gguf_logits_and_tokenizer(tmp_path, tiny_tokenizer_dir):
    from tokenizers import Tokenizer

    tensors, config = write_gguf(tmp_path / "tiny.gguf", tiny_tokenizer_dir)
    dst = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "out")
    model, our_config = load_model(dst)
    assert our_config["tie_word_embeddings"] and our_config["num_key_value_heads"] == KV_HEADS
    tokens = [5, 17, 99, 200, 3, 42, 7]
    ours = np.array(model(mx.array([tokens]))[0])
    expected = reference_logits(tensors, config, tokens)
    np.testing.assert_allclose(ours, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)

    original = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    tokenizer = load_tokenizer(dst)
    text = "Hello! The capital of France is Paris.<|im_end|> 1234"
    assert tokenizer.encode(text) == original.encode(text).ids
    assert tokenizer.eos_token_ids == {original.token_to_id("<|im_end|>")}
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n"


def test_gguf_dtype_and_requantize(tmp_path, tiny_tokenizer_dir):
    write_gguf(tmp_path / "tiny.gguf", tiny_tokenizer_dir)
    half = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "f16", dtype="float16")
    assert mx.load(str(half / "model.safetensors"))["model.norm.weight"].dtype == mx.float16
    q8 = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "q8", bits=8)
    assert json.loads((q8 / "config.json").read_text())["quantization"] == {"group_size": 32, "bits": 8}


def test_gguf_bad_input(tmp_path, tiny_tokenizer_dir):
    write_gguf(tmp_path / "other.gguf", tiny_tokenizer_dir, architecture="falcon")
    with pytest.raises(MlxsmallError, match="architecture 'falcon' is not supported; supported: llama"):
        convert_gguf(tmp_path / "other.gguf", tmp_path / "out")
    write_gguf(tmp_path / "tiny.gguf", tiny_tokenizer_dir)
    data = (tmp_path / "tiny.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(MlxsmallError, match="cut.gguf: GGUF tensor .* past the end of the file"):
        convert_gguf(tmp_path / "cut.gguf", tmp_path / "out")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(MlxsmallError, match="junk.gguf: not a GGUF file"):
        convert_gguf(tmp_path / "junk.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_convert_gguf(tmp_path, tiny_tokenizer_dir):
    from mlxsmall.cli import main

    write_gguf(tmp_path / "tiny.gguf", tiny_tokenizer_dir)
    assert main(["convert", str(tmp_path / "tiny.gguf"), "-o", str(tmp_path / "out"), "--dtype", "float32"]) == 0
    assert "quantization" not in json.loads((tmp_path / "out" / "config.json").read_text())


@pytest.mark.parametrize("key, value, message", [
    ("llama.block_count", mx.array(2**31 - 1, dtype=mx.uint32), "blk.2.attn_q.weight is missing"),
    ("llama.attention.head_count", mx.array(0, dtype=mx.uint32), "head_count = 0 is not a positive integer"),
    ("llama.attention.head_count", mx.array(3, dtype=mx.uint32), "head_count_kv = 2 is not a divisor of head_count 3"),
    ("tokenizer.ggml.tokens", mx.arange(10, dtype=mx.int32), "tokenizer.ggml.tokens = array is not a list of strings"),
    ("tokenizer.ggml.merges", ["zz zz"], "tokenizer.ggml.merges = 'zz zz' is not a merge of two tokens"),
    ("general.alignment", mx.array(0, dtype=mx.uint32), "general.alignment must be a nonzero power of two"),
])
def test_lying_metadata_is_one_line(tmp_path, tiny_tokenizer_dir, monkeypatch, key, value, message):
    save = mx.save_gguf

    def save_edited(path, arrays, metadata):
        save(path, arrays, {**metadata, key: value})

    monkeypatch.setattr(mx, "save_gguf", save_edited)
    write_gguf(tmp_path / "tiny.gguf", tiny_tokenizer_dir)
    with pytest.raises(MlxsmallError, match=message) as error:
        convert_gguf(tmp_path / "tiny.gguf", tmp_path / "out")
    assert "tiny.gguf" in str(error.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("offset, value, message", [
    (16, 0, "GGUF tensor"),  # metadata count 0: the metadata is read as tensor infos
    (8, 1000, "GGUF tensor .* dims|exceed the file size|runs past the end"),
    (8, 2**63, "exceed the file size"),
    (4, 7, "version 7 is not supported"),
])
def test_header_field_edits_are_refused_before_mlx(tmp_path, tiny_tokenizer_dir, offset, value, message):
    write_gguf(tmp_path / "tiny.gguf", tiny_tokenizer_dir)
    data = bytearray((tmp_path / "tiny.gguf").read_bytes())
    size = 4 if offset == 4 else 8
    data[offset:offset + size] = value.to_bytes(size, "little")
    (tmp_path / "tiny.gguf").write_bytes(bytes(data))
    with pytest.raises(MlxsmallError, match=message):
        convert_gguf(tmp_path / "tiny.gguf", tmp_path / "out")

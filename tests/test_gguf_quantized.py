"""GGUF with llama.cpp's own quantization (Q4_0, Q4_1, Q8_0) and a LLaMA SentencePiece tokenizer in
the metadata, written with llama.cpp's `gguf` Python package; the reference dequantizes with that
package too (independent of MLX's GGUF reader) and runs a numpy forward in llama.cpp's layout."""

import sys
from pathlib import Path

import mlxsmall  # noqa: F401
import mlx.core as mx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from fixtures_convert import gguf_reference_logits, train_sentencepiece, write_llama_gguf
from mlxsmall.convert.gguf import convert_gguf
from mlxsmall.loading import load_model, load_tokenizer

gguf = pytest.importorskip("gguf")

LAYERS, HIDDEN, HEADS, KV_HEADS, FFN, THETA, EPS = 2, 64, 4, 2, 128, 10000.0, 1e-5
Q = gguf.GGMLQuantizationType
TENSOR_TYPES = {"attn_q": Q.Q4_0, "attn_k": Q.Q4_0, "attn_v": Q.Q8_0, "attn_output": Q.Q4_1,
                "ffn_gate": Q.Q4_1, "ffn_up": Q.Q4_0, "ffn_down": Q.Q8_0}


def write_quantized_gguf(path, sp_model_file):
    from sentencepiece import sentencepiece_model_pb2 as sp_model

    proto = sp_model.ModelProto()
    proto.ParseFromString(Path(sp_model_file).read_bytes())

    def tokenizer(writer):
        writer.add_tokenizer_model("llama")
        writer.add_token_list([p.piece for p in proto.pieces])
        writer.add_token_scores([p.score for p in proto.pieces])
        writer.add_token_types([int(p.type) for p in proto.pieces])
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
        writer.add_add_bos_token(True)
        writer.add_chat_template("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
        return len(proto.pieces)

    return write_llama_gguf(path, tokenizer, matrix_types=TENSOR_TYPES, seed=3, context=256, rope_base=THETA, eps=EPS,
                            layers=LAYERS, hidden=HIDDEN, heads=HEADS, kv_heads=KV_HEADS, ffn=FFN)


def test_quantized_gguf_with_sentencepiece_tokenizer(tmp_path):
    import sentencepiece as spm

    sp_file = train_sentencepiece(tmp_path / "sp")
    tensors = write_quantized_gguf(tmp_path / "q.gguf", sp_file)
    dst = convert_gguf(tmp_path / "q.gguf", tmp_path / "out")
    model, config = load_model(dst, dtype="float32")  # fp32 scales: the same arithmetic as llama.cpp
    assert config["quantization"]["group_size"] == 32
    assert config["quantization"]["bits"] == 4
    assert config["quantization"]["model.layers.0.self_attn.v_proj"]["bits"] == 8

    tokens = [1, 15, 27, 99, 140, 7, 300]
    expected = gguf_reference_logits(tensors.__getitem__, layers=LAYERS, heads=HEADS, kv_heads=KV_HEADS,
                                     theta=THETA, eps=EPS, tokens=tokens)
    ours = np.array(model(mx.array([tokens]))[0])
    np.testing.assert_allclose(ours, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)

    processor = spm.SentencePieceProcessor(model_file=str(sp_file))
    tokenizer = load_tokenizer(dst)
    text = "The capital of France is Paris. 42\n  ünï"
    assert tokenizer.encode(text) == [1] + processor.encode(text)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "[user] hi\n"

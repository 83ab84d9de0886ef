"""The one weight format: save -> load -> quantize -> load, sharing kept, bad input."""

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from mlxsmall.errors import MlxsmallError
from mlxsmall.loading import load_model, save_model
from mlxsmall.quantize import quantize_model

ARCHS = ["mobilellm", "mobilellm-ls", "mobillama", "mobillama-1b", "llama"]


def logits(model, n=16):
    return np.array(model(mx.arange(n)[None] % 300))


def relative_error(a, b):
    """Relative L2 error of the logits."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_quantize_load_round_trip(make_tiny_model, tmp_path, arch):
    path = make_tiny_model(arch)
    model, config = load_model(path)
    reference = logits(model)

    again, _ = load_model(path)
    np.testing.assert_array_equal(logits(again), reference)

    errors = {}
    for bits in (8, 4):
        model, config = load_model(path)
        qconfig = quantize_model(model, config, bits=bits, group_size=32)
        quantized = logits(model)
        save_model(tmp_path / f"q{bits}", model, qconfig, tokenizer_src_dir=path)
        reloaded, reconfig = load_model(tmp_path / f"q{bits}")
        assert reconfig["quantization"]["bits"] == bits
        np.testing.assert_array_equal(logits(reloaded), quantized)
        errors[bits] = relative_error(quantized, reference)
    print(f"{arch}: relative L2 logit error q8 {errors[8]:.4f}, q4 {errors[4]:.4f}")
    assert errors[8] < 0.02
    assert errors[4] < 0.35  # random uniform weights: ~6% error per matrix at 4 bits
    assert errors[8] < errors[4]


def test_shared_ffn_is_stored_and_quantized_once(make_tiny_model):
    path = make_tiny_model("mobillama", bits=4)
    header = json.loads(open(path / "model.safetensors.index.json").read())["weight_map"]
    mlp_keys = sorted(k for k in header if "mlp" in k)
    assert mlp_keys == sorted(
        f"model.shared_mlp.{p}.{s}" for p in ("down_proj", "gate_proj", "up_proj") for s in ("biases", "scales", "weight")
    )
    model, _ = load_model(path)
    assert model.applied_parameters > model.unique_parameters


def test_layer_shared_blocks_stored_once(make_tiny_model):
    path = make_tiny_model("mobilellm-ls")
    weight_map = json.loads(open(path / "model.safetensors.index.json").read())["weight_map"]
    assert {int(k.split(".")[2]) for k in weight_map if k.startswith("model.layers.")} == {0, 1, 2, 3}


def test_mixed_recipe_writes_per_module_overrides(make_tiny_model, tmp_path):
    model, config = load_model(make_tiny_model("mobillama"))
    qconfig = quantize_model(model, config, group_size=32, recipe="mixed_3_6")
    block = qconfig["quantization"]
    assert block["bits"] == 3
    assert block["model.shared_mlp.down_proj"] == {"group_size": 32, "bits": 6}
    save_model(tmp_path / "mixed", model, qconfig)
    reloaded, _ = load_model(tmp_path / "mixed")
    assert reloaded.model.shared_mlp.down_proj.bits == 6
    assert reloaded.model.layers[1].self_attn.q_proj.bits == 3


def test_large_models_are_sharded(make_tiny_model, tmp_path, monkeypatch):
    import mlx_lm.utils

    def ten_tensors_a_shard(weights, *args, **kwargs):  # mlx-lm's limit is whole GB
        items = list(weights.items())
        return [dict(items[i : i + 10]) for i in range(0, len(items), 10)]

    monkeypatch.setattr(mlx_lm.utils, "make_shards", ten_tensors_a_shard)
    model, config = load_model(make_tiny_model("mobilellm"))
    save_model(tmp_path / "sharded", model, config)
    assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) > 1
    reloaded, _ = load_model(tmp_path / "sharded")
    np.testing.assert_array_equal(logits(reloaded), logits(model))


# ---------------------------------------------------------------- bad input


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (path / "config.json").write_text(json.dumps(config))


def test_missing_config_field(make_tiny_model):
    path = make_tiny_model("mobilellm")
    edit_config(path, hidden_size=None)
    with pytest.raises(MlxsmallError, match=r"config.json: missing field\(s\) 'hidden_size'"):
        load_model(path)


def test_unknown_architecture_lists_supported(make_tiny_model):
    path = make_tiny_model("mobilellm")
    edit_config(path, model_type="gpt5")
    with pytest.raises(MlxsmallError, match="unknown model_type 'gpt5'; supported: llama, llava, mobilellm, mobillama"):
        load_model(path)


def test_wrong_shape_names_file_and_key(make_tiny_model):
    path = make_tiny_model("mobilellm")
    weights = mx.load(str(path / "model.safetensors"))
    weights["model.layers.1.self_attn.q_proj.weight"] = mx.zeros((3, 3))
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    with pytest.raises(MlxsmallError, match=r"model.safetensors: model.layers.1.self_attn.q_proj.weight"):
        load_model(path)


def test_unknown_key_is_named(make_tiny_model):
    path = make_tiny_model("mobilellm")
    weights = mx.load(str(path / "model.safetensors"))
    weights["model.layers.0.mystery.weight"] = mx.zeros((2,))
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    with pytest.raises(MlxsmallError, match=r"model.layers.0.mystery.weight"):
        load_model(path)


def test_truncated_safetensors_names_file(make_tiny_model):
    path = make_tiny_model("mobilellm")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(MlxsmallError, match=r"model.safetensors: .*truncated"):
        load_model(path)


def test_cli_reports_bad_input_in_one_line(make_tiny_model):
    path = make_tiny_model("mobillama")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:100])
    result = subprocess.run(
        [sys.executable, "-m", "mlxsmall", "info", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlxsmall: error:") and "model.safetensors" in lines[0]
    assert "Traceback" not in result.stderr


def test_interrupted_save_leaves_nothing(make_tiny_model, tmp_path, monkeypatch):
    import mlxsmall.loading as loading

    model, config = load_model(make_tiny_model("mobilellm"))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loading, "save_config", interrupted)
    (tmp_path / "dst").mkdir()
    with pytest.raises(KeyboardInterrupt):
        save_model(tmp_path / "dst" / "out", model, config)
    assert list((tmp_path / "dst").iterdir()) == []


def test_full_disk_is_a_clear_error(make_tiny_model, tmp_path, monkeypatch):
    import errno

    import mlxsmall.loading as loading

    model, config = load_model(make_tiny_model("mobilellm"))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(loading, "mlx_lm_save_weights", disk_full)
    (tmp_path / "dst").mkdir()
    with pytest.raises(MlxsmallError, match="No space left on device"):
        save_model(tmp_path / "dst" / "out", model, config)
    assert list((tmp_path / "dst").iterdir()) == []

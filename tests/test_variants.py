"""Precision variants of `bench` / `eval --compare` are the models users run:
what `mlxsmall quantize` writes, loaded the way `load` runs it."""

import os
import re
import subprocess
import sys

import mlxsmall  # noqa: F401  (preloads OpenBLAS before mlx)
import mlx.core as mx
import pytest

from mlxsmall import events
from mlxsmall.cli import build_parser
from mlxsmall.errors import MlxsmallError
from mlxsmall.eval.variants import Variant, load_variant, parse_variant
from mlxsmall.hub import load
from mlxsmall.loading import running_on_cpu
from mlxsmall.quantize import quantize_model


def run_cli(tmp_path, *args):
    env = dict(os.environ, HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "mlxsmall", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def logits(model, tokens=(5, 17, 42, 9, 3)):
    out = model(mx.array([list(tokens)]))
    mx.eval(out)
    return out


@pytest.mark.skipif(not running_on_cpu(), reason="the fp32 run policy is the CPU one")
def test_q4_variant_is_quantize_then_load(make_tiny_model, tmp_path):
    source = make_tiny_model("llama")
    written = tmp_path / "q4"
    result = run_cli(tmp_path, "quantize", str(source), "-o", str(written), "--bits", "4")
    assert result.returncode == 0, result.stderr

    variant, _, config = load_variant(Variant(str(source), "q4"))
    # Norms (and so the hidden state) stay fp32 on CPU: fp16 activations make MLX's CPU
    # quantized matmul ~30x slower, which is what the old variants measured.
    assert variant.model.norm.weight.dtype == mx.float32
    assert variant.layers[0].input_layernorm.weight.dtype == mx.float32
    assert variant.layers[0].self_attn.q_proj.scales.dtype == mx.float32
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 64

    reference, _ = load(written, dequantize=False)  # quantized kernels, as `--dtype auto` casts floats
    assert mx.array_equal(logits(variant), logits(reference)).item()

    dense, _, _ = load_variant(Variant(str(source), "q4"), dequantize_after=True)
    default_load, _ = load(written)  # CPU default: expanded to fp32
    assert mx.allclose(logits(dense), logits(default_load), atol=1e-5).item()


def test_variant_bits_are_the_quantize_commands():
    assert parse_variant("q5g32", "m") == Variant("m", "q5g32")
    with pytest.raises(MlxsmallError) as refused_by_quantize:
        quantize_model(None, {}, bits=7)
    with pytest.raises(MlxsmallError, match="unknown precision 'q7'.*--bits 2/3/4/5/6/8") as refused_as_variant:
        parse_variant("q7", "m")
    assert str(refused_by_quantize.value) in str(refused_as_variant.value)  # the same words


@pytest.mark.parametrize("name", [f"q{bits}" + group for bits in range(1, 10) for group in ("", "g16", "g32", "g128")]
                         + ["mixed_3_6", "mixed_4_6", "mixed_9_9"])
def test_a_variant_is_exactly_what_quantize_accepts(name, capsys):
    level = re.fullmatch(r"q(\d+)(?:g(\d+))?", name)
    options = ["--bits", level[1], "--group-size", level[2] or "64"] if level else ["--mixed", name]
    try:
        build_parser().parse_args(["quantize", "m", "-o", "out", *options])
        quantize_accepts = True
    except SystemExit:
        quantize_accepts = False
    try:
        parse_variant(f"m@{name}", None)
        variant_accepted = True
    except MlxsmallError:
        variant_accepted = False
    assert variant_accepted == quantize_accepts, name


def test_quantized_base_warns(make_tiny_model, tmp_path):
    source = make_tiny_model("mobilellm", bits=4, group_size=32)
    seen = []
    unsubscribe = events.subscribe(lambda event: seen.append(event))
    try:
        load_variant(Variant(str(source), "q8"))
    finally:
        unsubscribe()
    warnings = [e["message"] for e in seen if e.kind == "warning"]
    assert len(warnings) == 1 and "already quantized (4-bit, group 32)" in warnings[0]

    result = run_cli(tmp_path, "quantize", str(source), "-o", str(tmp_path / "q8"), "--bits", "8")
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stdout + result.stderr and "already quantized" in result.stdout + result.stderr

"""The efficiency bench on a tiny model: structure of the numbers, never their size."""

import json

import mlxsmall  # noqa: F401  (preloads OpenBLAS before mlx)
import pytest

from mlxsmall.measure.bench import BenchOptions, bench_variants, random_prompt
from mlxsmall.eval.report import bench_markdown, plot_bench
from mlxsmall.eval.variants import Variant


class FakeMeter:
    """A power meter that adds one joule per reading, to check the energy arithmetic."""

    available = True

    def __init__(self):
        self.joules = 0.0

    def read_joules(self):
        self.joules += 1.0
        return self.joules

    def describe(self):
        return "fake"


class NoMeter:
    available = False

    def read_joules(self):
        return None

    def describe(self):
        return "n/a (no energy source on this machine)"


def test_random_prompt_is_seeded_and_in_range():
    a, b = random_prompt(320, 64, seed=3), random_prompt(320, 64, seed=3)
    assert a == b and len(a) == 64 and all(80 <= t < 240 for t in a)


def test_bench_variants_with_baseline(make_tiny_model):
    path = str(make_tiny_model("mobillama"))
    options = BenchOptions(prompt_tokens=16, generation_tokens=5, repetitions=2, warmup=1, baseline="mlx-lm")
    rows = bench_variants([Variant(path, "fp32"), Variant(path, "q4")], options, meter=FakeMeter())
    assert [row["precision"] for row in rows] == ["fp32", "q4"]
    for row in rows:
        assert len(row["runs"]) == 2  # the warm-up run is not counted
        assert all(run["generated"] == 5 for run in row["runs"])  # end-of-sequence ignored
        for key in ("ttft_ms", "prompt_tps", "generation_tps"):
            assert row[f"{key}_mean"] > 0 and row[f"{key}_std"] >= 0
        # one reading before, one at the first token, one at the end: 1 J each
        assert row["joules_per_token_mean"] == pytest.approx(1 / 4)
        assert row["prefill_joules_per_token_mean"] == pytest.approx(1 / 16)
        assert row["baseline"]["name"] == "mlx-lm llama" and row["baseline"]["generation_tps_ratio"] > 0
    assert rows[0]["bits_per_weight"] == pytest.approx(32.0)
    assert rows[1]["bits_per_weight"] < 8 and rows[1]["weights_gb"] < rows[0]["weights_gb"]
    table = bench_markdown(rows)
    assert "pp16/tg5, 2 timed runs after 1 warm-up" in table and "mlx-lm llama" in table


def test_energy_is_na_without_a_meter(make_tiny_model, tmp_path):
    path = str(make_tiny_model("llama"))
    options = BenchOptions(prompt_tokens=8, generation_tokens=3, repetitions=1, warmup=0)
    rows = bench_variants([Variant(path, None)], options, meter=NoMeter())
    assert rows[0]["joules_per_token_mean"] is None
    table = bench_markdown(rows)
    assert "| n/a |" in table and "Energy: n/a (no energy source on this machine)." in table
    assert plot_bench(rows, tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_cli(make_tiny_model, tmp_path, capsys, monkeypatch):
    from mlxsmall.cli import main
    from mlxsmall.measure import UnavailableMeter

    hint = "pynvml not installed (pip install 'mlxsmall[nvidia]')"
    monkeypatch.setattr("mlxsmall.measure.open_power_meter", lambda: UnavailableMeter(hint))
    path = make_tiny_model("llama")
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", str(path), "--precisions", "fp16", "q8", "mixed_3_6", "-p", "8", "-n", "2", "-r", "1",
                 "--warmup", "0", "-o", str(out), "--plot", str(plot)])
    assert code == 0
    captured = capsys.readouterr()
    assert "| llama-0@mixed_3_6 |" in captured.out
    assert hint in captured.err  # `[nvidia]` is not eaten as rich markup
    rows = json.loads(out.read_text())["rows"]
    assert [row["precision"] for row in rows] == ["fp16", "q8", "mixed_3_6"]
    assert plot.exists() and out.with_suffix(".md").exists()


def test_bench_cli_rejects_bad_counts(capsys):
    from mlxsmall.cli import main

    with pytest.raises(SystemExit) as exited:  # an argparse error now: before anything is imported
        main(["bench", "-r", "0"])
    assert exited.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err

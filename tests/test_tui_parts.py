"""The dashboard's parts without a screen: the MLX worker, the metrics fold, the bench sweep and
its exports, and the `mlxsmall dashboard` command line."""

import csv
import io
import json
import threading

import pytest

from mlxsmall.cli import main as cli_main
from mlxsmall.errors import MlxsmallError
from mlxsmall.events import Event
from mlxsmall.measure import MemorySnapshot, UnavailableMeter
from mlxsmall.measure.nvml import NvmlMeter
from mlxsmall.measure import sweep as bench
from mlxsmall.tui.metrics import DashboardMetrics
from mlxsmall.tui.worker import Cancelled, MLXWorker

# --- worker -----------------------------------------------------------------------------------


def test_worker_runs_jobs_in_order_on_one_thread():
    worker = MLXWorker()
    try:
        seen = []
        futures = [worker.submit(lambda i=i: seen.append((i, threading.current_thread())) or i) for i in range(5)]
        assert [f.result(timeout=10) for f in futures] == list(range(5))
        assert [i for i, _ in seen] == list(range(5))
        assert {thread for _, thread in seen} == {worker.thread}
        assert worker.thread is not threading.main_thread()

        failing = worker.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=10)
        assert worker.submit(lambda: "still alive").result(timeout=10) == "still alive"
    finally:
        assert worker.stop()


def test_worker_cancel_reaches_a_running_job_and_stop_drops_the_queue():
    worker = MLXWorker()
    started = threading.Event()

    def long_job():
        started.set()
        while True:
            worker.check()

    running = worker.submit(long_job)
    queued = worker.submit(lambda: "never")
    assert started.wait(10)
    assert worker.stop(timeout=10)
    with pytest.raises(Cancelled):
        running.result(timeout=1)
    assert queued.cancelled()


# --- metrics fold -----------------------------------------------------------------------------


def generation(phase, **fields):
    return Event("generation", dict(phase=phase, **fields))


def test_metrics_fold_generation_and_telemetry_events():
    metrics = DashboardMetrics()
    metrics.apply(generation("start", prompt_tokens=7))
    assert metrics.generating and metrics.started == 1
    step = dict(prompt_tokens=7, prompt_tps=70.0, time_to_first_token=0.1, peak_memory=0.01)
    metrics.apply(generation("token", text="Hel", generation_tokens=1, generation_tps=0.0, **step))
    metrics.apply(generation("token", text="lo", generation_tokens=2, generation_tps=20.0, **step))
    metrics.apply(generation("done", text="!", generation_tokens=3, generation_tps=21.0,
                             finish_reason="length", **step))
    assert metrics.text == "Hello!"
    assert metrics.request_tps == [20.0, 21.0]  # the first token's rate is left out
    assert not metrics.generating
    assert metrics.per_request_tps == [21.0] and metrics.total_tokens == 3
    assert metrics.prompt_tps == 70.0 and metrics.time_to_first_token == 0.1

    snapshot = MemorySnapshot(0.5, 0.6, 0.0, 0.9)
    metrics.apply(Event("telemetry", dict(memory=snapshot, joules_per_token=0.25, request_done=True)))
    assert metrics.memory is snapshot
    assert metrics.requests[-1].joules_per_token == 0.25

    version = metrics.version
    metrics.apply(Event("train", dict(loss=1.0)))  # other feeds do not disturb this view
    assert metrics.version == version

    metrics.apply(generation("start", prompt_tokens=3))
    assert metrics.text == "" and metrics.request_tps == [] and metrics.started == 2
    metrics.stopped()
    assert not metrics.generating


# --- bench ------------------------------------------------------------------------------------


def test_available_levels():
    assert bench.available_levels({}, on_cpu=True) == ["fp32", "q8", "q4"]
    assert bench.available_levels({"torch_dtype": "bfloat16"}, on_cpu=False) == ["bf16", "q8", "q4"]
    assert bench.available_levels({"quantization": {"bits": 4, "group_size": 32}}, on_cpu=True) == ["q4", "fp32"]


def test_stat_mean_and_sample_std():
    stat = bench.Stat.of([10.0, 12.0, 14.0])
    assert stat.mean == pytest.approx(12.0) and stat.std == pytest.approx(2.0)
    assert bench.Stat.of([5.0]).std == 0.0
    assert bench.Stat.of([None, None]) is None
    assert str(stat) == "12.0 ± 2.0"


def fixed_report():
    return bench.BenchReport(
        model="/models/tiny", config=bench.BenchConfig(prompt_lengths=(128,), repeats=2),
        power_source="RAPL package-0", device="Device(cpu, 0)", created=0.0,
        rows=[
            bench.BenchRow("fp32", 128, 2, 128, bench.Stat(240.0, 4.0), bench.Stat(16.5, 0.5),
                           bench.Stat(530.0, 10.0), 0.56, bench.Stat(0.8, 0.05)),
            bench.BenchRow("q4", 128, 2, 120, bench.Stat(110.0, 2.0), bench.Stat(7.5, 0.1),
                           bench.Stat(1100.0, 20.0), 0.11, None),
        ])


def test_exports_json_csv_markdown(tmp_path):
    report = fixed_report()
    paths = bench.export(report, tmp_path, stem="run")
    assert [p.name for p in paths] == ["run.json", "run.csv", "run.md"]
    assert not list(tmp_path.glob(".*.tmp"))

    data = json.loads((tmp_path / "run.json").read_text())
    assert data["rows"][0]["generation_tps"] == {"mean": 16.5, "std": 0.5}
    assert data["rows"][1]["joules_per_token"] is None
    assert data["power_source"] == "RAPL package-0"

    rows = list(csv.DictReader(io.StringIO((tmp_path / "run.csv").read_text())))
    assert rows[0]["level"] == "fp32" and float(rows[0]["joules_per_token_mean"]) == 0.8
    assert rows[1]["joules_per_token_mean"] == "n/a"

    markdown = (tmp_path / "run.md").read_text()
    assert "| fp32 | 128 | 128 | 240.0 ± 4.0 | 16.5 ± 0.5 | 530 ± 10 | 0.560 | 0.800 ± 0.050 |" in markdown
    assert "| q4 | 128 | 120 |" in markdown and markdown.rstrip().endswith("| n/a |")
    assert "power: RAPL package-0" in markdown


def test_synthetic_prompt_is_fixed_and_avoids_special_tokens(make_tiny_model):
    from mlxsmall.loading import load_tokenizer

    tokenizer = load_tokenizer(make_tiny_model("llama"))
    prompt = bench.synthetic_prompt(tokenizer, 64, seed=3)
    assert len(prompt) == 64 and prompt == bench.synthetic_prompt(tokenizer, 64, seed=3)
    specials = set(tokenizer.all_special_ids) | set(tokenizer.eos_token_ids)
    assert not specials & set(prompt)


class StepMeter(NvmlMeter):
    """An NVML meter whose recorded counter rises 1 J per reading."""

    def __init__(self):
        class Counter:
            value = 0

            def nvmlInit(self):
                pass

            def nvmlDeviceGetCount(self):
                return 1

            def nvmlDeviceGetHandleByIndex(self, index):
                return index

            def nvmlDeviceGetTotalEnergyConsumption(self, handle):
                self.value += 1000
                return self.value

        super().__init__(Counter())


def test_sweep_levels_of_a_stored_4bit_model(make_tiny_model):
    path = make_tiny_model("llama", bits=4)
    rows_seen = []
    report = bench.run_sweep(
        path, bench.BenchConfig(prompt_lengths=(8,), generation_tokens=3, repeats=2, warmup=False),
        meter=StepMeter(), on_row=lambda row, done, total: rows_seen.append((row.level, done, total)),
    )
    assert rows_seen == [("q4", 1, 2), ("fp32", 2, 2)]
    assert report.power_source == "NVML (1 GPU)"
    for row in report.rows:
        assert row.runs == 2 and row.generation_tps.mean > 0 and row.peak_memory_gb > 0
        # one reading at the first token, one at the end: 1 J over the decoded tokens
        assert row.joules_per_token.mean == pytest.approx(1.0 / (row.generated_tokens - 1))


def test_sweep_stops_when_cancelled(make_tiny_model):
    path = make_tiny_model("llama")

    def cancel():
        raise Cancelled()

    with pytest.raises(Cancelled):
        bench.run_sweep(path, bench.BenchConfig(prompt_lengths=(8,), generation_tokens=3, repeats=1),
                        meter=UnavailableMeter("none"), check_cancel=cancel)


def test_load_level_builds_levels_as_bench_does(make_tiny_model):
    """The sweep's levels come from the one variant builder: the stored level is the model as
    saved; re-quantizing a quantized model says so (a warning event) instead of posing as q8."""
    from mlxsmall import events

    path = make_tiny_model("llama", bits=4)
    seen = []
    unsubscribe = events.subscribe(lambda event: seen.append(event))
    try:
        bench.load_level(path, "q4")
        assert not [e for e in seen if e.kind == "warning"]
        bench.load_level(path, "q8")
    finally:
        unsubscribe()
    assert any(e.kind == "warning" and "already quantized" in str(e.fields) for e in seen)


# --- command line -----------------------------------------------------------------------------


def test_dashboard_help_teaches(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["dashboard", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for words in ("--serve", "--port", "Ctrl+C", "Esc stops", "J/token", "--bench-repeats"):
        assert words in text


def test_dashboard_bad_bench_option_is_one_line(capsys):
    assert cli_main(["dashboard", "--bench-prompts", "12x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlxsmall: error: --bench-prompts") and err.count("\n") == 1


def test_serve_command_reruns_this_dashboard_without_serve_options():
    from mlxsmall.commands.dashboard import serve_command

    command = serve_command(["dashboard", "./m", "--serve", "--port", "9000", "--host=0.0.0.0", "-m", "64",
                             "--public-url", "http://mac.local:9000"])
    assert command.endswith("-m mlxsmall dashboard ./m -m 64")


def test_public_url_is_reachable_from_other_machines():
    import argparse

    from mlxsmall.commands.dashboard import public_url

    assert public_url(argparse.Namespace(public_url="http://mac.local:9000/", host="0.0.0.0", port=1)) \
        == "http://mac.local:9000"
    assert public_url(argparse.Namespace(public_url=None, host="192.168.1.5", port=8000)) == "http://192.168.1.5:8000"

    class Probe:  # stands in for the socket: the test touches no address but loopback
        sent = []

        def __init__(self, *args):
            pass

        def connect(self, address):
            self.sent.append(("connect", address))

        def getsockname(self):
            return ("192.168.7.9", 40000)

        def send(self, *args):
            self.sent.append(("send", args))

        sendto = send

        def close(self):
            pass

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("socket.socket", Probe)
        lan = public_url(argparse.Namespace(public_url=None, host="0.0.0.0", port=8000))
    assert lan == "http://192.168.7.9:8000"
    assert [kind for kind, _ in Probe.sent] == ["connect"]  # the route is picked; nothing is sent


def test_bench_config_from_arguments():
    import argparse

    from mlxsmall.commands.dashboard import bench_config

    args = argparse.Namespace(bench_prompts="64, 256", bench_generate=32, bench_repeats=5)
    assert bench_config(args) == bench.BenchConfig(prompt_lengths=(64, 256), generation_tokens=32, repeats=5)
    with pytest.raises(MlxsmallError):
        bench_config(argparse.Namespace(bench_prompts="0", bench_generate=32, bench_repeats=5))

"""Power and memory sources: parsing of recorded samples and the watts / J-per-token arithmetic."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from mlxsmall.measure import EnergyReading, EnergyWindow, UnavailableMeter, memory_snapshot, open_power_meter
from mlxsmall.measure.ioreport import IOReportMeter, parse_ioreport_energy
from mlxsmall.measure.memory import parse_proc_status_rss
from mlxsmall.measure.nvml import NvmlMeter, nvml_joules_since
from mlxsmall.measure.powermetrics import PowermetricsMeter, parse_powermetrics_sample, parse_powermetrics_stream
from mlxsmall.measure.rapl import RaplMeter, find_rapl_zones, rapl_delta_uj

SAMPLES = Path(__file__).parent / "samples"


# --- memory -----------------------------------------------------------------------------------


def test_memory_snapshot_reports_mlx_counters_and_rss():
    import mlx.core as mx

    keep = mx.ones((256, 1024))  # 1 MiB of float32 kept alive
    mx.eval(keep)
    snap = memory_snapshot()
    assert snap.active_gb is not None and snap.active_gb >= 256 * 1024 * 4 / 1e9
    assert snap.peak_gb >= snap.active_gb
    assert snap.cache_gb is not None and snap.cache_gb >= 0
    assert snap.rss_gb is not None and snap.rss_gb > 0.01  # python + mlx are tens of MB


def test_proc_status_rss_parsing():
    text = (SAMPLES / "proc_status.txt").read_text()
    assert parse_proc_status_rss(text) == pytest.approx(845312 * 1024 / 1e9)
    assert parse_proc_status_rss("Name:\tpython\n") is None


# --- RAPL -------------------------------------------------------------------------------------


@pytest.fixture
def powercap(tmp_path):
    root = tmp_path / "powercap"
    shutil.copytree(SAMPLES / "powercap", root)
    return root


def test_rapl_finds_package_zones_only(powercap):
    zones = find_rapl_zones(powercap)
    # sub-zones (core, dram under package-0) and the MMIO mirror of package-0 are not summed again
    assert [zone.name for zone in zones] == ["package-0", "package-1"]
    assert zones[0].max_energy_range_uj == 262143328850


def test_rapl_delta_handles_wrap_around():
    assert rapl_delta_uj(100, 350, 1000) == 250
    assert rapl_delta_uj(900, 50, 1000) == 150  # wrapped past max_energy_range_uj
    assert rapl_delta_uj(900, 50, 0) == 0  # unknown range: no invented energy


def test_rapl_meter_accumulates_across_wrap(powercap):
    meter = RaplMeter(powercap)
    assert meter.available and meter.name == "RAPL package-0+package-1"
    assert meter.read_joules() == 0.0
    # package-0 sits 328850 uJ below its wrap point; it wraps and reaches 1_000_000
    (powercap / "intel-rapl:0" / "energy_uj").write_text("1000000\n")
    (powercap / "intel-rapl:1" / "energy_uj").write_text("3000000\n")
    assert meter.read_joules() == pytest.approx((328850 + 1_000_000 + 2_000_000) / 1e6)
    (powercap / "intel-rapl:0" / "energy_uj").write_text("1500000\n")
    assert meter.read_joules() == pytest.approx((328850 + 1_500_000 + 2_000_000) / 1e6)


def test_rapl_missing_or_unreadable_gives_reason(tmp_path, powercap, monkeypatch):
    missing = RaplMeter(tmp_path / "nothing-here")
    assert not missing.available and "no RAPL in" in missing.reason
    assert missing.read_joules() is None

    def deny(zone):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(RaplMeter, "_read_raw", staticmethod(deny))
    denied = RaplMeter(powercap)
    assert not denied.available
    assert "not readable" in denied.reason and "energy_uj" in denied.reason
    assert denied.describe().startswith("n/a (")


# --- NVML -------------------------------------------------------------------------------------


class FakeNvml:
    """Replays recorded nvmlDeviceGetTotalEnergyConsumption readings."""

    def __init__(self, readings):
        self.readings = readings
        self.calls = 0

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.readings[0])

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        row = self.readings[min(self.calls // len(self.readings[0]), len(self.readings) - 1)]
        self.calls += 1
        return row[handle]

    def nvmlShutdown(self):
        pass


def test_nvml_recorded_readings():
    sample = json.loads((SAMPLES / "nvml_energy.json").read_text())
    start, end = sample["readings_mj"]
    assert nvml_joules_since(start, end) == pytest.approx(900.0)  # 600 J + 300 J
    meter = NvmlMeter(FakeNvml(sample["readings_mj"]))
    assert meter.available and meter.name == "NVML (2 GPUs)"
    assert meter.read_joules() == pytest.approx(900.0)
    window = _window(0.0, meter.read_joules(), 0.0, sample["seconds"], tokens=300)
    assert window.watts == pytest.approx(450.0)
    assert window.joules_per_token == pytest.approx(3.0)


def test_nvml_failure_gives_reason():
    class NoDriver(FakeNvml):
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    class Unsupported(FakeNvml):
        def nvmlDeviceGetTotalEnergyConsumption(self, handle):
            raise RuntimeError("Not Supported")

    meter = NvmlMeter(NoDriver([[0]]))
    assert not meter.available
    assert meter.reason == "NVML: no NVIDIA driver"
    assert NvmlMeter(Unsupported([[0]])).reason == "NVML: Not Supported"


# --- macOS sources (parsing only; the ctypes/subprocess paths need a Mac) ---------------------


def test_ioreport_energy_model_parsing():
    items = json.loads((SAMPLES / "ioreport_energy_model.json").read_text())["items"]
    joules = parse_ioreport_energy(items)
    assert joules["cpu"] == pytest.approx(1.834 + 1.5)  # "CPU Energy" + Ultra "DIE_1_CPU Energy" (nJ)
    assert joules["gpu"] == pytest.approx(5.120)  # "GPU SRAM" is not GPU Energy
    assert joules["ane"] == pytest.approx(0.002)  # "ANE" (0 mJ) + "ANE0_1" (uJ)
    assert joules["dram"] == pytest.approx(0.412)
    # cluster and per-core channels ("ECPU", "PCPU", "PCPU0") are parts of "CPU Energy": skipped


def test_ioreport_unknown_unit_is_an_error():
    with pytest.raises(ValueError, match="unknown energy unit"):
        parse_ioreport_energy([("Energy Model", "GPU Energy", "kWh", 1)])


def test_powermetrics_plist_stream_parsing():
    samples = parse_powermetrics_stream((SAMPLES / "powermetrics.plist").read_bytes())
    assert len(samples) == 3
    joules = [parse_powermetrics_sample(sample) for sample in samples]
    assert joules[0] == pytest.approx((812 + 2101 + 0) / 1e3)
    assert joules[1] == pytest.approx((790 + 2255 + 3) / 1e3)
    assert joules[2] == pytest.approx(3.0 * 0.5)  # combined_power (mW) x elapsed when no energies
    assert parse_powermetrics_sample({"processor": {}}) is None


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the non-macOS answer")
def test_apple_meters_say_why_not_here():
    assert IOReportMeter().reason == "IOReport is macOS only"
    assert PowermetricsMeter().reason == "powermetrics is macOS only"


# --- choosing a source and the arithmetic -----------------------------------------------------


def test_open_power_meter_lists_every_reason():
    meter = open_power_meter([lambda: UnavailableMeter("first: no"), lambda: UnavailableMeter("second: no")])
    assert not meter.available
    assert meter.read_joules() is None
    assert meter.describe() == "n/a (first: no; second: no)"
    fallback = open_power_meter([lambda: UnavailableMeter("no"), lambda: NvmlMeter(FakeNvml([[1], [2]]))])
    assert fallback.available and fallback.name == "NVML (1 GPU)"


def test_open_power_meter_on_this_machine_is_honest():
    meter = open_power_meter()
    if meter.available:
        assert meter.read_joules() is not None
    else:
        assert meter.reason and meter.read_joules() is None


def test_energy_window_arithmetic_and_na():
    window = _window(10.0, 25.0, 100.0, 103.0, tokens=60)
    assert window.joules == pytest.approx(15.0)
    assert window.watts == pytest.approx(5.0)
    assert window.joules_per_token == pytest.approx(0.25)
    unavailable = _window(None, None, 0.0, 1.0, tokens=60)
    assert unavailable.joules is None and unavailable.watts is None and unavailable.joules_per_token is None
    no_tokens = _window(1.0, 2.0, 0.0, 1.0, tokens=0)
    assert no_tokens.joules_per_token is None


def test_energy_window_with_a_meter():
    meter = NvmlMeter(FakeNvml([[1000], [1000], [3000]]))  # open, begin, stop: 2 J in the window
    window = EnergyWindow.begin(meter).stop(tokens=4)
    assert window.joules == pytest.approx(2.0)
    assert window.joules_per_token == pytest.approx(0.5)
    assert window.seconds > 0
    na = EnergyWindow.begin(UnavailableMeter("none")).stop(tokens=4)
    assert na.joules_per_token is None


def _window(joules_start, joules_end, time_start, time_end, tokens=0):
    return EnergyWindow(EnergyReading(joules_start, time_start), EnergyReading(joules_end, time_end), tokens)

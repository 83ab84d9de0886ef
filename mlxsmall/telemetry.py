"""Memory and power behind one small interface.

    snap = memory_snapshot()                 # MLX active/peak/cache + process RSS, in GB
    meter = open_power_meter()               # best energy source on this machine, or an n/a meter
    window = EnergyWindow.start(meter)
    ... generate ...
    window.stop(tokens=128).joules_per_token # None when the meter is n/a

Energy sources, best first:
- macOS: IOReport "Energy Model" counters (CPU/GPU/ANE/DRAM) through ctypes, as macmon reads
  them; needs no sudo. `powermetrics` when running as root is the fallback.
- Linux: NVIDIA NVML total-energy counters (optional `nvidia-ml-py`) when MLX runs on a GPU,
  Intel/AMD RAPL package counters under /sys/class/powercap otherwise.
- Anything else: an n/a meter whose ``reason`` says why. No number is ever invented.

Every meter reports *cumulative* joules since it was opened; watts and J/token come from the
difference of two readings. Parsing of each source's raw data is a pure function, tested on
recorded samples (tests/samples/).
"""

from __future__ import annotations

import os
import platform
import plistlib
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

GB = 1e9


# ---------------------------------------------------------------------------------------------
# Memory


@dataclass(frozen=True)
class MemorySnapshot:
    """Memory in GB (1e9 bytes); None where this platform cannot tell."""

    active_gb: Optional[float]  # MLX arrays alive now
    peak_gb: Optional[float]  # MLX high-water mark since start (or last reset)
    cache_gb: Optional[float]  # MLX buffer cache held for reuse
    rss_gb: Optional[float]  # whole process resident set


def _mlx_memory() -> Tuple[Optional[float], Optional[float], Optional[float]]:
    try:
        import mlx.core as mx
    except ImportError:
        return None, None, None

    def read(name):
        function = getattr(mx, name, None)
        if function is None:
            return None
        try:
            return function() / GB
        except Exception:  # a backend without that counter
            return None

    return read("get_active_memory"), read("get_peak_memory"), read("get_cache_memory")


def parse_proc_status_rss(text: str) -> Optional[float]:
    """RSS in GB from the text of /proc/<pid>/status (``VmRSS:  123456 kB``)."""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024 / GB
    return None


def process_rss_gb() -> Optional[float]:
    """Current resident set size of this process in GB (peak RSS on macOS, where current
    RSS needs mach calls; close enough for a model that stays loaded)."""
    status = Path("/proc/self/status")
    if status.exists():
        try:
            return parse_proc_status_rss(status.read_text())
        except OSError:
            return None
    try:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None
    # ru_maxrss is bytes on macOS, kilobytes elsewhere.
    return maxrss / GB if sys.platform == "darwin" else maxrss * 1024 / GB


def memory_snapshot() -> MemorySnapshot:
    active, peak, cache = _mlx_memory()
    return MemorySnapshot(active_gb=active, peak_gb=peak, cache_gb=cache, rss_gb=process_rss_gb())


# ---------------------------------------------------------------------------------------------
# Power meters


class PowerMeter:
    """A cumulative energy counter. ``read_joules()`` is energy since the meter was opened,
    or None when unavailable (``reason`` says why)."""

    name = "n/a"
    available = False
    reason: Optional[str] = None

    def read_joules(self) -> Optional[float]:
        return None

    def close(self) -> None:
        pass

    def describe(self) -> str:
        """One line for a UI: the source name, or ``n/a (reason)``."""
        return self.name if self.available else f"n/a ({self.reason or 'no energy source'})"


class UnavailableMeter(PowerMeter):
    def __init__(self, reason: str):
        self.reason = reason


# --- Linux RAPL -------------------------------------------------------------------------------

POWERCAP_ROOT = Path("/sys/class/powercap")


@dataclass(frozen=True)
class RaplZone:
    path: Path
    name: str  # "package-0", "dram", ...
    max_energy_range_uj: int


def find_rapl_zones(root: Path = POWERCAP_ROOT) -> List[RaplZone]:
    """Top-level RAPL zones (``intel-rapl:N``), one per CPU package. Sub-zones
    (``intel-rapl:N:M``: core, uncore) are part of their package and are not summed again."""
    zones = []
    if not root.is_dir():
        return zones
    for entry in sorted(root.iterdir()):
        parts = entry.name.split(":")
        if len(parts) != 2 or not parts[0].endswith("rapl"):
            continue
        if not (entry / "energy_uj").exists():
            continue
        name_file = entry / "name"
        name = name_file.read_text().strip() if name_file.exists() else entry.name
        max_range_file = entry / "max_energy_range_uj"
        max_range = int(max_range_file.read_text().strip()) if max_range_file.exists() else 0
        zones.append(RaplZone(entry, name, max_range))
    return zones


def rapl_delta_uj(previous: int, current: int, max_energy_range_uj: int) -> int:
    """Energy between two ``energy_uj`` readings; the counter wraps to 0 after max range."""
    if current >= previous:
        return current - previous
    if max_energy_range_uj <= 0:
        return 0  # a wrap we cannot size: count nothing rather than invent energy
    return current + max_energy_range_uj - previous


class RaplMeter(PowerMeter):
    """Sum of RAPL package counters; keeps cumulative joules across counter wrap-arounds."""

    def __init__(self, root: Path = POWERCAP_ROOT):
        self.root = Path(root)
        self.zones = find_rapl_zones(self.root)
        self._lock = threading.Lock()
        self._last: List[int] = []
        self._total_uj = 0
        if not self.zones:
            self.reason = f"no RAPL in {self.root}"
            return
        try:
            self._last = [self._read_raw(zone) for zone in self.zones]
        except PermissionError:
            self.reason = f"{self.zones[0].path / 'energy_uj'} is not readable (root only since Linux 5.10)"
            return
        except (OSError, ValueError) as error:
            self.reason = f"cannot read {self.zones[0].path / 'energy_uj'}: {error}"
            return
        self.available = True
        self.name = "RAPL " + "+".join(zone.name for zone in self.zones)

    @staticmethod
    def _read_raw(zone: RaplZone) -> int:
        return int((zone.path / "energy_uj").read_text().strip())

    def read_joules(self) -> Optional[float]:
        if not self.available:
            return None
        with self._lock:
            try:
                now = [self._read_raw(zone) for zone in self.zones]
            except (OSError, ValueError):
                return None
            for previous, current, zone in zip(self._last, now, self.zones):
                self._total_uj += rapl_delta_uj(previous, current, zone.max_energy_range_uj)
            self._last = now
            return self._total_uj / 1e6


# --- NVIDIA NVML ------------------------------------------------------------------------------


class NvmlMeter(PowerMeter):
    """Total energy of all NVIDIA GPUs from NVML (``nvmlDeviceGetTotalEnergyConsumption``,
    millijoules since driver load). ``nvml`` is the pynvml module (injectable for tests)."""

    def __init__(self, nvml=None):
        self._lock = threading.Lock()
        self._start_mj: List[int] = []
        if nvml is None:
            try:
                import pynvml as nvml  # from nvidia-ml-py, the optional [nvidia] extra
            except ImportError:
                self.reason = "pynvml not installed (pip install 'mlxsmall[nvidia]')"
                return
        self.nvml = nvml
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            if not self.handles:
                self.reason = "NVML sees no NVIDIA GPU"
                return
            self._start_mj = [nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles]
        except Exception as error:  # NVMLError subclasses: driver missing, not supported, ...
            self.reason = f"NVML: {_nvml_error_text(error)}"
            return
        self.available = True
        self.name = f"NVML ({len(self.handles)} GPU{'s' if len(self.handles) > 1 else ''})"

    def read_joules(self) -> Optional[float]:
        if not self.available:
            return None
        with self._lock:
            try:
                now = [self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles]
            except Exception:
                return None
        return nvml_joules_since(self._start_mj, now)

    def close(self) -> None:
        if self.available:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass


def nvml_joules_since(start_mj: Iterable[int], now_mj: Iterable[int]) -> float:
    """Joules used by all GPUs between two sets of NVML total-energy readings (mJ)."""
    return sum(now - start for start, now in zip(start_mj, now_mj)) / 1e3


def _nvml_error_text(error: Exception) -> str:
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    if "library not found" in text.lower():
        return "no NVIDIA driver"
    return text


# --- macOS IOReport ---------------------------------------------------------------------------

_ENERGY_UNITS = {"mJ": 1e-3, "uJ": 1e-6, "µJ": 1e-6, "nJ": 1e-9}


def ioreport_component(channel: str) -> Optional[str]:
    """Which part of the chip an "Energy Model" channel measures, with macmon's naming rules:
    "CPU Energy" (or "DIE_N_CPU Energy" on Ultra), "GPU Energy", "ANE"/"ANE0"/"ANE0_N", "DRAM"."""
    if channel == "GPU Energy":
        return "gpu"
    if channel.endswith("CPU Energy"):
        return "cpu"
    if channel.startswith("ANE"):
        return "ane"
    if channel.startswith("DRAM"):
        return "dram"
    return None


def parse_ioreport_energy(items: Iterable[Tuple[str, str, str, int]]) -> Dict[str, float]:
    """Joules per component from IOReport delta items ``(group, channel, unit, value)``.

    Only the "Energy Model" group counts; per-core and per-cluster channels in that group
    (e.g. "PCPU0", "ECPU") are parts of "CPU Energy" and are skipped so nothing is counted twice.
    """
    joules: Dict[str, float] = {"cpu": 0.0, "gpu": 0.0, "ane": 0.0, "dram": 0.0}
    for group, channel, unit, value in items:
        if group != "Energy Model":
            continue
        component = ioreport_component(channel)
        if component is None:
            continue
        scale = _ENERGY_UNITS.get(unit.strip())
        if scale is None:
            raise ValueError(f"IOReport channel {channel!r}: unknown energy unit {unit!r}")
        joules[component] += value * scale
    return joules


class _CoreFoundation:
    """The few CoreFoundation and IOReport calls the meter needs, through ctypes."""

    UTF8 = 0x08000100

    def __init__(self):
        import ctypes

        c = ctypes
        self.c = c
        cf = c.CDLL("/System/Library/Frameworks/CoreFoundation.framework/CoreFoundation")
        ior = c.CDLL("/usr/lib/libIOReport.dylib")
        vp = c.c_void_p
        cf.CFStringCreateWithCString.restype = vp
        cf.CFStringCreateWithCString.argtypes = [vp, c.c_char_p, c.c_uint32]
        cf.CFStringGetCString.restype = c.c_bool
        cf.CFStringGetCString.argtypes = [vp, c.c_char_p, c.c_long, c.c_uint32]
        cf.CFDictionaryGetValue.restype = vp
        cf.CFDictionaryGetValue.argtypes = [vp, vp]
        cf.CFDictionaryGetCount.restype = c.c_long
        cf.CFDictionaryGetCount.argtypes = [vp]
        cf.CFDictionaryCreateMutableCopy.restype = vp
        cf.CFDictionaryCreateMutableCopy.argtypes = [vp, c.c_long, vp]
        cf.CFArrayGetCount.restype = c.c_long
        cf.CFArrayGetCount.argtypes = [vp]
        cf.CFArrayGetValueAtIndex.restype = vp
        cf.CFArrayGetValueAtIndex.argtypes = [vp, c.c_long]
        cf.CFRelease.argtypes = [vp]
        ior.IOReportCopyChannelsInGroup.restype = vp
        ior.IOReportCopyChannelsInGroup.argtypes = [vp, vp, c.c_uint64, c.c_uint64, c.c_uint64]
        ior.IOReportCreateSubscription.restype = vp
        ior.IOReportCreateSubscription.argtypes = [vp, vp, c.POINTER(vp), c.c_uint64, vp]
        ior.IOReportCreateSamples.restype = vp
        ior.IOReportCreateSamples.argtypes = [vp, vp, vp]
        ior.IOReportCreateSamplesDelta.restype = vp
        ior.IOReportCreateSamplesDelta.argtypes = [vp, vp, vp]
        for name in ("IOReportChannelGetGroup", "IOReportChannelGetChannelName",
                     "IOReportChannelGetUnitLabel"):
            getattr(ior, name).restype = vp
            getattr(ior, name).argtypes = [vp]
        ior.IOReportSimpleGetIntegerValue.restype = c.c_int64
        ior.IOReportSimpleGetIntegerValue.argtypes = [vp, c.c_int32]
        self.cf, self.ior = cf, ior

    def string(self, text: str):
        return self.cf.CFStringCreateWithCString(None, text.encode(), self.UTF8)

    def text(self, ref) -> str:
        if not ref:
            return ""
        buffer = self.c.create_string_buffer(256)
        if not self.cf.CFStringGetCString(ref, buffer, 256, self.UTF8):
            return ""
        return buffer.value.decode(errors="replace")

    def items(self, sample) -> List[Tuple[str, str, str, int]]:
        key = self.string("IOReportChannels")
        try:
            array = self.cf.CFDictionaryGetValue(sample, key)
        finally:
            self.cf.CFRelease(key)
        if not array:
            return []
        items = []
        for index in range(self.cf.CFArrayGetCount(array)):
            item = self.cf.CFArrayGetValueAtIndex(array, index)
            items.append((
                self.text(self.ior.IOReportChannelGetGroup(item)),
                self.text(self.ior.IOReportChannelGetChannelName(item)),
                self.text(self.ior.IOReportChannelGetUnitLabel(item)),
                int(self.ior.IOReportSimpleGetIntegerValue(item, 0)),
            ))
        return items


class IOReportMeter(PowerMeter):
    """Apple Silicon CPU+GPU+ANE+DRAM energy from IOReport, without sudo (macmon's method):
    subscribe to the "Energy Model" group once, then each reading is the delta between the
    first sample and a fresh one."""

    def __init__(self):
        self._lock = threading.Lock()
        self.last_components: Dict[str, float] = {}
        if sys.platform != "darwin":
            self.reason = "IOReport is macOS only"
            return
        try:
            self._cf = _CoreFoundation()
            cf, ior = self._cf.cf, self._cf.ior
            group = self._cf.string("Energy Model")
            channels = ior.IOReportCopyChannelsInGroup(group, None, 0, 0, 0)
            cf.CFRelease(group)
            if not channels:
                self.reason = "IOReport has no 'Energy Model' group (not Apple Silicon?)"
                return
            self._channels = cf.CFDictionaryCreateMutableCopy(
                None, cf.CFDictionaryGetCount(channels), channels)
            cf.CFRelease(channels)
            subscribed = self._cf.c.c_void_p()
            self._subscription = ior.IOReportCreateSubscription(
                None, self._channels, self._cf.c.byref(subscribed), 0, None)
            if not self._subscription:
                self.reason = "IOReportCreateSubscription failed"
                return
            self._first = ior.IOReportCreateSamples(self._subscription, self._channels, None)
            if not self._first:
                self.reason = "IOReportCreateSamples failed"
                return
        except (OSError, AttributeError) as error:
            self.reason = f"IOReport unavailable: {error}"
            return
        self.available = True
        self.name = "IOReport CPU+GPU+ANE+DRAM"

    def read_joules(self) -> Optional[float]:
        if not self.available:
            return None
        cf, ior = self._cf.cf, self._cf.ior
        with self._lock:
            sample = ior.IOReportCreateSamples(self._subscription, self._channels, None)
            if not sample:
                return None
            delta = ior.IOReportCreateSamplesDelta(self._first, sample, None)
            cf.CFRelease(sample)
            if not delta:
                return None
            try:
                self.last_components = parse_ioreport_energy(self._cf.items(delta))
            finally:
                cf.CFRelease(delta)
        return sum(self.last_components.values())


# --- macOS powermetrics (root) ----------------------------------------------------------------


def parse_powermetrics_sample(sample: dict) -> Optional[float]:
    """Joules in one powermetrics plist sample (``-f plist``).

    Prefers the per-interval energies ``processor.{cpu,gpu,ane}_energy`` (mJ); otherwise
    ``processor.combined_power`` (mW) times ``elapsed_ns``. None when neither is present."""
    processor = sample.get("processor") or {}
    energies = [processor[key] for key in ("cpu_energy", "gpu_energy", "ane_energy") if key in processor]
    if energies:
        return sum(energies) / 1e3
    if "combined_power" in processor and "elapsed_ns" in sample:
        return processor["combined_power"] / 1e3 * sample["elapsed_ns"] / 1e9
    return None


def parse_powermetrics_stream(data: bytes) -> List[dict]:
    """powermetrics writes one plist document per sample, separated by NUL bytes."""
    samples = []
    for chunk in data.split(b"\x00"):
        chunk = chunk.strip()
        if chunk:
            samples.append(plistlib.loads(chunk))
    return samples


class PowermetricsMeter(PowerMeter):
    """Runs ``powermetrics -f plist`` in the background (root only) and adds up its samples."""

    INTERVAL_MS = 250

    def __init__(self):
        self._lock = threading.Lock()
        self._joules = 0.0
        if sys.platform != "darwin":
            self.reason = "powermetrics is macOS only"
            return
        if os.geteuid() != 0:
            self.reason = "powermetrics needs root (sudo)"
            return
        command = ["powermetrics", "--samplers", "cpu_power,gpu_power,ane_power",
                   "-i", str(self.INTERVAL_MS), "-f", "plist"]
        try:
            self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as error:
            self.reason = f"cannot start powermetrics: {error}"
            return
        threading.Thread(target=self._reader, name="powermetrics", daemon=True).start()
        self.available = True
        self.name = f"powermetrics ({self.INTERVAL_MS} ms samples)"

    def _reader(self):
        buffer = b""
        for block in iter(lambda: self._process.stdout.read1(65536), b""):
            buffer += block
            *complete, buffer = buffer.split(b"\x00")
            for chunk in complete:
                for sample in parse_powermetrics_stream(chunk):
                    joules = parse_powermetrics_sample(sample)
                    if joules is not None:
                        with self._lock:
                            self._joules += joules

    def read_joules(self) -> Optional[float]:
        if not self.available:
            return None
        with self._lock:
            return self._joules

    def close(self):
        if self.available and self._process.poll() is None:
            self._process.terminate()


# --- choosing a source ------------------------------------------------------------------------


def _mlx_runs_on_gpu() -> bool:
    try:
        import mlx.core as mx

        return mx.default_device().type == mx.DeviceType.gpu
    except Exception:
        return False


def power_meter_candidates() -> List[Callable[[], PowerMeter]]:
    """Meter constructors for this platform, best first."""
    if sys.platform == "darwin":
        return [IOReportMeter, PowermetricsMeter]
    if platform.system() == "Linux":
        return [NvmlMeter, RaplMeter] if _mlx_runs_on_gpu() else [RaplMeter, NvmlMeter]
    return []


def open_power_meter(candidates: Optional[List[Callable[[], PowerMeter]]] = None) -> PowerMeter:
    """The first available meter, or an n/a meter whose reason lists why each source failed."""
    candidates = power_meter_candidates() if candidates is None else candidates
    reasons = []
    for make in candidates:
        meter = make()
        if meter.available:
            return meter
        reasons.append(meter.reason or f"{make.__name__} unavailable")
    if not reasons:
        reasons.append(f"no energy source known for {platform.system() or sys.platform}")
    return UnavailableMeter("; ".join(reasons))


# ---------------------------------------------------------------------------------------------
# Turning readings into watts and J/token


@dataclass(frozen=True)
class EnergyReading:
    joules: Optional[float]
    time: float  # time.perf_counter()


@dataclass(frozen=True)
class EnergyWindow:
    """Energy between two meter readings, and what it means per second and per token."""

    start: EnergyReading
    end: Optional[EnergyReading] = None
    tokens: int = 0
    meter: Optional[PowerMeter] = None

    @classmethod
    def begin(cls, meter: PowerMeter) -> "EnergyWindow":
        return cls(start=EnergyReading(meter.read_joules(), time.perf_counter()), meter=meter)

    def stop(self, tokens: int = 0) -> "EnergyWindow":
        reading = EnergyReading(self.meter.read_joules() if self.meter else None, time.perf_counter())
        return EnergyWindow(self.start, reading, tokens, self.meter)

    @property
    def seconds(self) -> Optional[float]:
        return None if self.end is None else self.end.time - self.start.time

    @property
    def joules(self) -> Optional[float]:
        if self.end is None or self.start.joules is None or self.end.joules is None:
            return None
        return self.end.joules - self.start.joules

    @property
    def watts(self) -> Optional[float]:
        joules, seconds = self.joules, self.seconds
        if joules is None or not seconds or seconds <= 0:
            return None
        return joules / seconds

    @property
    def joules_per_token(self) -> Optional[float]:
        joules = self.joules
        if joules is None or self.tokens <= 0:
            return None
        return joules / self.tokens


def energy_window(joules_start: Optional[float], joules_end: Optional[float],
                  time_start: float, time_end: float, tokens: int = 0) -> EnergyWindow:
    """An EnergyWindow from explicit readings (for recorded samples and tests)."""
    return EnergyWindow(EnergyReading(joules_start, time_start), EnergyReading(joules_end, time_end), tokens)


class PowerSampler:
    """Average watts since the previous call, for a live power panel."""

    def __init__(self, meter: PowerMeter):
        self.meter = meter
        self._last = EnergyReading(meter.read_joules(), time.perf_counter())

    def watts(self) -> Optional[float]:
        now = EnergyReading(self.meter.read_joules(), time.perf_counter())
        window = EnergyWindow(self._last, now)
        self._last = now
        return window.watts


def format_optional(value: Optional[float], unit: str = "", digits: int = 2, reason: str = "") -> str:
    """``12.35 W`` or ``n/a`` (with the reason in parentheses when given)."""
    if value is None:
        return f"n/a ({reason})" if reason else "n/a"
    return f"{value:.{digits}f}{' ' + unit if unit else ''}"

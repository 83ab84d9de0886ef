"""A power meter is a cumulative energy counter; this module holds the interface and picks
the best source on this machine, best first:

- macOS: IOReport "Energy Model" counters (CPU/GPU/ANE/DRAM) through ctypes, as macmon reads
  them; needs no sudo. `powermetrics` when running as root is the fallback.
- Linux: NVIDIA NVML total-energy counters (optional `nvidia-ml-py`) when MLX runs on a GPU,
  Intel/AMD RAPL package counters under /sys/class/powercap otherwise.
- Anything else: an n/a meter whose ``reason`` says why. No number is ever invented.

One file per source (rapl, nvml, ioreport, powermetrics); each parses its raw data with a pure
function, tested on recorded samples (tests/samples/)."""

from __future__ import annotations

import platform
import sys
from typing import Callable, List, Optional


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




def _mlx_runs_on_gpu() -> bool:
    try:
        import mlx.core as mx

        return mx.default_device().type == mx.DeviceType.gpu
    except Exception:
        return False


def power_meter_candidates() -> List[Callable[[], PowerMeter]]:
    """Meter constructors for this platform, best first."""
    if sys.platform == "darwin":
        from .ioreport import IOReportMeter
        from .powermetrics import PowermetricsMeter

        return [IOReportMeter, PowermetricsMeter]
    if platform.system() == "Linux":
        from .nvml import NvmlMeter
        from .rapl import RaplMeter

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

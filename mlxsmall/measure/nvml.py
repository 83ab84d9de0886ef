"""NVIDIA GPU energy from NVML (the optional nvidia-ml-py package)."""

from __future__ import annotations

import threading
from typing import Iterable, List, Optional

from mlxsmall.measure.power import PowerMeter


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

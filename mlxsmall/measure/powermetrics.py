"""macOS `powermetrics` (root only) as a background energy source."""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
import threading
from typing import List, Optional

from mlxsmall.measure.power import PowerMeter


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

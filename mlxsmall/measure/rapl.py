"""Linux RAPL package energy counters under /sys/class/powercap."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from mlxsmall.measure.power import PowerMeter


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

"""Measurement: memory, power meters (one file per source), energy windows and the bench.

Both `mlxsmall bench` and the dashboard measure through this package; the dashboard only draws.

    snap = memory_snapshot()                 # MLX active/peak/cache + process RSS, in GB
    meter = open_power_meter()               # best energy source on this machine, or an n/a meter
    window = EnergyWindow.begin(meter)
    ... generate ...
    window.stop(tokens=128).joules_per_token # None when the meter is n/a
"""

from mlxsmall.measure.energy import EnergyReading, EnergyWindow, PowerSampler
from mlxsmall.measure.memory import MemorySnapshot, memory_snapshot
from mlxsmall.measure.power import PowerMeter, UnavailableMeter, open_power_meter

__all__ = [
    "EnergyReading", "EnergyWindow", "PowerSampler", "MemorySnapshot", "memory_snapshot",
    "PowerMeter", "UnavailableMeter", "open_power_meter",
]

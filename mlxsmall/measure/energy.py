"""Energy between two meter readings, and what it means per second and per token.

    window = EnergyWindow.begin(meter)
    ... generate ...
    window.stop(tokens=128).joules_per_token   # None when the meter is n/a"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from mlxsmall.measure.power import PowerMeter


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

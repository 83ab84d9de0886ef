"""Apple Silicon energy from IOReport's "Energy Model" group, through ctypes (no sudo)."""

from __future__ import annotations

import sys
import threading
from typing import Dict, Iterable, List, Optional, Tuple

from mlxsmall.measure.power import PowerMeter


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

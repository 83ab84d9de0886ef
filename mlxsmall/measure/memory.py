"""Memory in GB: MLX active/peak/cache and the process's resident set."""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

GB = 1e9


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

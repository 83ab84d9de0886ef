"""Seeded fuzzing of the checkpoint readers (tests/fuzz_harness.py): safetensors, torch .bin,
pickle payloads, GGUF (small and, in a small share, the real default model) and model directories.

Every family must show 0 code executions, 0 crashes (signals, timeouts, MemoryError), 0 tracebacks
and 0 accepted-but-different loads. MLXSMALL_FUZZ_N sets the number of mutants (default 400, under
two minutes on 2 busy cores; thousands for a deep run), MLXSMALL_FUZZ_SEED the seed.

The harness runs in a fresh interpreter: it forks one child per mutant, and a process in which
MLX has evaluated anything (as this pytest process has) forks children that hang in MLX.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).parent / "fuzz_harness.py"


@pytest.mark.slow
def test_fuzz_checkpoints(tmp_path):
    n = os.environ.get("MLXSMALL_FUZZ_N", "400")
    seed = os.environ.get("MLXSMALL_FUZZ_SEED", "0")
    result = subprocess.run(
        [sys.executable, str(HARNESS), "--n", n, "--seed", seed, "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=3600,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "| all |" in result.stdout

"""kill -9 at random moments during convert, quantize and first-use conversion (seeded).

After each kill: nothing half-written loads (the output is either absent or complete and equal to
an undisturbed run's), the next run succeeds, and it leaves no temp directory behind.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlxsmall  # noqa: F401
import mlx.core as mx
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from test_gguf import write_gguf

KILLS = int(os.environ.get("MLXSMALL_KILL9_N", "3"))  # kills per operation
TEMP_MARKERS = (".partial", ".old", ".mlxsmall-")


def environment(home: Path) -> dict:
    env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / "cache"), HF_HOME=str(home / "hf"),
               HF_HUB_OFFLINE="1")
    env.pop("MLXSMALL_HOME", None)
    return env


def run(args, env, kill_after=None, watch=None):
    """Run `mlxsmall args`. Returns (returncode, seconds).

    `kill_after` seconds: SIGKILL then; with `watch` (a directory), the clock starts only once a
    temp dir appears there, so that the kill lands while the output is being written.
    """
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "mlxsmall", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if watch is not None:
        while process.poll() is None and not (watch.exists() and any(
                marker in entry.name for entry in watch.iterdir() for marker in TEMP_MARKERS)):
            time.sleep(0.002)
    try:
        _, err = process.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
        return -signal.SIGKILL, time.monotonic() - start
    assert process.returncode == 0 or kill_after, err.decode()[-2000:]
    return process.returncode, time.monotonic() - start


def kill_moment(rng, duration):
    """(seconds, watch?): half the kills at a random moment of the whole run, half while writing."""
    if rng.random() < 0.5:
        return rng.uniform(0.2, 1.0) * duration, False
    return rng.uniform(0.0, 0.01), True


def leftovers(directory: Path) -> list:
    return [p.name for p in directory.rglob(".*") if any(m in p.name for m in TEMP_MARKERS)]


def weights(model_dir: Path) -> dict:
    return mx.load(str(model_dir / "model.safetensors"))


def assert_complete_or_absent(model_dir: Path, reference: dict):
    if not model_dir.exists():
        return
    from mlxsmall.loading import load_model

    load_model(model_dir, lazy=True)  # a directory there must load...
    got = weights(model_dir)  # ...and hold exactly the undisturbed run's weights
    assert got.keys() == reference.keys()
    assert all(mx.array_equal(got[k], reference[k]).item() for k in reference)


@pytest.mark.slow
def test_kill9_convert_quantize_first_use(tmp_path, tiny_tokenizer_dir):
    rng = random.Random(12)
    gguf = tmp_path / "tiny.gguf"
    write_gguf(gguf, tiny_tokenizer_dir)
    env = environment(tmp_path / "home")
    work = tmp_path / "work"
    work.mkdir()

    # Undisturbed runs: the reference outputs and how long each takes.
    _, convert_time = run(["convert", str(gguf), "-o", str(work / "ref"), "--dtype", "float32"], env)
    _, quantize_time = run(["quantize", str(work / "ref"), "-o", str(work / "ref-q4"), "--group-size", "32"], env)
    reference, reference_q4 = weights(work / "ref"), weights(work / "ref-q4")

    left_by_kills = []  # what the kills left for the next run to clean (printed: shows they hit mid-write)
    for attempt in range(KILLS):
        out = work / f"out{attempt}"
        delay, watch = kill_moment(rng, convert_time)
        run(["convert", str(gguf), "-o", str(out), "--dtype", "float32"], env, kill_after=delay,
            watch=work if watch else None)
        left_by_kills += leftovers(work)
        assert_complete_or_absent(out, reference)
        run(["convert", str(gguf), "-o", str(out), "--dtype", "float32", "--force"], env)
        assert_complete_or_absent(out, reference)

        q4 = work / f"q4-{attempt}"
        delay, watch = kill_moment(rng, quantize_time)
        run(["quantize", str(work / "ref"), "-o", str(q4), "--group-size", "32"], env, kill_after=delay,
            watch=work if watch else None)
        left_by_kills += leftovers(work)
        assert_complete_or_absent(q4, reference_q4)
        run(["quantize", str(work / "ref"), "-o", str(q4), "--group-size", "32", "--force"], env)
        assert_complete_or_absent(q4, reference_q4)
    assert leftovers(work) == []

    # First use of a GGUF file converts it into the cache.
    _, first_time = run(["generate", str(gguf), "-p", "hi", "-m", "2"], env)
    cache = tmp_path / "home" / "cache"
    cached = [p for p in (cache / "mlxsmall" / "models").iterdir() if not p.name.startswith(".")] \
        if (cache / "mlxsmall" / "models").exists() else []
    assert cached, list(cache.rglob("*"))[:20]
    cached_weights = weights(cached[0])
    for attempt in range(KILLS):
        for entry in cached:
            import shutil

            shutil.rmtree(entry)
        delay, watch = kill_moment(rng, first_time)
        run(["generate", str(gguf), "-p", "hi", "-m", "2"], env, kill_after=delay,
            watch=cache / "mlxsmall" / "models" if watch else None)
        left_by_kills += leftovers(cache)
        for entry in (cache / "mlxsmall" / "models").iterdir():
            if not entry.name.startswith("."):
                assert_complete_or_absent(entry, cached_weights)
        run(["generate", str(gguf), "-p", "hi", "-m", "2"], env)
        assert leftovers(cache) == []
    print(f"temp dirs left by the kills (then removed): {left_by_kills}")

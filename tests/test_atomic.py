"""Temp dirs left by a kill -9 are removed by the next writer; a live writer's never are."""

import fcntl
import os
import subprocess
import sys
import time

from mlxsmall.atomic import LOCK, atomic_directory, remove_stale, work_directory


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid  # reaped: no process has this pid now (until it is reused)


def test_stale_dirs_removed_live_ones_kept(tmp_path):
    dead = dead_pid()
    stale = [tmp_path / f".model.{dead}.abcd1234.partial", tmp_path / f".mlxsmall-tokenizer-{dead}-x1y2z3",
             tmp_path / f".model.{dead}.0a1b2c3d.old"]
    for path in stale:
        path.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        young = tmp_path / f".model.{sleeper.pid}.young123.partial"  # live pid, may not hold its lock yet
        young.mkdir()
        locked = tmp_path / f".other.{sleeper.pid}.locked12.partial"  # live pid holding its lock
        locked.mkdir()
        handle = os.open(locked / LOCK, os.O_CREAT | os.O_RDWR)
        fcntl.flock(handle, fcntl.LOCK_EX)
        reused = tmp_path / f".third.{sleeper.pid}.reused12.partial"  # pid reused: lock free, old
        reused.mkdir()
        (reused / LOCK).touch()
        old = time.time() - 3600
        for path in (locked, reused):
            os.utime(path, (old, old))
        unrelated = tmp_path / ".git"
        unrelated.mkdir()
        with work_directory(tmp_path) as work:  # a writer sweeps the parent first
            assert work.name.startswith(f".mlxsmall-tokenizer-{os.getpid()}-")
            assert remove_stale(tmp_path) == []  # its own dir is never stale
        assert not any(path.exists() for path in stale + [reused])
        assert young.exists() and locked.exists() and unrelated.exists()
        os.close(handle)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_atomic_directory_leaves_only_the_result(tmp_path):
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}")
        assert f".model.{os.getpid()}." in tmp.name and tmp.name.endswith(".partial")
    with atomic_directory(tmp_path / "model", overwrite=True) as tmp:
        (tmp / "config.json").write_text('{"a": 1}')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json"]

"""Writes that are all or nothing: write beside the target, then rename.

An interrupted write (Ctrl-C, a full disk, a crash) leaves the old file or
directory as it was and no half-written one that could be loaded later.

A kill -9 cannot clean up after itself, so every temporary directory carries its
owner's pid in its name and an flock on its `.lock` file while it is written; the
next writer into the same parent removes those whose owner is gone
(`remove_stale`), and never one a live process holds.
"""

import fcntl
import os
import re
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from .errors import MlxsmallError


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same suffix); on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    try:
        yield Path(temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def write_text_atomic(path, text: str) -> Path:
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(path)


# .<name>.<pid>.<random>.partial|old (atomic_directory) and .mlxsmall-tokenizer-<pid>-<random> (work_directory)
STALE_NAME = re.compile(r"^\..+\.(\d+)\.\w+\.(?:partial|old)$|^\.mlxsmall-[a-z]+-(\d+)-\w+$")
LOCK = ".lock"
YOUNG_SECONDS = 60  # a live pid's dir younger than this may not hold its lock yet: left alone


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _hold_lock(directory: Path) -> int:
    handle = os.open(directory / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def is_stale(path: Path) -> bool:
    """A temp dir of ours whose writer is gone (pid dead, or pid reused and its lock free)."""
    match = STALE_NAME.match(path.name)
    if not match or not path.is_dir():
        return False
    pid = int(match.group(1) or match.group(2))
    if pid == os.getpid():
        return False
    if not process_alive(pid):
        return True
    try:
        if time.time() - path.stat().st_mtime < YOUNG_SECONDS:
            return False
        handle = os.open(path / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True  # the pid was reused: the process that wrote here is gone
    except OSError:
        return False
    finally:
        os.close(handle)


def remove_stale(parent) -> list:
    """Remove the temp dirs left in `parent` by killed writers; returns their paths."""
    parent = Path(parent)
    try:
        candidates = [entry for entry in parent.iterdir() if entry.name.startswith(".")]
    except OSError:
        return []
    removed = [entry for entry in candidates if is_stale(entry)]
    for entry in removed:
        shutil.rmtree(entry, ignore_errors=True)
    return removed


@contextmanager
def work_directory(parent, kind: str = "tokenizer"):
    """A scratch directory in `parent` (removed on exit; by the next writer after a kill -9)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".mlxsmall-{kind}-{os.getpid()}-", dir=parent))
    lock = _hold_lock(tmp)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(lock)


@contextmanager
def atomic_directory(dst, *, overwrite: bool = False, action: str = "save"):
    """Yield a temporary directory beside ``dst``; on success it becomes ``dst``.

    ``overwrite`` replaces an existing ``dst`` only once the new one is complete.
    OS errors (a full disk, permissions) become one ``MlxsmallError`` line.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise MlxsmallError(f"{dst}: already exists (pass --force to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dst.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.{os.getpid()}.", suffix=".partial", dir=dst.parent))
    lock = _hold_lock(tmp)
    try:
        yield tmp
        os.unlink(tmp / LOCK)  # the flock stays held through the rename
        if dst.exists():
            old = dst.with_name(f".{dst.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old")
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MlxsmallError(f"{dst}: could not {action} ({error.strerror or error})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)

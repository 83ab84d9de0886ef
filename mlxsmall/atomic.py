"""Writes that are all or nothing: write beside the target, then rename.

An interrupted write (Ctrl-C, a full disk, a crash) leaves the old file or
directory as it was and no half-written one that could be loaded later.
"""

import os
import shutil
import tempfile
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    try:
        yield tmp
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old")
            shutil.rmtree(old, ignore_errors=True)
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

"""Training checkpoints: written atomically, the last K kept, restored exactly.

A checkpoint is a directory ``step-0000042/`` holding the trainable weights
(``trainable.safetensors``: adapters, or every weight for a full finetune), the
optimizer state (``optimizer.safetensors``) and ``state.json`` (step, data
position, seed, settings). It is written under a temporary name and renamed
into place, so a run killed at any moment leaves either a whole checkpoint or
none. Pruning renames a checkpoint to ``.trash-step-*`` before deleting it, and
the next run removes what a kill left behind (``.tmp-step-*`` of dead processes,
trash, ``step-*`` directories missing a file). The RNG needs no file: the trainer reseeds from ``(seed, step)`` before
every step, so the step number restores it.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from ..atomic import atomic_path, process_alive, write_text_atomic
from ..errors import MlxsmallError

PREFIX = "step-"
CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.safetensors", "state.json")


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_safetensors_atomic(path: Path, arrays: dict, metadata: Optional[dict] = None) -> None:
    with atomic_path(path) as tmp:
        mx.save_safetensors(str(tmp), arrays, metadata=metadata or {})


def checkpoint_dirs(root: Path):
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
             and p.name[len(PREFIX):].isdigit() and is_complete(p)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def is_complete(path: Path) -> bool:
    return all((Path(path) / name).is_file() for name in CHECKPOINT_FILES)


def remove_stale(root: Path) -> list:
    """Delete what a killed run left in ``root``: half-written ``.tmp-step-*-PID`` directories
    of processes that no longer run, ``.trash-step-*`` and half-pruned ``step-*`` ones (a
    checkpoint is renamed into place whole, so a ``step-*`` missing a file was being deleted).
    Returns the removed paths."""
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for path in root.iterdir():
        name = path.name
        if not path.is_dir():
            continue
        if name.startswith(f".tmp-{PREFIX}"):
            pid = name.rsplit("-", 1)[-1]
            stale = not pid.isdigit() or not process_alive(int(pid))
        elif name.startswith(f".trash-{PREFIX}"):
            stale = True
        else:
            stale = name.startswith(PREFIX) and name[len(PREFIX):].isdigit() and not is_complete(path)
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints; each leaves the listing in one rename."""
    for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
        trash = old.with_name(f".trash-{old.name}-{os.getpid()}")
        os.rename(old, trash)
        shutil.rmtree(trash, ignore_errors=True)


def latest_checkpoint(root: Path) -> Optional[Path]:
    found = checkpoint_dirs(root)
    return found[-1] if found else None


def save_checkpoint(root: Path, step: int, trainable: dict, optimizer_state: dict,
                    state: dict, keep: int = 2) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:07d}"
    tmp = root / f".tmp-{PREFIX}{step:07d}-{os.getpid()}"
    remove_stale(root)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    mx.save_safetensors(str(tmp / "trainable.safetensors"), dict(trainable))
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer_state)))
    (tmp / "state.json").write_text(json.dumps(dict(state, step=step), indent=2, sort_keys=True))
    for file in tmp.iterdir():  # make the data durable before the rename publishes it
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        trash = root / f".trash-{final.name}-{os.getpid()}"
        os.rename(final, trash)
        shutil.rmtree(trash)
    os.rename(tmp, final)
    prune(root, keep)
    return final


def load_checkpoint(path: Path):
    """Returns ``(trainable weights dict, optimizer state tree, state dict)``."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        trainable = mx.load(str(path / "trainable.safetensors"))
        optimizer_flat = mx.load(str(path / "optimizer.safetensors"))
    except (OSError, ValueError) as error:
        raise MlxsmallError(f"{path}: unreadable checkpoint ({error})") from None
    return trainable, tree_unflatten(list(optimizer_flat.items())), state


def prepare_run_directory(output_dir: Path, *, resume: bool, force: bool, rank: int = 0) -> Optional[Path]:
    """The checkpoint to resume from (or None), after refusing to mix two runs.

    A fresh run in a directory holding another run's checkpoints needs
    ``force`` (which deletes them); a fresh run always starts a new log.
    """
    output_dir = Path(output_dir)
    root = output_dir / "checkpoints"
    if resume:
        if rank == 0:
            remove_stale(root)
        return latest_checkpoint(root)
    if checkpoint_dirs(root) and not force:
        raise MlxsmallError(f"{output_dir}: holds checkpoints of an earlier run; pass --resume "
                            "to continue it or --force to start over")
    if rank == 0:
        shutil.rmtree(root, ignore_errors=True)
        (output_dir / "train_log.jsonl").unlink(missing_ok=True)
    return None

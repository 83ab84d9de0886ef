"""Read `*.safetensors` checkpoints (and their index) with a clear error on bad files.

`mx.load` reads safetensors fast, but a truncated or corrupt file gives an obscure error (or a
crash). The header is checked first: 8-byte length, JSON table, every tensor's byte range
consistent with its dtype and shape, and the ranges tiling the data buffer exactly (the format's
rule). Only then is the file handed to `mx.load`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from mlxsmall.errors import MlxsmallError

ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
MAX_HEADER = 100 * 1024 * 1024


def _no_duplicates(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"key {next(k for k in keys if keys.count(k) > 1)!r} appears twice")
    return dict(pairs)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_header(path) -> dict:
    """The validated header table `{name: {"dtype", "shape", "data_offsets"}}` of one file.

    As the format requires: every entry well-typed, dtype x shape = its byte range, and the ranges
    tile the data buffer exactly (no overlap, no gap, the last one ends at the end of the file).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise MlxsmallError(f"{path}: too short to be a safetensors file (truncated?)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER or 8 + header_len > size:
                raise MlxsmallError(f"{path}: header length {header_len} exceeds the file (truncated or not safetensors)")
            header = json.loads(handle.read(header_len), object_pairs_hook=_no_duplicates)
    except FileNotFoundError:
        raise MlxsmallError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MlxsmallError(f"{path}: a directory, not a safetensors file") from None
    except (ValueError, RecursionError) as error:  # JSON errors, 5000-digit numbers, deep nesting
        reason = "nested too deeply" if isinstance(error, RecursionError) else " ".join(str(error).split())[:100]
        raise MlxsmallError(f"{path}: header is not valid safetensors JSON ({reason})") from None
    if not isinstance(header, dict):
        raise MlxsmallError(f"{path}: header is not a JSON object")
    data_size = size - 8 - header_len
    tensors, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and not isinstance(info, dict):  # mlx writes null
                raise MlxsmallError(f"{path}: __metadata__ is not a JSON object")
            continue
        if not isinstance(info, dict):
            raise MlxsmallError(f"{path}: tensor '{name}': header entry is not a JSON object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in ITEMSIZE:
            raise MlxsmallError(f"{path}: tensor '{name}': dtype {str(dtype)[:40]} is not supported")
        if not isinstance(shape, list) or len(shape) > 8 or not all(_is_count(d) for d in shape):
            raise MlxsmallError(f"{path}: tensor '{name}': shape {str(shape)[:60]} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise MlxsmallError(f"{path}: tensor '{name}': data_offsets {str(offsets)[:60]} are not two byte offsets")
        count = 1
        for dim in shape:
            count *= dim
        start, end = offsets
        if end < start or end - start != count * ITEMSIZE[dtype]:
            raise MlxsmallError(f"{path}: tensor '{name}': data_offsets {offsets} do not match its shape {shape} and dtype {dtype}")
        if end > data_size:
            raise MlxsmallError(
                f"{path}: tensor '{name}' ends at byte {end} but the file holds {data_size} data bytes (truncated)"
            )
        tensors[name] = info
        spans.append((start, end, name))
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            what = "overlaps the tensor before it" if start < position else f"leaves a gap before it (byte {position})"
            raise MlxsmallError(f"{path}: tensor '{name}': data_offsets {[start, end]} {what}")
        position = end
    if position != data_size:
        raise MlxsmallError(f"{path}: the tensors end at byte {position} but the data buffer holds {data_size} bytes")
    return tensors


def load_safetensors(path) -> dict:
    """All tensors of one validated safetensors file as `{name: mx.array}`."""
    import mlx.core as mx

    read_header(path)
    try:
        return dict(mx.load(str(path), format="safetensors"))
    except (RuntimeError, ValueError) as error:
        raise MlxsmallError(f"{path}: cannot read safetensors ({error})") from None


def safetensors_files(directory) -> list:
    """The safetensors files of a checkpoint directory: from its index when there is one."""
    directory = Path(directory)
    indexes = sorted(directory.glob("*.safetensors.index.json"))
    if indexes:
        names = shard_names(indexes[0])
        missing = [n for n in names if not (directory / n).exists()]
        if missing:
            raise MlxsmallError(f"{indexes[0]}: lists {missing[0]}, which is missing from {directory}")
        return [directory / n for n in names]
    return sorted(directory.glob("*.safetensors"))


def shard_names(index: Path) -> list:
    """The shard file names an index's weight_map lists (plain names inside its directory)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError) as error:
        reason = " ".join(str(error).split())[:100]
        raise MlxsmallError(f"{index}: not a valid checkpoint index ({type(error).__name__}: {reason})") from None
    bad = next((n for n in names if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")), None)
    if bad is not None or not names:
        raise MlxsmallError(f"{index}: weight_map must list shard file names in the same directory, got {str(bad)[:60]!r}")
    return names


def load_safetensors_checkpoint(directory) -> dict:
    weights = {}
    for file in safetensors_files(directory):
        weights.update(load_safetensors(file))
    return weights

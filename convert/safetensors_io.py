"""Read `*.safetensors` checkpoints (and their index) with a clear error on bad files.

`mx.load` reads safetensors fast, but a truncated or corrupt file gives an obscure error (or a
crash). The header is checked first: 8-byte length, JSON table, every tensor's byte range inside
the file and consistent with its dtype and shape. Only then is the file handed to `mx.load`.
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


def read_header(path) -> dict:
    """The validated header table `{name: {"dtype", "shape", "data_offsets"}}` of one file."""
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
            header = json.loads(handle.read(header_len))
    except FileNotFoundError:
        raise MlxsmallError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MlxsmallError(f"{path}: header is not valid JSON (corrupt or not a safetensors file)") from None
    if not isinstance(header, dict):
        raise MlxsmallError(f"{path}: header is not a JSON object")
    data_size = size - 8 - header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            count = 1
            for dim in shape:
                count *= int(dim)
        except (KeyError, TypeError, ValueError):
            raise MlxsmallError(f"{path}: malformed header entry for tensor '{name}'") from None
        if dtype not in ITEMSIZE:
            raise MlxsmallError(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
        if not (0 <= start <= end) or end - start != count * ITEMSIZE[dtype]:
            raise MlxsmallError(f"{path}: tensor '{name}' byte range does not match its shape {shape} and dtype {dtype}")
        if end > data_size:
            raise MlxsmallError(
                f"{path}: tensor '{name}' ends at byte {end} but the file holds {data_size} data bytes (truncated)"
            )
        tensors[name] = info
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
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise MlxsmallError(f"{indexes[0]}: not a valid checkpoint index ({error})") from None
        missing = [n for n in names if not (directory / n).exists()]
        if missing:
            raise MlxsmallError(f"{indexes[0]}: lists {missing[0]}, which is missing from {directory}")
        return [directory / n for n in names]
    return sorted(directory.glob("*.safetensors"))


def load_safetensors_checkpoint(directory) -> dict:
    weights = {}
    for file in safetensors_files(directory):
        weights.update(load_safetensors(file))
    return weights

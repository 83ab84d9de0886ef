"""Validated safetensors reading: sharded checkpoints with an index, and clear errors on bad files."""

import json
import struct

import mlxsmall  # noqa: F401
import mlx.core as mx
import pytest

from mlxsmall.safetensors_io import load_safetensors, load_safetensors_checkpoint
from mlxsmall.errors import MlxsmallError


def test_sharded_with_index(tmp_path):
    a, b = mx.arange(12, dtype=mx.float32).reshape(3, 4), mx.ones((5,), dtype=mx.bfloat16)
    mx.save_safetensors(str(tmp_path / "model-00001-of-00002.safetensors"), {"a": a})
    mx.save_safetensors(str(tmp_path / "model-00002-of-00002.safetensors"), {"b": b})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    weights = load_safetensors_checkpoint(tmp_path)
    assert mx.array_equal(weights["a"], a).item() and weights["b"].dtype == mx.bfloat16
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(MlxsmallError, match="lists model-00002-of-00002.safetensors, which is missing"):
        load_safetensors_checkpoint(tmp_path)


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:5], "too short to be a safetensors file"),
    (lambda data: data[:-4], r"tensor 'w' ends at byte 64 but the file holds 60 data bytes \(truncated\)"),
    (lambda data: struct.pack("<Q", 10 ** 6) + data[8:], "header length 1000000 exceeds the file"),
    (lambda data: data[:8] + b"X" + data[9:], "header is not valid safetensors JSON"),
])
def test_bad_files_name_the_file(tmp_path, damage, message):
    path = tmp_path / "model.safetensors"
    mx.save_safetensors(str(path), {"w": mx.zeros((4, 4))})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(MlxsmallError, match=message) as error:
        load_safetensors(path)
    assert str(path) in str(error.value)


def _with_header(header: str, data: bytes) -> bytes:
    raw = header.encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("header, message", [
    ('{"w":{"dtype":"F32","shape":[Infinity],"data_offsets":[0,16]}}', "shape .* is not a list of sizes"),
    ('{"w":{"dtype":"F32","shape":[4],"data_offsets":["0",16]}}', "data_offsets .* are not two byte offsets"),
    ('{"w":{"dtype":"F32","shape":[4],"data_offsets":null}}', "data_offsets .* are not two byte offsets"),
    ('{"w":{"dtype":["F32"],"shape":[4],"data_offsets":[0,16]}}', "dtype .* is not supported"),
    ('{"w":{"dtype":"F32","shape":[' + "9" * 5000 + '],"data_offsets":[0,16]}}', "not valid safetensors JSON"),
    ('{"a":' * 100000 + "1" + "}" * 100000, "not valid safetensors JSON"),
    ('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"v":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}',
     "overlaps the tensor before it"),
    ('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"v":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}',
     "leaves a gap"),
    ('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', "the tensors end at byte 8 but the data buffer holds 16"),
    ('{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}',
     "appears twice"),
])
def test_hostile_headers_are_one_line(tmp_path, header, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(_with_header(header, bytes(16)))
    with pytest.raises(MlxsmallError, match=message) as error:
        load_safetensors(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)

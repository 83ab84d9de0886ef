"""The torch-free pytorch_model.bin reader: dtypes, aliased/strided storages, and refusing bad input."""

import json
import pickle
import zipfile

import mlxsmall  # noqa: F401
import mlx.core as mx
import numpy as np
import pytest

from mlxsmall.convert.torch_bin import load_torch_bin, load_torch_bin_checkpoint
from mlxsmall.errors import MlxsmallError

torch = pytest.importorskip("torch")


def as_numpy(array):
    return np.array(array.astype(mx.float32)) if array.dtype == mx.bfloat16 else np.array(array)


def test_dtypes_and_aliased_strided_views(tmp_path):
    base = torch.randn(6, 8)
    state = {
        "fp32": base,
        "fp16": base.half(),
        "bf16": base.bfloat16(),
        # Views of one storage, as save_pretrained writes shared/tied tensors.
        "row_slice": base[2:5],
        "transposed": base.t(),
        "column_slice": base[:, 3],
        "same_a": base.bfloat16()[1:],
    }
    state["same_b"] = state["same_a"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    tensors = load_torch_bin(tmp_path / "pytorch_model.bin")
    assert tensors["fp16"].dtype == mx.float16 and tensors["bf16"].dtype == mx.bfloat16
    for name, tensor in state.items():
        expected = tensor.float().numpy()
        assert tensors[name].shape == tuple(tensor.shape), name
        np.testing.assert_array_equal(as_numpy(tensors[name]), expected, err_msg=name)


def test_sharded_checkpoint_with_index(tmp_path):
    a, b = torch.randn(3, 4), torch.randn(5)
    torch.save({"a": a}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": b}, tmp_path / "pytorch_model-00002-of-00002.bin")
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {
        "a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}}))
    tensors = load_torch_bin_checkpoint(tmp_path)
    np.testing.assert_array_equal(np.array(tensors["b"]), b.numpy())


class CreatesMarker:
    """Unpickling this would run os.system: the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    torch.save({"weight": torch.zeros(2), "payload": CreatesMarker(marker)}, path)
    with pytest.raises(MlxsmallError, match=r"refusing to unpickle global '(posix|os|nt)\.system'") as error:
        load_torch_bin(path)
    assert str(path) in str(error.value)
    assert not marker.exists()


def test_torch_load_from_bytes_is_refused(tmp_path):
    # torch.storage._load_from_bytes would run torch.load on embedded bytes: not allowed either.
    path = tmp_path / "model.bin"
    with zipfile.ZipFile(path, "w") as archive:
        payload = b"\x80\x02ctorch.storage\n_load_from_bytes\nq\x00C\x00\x85R."
        archive.writestr("model/data.pkl", payload)
    with pytest.raises(MlxsmallError, match="torch.storage._load_from_bytes"):
        load_torch_bin(path)


def test_truncated_bin_names_the_file(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.randn(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MlxsmallError, match="pytorch_model.bin.*truncated or corrupt"):
        load_torch_bin(path)


def test_legacy_or_garbage_file(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    with pytest.raises(MlxsmallError, match="not a readable PyTorch zip checkpoint"):
        load_torch_bin(path)


def test_storage_shorter_than_declared(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.randn(4, 4)}, path)
    broken = tmp_path / "broken.bin"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[:-8] if item.filename.endswith("data/0") else data)
    with pytest.raises(MlxsmallError, match="storage data/0 has 56 bytes"):
        load_torch_bin(broken)


def test_identical_views_share_one_array(tmp_path):
    # save_pretrained of MobiLlama: every layer's mlp.* is the same tensor (one storage).
    shared = torch.randn(8, 4)
    torch.save({f"model.layers.{i}.mlp.up_proj.weight": shared for i in range(22)}, tmp_path / "m.bin")
    tensors = load_torch_bin(tmp_path / "m.bin")
    assert len({id(t) for t in tensors.values()}) == 1
    np.testing.assert_array_equal(np.array(tensors["model.layers.21.mlp.up_proj.weight"]), shared.numpy())


def _archive(path, pickled, members):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        for name, data in members.items():
            archive.writestr(name, data)


def test_flipped_bit_in_a_storage_fails_the_crc(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.arange(4096, dtype=torch.float32)}, path)
    data = bytearray(path.read_bytes())
    data[data.index(np.arange(4096, dtype=np.float32)[1000:1002].tobytes())] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(MlxsmallError, match="fails its CRC-32 check"):
        load_torch_bin(path)


@pytest.mark.parametrize("pickled, message", [
    (b"\x80\x02}r" + (2**31 - 1).to_bytes(4, "little") + b".", "memo index 2147483647"),
    (b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b"abc.", "not a valid pickle"),
    (b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
     b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x10tQK\x00J\x00\x00\x10\x00J\x00\x00\x10\x00\x86K\x00K\x00\x86\x89"
     b"ccollections\nOrderedDict\n)RtRs.", "does not fit its storage"),
])
def test_hostile_pickles_are_refused_before_allocating(tmp_path, pickled, message):
    path = tmp_path / "pytorch_model.bin"
    _archive(path, pickled, {"archive/data/0": bytes(64)})
    with pytest.raises(MlxsmallError, match=message):
        load_torch_bin(path)


def test_encrypted_unknown_method_and_bomb_members(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(4)}, path)
    data = path.read_bytes()
    central = data.index(b"PK\x01\x02")
    encrypted = bytearray(data)
    encrypted[central + 8] |= 1
    (tmp_path / "enc.bin").write_bytes(bytes(encrypted))
    with pytest.raises(MlxsmallError, match="is encrypted"):
        load_torch_bin(tmp_path / "enc.bin")
    method = bytearray(data)
    method[central + 10:central + 12] = (93).to_bytes(2, "little")
    (tmp_path / "zstd.bin").write_bytes(bytes(method))
    with pytest.raises(MlxsmallError, match="compression method 93"):
        load_torch_bin(tmp_path / "zstd.bin")
    with zipfile.ZipFile(tmp_path / "bomb.bin", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}))
        archive.writestr("archive/data/0", bytes(256 << 20))
    with pytest.raises(MlxsmallError, match="decompression bomb"):
        load_torch_bin(tmp_path / "bomb.bin")

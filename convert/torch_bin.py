"""Read PyTorch `pytorch_model.bin` checkpoints without torch, and without running their pickle.

A `.bin` written by `torch.save` is a zip archive: `<name>/data.pkl` (a pickle of the state dict)
and one raw little-endian byte file per storage under `<name>/data/<key>`. The pickle refers to
storages through persistent ids and rebuilds each tensor with `torch._utils._rebuild_tensor_v2`
(a strided view into a storage; several tensors may view one storage).

A pickle can call any importable function, so the unpickler here resolves only the handful of
globals a state dict needs and refuses everything else before it can run: a checkpoint that tries
to execute code fails with an error naming the global, and nothing is executed.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from mlxsmall.errors import MlxsmallError

# torch storage class name -> numpy dtype of its elements. bf16 has no numpy dtype: it is read as
# uint16 bit patterns and reinterpreted as bfloat16 on the MLX side (no rounding, no float32 copy).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "DoubleStorage": np.dtype("<f8"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    """Stands in for `torch.<X>Storage` inside the pickle: only its name matters."""

    def __init__(self, name):
        self.name = name


class _StorageRef:
    """A storage the pickle refers to: its element type and the zip member holding its bytes."""

    def __init__(self, name, key, numel):
        self.name = name
        self.key = key
        self.numel = numel


class _TensorRef:
    """What `_rebuild_tensor_v2` returns here: a strided view to materialise after unpickling."""

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    # The only globals a torch state dict needs; everything else is refused before it runs.
    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("collections", "OrderedDict"): OrderedDict,
    }

    def __init__(self, file, source):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise MlxsmallError(
            f"{self.source}: refusing to unpickle global '{module}.{name}' "
            "(only tensors and storages are allowed in a checkpoint; nothing was executed)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise MlxsmallError(f"{self.source}: unsupported persistent id {pid!r:.80} in data.pkl")
        _, storage_type, key, _location, numel = pid
        return _StorageRef(storage_type.name, str(key), int(numel))


def _to_mx(array: np.ndarray, storage_name: str):
    import mlx.core as mx

    if storage_name == "BFloat16Storage":
        return mx.array(array).view(mx.bfloat16)
    return mx.array(array)


def load_torch_bin(path) -> dict:
    """Tensors of one `pytorch_model.bin` as `{name: mx.array}`, dtypes kept (fp32/fp16/bf16...).

    Raises MlxsmallError naming the file for anything that is not a plain zip-pickle state dict.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise MlxsmallError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError) as error:
        raise MlxsmallError(
            f"{path}: not a readable PyTorch zip checkpoint ({error}); the file may be truncated "
            "or corrupt (re-download it), or written by torch < 1.6 (legacy format, unsupported)"
        ) from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise MlxsmallError(f"{path}: expected one '<name>/data.pkl' in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        try:
            byteorder = archive.read(prefix + "byteorder").decode().strip()
        except KeyError:
            byteorder = "little"
        except (zipfile.BadZipFile, OSError) as error:
            raise MlxsmallError(f"{path}: corrupt archive ({error})") from None
        if byteorder != "little":
            raise MlxsmallError(f"{path}: big-endian checkpoints are not supported")

        try:
            with archive.open(pickles[0]) as handle:
                state = _RestrictedUnpickler(handle, path).load()
        except MlxsmallError:
            raise
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, TypeError,
                ValueError, AttributeError, IndexError, KeyError) as error:
            raise MlxsmallError(f"{path}: cannot read data.pkl ({type(error).__name__}: {error})") from None
        if not isinstance(state, dict):
            raise MlxsmallError(f"{path}: data.pkl holds a {type(state).__name__}, not a state dict")

        storages = {}  # key -> numpy array over the whole storage, read once however many views it has
        views = {}  # identical views (MobiLlama's 22 MLP copies) become one array, not 22 copies
        tensors = {}
        for name, ref in state.items():
            if not isinstance(ref, _TensorRef):
                continue  # non-tensor entries (e.g. metadata) carry no weights
            storage = ref.storage
            view_key = (storage.key, ref.offset, ref.size, ref.stride)
            if view_key not in views:
                if storage.key not in storages:
                    storages[storage.key] = _read_storage(archive, prefix, storage, path)
                views[view_key] = _to_mx(_view(storages[storage.key], ref, name, path), storage.name)
            tensors[name] = views[view_key]
    return tensors


def _read_storage(archive, prefix, storage, path):
    """The storage's elements as a flat array: memory-mapped when stored uncompressed (torch.save
    always does), so a multi-GB checkpoint is not copied into memory once more."""
    dtype = STORAGE_DTYPES[storage.name]
    member = f"{prefix}data/{storage.key}"
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise MlxsmallError(f"{path}: storage data/{storage.key} is missing from the archive") from None
    expected = storage.numel * dtype.itemsize
    if info.file_size != expected:
        raise MlxsmallError(
            f"{path}: storage data/{storage.key} has {info.file_size} bytes, expected "
            f"{storage.numel} x {dtype.itemsize} (file truncated or corrupt)"
        )
    if expected == 0:
        return np.zeros(0, dtype=dtype)
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            header = handle.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise MlxsmallError(f"{path}: storage data/{storage.key} has a corrupt zip entry header")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        if start + expected > path.stat().st_size:
            raise MlxsmallError(f"{path}: storage data/{storage.key} is cut short (file truncated)")
        return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=(storage.numel,))
    try:
        raw = archive.read(member)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise MlxsmallError(f"{path}: storage data/{storage.key} is corrupt or truncated ({error})") from None
    return np.frombuffer(raw, dtype=dtype)


def _view(flat, ref, name, path):
    """The tensor `ref` as a contiguous array, checking its strided extent stays inside the storage."""
    size, stride, offset = ref.size, ref.stride, int(ref.offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise MlxsmallError(f"{path}: tensor '{name}' has an invalid size/stride")
    if any(s == 0 for s in size):
        return np.zeros(size, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise MlxsmallError(f"{path}: tensor '{name}' reaches past the end of its storage")
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=[s * itemsize for s in stride], writeable=False
    )
    return np.ascontiguousarray(view)


def load_torch_bin_checkpoint(directory) -> dict:
    """All tensors of a directory's `pytorch_model.bin`, or of the shards its index lists."""
    directory = Path(directory)
    index = directory / "pytorch_model.bin.index.json"
    if index.exists():
        files = _shards_from_index(index)
    else:
        files = ["pytorch_model.bin"]
    weights = {}
    for name in files:
        weights.update(load_torch_bin(directory / name))
    return weights


def _shards_from_index(index: Path) -> list:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise MlxsmallError(f"{index}: not a valid checkpoint index ({error})") from None

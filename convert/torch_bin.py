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

import io
import pickle
import pickletools
import struct
import zipfile
import zlib
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


MAX_DIMS = 16  # far more than any weight has; refuses 100-dim views before anything is sized
# A compressed member may expand to at most this many times its stored size (or 64 MiB): torch.save
# stores everything uncompressed, so anything bigger is a decompression bomb, refused unread.
MAX_EXPANSION, SMALL_MEMBER = 32, 64 << 20
MAX_PICKLE = 256 << 20
CRC_CHUNK = 16 << 20


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Check the view against its storage here, before anything is sized or allocated."""
    if not isinstance(storage, _StorageRef):
        raise ValueError(f"tensor storage is a {type(storage).__name__}, not a storage")
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
            and len(size) == len(stride) <= MAX_DIMS and _is_count(storage_offset)
            and all(_is_count(n) for n in size) and all(_is_count(s) for s in stride)):
        raise ValueError("tensor size/stride/offset are not lists of non-negative integers of equal length")
    count = 1
    for n in size:
        count *= n
    if count:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        # No more elements than the storage holds: a stride-0 view of 2^40 elements is refused.
        if last >= storage.numel or count > storage.numel:
            raise ValueError(f"a {list(size)} view at offset {storage_offset} does not fit its storage "
                             f"of {storage.numel} elements")
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
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and _is_count(pid[4])):
            raise MlxsmallError(f"{self.source}: data.pkl: unsupported persistent id (a {type(pid).__name__}, "
                                "not ('storage', type, key, location, numel))")
        _, storage_type, key, _location, numel = pid
        return _StorageRef(storage_type.name, key, numel)


def _to_mx(array: np.ndarray, storage_name: str):
    import mlx.core as mx

    if storage_name == "BFloat16Storage":
        return mx.array(array).view(mx.bfloat16)
    return mx.array(array)


ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, ValueError,
              struct.error, NotImplementedError, RuntimeError)
MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def load_torch_bin(path) -> dict:
    """Tensors of one `pytorch_model.bin` as `{name: mx.array}`, dtypes kept (fp32/fp16/bf16...).

    Every member is checked against the zip's central directory (name, sizes, CRC-32) before its
    bytes are used. Raises MlxsmallError naming the file for anything that is not a plain
    zip-pickle state dict.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise MlxsmallError(f"{path}: no such file") from None
    except ZIP_ERRORS as error:
        raise MlxsmallError(
            f"{path}: not a readable PyTorch zip checkpoint ({_reason(error)}); the file may be truncated "
            "or corrupt (re-download it), or written by torch < 1.6 (legacy format, unsupported)"
        ) from None
    with archive:
        infos = archive.infolist()
        for info in infos:
            _check_member(info, path)
        names = [info.filename for info in infos]
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1 or len(set(names)) != len(names):
            raise MlxsmallError(f"{path}: expected one '<name>/data.pkl' and unique member names in the archive")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in names:
            raw = _read_member(archive, prefix + "byteorder", path)
            byteorder = raw.decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise MlxsmallError(f"{path}: byteorder is {raw[:20]!r}, not 'little' or 'big' (corrupt archive)")
        else:
            byteorder = "little"
        if byteorder != "little":
            raise MlxsmallError(f"{path}: big-endian checkpoints are not supported")

        state = _unpickle(_read_member(archive, pickles[0], path), path)
        storages = {}  # key -> numpy array over the whole storage, read once however many views it has
        spans = []  # byte ranges of the memory-mapped storages: members must not overlap
        views = {}  # identical views (MobiLlama's 22 MLP copies) become one array, not 22 copies
        tensors = {}
        for name, ref in state.items():
            if not isinstance(ref, _TensorRef):
                continue  # non-tensor entries (e.g. metadata) carry no weights
            if not isinstance(name, str):
                raise MlxsmallError(f"{path}: data.pkl: a tensor is keyed by a {type(name).__name__}, not a name")
            storage = ref.storage
            view_key = (storage.key, ref.offset, ref.size, ref.stride)
            if storage.key not in storages:
                storages[storage.key] = _read_storage(archive, prefix, storage, path, spans)
            elif storages[storage.key].dtype != STORAGE_DTYPES[storage.name]:
                raise MlxsmallError(f"{path}: storage data/{storage.key[:40]} is used with two element types")
            if view_key not in views:
                views[view_key] = _to_mx(_view(storages[storage.key], ref, name, path), storage.name)
            tensors[name] = views[view_key]
    return tensors


def _reason(error) -> str:
    return " ".join(str(error).split())[:120] or type(error).__name__


def _check_member(info, path):
    """Refuse what torch.save never writes and what could cost more than the file's size to read."""
    if info.flag_bits & 0x1:
        raise MlxsmallError(f"{path}: member {info.filename[:80]} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise MlxsmallError(f"{path}: member {info.filename[:80]} uses compression method {info.compress_type} "
                            "(only stored and deflated are supported)")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise MlxsmallError(f"{path}: member {info.filename[:80]} is stored but its sizes differ (corrupt archive)")
    if info.file_size > max(SMALL_MEMBER, MAX_EXPANSION * info.compress_size):
        raise MlxsmallError(f"{path}: member {info.filename[:80]} would expand from {info.compress_size} to "
                            f"{info.file_size} bytes (a decompression bomb?); refused unread")


def _read_member(archive, name, path) -> bytes:
    """A small member's bytes, checked by zipfile against the central directory (name, CRC-32)."""
    info = archive.getinfo(name)
    if info.file_size > MAX_PICKLE:
        raise MlxsmallError(f"{path}: {name} declares {info.file_size} bytes, more than a checkpoint's pickle needs")
    try:
        return archive.read(info)
    except ZIP_ERRORS as error:
        raise MlxsmallError(f"{path}: {name} is corrupt ({_reason(error)})") from None


def _scan_pickle(raw: bytes, path):
    """Walk the opcodes without running them: every length and memo index bounded by the data.

    The C unpickler trusts the counts (a LONG_BINPUT of 2^31 sizes its memo to gigabytes first).
    """
    puts = 0
    try:
        for opcode, arg, position in pickletools.genops(raw):
            if opcode.name in MEMO_PUTS:
                if arg > puts:
                    raise ValueError(f"memo index {arg} at byte {position} skips ahead (only {puts} stored)")
                puts += 1
            elif opcode.name == "MEMOIZE":
                puts += 1
            elif opcode.name == "FRAME" and arg > len(raw) - position:
                raise ValueError(f"frame of {arg} bytes at byte {position} runs past the end")
    except (ValueError, TypeError, OverflowError) as error:
        raise MlxsmallError(f"{path}: data.pkl is not a valid pickle ({_reason(error)})") from None


def _unpickle(raw: bytes, path):
    _scan_pickle(raw, path)
    try:
        state = _RestrictedUnpickler(io.BytesIO(raw), path).load()
    except MlxsmallError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError,
            OverflowError, RecursionError, MemoryError, struct.error) as error:
        raise MlxsmallError(f"{path}: cannot read data.pkl ({type(error).__name__}: {_reason(error)})") from None
    if not isinstance(state, dict):
        raise MlxsmallError(f"{path}: data.pkl holds a {type(state).__name__}, not a state dict")
    return state


def _read_storage(archive, prefix, storage, path, spans):
    """The storage's elements as a flat array: memory-mapped when stored uncompressed (torch.save
    always does), so a multi-GB checkpoint is not copied into memory once more. The mapped bytes
    are checked against the central directory's CRC-32 (one streaming pass)."""
    dtype = STORAGE_DTYPES[storage.name]
    member = f"{prefix}data/{storage.key}"
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise MlxsmallError(f"{path}: storage data/{storage.key[:40]} is missing from the archive") from None
    expected = storage.numel * dtype.itemsize
    if info.file_size != expected:
        raise MlxsmallError(
            f"{path}: storage data/{storage.key} has {info.file_size} bytes, expected "
            f"{storage.numel} x {dtype.itemsize} (file truncated or corrupt)"
        )
    if info.compress_type != zipfile.ZIP_STORED:
        raw = _read_member_unbounded(archive, info, path)
        return np.frombuffer(raw, dtype=dtype)
    start = _stored_data_start(info, path)
    if start + expected > path.stat().st_size:
        raise MlxsmallError(f"{path}: storage data/{storage.key} is cut short (file truncated)")
    for other_start, other_end in spans:
        if start < other_end and other_start < start + expected:
            raise MlxsmallError(f"{path}: storage data/{storage.key} overlaps another member (corrupt archive)")
    spans.append((start, start + expected))
    if expected == 0:
        array = np.zeros(0, dtype=dtype)
    else:
        array = np.memmap(path, dtype=dtype, mode="r", offset=start, shape=(storage.numel,))
    crc = 0
    for chunk in range(0, expected, CRC_CHUNK):  # streaming: pages are read once, never all held
        crc = zlib.crc32(array.view(np.uint8)[chunk:chunk + CRC_CHUNK], crc)
    if crc != info.CRC:
        raise MlxsmallError(f"{path}: storage data/{storage.key} fails its CRC-32 check (corrupt file)")
    return array


def _read_member_unbounded(archive, info, path) -> bytes:
    # Sizes were bounded by _check_member; zipfile checks the CRC-32 at the end.
    try:
        return archive.read(info)
    except ZIP_ERRORS as error:
        raise MlxsmallError(f"{path}: {info.filename} is corrupt ({_reason(error)})") from None


def _stored_data_start(info, path) -> int:
    """Where a stored member's bytes start, its local header checked against the central directory."""
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise MlxsmallError(f"{path}: {info.filename} has a corrupt zip entry header")
        flags, method = struct.unpack("<HH", header[6:10])
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        name = handle.read(name_length)
    expected_name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace")
    if name != expected_name or method != info.compress_type or (flags & 0x1):
        raise MlxsmallError(f"{path}: {info.filename}: the local zip header does not match the central directory")
    return info.header_offset + 30 + name_length + extra_length


def _view(flat, ref, name, path):
    """The tensor `ref` as a contiguous array (its extent was checked against the storage when unpickled)."""
    size, stride, offset = ref.size, ref.stride, ref.offset
    if len(flat) != ref.storage.numel:
        raise MlxsmallError(f"{path}: tensor '{name[:80]}' does not fit its storage")
    if any(n == 0 for n in size):
        return np.zeros(size, dtype=flat.dtype)
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
    from mlxsmall.safetensors_io import shard_names

    return shard_names(index)

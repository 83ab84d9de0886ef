"""Seeded checkpoint fuzzing: damaged and hostile files fed to the readers, each in a forked child.

Families (each mutant is one damaged copy of an undamaged source checkpoint):

- safetensors   our model dir's model.safetensors: truncation, header bit flips, header field lies
- torch-bin     a MobiLlama-style pytorch_model.bin: truncation, bit flips anywhere, zip tricks
                (local/central header fields, encryption flag, methods, sizes, CRC, deflate bombs)
- pickle        hand-made data.pkl payloads in a valid zip: code-running globals (a marker file
                shows whether anything ran), huge counts, hostile storage and view arguments
- gguf          a small GGUF written with the `gguf` package: truncation, header bit flips,
                single-field edits (counts, types, lengths, dims, offsets, alignment), metadata edits
- gguf-real     single-field edits of the real default model (SmolLM2 Q4_1), when installed
- model-dir     our model dir: config.json, generation_config.json and quantization lies

Bytes inside tensor data are only flipped where the format has a checksum (.bin's CRC-32):
safetensors and GGUF carry none, so a flipped weight there is undetectable by any reader.

Each mutant runs in `os.fork()`ed child with a timeout and an address-space limit. Outcomes:
refused (MlxsmallError, one line naming the file), same (accepted, weights identical), and the
failures: code (marker file written), crash (signal, timeout, MemoryError), traceback (any other
exception, or an error that is not one line naming the file), different (accepted, weights differ).

    python tests/fuzz_harness.py --n 2000 --seed 1
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import resource
import shutil
import signal
import struct
import sys
import time
import traceback
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

TESTS = Path(__file__).parent
FAILURES = ("code", "crash", "traceback", "different")
HOSTILE_INTS = [0, 1, 2, 3, 7, 31, 33, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**63 - 1, 2**64 - 1]


# --------------------------------------------------------------------------- sources


def build_sources(root: Path, *, real_gguf: bool = True) -> dict:
    """Undamaged source checkpoints under `root`: {family: source dict}."""
    import mlx.core as mx

    sys.path.insert(0, str(TESTS))
    from conftest import build_tiny_tokenizer, tiny_config_dict
    from fixtures_convert import write_mobillama
    from mlxsmall.loading import build_model, save_model

    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(root / "tokenizer")
    model_dir = root / "model"
    if not model_dir.exists():
        mx.random.seed(0)
        config = tiny_config_dict("llama", num_hidden_layers=2)
        model = build_model(config)
        mx.eval(model.parameters())
        save_model(model_dir, model, config, tokenizer_src_dir=tokenizer)
    quantized_dir = root / "model-q4"
    if not quantized_dir.exists():
        from mlxsmall.quantize import quantize_model

        mx.random.seed(1)
        config = tiny_config_dict("mobilellm", num_hidden_layers=2)
        model = build_model(config)
        config = quantize_model(model, config, bits=4, group_size=32)
        save_model(quantized_dir, model, config, tokenizer_src_dir=tokenizer)
    bin_dir = root / "mobillama"
    if not bin_dir.exists():
        write_mobillama(bin_dir)
    gguf_path = root / "tiny.gguf"
    if not gguf_path.exists():
        write_small_gguf(gguf_path, tokenizer)
    sources = {
        "safetensors": {"path": model_dir, "op": "load_model"},
        "torch-bin": {"path": bin_dir / "pytorch_model.bin", "op": "load_torch_bin"},
        "pickle": {"path": bin_dir / "pytorch_model.bin", "op": "load_torch_bin"},
        "gguf": {"path": gguf_path, "op": "gguf"},
        "model-dir": {"path": quantized_dir, "op": "load_model"},
    }
    if real_gguf:
        real = default_gguf()
        if real is not None:
            sources["gguf-real"] = {"path": real, "op": "gguf"}
    for family, source in sources.items():
        np.savez(root / f"{family}.npz", **run_op(source["op"], source["path"], root / "scratch"))
        source["path"] = str(source["path"])
    (root / "sources.json").write_text(json.dumps(sources))
    return sources


def load_sources(root: Path, *, real_gguf: bool) -> dict:
    """Build the sources in a fresh process: once MLX has evaluated anything in a process, its
    worker threads are gone in forked children and they hang; this process must never evaluate."""
    import subprocess

    if not (root / "sources.json").exists():
        command = [sys.executable, str(Path(__file__).resolve()), "--build-sources", str(root)]
        if not real_gguf:
            command.append("--no-real-gguf")
        subprocess.run(command, check=True)
    sources = json.loads((root / "sources.json").read_text())
    for family, source in sources.items():
        source["path"] = Path(source["path"])
        with np.load(root / f"{family}.npz") as references:
            source["reference"] = dict(references)
    if "pickle" in sources:
        # Payloads are made, not damaged copies: the only acceptable load is an empty state dict
        # (a flipped byte can turn a payload into a valid pickle of `{}`); any tensor is "different".
        sources["pickle"]["reference"] = {}
    return sources


def default_gguf():
    from mlxsmall import registry
    from mlxsmall.errors import MlxsmallError
    from mlxsmall.hub import find_pip_gguf

    entry = registry.require(registry.DEFAULT_MODEL)
    try:
        return find_pip_gguf(*entry.repo[len("pip:"):].split("/", 1))
    except MlxsmallError:
        return None


def write_small_gguf(path: Path, tokenizer_dir: Path) -> None:
    """A SmolLM2-shaped llama GGUF (Q4_1 matrices, Q8_0 embedding, F32 norms) via GGUFWriter."""
    import gguf

    from fixtures_convert import write_llama_gguf

    tokenizer = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = dict(tokenizer["model"]["vocab"])
    vocab.update({t["content"]: t["id"] for t in tokenizer["added_tokens"]})
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    specials = {t["content"] for t in tokenizer["added_tokens"]}

    def add_tokenizer(writer):
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("smollm")
        writer.add_token_list(tokens)
        writer.add_token_types([3 if t in specials else 1 for t in tokens])
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]])
        writer.add_bos_token_id(vocab["<|im_start|>"])
        writer.add_eos_token_id(vocab["<|im_end|>"])
        writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
        return len(tokens)

    q4 = gguf.GGMLQuantizationType.Q4_1
    names = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    write_llama_gguf(path, add_tokenizer, matrix_types=dict.fromkeys(names, q4), seed=0, context=512,
                     rope_base=100000.0)


# --------------------------------------------------------------------------- what the child runs


def preload():
    """Import (never evaluate) what the children run, so that each fork starts warm."""
    import mlx_lm.utils  # noqa: F401
    import tokenizers  # noqa: F401

    import mlxsmall.convert.gguf  # noqa: F401
    import mlxsmall.convert.torch_bin  # noqa: F401
    import mlxsmall.loading  # noqa: F401
    import mlxsmall.models.mobilellm  # noqa: F401
    import mlxsmall.models.mobillama  # noqa: F401


def run_op(op: str, path: Path, scratch: Path):
    """Read the checkpoint as the product does; the weights as {name: numpy array}."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    if op == "load_model":
        from mlxsmall.loading import load_model, stop_strings

        model, _ = load_model(path)
        stop_strings(path)
        params = dict(tree_flatten(model.parameters()))
    elif op == "load_torch_bin":
        from mlxsmall.convert.torch_bin import load_torch_bin

        params = load_torch_bin(path)
    elif op == "gguf":
        from mlxsmall.convert.gguf import build_gguf_model, write_gguf_tokenizer

        model, _, metadata = build_gguf_model(path)
        shutil.rmtree(scratch, ignore_errors=True)
        write_gguf_tokenizer(metadata, scratch, path)
        params = dict(tree_flatten(model.parameters()))
    else:
        raise ValueError(op)
    return {k: np.array(v.astype(mx.float32) if v.dtype == mx.bfloat16 else v) for k, v in params.items()}


def same_weights(got: dict, reference: dict) -> bool:
    return got.keys() == reference.keys() and all(
        got[k].shape == reference[k].shape and got[k].dtype == reference[k].dtype
        and np.array_equal(got[k], reference[k], equal_nan=True) for k in reference)


def run_in_child(op, path, reference, scratch, *, timeout=30.0, memory=3 << 30):
    """(outcome, detail) of reading `path` in a forked child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        outcome, detail = "traceback", ""
        try:
            soft = _vm_bytes() + memory
            resource.setrlimit(resource.RLIMIT_AS, (soft, soft))
            from mlxsmall.errors import MlxsmallError

            try:
                got = run_op(op, path, scratch)
                outcome = "same" if same_weights(got, reference) else "different"
            except MlxsmallError as error:
                message = str(error)
                named = str(path) in message or Path(path).name in message
                outcome = "refused" if "\n" not in message and named else "traceback"
                detail = message[-200:]
            except MemoryError:
                outcome, detail = "crash", "MemoryError"
            except BaseException as error:  # noqa: BLE001 - what the fuzz test counts
                outcome = "traceback"
                detail = "".join(traceback.format_exception_only(type(error), error)).strip()[-300:]
        finally:
            os.write(write_end, json.dumps([outcome, detail]).encode()[:60000])
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.005)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        return "crash", f"timeout after {timeout:.0f} s"
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    if os.WIFSIGNALED(status):
        return "crash", f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    try:
        return tuple(json.loads(data))
    except ValueError:
        return "crash", f"child exited {status} without a result"


def _vm_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------- mutators


def truncate(data: bytes, rng) -> bytes:
    return data[: rng.randrange(len(data))]


def flip_bits(data: bytes, rng, end=None) -> bytes:
    data = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 8])):
        position = rng.randrange(end or len(data))
        data[position] ^= 1 << rng.randrange(8)
    return bytes(data)


def set_field(data: bytes, offset: int, size: int, rng) -> bytes:
    fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[size]
    (old,) = struct.unpack_from(fmt, data, offset)
    choices = [v for v in HOSTILE_INTS if v < 256 ** size] + [old + 1, max(old - 1, 0), old * 2 % 256 ** size,
                                                               rng.randrange(256 ** size)]
    value = rng.choice(choices) % 256 ** size
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


# safetensors -------------------------------------------------------------


def safetensors_mutant(source: Path, target: Path, rng) -> str:
    data = (source / "model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    kind = rng.choice(["truncate", "flip-header", "flip-length", "lie", "lie", "lie", "raw-json"])
    if kind == "truncate":
        data = truncate(data, rng)
    elif kind == "flip-header":
        data = flip_bits(data, rng, end=8 + header_len)
    elif kind == "flip-length":
        data = set_field(data, 0, 8, rng)
    else:
        names = [n for n in header if n != "__metadata__"]
        name = rng.choice(names)
        if kind == "lie":
            field = rng.choice(["dtype", "shape", "data_offsets", "entry", "drop", "duplicate"])
            hostile = [float("inf"), None, "0", [], {}, -1, 2**64, 1e308, True, [[1]],
                       "F64", "I8", "U32", "F8", [0], [2**63], [1, 2, 3]]
            if field == "dtype":
                header[name]["dtype"] = rng.choice(["F64", "I8", "U8", "BOOL", "X", None, ["F32"], 4])
            elif field == "shape":
                shape = list(header[name]["shape"])
                shape = rng.choice([shape[::-1], shape + [1], [float("inf")], [-1] + shape[1:], [s * 2 for s in shape],
                                    rng.choice(hostile)])
                header[name]["shape"] = shape
            elif field == "data_offsets":
                start, end = header[name]["data_offsets"]
                delta = rng.choice([1, 2, 4, 8, 64, -4, -8, 2**40])
                header[name]["data_offsets"] = rng.choice([[start + delta, end + delta], [start, end + delta],
                                                           [start + delta, end], [str(start), end], None,
                                                           [start], [end, start]])
            elif field == "entry":
                header[name] = rng.choice(hostile)
            elif field == "drop":
                del header[name]
            else:
                other = rng.choice(names)
                header[name]["data_offsets"] = header[other]["data_offsets"]
        text = json.dumps(header, allow_nan=True).encode()
        if kind == "raw-json":
            text = rng.choice([b'{"a":' * 50000 + b"1" + b"}" * 50000, b"[" * 10**5, b'{"w":' + b"9" * 5000 + b"}",
                               b"\xff\xfe", b"null", b'{"__metadata__": 5}', text[: len(text) // 2]])
        text += b" " * (-len(text) % 8)
        data = struct.pack("<Q", len(text)) + text + data[8 + header_len:]
    shutil.copytree(source, target)
    (target / "model.safetensors").write_bytes(data)
    return kind


# torch .bin ---------------------------------------------------------------


def _zip_records(data: bytes):
    """Offsets of local headers, central headers and the end record of a zip."""
    local = [i for i in range(len(data) - 3) if data[i:i + 4] == b"PK\x03\x04"]
    central = [i for i in range(len(data) - 3) if data[i:i + 4] == b"PK\x01\x02"]
    end = data.rfind(b"PK\x05\x06")
    return local, central, end


LOCAL_FIELDS = [(6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)]  # flags method crc sizes name extra
CENTRAL_FIELDS = [(8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (42, 4)]
END_FIELDS = [(8, 2), (10, 2), (12, 4), (16, 4)]


def torch_bin_mutant(source: Path, target: Path, rng, records) -> str:
    data = source.read_bytes()
    local, central, end = records
    kind = rng.choice(["truncate", "flip", "flip", "local-field", "central-field", "central-field",
                       "end-field", "encrypt", "method", "deflate", "bomb", "alias"])
    if kind == "truncate":
        data = truncate(data, rng)
    elif kind == "flip":
        data = flip_bits(data, rng)
    elif kind == "local-field":
        offset, size = rng.choice(LOCAL_FIELDS)
        data = set_field(data, rng.choice(local) + offset, size, rng)
    elif kind == "central-field":
        offset, size = rng.choice(CENTRAL_FIELDS)
        data = set_field(data, rng.choice(central) + offset, size, rng)
    elif kind == "end-field":
        offset, size = rng.choice(END_FIELDS)
        data = set_field(data, end + offset, size, rng)
    elif kind == "encrypt":
        header = rng.choice(central)
        out = bytearray(data)
        out[header + 8] |= 1
        if rng.random() < 0.5:
            out[local[central.index(header)] + 6] |= 1
        data = bytes(out)
    elif kind == "method":
        header = rng.choice(range(len(central)))
        method = rng.choice([1, 6, 9, 12, 14, 93, 99, 8])
        out = bytearray(data)
        struct.pack_into("<H", out, central[header] + 10, method)
        struct.pack_into("<H", out, local[header] + 8, method)
        data = bytes(out)
    elif kind in ("deflate", "bomb"):
        data = _rezip(data, rng, bomb=kind == "bomb")
    else:  # two central entries pointing at one local header
        a, b = rng.sample(range(len(central)), 2)
        (offset,) = struct.unpack_from("<I", data, central[a] + 42)
        out = bytearray(data)
        struct.pack_into("<I", out, central[b] + 42, offset)
        data = bytes(out)
    target.write_bytes(data)
    return kind


def _rezip(data: bytes, rng, bomb: bool) -> bytes:
    """The archive rewritten with deflate; damaged deflate data or a storage replaced by a bomb."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    names = source.namelist()
    victim = rng.choice([n for n in names if "/data/" in n] or names)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            payload = source.read(name)
            if bomb and name == victim:
                payload = bytes(rng.choice([64 << 20, 256 << 20]))
            archive.writestr(name, payload)
    data = out.getvalue()
    if not bomb:
        local, _, _ = _zip_records(data)
        start = rng.choice(local)
        name_length, extra_length = struct.unpack_from("<HH", data, start + 26)
        body = start + 30 + name_length + extra_length
        (size,) = struct.unpack_from("<I", data, start + 18)
        if size:
            data = data[:body] + flip_bits(data[body:body + size], rng) + data[body + size:]
    return data


# pickle payloads ----------------------------------------------------------


def _raw_global(module: str, name: str, arg: bytes) -> bytes:
    """Protocol-2 bytes of `module.name(arg)` (GLOBAL + BINUNICODE + TUPLE1 + REDUCE)."""
    return (b"c" + module.encode() + b"\n" + name.encode() + b"\n"
            + b"X" + struct.pack("<I", len(arg)) + arg + b"\x85R")


def pickle_payloads(marker: Path) -> list:
    """(name, data.pkl bytes, storage members) — each must be refused, nothing run."""
    command = f"touch {marker}".encode()
    code = f"open({str(marker)!r}, 'w').write('ran')".encode()
    payloads = []
    runners = [("os", "system", command), ("posix", "system", command), ("builtins", "exec", code),
               ("builtins", "eval", code), ("subprocess", "getoutput", command),
               ("subprocess", "check_output", command), ("pty", "spawn", command),
               ("__builtin__", "eval", code), ("builtins", "__import__", b"os"),
               ("torch", "load", command), ("torch.serialization", "load", command),
               ("numpy.core.multiarray", "_reconstruct", command), ("collections", "OrderedDict", command),
               ("torch._utils", "_rebuild_tensor_v2", command), ("torch", "FloatStorage", command),
               ("copyreg", "_reconstructor", command), ("functools", "partial", command)]
    for module, name, arg in runners:
        body = _raw_global(module, name, arg)
        payloads.append((f"global-{module}.{name}", b"\x80\x02" + body + b".", {}))
        # the call hidden inside a state dict value
        payloads.append((f"nested-{module}.{name}", b"\x80\x02}X\x01\x00\x00\x00a" + body + b"s.", {}))
    # INST / OBJ / BUILD / EXT / STACK_GLOBAL paths
    payloads += [
        ("inst-os.system", b"(S'" + command + b"'\nios\nsystem\n.", {}),
        ("obj-os.system", b"\x80\x02(cos\nsystem\nX" + struct.pack("<I", len(command)) + command + b"o.", {}),
        ("stack-global", b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c" + bytes([len(command)]) + command + b"\x85R.", {}),
        ("ext1", b"\x80\x02\x82\x01.", {}), ("ext2", b"\x80\x02\x83\x01\x00.", {}), ("ext4", b"\x80\x02\x84\x01\x00\x00\x00.", {}),
        ("build-setstate", b"\x80\x02ccollections\nOrderedDict\n)R}X\x0b\x00\x00\x00__setstate__"
         + _raw_global("os", "system", command) + b"sb.", {}),
        ("find-class-attr", b"\x80\x04\x8c\x0bcollections\x8c\x13OrderedDict.__init__\x93.", {}),
    ]
    # sizes that would make the unpickler allocate up front
    payloads += [
        ("binbytes8-huge", b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"abc.", {}),
        ("binunicode8-huge", b"\x80\x04\x8d" + struct.pack("<Q", 2**40) + b"abc.", {}),
        ("long-binput-huge", b"\x80\x02}r" + struct.pack("<I", 2**31 - 1) + b".", {}),
        ("long-binget-huge", b"\x80\x02}j" + struct.pack("<I", 2**31 - 1) + b".", {}),
        ("frame-huge", b"\x80\x04\x95" + struct.pack("<Q", 2**60) + b"}.", {}),
        ("long4-huge", b"\x80\x02\x8b" + struct.pack("<i", 2**31 - 1) + b"\x00.", {}),
        ("deep-nesting", b"\x80\x02" + b"]" * 200000 + b"e" * 10 + b".", {}),
        ("int-5000-digits", b"I" + b"9" * 5000 + b"\n.", {}),
        ("not-a-dict", b"\x80\x02]q\x00.", {}),
        ("empty", b"", {}),
        ("no-stop", b"\x80\x02}q\x00", {}),
    ]
    # hostile storage / view arguments (valid pickles of a state dict with one tensor)
    good = ("FloatStorage", "0", 16)
    views = {
        "stride-0-huge": (good, 0, (2**20, 2**20), (0, 0)),
        "dims-100": (good, 0, (1,) * 100, (1,) * 100),
        "size-inf": (good, 0, (float("inf"),), (1,)),
        "size-str": (good, 0, ("4",), (1,)),
        "size-bool": (good, 0, (True,), (1,)),
        "negative-stride": (good, 0, (4,), (-1,)),
        "offset-past-end": (good, 16, (4,), (1,)),
        "offset-float": (good, 0.5, (4,), (1,)),
        "view-past-end": (good, 8, (16,), (1,)),
        "rank-mismatch": (good, 0, (4, 4), (1,)),
        "numel-lie": (("FloatStorage", "0", 2**40), 0, (4,), (1,)),
        "numel-negative": (("FloatStorage", "0", -1), 0, (4,), (1,)),
        "storage-key-int": (("FloatStorage", 0, 16), 0, (4,), (1,)),
        "storage-type-unknown": (("QuantizedStorage", "0", 16), 0, (4,), (1,)),
        "storage-missing-member": (("FloatStorage", "9", 16), 0, (4,), (1,)),
        "storage-wrong-numel": (("FloatStorage", "0", 15), 0, (4,), (1,)),
    }
    for name, (storage, offset, size, stride) in views.items():
        payloads.append((f"view-{name}", _state_pickle(storage, offset, size, stride), {"archive/data/0": bytes(64)}))
    payloads.append(("storage-not-a-storage", _state_pickle(None, 0, (4,), (1,)), {"archive/data/0": bytes(64)}))
    payloads.append(("byteorder-bad", _state_pickle(good, 0, (4,), (1,)),
                     {"archive/data/0": bytes(64), "archive/byteorder": b"\xff\xfe"}))
    payloads.append(("byteorder-big", _state_pickle(good, 0, (4,), (1,)),
                     {"archive/data/0": bytes(64), "archive/byteorder": b"big"}))
    payloads.append(("storage-two-types", _two_types_pickle(), {"archive/data/0": bytes(64)}))
    return payloads


def _storage_ref(storage) -> bytes:
    kind, key, numel = storage
    key_bytes = pickle.dumps(key, protocol=2)[2:-1]
    numel_bytes = pickle.dumps(numel, protocol=2)[2:-1]
    return (b"(X\x07\x00\x00\x00storage" + b"ctorch\n" + kind.encode() + b"\n" + key_bytes
            + b"X\x03\x00\x00\x00cpu" + numel_bytes + b"tQ")


def _tensor(storage, offset, size, stride) -> bytes:
    storage_bytes = b"N" if storage is None else _storage_ref(storage)
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage_bytes + pickle.dumps(offset, protocol=2)[2:-1]
            + pickle.dumps(tuple(size), protocol=2)[2:-1] + pickle.dumps(tuple(stride), protocol=2)[2:-1]
            + b"\x89ccollections\nOrderedDict\n)RtR")


def _state_pickle(storage, offset, size, stride) -> bytes:
    return b"\x80\x02}X\x01\x00\x00\x00w" + _tensor(storage, offset, size, stride) + b"s."


def _two_types_pickle() -> bytes:
    half = ("HalfStorage", "0", 32)
    return (b"\x80\x02}X\x01\x00\x00\x00a" + _tensor(("FloatStorage", "0", 16), 0, (4,), (1,))
            + b"sX\x01\x00\x00\x00b" + _tensor(half, 0, (4,), (1,)) + b"s.")


def write_payload(target: Path, pickled: bytes, members: dict) -> None:
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        for name, data in members.items():
            archive.writestr(name, data)


# gguf ---------------------------------------------------------------------


def gguf_fields(data: bytes) -> list:
    """(offset, size, what) of every numeric header field of a GGUF file (a plain walk)."""
    fields, pos = [(8, 8, "tensor count"), (16, 8, "kv count"), (4, 4, "version")], 24
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def u(fmt, at):
        return struct.unpack_from(fmt, data, at)[0]

    def skip(size, what=None, listed=None):  # past one field, listed when named (its first `listed` bytes)
        nonlocal pos
        if what:
            fields.append((pos, listed or size, what))
        pos += size

    def skip_string(what=None):  # a u64 length and its bytes
        skip(8 + u("<Q", pos), what, 8)

    tensor_count, kv_count = u("<Q", 8), u("<Q", 16)
    for _ in range(kv_count):
        skip_string("key length")
        kind = u("<I", pos)
        skip(4, "value type")
        if kind == 8:
            skip_string("string length")
        elif kind == 9:
            item, count = u("<I", pos), u("<Q", pos + 4)
            skip(4, "array type")
            skip(8, "array count")
            for index in range(count if item == 8 else 0):
                skip_string("array string length" if index < 3 else None)
            skip(0 if item == 8 else count * sizes[item])
        else:
            skip(sizes[kind], "value")
    for _ in range(tensor_count):
        skip_string("tensor name length")
        dims = u("<I", pos)
        skip(4, "tensor n_dims")
        for _ in range(dims):
            skip(8, "tensor dim")
        skip(4, "tensor type")
        skip(8, "tensor offset")
    return fields, pos


def gguf_mutant(data: bytes, fields, header_end: int, rng, real: bool) -> tuple:
    """(mutated bytes, kind). `real`: only single-field edits (the big file is patched in place)."""
    kind = "field" if real else rng.choice(["truncate", "flip-header", "field", "field", "field", "meta"])
    if kind == "truncate":
        return truncate(data, rng), kind
    if kind == "flip-header":
        return flip_bits(data, rng, end=header_end), kind
    if kind == "field":
        offset, size, what = rng.choice(fields)
        return set_field(data, offset, size, rng), f"field:{what}"
    return None, "meta"


GGUF_META_EDITS = [
    ("llama.attention.head_count", [0, 3, 5, 2**31 - 1, -1, 1.5, "4", [4]]),
    ("llama.attention.head_count_kv", [0, 3, 5, 2**31 - 1, -1, "2"]),
    ("llama.block_count", [0, 2**31 - 1, 3, 1, 2**63, -5, "2"]),
    ("llama.embedding_length", [0, 63, 128, 2**40, "64"]),
    ("llama.feed_forward_length", [0, 127, 2**40, 1.0]),
    ("llama.rope.dimension_count", [0, 15, 17, 2**31, "16"]),
    ("llama.context_length", [0, -1, "x", [1, 2], 2**63]),
    ("llama.attention.layer_norm_rms_epsilon", ["x", [1.0], -1.0, float("nan"), float("inf")]),
    ("llama.rope.freq_base", ["x", 0.0, -1.0, float("inf")]),
    ("tokenizer.ggml.tokens", [[1, 2, 3], "abc", [], ["a"] * 5]),
    ("tokenizer.ggml.merges", [["a"], ["zz zz"], [1, 2], "a b", ["a b c d"]]),
    ("tokenizer.ggml.token_type", [[1, 2], "x", [1.5] * 3]),
    ("tokenizer.ggml.bos_token_id", [-1, 2**31, "x", [1]]),
    ("tokenizer.ggml.eos_token_id", [-1, 2**31, 10**6, "x"]),
    ("tokenizer.ggml.model", ["llama", "bert", 5, ["gpt2"]]),
    ("tokenizer.ggml.pre", [5, ["smollm"], "unknown"]),
    ("tokenizer.chat_template", [5, ["x"], "{{ ''.__class__.__mro__[1].__subclasses__() }}"]),
    ("general.architecture", ["falcon", 5, ["llama"], ""]),
    ("general.alignment", [0, 3, 48, 2**31, "32"]),
]


def gguf_meta_mutant(source: Path, target: Path, rng) -> str:
    """A copy of `source` with one metadata value replaced (any type), via the gguf package."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    key, values = rng.choice(GGUF_META_EDITS)
    value = rng.choice(values)
    writer = gguf.GGUFWriter(str(target), arch=None)
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        if field.name == key:
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            items = field.contents()
            writer.add_key_value(field.name, items, kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(field.name, field.contents(), kind)
    if value is not None:
        writer.add_key_value(key, value, _gguf_type(gguf, value, key))
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data), raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return f"meta:{key}"


def _gguf_type(gguf, value, key):
    if isinstance(value, str):
        return gguf.GGUFValueType.STRING
    if isinstance(value, list):
        return gguf.GGUFValueType.ARRAY
    if isinstance(value, float):
        return gguf.GGUFValueType.FLOAT32 if abs(value) < 3e38 or value != value else gguf.GGUFValueType.FLOAT64
    if value < 0:
        return gguf.GGUFValueType.INT32 if value >= -(2**31) else gguf.GGUFValueType.INT64
    return gguf.GGUFValueType.UINT32 if value < 2**32 else gguf.GGUFValueType.UINT64


# model directories --------------------------------------------------------


MODEL_DIR_EDITS = {
    "config.json": [
        ("hidden_size", [0, -1, 63, 2**31 - 1, 2**62, "64", None, 1.5, True, [64]]),
        ("num_hidden_layers", [0, -1, 3, 2**31 - 1, "2", None, 1e308]),
        ("num_attention_heads", [0, 3, 5, 2**31, "4", None]),
        ("num_key_value_heads", [0, 3, 5, 2**31, "2"]),
        ("intermediate_size", [0, 159, 2**40, "160"]),
        ("vocab_size", [0, 319, 2**40, "320"]),
        ("head_dim", [0, 15, 2**31, "16"]),
        ("model_type", ["gpt2", 5, None, ["llama"]]),
        ("quantization", ["x", [], 5, {"bits": "4", "group_size": 32}, {"bits": 4}, {"bits": 4, "group_size": 0},
                          {"bits": 3, "group_size": 32}, {"bits": 4, "group_size": 7}, None]),
        ("rms_norm_eps", ["x", None, [1]]),
        ("rope_theta", ["x", None, [1]]),
        ("tie_word_embeddings", ["x", 5, None]),
        ("layer_sharing_kv", ["x", 5]),
        ("rope_scaling", ["x", 5, {"type": "x"}, {"rope_type": "llama3", "factor": "x"}]),
    ],
    "generation_config.json": [("stop_strings", [5, {"a": 1}, [1, 2], None, "###", [["x"]]])],
}


def model_dir_mutant(source: Path, target: Path, rng) -> str:
    shutil.copytree(source, target)
    kind = rng.choice(["config", "config", "config", "generation", "raw"])
    if kind == "raw":
        name = rng.choice(["config.json", "generation_config.json"])
        (target / name).write_bytes(rng.choice([b"", b"[]", b"\xff", b"{", b"5", b'{"a":' * 100000]))
        return f"raw:{name}"
    name = "config.json" if kind == "config" else "generation_config.json"
    path = target / name
    document = json.loads(path.read_text()) if path.exists() else {}
    key, values = rng.choice(MODEL_DIR_EDITS[name])
    document[key] = rng.choice(values)
    path.write_text(json.dumps(document))
    return f"{name}:{key}"


# --------------------------------------------------------------------------- the run


def run_fuzz(root: Path, n: int, seed: int = 0, *, timeout: float = 30.0, families=None, log=None) -> dict:
    """Run `n` mutants spread over the families; returns {family: Counter(outcome)} and examples."""
    rng = random.Random(seed)
    sources = load_sources(root / "sources", real_gguf=families is None or "gguf-real" in families)
    preload()
    names = [f for f in sources if families is None or f in families]
    # the real 98 MB GGUF costs seconds a mutant: a small share
    weights = {name: (1 if name == "gguf-real" else 6) for name in names}
    marker = root / "MARKER"
    payloads = pickle_payloads(marker)
    bin_records = _zip_records(sources["torch-bin"]["path"].read_bytes()) if "torch-bin" in sources else None
    gguf_data = sources["gguf"]["path"].read_bytes() if "gguf" in sources else None
    gguf_info = gguf_fields(gguf_data) if gguf_data else None
    real = None
    if "gguf-real" in names:
        real_copy = root / "real.gguf"
        shutil.copyfile(sources["gguf-real"]["path"], real_copy)
        with open(real_copy, "rb") as handle:
            head = handle.read(4 << 20)
        real = (real_copy, head, gguf_fields(head))
    results, examples = defaultdict(Counter), defaultdict(list)
    work = root / "work"
    for index in range(n):
        family = rng.choices(names, [weights[f] for f in names])[0]
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        source = sources[family]
        path, restore = work / "mutant", None
        if family == "safetensors":
            kind = safetensors_mutant(source["path"], path, rng)
        elif family == "model-dir":
            kind = model_dir_mutant(source["path"], path, rng)
        elif family == "torch-bin":
            path = work / "pytorch_model.bin"
            kind = torch_bin_mutant(source["path"], path, rng, bin_records)
        elif family == "pickle":
            name, pickled, members = payloads[index % len(payloads)] if rng.random() < 0.7 \
                else rng.choice(payloads)
            path = work / "pytorch_model.bin"
            if rng.random() < 0.2 and pickled:
                pickled = flip_bits(pickled, rng)
                name += "+flip"
            write_payload(path, pickled, members)
            kind = name
        elif family == "gguf":
            path = work / "mutant.gguf"
            data, kind = gguf_mutant(gguf_data, gguf_info[0], gguf_info[1], rng, real=False)
            if data is None:
                try:
                    kind = gguf_meta_mutant(source["path"], path, rng)
                except ValueError:  # a value the gguf package will not write (an empty array)
                    offset, size, what = rng.choice(gguf_info[0])
                    path.write_bytes(set_field(gguf_data, offset, size, rng))
                    kind = f"field:{what}"
            else:
                path.write_bytes(data)
        else:  # gguf-real: one field patched in place, restored afterwards
            path, head, (fields, header_end) = real
            offset, size, what = rng.choice(fields)
            restore = (offset, head[offset:offset + size])
            patched = set_field(head, offset, size, rng)
            with open(path, "r+b") as handle:
                handle.seek(offset)
                handle.write(patched[offset:offset + size])
            kind = f"field:{what}"
        # the real model takes seconds to read on a busy machine: more time before a hang is declared
        limit = timeout * (3 if family == "gguf-real" else 1)
        outcome, detail = run_in_child(source["op"], path, source["reference"], work / "scratch", timeout=limit)
        if restore:
            with open(path, "r+b") as handle:
                handle.seek(restore[0])
                handle.write(restore[1])
        if marker.exists():
            outcome, detail = "code", f"marker written ({detail})"
            marker.unlink()
        results[family][outcome] += 1
        results[family]["mutants"] += 1
        if outcome in FAILURES and len(examples[family]) < 20:
            examples[family].append((kind, outcome, detail))
        if log:
            log(index, family, kind, outcome, detail)
    shutil.rmtree(work, ignore_errors=True)
    return {"results": dict(results), "examples": dict(examples)}


def table(results: dict) -> str:
    columns = ["mutants", "refused", "same", *FAILURES]
    lines = ["| family | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    total = Counter()
    for family, counts in sorted(results.items()):
        total.update(counts)
        lines.append(f"| {family} | " + " | ".join(str(counts.get(c, 0)) for c in columns) + " |")
    lines.append("| all | " + " | ".join(str(total.get(c, 0)) for c in columns) + " |")
    return "\n".join(lines)


def main(argv=None):
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=int(os.environ.get("MLXSMALL_FUZZ_N", "400")))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--families", nargs="*", default=None)
    parser.add_argument("--root", default=None)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--build-sources", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-real-gguf", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_sources:
        build_sources(Path(args.build_sources), real_gguf=not args.no_real_gguf)
        return 0
    root = Path(args.root or tempfile.mkdtemp(prefix="mlxsmall-fuzz-"))

    def log(index, family, kind, outcome, detail):
        if args.verbose or outcome in FAILURES:
            print(f"{index:5d} {family:12s} {kind:40.40s} {outcome:10s} {detail[:150]}", flush=True)

    start = time.monotonic()
    report = run_fuzz(root, args.n, args.seed, timeout=args.timeout, families=args.families, log=log)
    print(table(report["results"]))
    print(f"{args.n} mutants, seed {args.seed}, {time.monotonic() - start:.0f} s")
    return 1 if any(c.get(f, 0) for c in report["results"].values() for f in FAILURES) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(TESTS.parent))
    import mlxsmall  # noqa: F401

    sys.exit(main())

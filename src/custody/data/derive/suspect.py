"""Tensors out of a file found elsewhere (a suspected leak), as float arrays, never by unpickling.

Safetensors (custody's own int8/int4 derivatives dequantized with their scales), GGUF (every
type the gguf package dequantizes in numpy: F32, F16, BF16, Q8_0, Q4_0, Q4_K, ...), PyTorch zip
checkpoints whose tensors are plain storages (the pickle is walked by a small stack machine that
understands only the opcodes `torch.save` writes and never imports anything), NumPy .npy/.npz
and ONNX initializers. Headers go through custody's bounded parsers first.
"""

from __future__ import annotations

import math
import os
import pickletools
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from custody.data.derive.transforms import SCALE_SUFFIX, dequantize_int4, dequantize_int8
from custody.data.formats import gguf as gguf_format
from custody.data.formats import safetensors
from custody.data.formats.source import open_path
from custody.domain.errors import FormatError, InvalidInput

MAX_TENSOR_BYTES = 8 << 30
MAX_PICKLE = 64 << 20
SUFFIXES = (".safetensors", ".gguf", ".pt", ".pth", ".bin", ".ckpt", ".npy", ".npz", ".onnx")


def files_of(path: Path) -> list[Path]:
    """The model files at `path`: the file itself, or the model files in a folder (not following links)."""
    if path.is_symlink():
        raise InvalidInput(f"{path}: a symbolic link; name the file itself")
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InvalidInput(f"{path}: no such file or folder")
    found = sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink() and p.suffix.lower() in SUFFIXES)
    if not found:
        raise InvalidInput(f"{path}: no model file in it ({', '.join(SUFFIXES)})")
    return found


def load(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 values) of every float tensor in the model files at `path`, one at a time."""
    for file in files_of(path):
        yield from _load_file(file)


def _load_file(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    with open(path, "rb") as handle:
        start = handle.read(8)
    if start[:4] == gguf_format.MAGIC:
        yield from _gguf(path)
    elif start[:2] == b"PK":
        yield from (_npz(path) if path.suffix.lower() == ".npz" else _torch_zip(path))
    elif start[:6] == b"\x93NUMPY":
        yield path.stem, _npy(path.read_bytes() if path.stat().st_size < MAX_TENSOR_BYTES else b"", path)
    elif path.suffix.lower() == ".onnx":
        yield from _onnx(path)
    else:
        yield from _safetensors(path)


def _safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    with open_path(path) as source:
        header = safetensors.read_header(source)
        infos = header.tensors
        for name, info in infos.items():
            if name.endswith(SCALE_SUFFIX) and name[:-len(SCALE_SUFFIX)] in infos:
                continue
            raw = source.read(header.data_start + info.begin, info.end - info.begin, f"tensor {name[:80]}")
            try:
                values = np.frombuffer(raw, dtype=safetensors.numpy_dtype(info.dtype)).reshape(info.shape)
            except Exception:  # noqa: BLE001 - packed sub-byte types are not weights we trace
                continue
            scale = infos.get(name + SCALE_SUFFIX)
            if scale is not None:
                sraw = source.read(header.data_start + scale.begin, scale.end - scale.begin, "scales")
                s = np.frombuffer(sraw, dtype=safetensors.numpy_dtype(scale.dtype)).reshape(scale.shape)
                values = dequantize_int8(values, s) if info.dtype == "I8" else dequantize_int4(values, s)
            if values.dtype.kind == "f" or scale is not None:
                yield name, np.asarray(values, dtype=np.float32)


def _gguf(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    from gguf import GGMLQuantizationType, quants

    with open_path(path) as source:
        header = gguf_format.read_header(source)
        for name, info in header.tensors.items():
            shape = tuple(reversed(info.shape))  # ggml lists the innermost dimension first
            raw = source.read(header.data_start + info.offset, info.byte_length, f"tensor {name[:80]}")
            kind = GGMLQuantizationType[info.ggml_type]
            data = np.frombuffer(raw, dtype=np.uint8)
            try:
                if kind in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                    values = data.view(np.float32 if kind == GGMLQuantizationType.F32 else np.float16)
                else:
                    values = quants.dequantize(data, kind)
            except (NotImplementedError, ValueError, KeyError):
                continue  # integer tensors and types without a numpy dequantizer
            yield name, np.asarray(values, dtype=np.float32).reshape(shape)


def _npy(raw: bytes, path: Path) -> np.ndarray:
    import io

    if not raw:
        raise InvalidInput(f"{path}: too large to trace")
    array = np.load(io.BytesIO(raw), allow_pickle=False)
    if array.dtype.kind != "f":
        raise InvalidInput(f"{path}: holds {array.dtype}, not floats")
    return array.astype(np.float32)


def _npz(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as archive:
        for name in archive.files:
            array = archive[name]
            if array.dtype.kind == "f":
                yield name, array.astype(np.float32)


def _onnx(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    import ml_dtypes

    from custody.data.formats import onnx

    with open_path(path) as source:
        for init in onnx.initializers(source):
            dtype = np.dtype(ml_dtypes.bfloat16 if init.data_type == 16 else onnx.FLOAT_TYPES[init.data_type])
            if init.length != math.prod(init.dims) * dtype.itemsize:
                continue  # float16 kept in int32_data, or a size that does not fit: not traced
            raw = source.read(init.start, init.length, f"initializer {init.name[:80]}")
            yield init.name, np.frombuffer(raw, dtype=dtype).reshape(init.dims).astype(np.float32)


# -- PyTorch zip checkpoints, without unpickling ---------------------------------------------

_STORAGES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
             "BFloat16Storage": "bfloat16"}
_TENSOR_REBUILDERS = {"torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_tensor"}


class _Global:
    def __init__(self, name: str) -> None:
        self.name = name


class _Opaque:
    """Anything the walker does not model: kept on the stack, never called."""


class _TensorRef:
    def __init__(self, storage: tuple, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _walk_pickle(data: bytes) -> Any:
    """The object `torch.save` pickled, with tensors as _TensorRef and anything else opaque."""
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
        at = marks.pop()
        items = stack[at:]
        del stack[at:]
        return items

    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            return stack.pop() if stack else None
        if name == "MARK":
            marks.append(len(stack))
        elif name in ("EMPTY_DICT",):
            stack.append({})
        elif name in ("EMPTY_LIST",):
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("BINUNICODE", "SHORT_BINUNICODE", "UNICODE", "BINUNICODE8", "BININT", "BININT1", "BININT2",
                      "LONG1", "LONG4", "BINFLOAT", "INT", "LONG", "SHORT_BINBYTES", "BINBYTES", "BINSTRING",
                      "SHORT_BINSTRING"):
            stack.append(arg)
        elif name in ("NEWTRUE", "NEWFALSE", "NONE"):
            stack.append({"NEWTRUE": True, "NEWFALSE": False, "NONE": None}[name])
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name == "LIST":
            stack.append(pop_mark())
        elif name in ("GLOBAL",):
            stack.append(_Global(str(arg).replace("\n", " ")))
        elif name == "STACK_GLOBAL":
            attr, module = stack.pop(), stack.pop()
            stack.append(_Global(f"{module} {attr}"))
        elif name == "BINPERSID":
            pid = stack.pop()
            stack.append(("storage", pid) if isinstance(pid, tuple) else _Opaque())
        elif name == "REDUCE":
            args, func = stack.pop(), stack.pop()
            stack.append(_reduce(func, args))
        elif name == "NEWOBJ":
            stack.pop(), stack.pop()
            stack.append(_Opaque())
        elif name == "BUILD":
            stack.pop()
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(memo.get(int(arg), _Opaque()))
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            if isinstance(stack[-1], dict):
                stack[-1][key] = value
        elif name == "SETITEMS":
            items = pop_mark()
            if isinstance(stack[-1], dict):
                for k, v in zip(items[0::2], items[1::2]):
                    stack[-1][k] = v
        elif name in ("APPEND",):
            value = stack.pop()
            if isinstance(stack[-1], list):
                stack[-1].append(value)
        elif name == "APPENDS":
            items = pop_mark()
            if isinstance(stack[-1], list):
                stack[-1].extend(items)
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        else:
            raise InvalidInput(f"pickle opcode {name} is not one torch.save writes for plain tensors")
    raise InvalidInput("pickle ends without STOP")


def _reduce(func: Any, args: Any) -> Any:
    if not isinstance(func, _Global):
        return _Opaque()
    if func.name in _TENSOR_REBUILDERS and isinstance(args, tuple) and len(args) >= 4 \
            and isinstance(args[0], tuple) and args[0][:1] == ("storage",):
        return _TensorRef(args[0][1], int(args[1]), tuple(args[2]), tuple(args[3]))
    if func.name == "collections OrderedDict":
        return {}
    return _Opaque()


def _torch_zip(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        data_pkl = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
        if data_pkl is None:
            raise InvalidInput(f"{path}: a zip that is not a PyTorch checkpoint")
        prefix = data_pkl.split("/", 1)[0]
        info = archive.getinfo(data_pkl)
        if info.file_size > MAX_PICKLE:
            raise InvalidInput(f"{path}: its pickle is larger than {MAX_PICKLE >> 20} MiB")
        root = _walk_pickle(archive.read(info))
        state = root.get("state_dict", root) if isinstance(root, dict) else None
        if not isinstance(state, dict):
            raise InvalidInput(f"{path}: the checkpoint is not a dictionary of tensors")
        for name, ref in state.items():
            if not isinstance(ref, _TensorRef) or not isinstance(name, str):
                continue
            pid = ref.storage  # ('storage', StorageType, key, location, numel)
            if len(pid) < 5 or not isinstance(pid[1], _Global):
                continue
            dtype = _STORAGES.get(pid[1].name.split(" ")[-1])
            if dtype is None:
                continue
            member = f"{prefix}/data/{pid[2]}"
            if member not in names or archive.getinfo(member).file_size > MAX_TENSOR_BYTES:
                continue
            np_dtype = np.dtype(dtype) if dtype != "bfloat16" else np.dtype(__import__("ml_dtypes").bfloat16)
            storage = np.frombuffer(archive.read(member), dtype=np_dtype)
            count = math.prod(ref.size) if ref.size else 1
            if ref.offset < 0 or any(s <= 0 for s in ref.stride) or not ref.size or len(ref.stride) != len(ref.size):
                continue  # zero strides would repeat a small storage into a huge array
            last = ref.offset + sum((d - 1) * s for d, s in zip(ref.size, ref.stride))
            if last >= storage.size or count == 0:
                continue
            view = np.lib.stride_tricks.as_strided(storage[ref.offset:], shape=ref.size,
                                                   strides=[s * np_dtype.itemsize for s in ref.stride], writeable=False)
            yield name, np.array(view, dtype=np.float32)


def open_error(path: Path, exc: Exception) -> InvalidInput:
    text = exc.message if isinstance(exc, FormatError) else f"{type(exc).__name__}: {exc}"
    return InvalidInput(f"{os.fspath(path)}: cannot be read as a model ({text})")

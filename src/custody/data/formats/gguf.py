"""Bounded reader for GGUF (v2 and v3) headers: metadata key/values and tensor infos.

The checks mirror what llama.cpp's ``gguf_init_from_file`` enforces (known value and ggml
types, unique tensor names, offsets that follow one another with the file's alignment,
tensor data inside the file) plus explicit limits on every count and length, so a hostile
header cannot make custody allocate or loop without bound. Tensor data is never read.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

from custody.data.formats.source import ByteSource, Cursor, ReadAt

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"

MAX_TENSORS = 1_000_000
MAX_KV = 1_000_000
MAX_KEY_BYTES = 64 * 1024
MAX_STRING_BYTES = 64 * 1024 * 1024
MAX_ARRAY_ITEMS = 64 * 1024 * 1024
MAX_ARRAY_DEPTH = 4
MAX_STRING_ITEMS_TOTAL = 16 * 1024 * 1024
"""Strings inside arrays are walked one by one; this caps that walk (vocabularies are ~10^5)."""
MAX_TENSOR_NAME_BYTES = 4096
MAX_DIMS = 8
MAX_ALIGNMENT = 1 << 24
MAX_KEPT_STRING_BYTES = 1024
"""Metadata strings longer than this are summarised rather than kept in the result."""

# GGUF value types (gguf.constants.GGUFValueType).
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL = range(8)
_STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(8, 13)

_SCALAR_FORMATS: dict[int, str] = {
    _UINT8: "B",
    _INT8: "b",
    _UINT16: "H",
    _INT16: "h",
    _UINT32: "I",
    _INT32: "i",
    _FLOAT32: "f",
    _BOOL: "?",
    _UINT64: "Q",
    _INT64: "q",
    _FLOAT64: "d",
}

_VALUE_TYPE_NAMES: dict[int, str] = {
    _UINT8: "uint8",
    _INT8: "int8",
    _UINT16: "uint16",
    _INT16: "int16",
    _UINT32: "uint32",
    _INT32: "int32",
    _FLOAT32: "float32",
    _BOOL: "bool",
    _STRING: "string",
    _ARRAY: "array",
    _UINT64: "uint64",
    _INT64: "int64",
    _FLOAT64: "float64",
}

GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}
"""ggml type id -> (name, elements per block, bytes per block), as in gguf-py's GGML_QUANT_SIZES."""


@dataclass(frozen=True)
class GgufArray:
    """Summary of an array value: arrays (vocabularies, merges) are counted, not kept."""

    item_type: str
    count: int


@dataclass(frozen=True)
class GgufTensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: str
    offset: int
    """Relative to the data section."""
    byte_length: int

    @property
    def element_count(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GgufHeader:
    version: int
    byte_order: str
    alignment: int
    data_start: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, GgufTensorInfo] = field(default_factory=dict)

    @property
    def tensor_count(self) -> int:
        return len(self.tensors)

    @property
    def kv_count(self) -> int:
        return len(self.metadata)

    @property
    def parameter_count(self) -> int:
        return sum(info.element_count for info in self.tensors.values())

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for info in self.tensors.values():
            counts[info.ggml_type] = counts.get(info.ggml_type, 0) + 1
        return dict(sorted(counts.items()))


def parse_header(read_at: ReadAt, size: int, name: str = "") -> GgufHeader:
    """Read and validate a GGUF header (metadata and tensor infos) from ``size`` bytes."""
    return read_header(ByteSource(read_at, size, name))


def read_header(source: ByteSource) -> GgufHeader:
    if source.prefix(4) != MAGIC:
        raise source.fail("not a GGUF file (bad magic)")
    raw_version = source.read(4, 4, "version")
    little, big = struct.unpack("<I", raw_version)[0], struct.unpack(">I", raw_version)[0]
    if little in SUPPORTED_VERSIONS:
        version, order = little, "<"
    elif big in SUPPORTED_VERSIONS:
        version, order = big, ">"  # v3 allows big-endian files; the version says which
    elif little == 1:
        raise source.fail("GGUF version 1 is not supported")
    else:
        raise source.fail(f"unsupported GGUF version {little}")
    reader = _Reader(Cursor(source, 8), order)
    tensor_count = reader.u64("tensor count")
    kv_count = reader.u64("metadata count")
    # Every tensor info needs at least 8 (name length) + 4 + 4 + 8 bytes, every key/value
    # at least 8 (key length) + 4 (type) + 1; counts that cannot fit are refused up front.
    if tensor_count > MAX_TENSORS or tensor_count * 24 > source.size:
        raise source.fail(f"tensor count {tensor_count} is out of bounds")
    if kv_count > MAX_KV or kv_count * 13 > source.size:
        raise source.fail(f"metadata count {kv_count} is out of bounds")

    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = reader.string("metadata key", MAX_KEY_BYTES)
        if key in metadata:
            raise source.fail(f"duplicate metadata key {key[:80]!r}")
        value_type = reader.u32("metadata value type")
        metadata[key] = reader.value(value_type, key, depth=0)

    alignment = _alignment(metadata, source)
    infos = [_tensor_info(reader, source) for _ in range(tensor_count)]
    data_start = _align(reader.cursor.pos, alignment)
    if infos and data_start > source.size:
        raise source.fail(f"tensor data would start at {data_start}, past the end of the file")
    tensors = _place_tensors(infos, alignment, source.size - data_start, source)
    return GgufHeader(
        version=version,
        byte_order="little" if reader.order == "<" else "big",
        alignment=alignment,
        data_start=data_start,
        metadata=metadata,
        tensors=tensors,
    )


@dataclass
class _RawTensorInfo:
    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int


class _Reader:
    """Typed reads in the file's byte order, with the string and array limits applied."""

    def __init__(self, cursor: Cursor, order: str) -> None:
        self.cursor = cursor
        self.order = order
        self.strings_walked = 0

    def _unpack(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack(self.order + fmt, self.cursor.take(size, what))[0]

    def u32(self, what: str) -> int:
        return int(self._unpack("I", what))

    def u64(self, what: str) -> int:
        return int(self._unpack("Q", what))

    def string(self, what: str, limit: int) -> str:
        raw = self.string_bytes(what, limit)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.cursor.source.fail(f"{what} is not valid UTF-8") from None

    def string_bytes(self, what: str, limit: int) -> bytes:
        length = self.u64(f"{what} length")
        if length > limit:
            raise self.cursor.source.fail(f"{what} length {length} exceeds the limit of {limit}")
        if length > self.cursor.remaining:
            raise self.cursor.source.fail(f"truncated: {what} of {length} bytes runs past the end")
        return self.cursor.take(length, what)

    def value(self, value_type: int, key: str, depth: int) -> Any:
        fmt = _SCALAR_FORMATS.get(value_type)
        if fmt is not None:
            return self._unpack(fmt, f"value of {key[:80]!r}")
        if value_type == _STRING:
            what = f"string value of {key[:80]!r}"
            length = self.u64(f"{what} length")
            if length > MAX_STRING_BYTES:
                raise self.cursor.source.fail(f"{what} length {length} exceeds the limit")
            if length > MAX_KEPT_STRING_BYTES:
                self.cursor.skip(length, what)  # long values (chat templates) are not kept
                return f"<string of {length} bytes>"
            return self.cursor.take(length, what).decode("utf-8", errors="replace")
        if value_type == _ARRAY:
            return self.array(key, depth)
        raise self.cursor.source.fail(f"metadata {key[:80]!r} has unknown value type {value_type}")

    def array(self, key: str, depth: int) -> GgufArray:
        source = self.cursor.source
        if depth >= MAX_ARRAY_DEPTH:
            raise source.fail(f"metadata {key[:80]!r} nests arrays deeper than {MAX_ARRAY_DEPTH}")
        item_type = self.u32(f"array type of {key[:80]!r}")
        count = self.u64(f"array length of {key[:80]!r}")
        if item_type not in _VALUE_TYPE_NAMES:
            raise source.fail(f"metadata {key[:80]!r} has arrays of unknown type {item_type}")
        if count > MAX_ARRAY_ITEMS:
            raise source.fail(f"metadata {key[:80]!r} array length {count} exceeds the limit")
        fmt = _SCALAR_FORMATS.get(item_type)
        if fmt is not None:
            self.cursor.skip(count * struct.calcsize(fmt), f"array {key[:80]!r}")
        else:
            minimum = 8 if item_type == _STRING else 12
            if count * minimum > self.cursor.remaining:
                raise source.fail(
                    f"truncated: array {key[:80]!r} of {count} items runs past the end"
                )
            for _ in range(count):
                if item_type == _STRING:
                    self.strings_walked += 1
                    if self.strings_walked > MAX_STRING_ITEMS_TOTAL:
                        raise source.fail("too many strings in metadata arrays")
                    length = self.u64(f"string in array {key[:80]!r}")
                    if length > MAX_STRING_BYTES:
                        raise source.fail(f"string in array {key[:80]!r} exceeds the length limit")
                    self.cursor.skip(length, f"string in array {key[:80]!r}")
                else:
                    self.array(key, depth + 1)
        return GgufArray(item_type=_VALUE_TYPE_NAMES[item_type], count=count)


def _alignment(metadata: dict[str, Any], source: ByteSource) -> int:
    if ALIGNMENT_KEY not in metadata:
        return DEFAULT_ALIGNMENT
    value = metadata[ALIGNMENT_KEY]
    if isinstance(value, bool) or not isinstance(value, int):
        raise source.fail(f"{ALIGNMENT_KEY} is not an integer")
    if value <= 0 or value > MAX_ALIGNMENT or value & (value - 1):
        raise source.fail(f"{ALIGNMENT_KEY} {value} is not a power of two within bounds")
    return value


def _tensor_info(reader: _Reader, source: ByteSource) -> _RawTensorInfo:
    name = reader.string("tensor name", MAX_TENSOR_NAME_BYTES)
    n_dims = reader.u32("tensor dimension count")
    if n_dims > MAX_DIMS:
        raise source.fail(f"tensor {name[:80]!r} has {n_dims} dimensions (limit {MAX_DIMS})")
    shape = tuple(reader.u64("tensor dimension") for _ in range(n_dims))
    if any(dim >= 1 << 63 for dim in shape):
        raise source.fail(f"tensor {name[:80]!r} has a dimension out of range")
    type_id = reader.u32("tensor type")
    offset = reader.u64("tensor offset")
    return _RawTensorInfo(name=name, shape=shape, type_id=type_id, offset=offset)


def _place_tensors(
    infos: list[_RawTensorInfo], alignment: int, data_length: int, source: ByteSource
) -> dict[str, GgufTensorInfo]:
    """Check types, sizes and offsets: each tensor starts where the previous one (padded) ends."""
    tensors: dict[str, GgufTensorInfo] = {}
    expected = 0
    for raw in infos:
        label = f"tensor {raw.name[:80]!r}"
        if raw.name in tensors:
            raise source.fail(f"duplicate {label}")
        if raw.type_id not in GGML_TYPES:
            raise source.fail(f"{label} has unknown ggml type {raw.type_id}")
        type_name, block, block_bytes = GGML_TYPES[raw.type_id]
        elements = math.prod(raw.shape)
        if raw.shape and raw.shape[0] % block:
            raise source.fail(
                f"{label} row of {raw.shape[0]} is not a multiple of the {type_name} block"
            )
        if elements % block:
            raise source.fail(
                f"{label} has {elements} elements, not a multiple of the {type_name} block"
            )
        byte_length = elements // block * block_bytes
        if raw.offset != expected:
            raise source.fail(f"{label} has offset {raw.offset}, expected {expected}")
        end = raw.offset + byte_length
        if end > data_length:
            raise source.fail(
                f"{label} data ends at {end}, past the data section ({data_length} bytes)"
            )
        tensors[raw.name] = GgufTensorInfo(
            name=raw.name,
            shape=raw.shape,
            ggml_type=type_name,
            offset=raw.offset,
            byte_length=byte_length,
        )
        expected = _align(end, alignment)
    return tensors


def _align(offset: int, alignment: int) -> int:
    return offset + (-offset) % alignment

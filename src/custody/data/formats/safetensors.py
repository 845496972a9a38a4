"""Strict reader for the safetensors header.

The rules follow the reference implementation (huggingface/safetensors,
``Metadata::validate`` and ``SafeTensors::read_metadata``): an 8-byte little-endian header
length of at most 100,000,000 bytes, a UTF-8 JSON object, and tensors whose byte ranges,
sorted by offset, tile the data section from 0 to the end of the file with no gap, no
overlap and no trailing bytes. Anything the reference would refuse is refused here too, so
a file custody registers is one a safetensors loader will open. Only the header is read.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from custody.domain.strict_json import StrictJSONError, loads_object
from custody.data.formats.source import ByteSource, ReadAt, malformed

if TYPE_CHECKING:
    import numpy

MAX_HEADER_BYTES = 100_000_000
"""The reference implementation's limit (``MAX_HEADER_SIZE``)."""

MAX_TENSORS = 1_000_000
MAX_RANK = 64
MAX_NAME_CHARS = 4096
MAX_DIM = (1 << 64) - 1
"""Offsets and dimensions are ``usize`` in the reference; larger values cannot be valid."""

METADATA_KEY = "__metadata__"

DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
"""Element width in bits of every dtype the reference implementation knows.

Sub-byte types (F4, F6_*) are bit-packed; a tensor of them must fill whole bytes.
"""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry; ``begin``/``end`` are relative to the data section, as in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def element_count(self) -> int:
        return math.prod(self.shape)

    @property
    def byte_length(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header. ``tensors`` is ordered by data offset."""

    header_length: int
    data_start: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def parameter_count(self) -> int:
        return sum(info.element_count for info in self.tensors.values())

    @property
    def data_length(self) -> int:
        return max((info.end for info in self.tensors.values()), default=0)

    def absolute_range(self, tensor_name: str) -> tuple[int, int]:
        """File offsets ``[begin, end)`` of a tensor's bytes."""
        info = self.tensors[tensor_name]
        return self.data_start + info.begin, self.data_start + info.end

    def dtype_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for info in self.tensors.values():
            counts[info.dtype] = counts.get(info.dtype, 0) + 1
        return dict(sorted(counts.items()))


def parse_header(read_at: ReadAt, size: int, name: str = "") -> SafetensorsHeader:
    """Read and validate the header of a safetensors file of ``size`` bytes."""
    return read_header(ByteSource(read_at, size, name))


def looks_like_safetensors(start: bytes, size: int) -> bool:
    """Cheap content test on the first bytes: a plausible length followed by a JSON object."""
    if len(start) < 9:
        return False
    (length,) = struct.unpack_from("<Q", start, 0)
    if length < 2 or length > MAX_HEADER_BYTES:
        return False
    body = start[8:].lstrip(b" \t\r\n")
    return body[:1] == b"{"


def read_header(source: ByteSource) -> SafetensorsHeader:
    if source.size < 8:
        raise source.fail(f"too short for a safetensors header ({source.size} bytes)")
    (length,) = struct.unpack("<Q", source.read(0, 8, "header length"))
    if length > MAX_HEADER_BYTES:
        raise source.fail(f"header length {length} is oversized (limit {MAX_HEADER_BYTES} bytes)")
    if 8 + length > source.size:
        raise source.fail(
            f"header length {length} runs past the end of the file ({source.size} bytes)"
        )
    raw = source.read(8, length, "header")
    document = _decode_json(raw, source.name)
    data_start = 8 + length
    tensors, metadata = _validate(document, source.size - data_start, source.name)
    return SafetensorsHeader(
        header_length=length, data_start=data_start, tensors=tensors, metadata=metadata
    )


def numpy_dtype(dtype: str) -> numpy.dtype[Any]:
    """The numpy dtype holding one element of a safetensors dtype, byte for byte.

    BF16 and the 8-bit floats come from ``ml_dtypes``. The bit-packed 4- and 6-bit types
    have no byte-per-element numpy equivalent and are refused.
    """
    import numpy

    plain = {
        "BOOL": "?",
        "U8": "u1",
        "I8": "i1",
        "I16": "<i2",
        "U16": "<u2",
        "F16": "<f2",
        "I32": "<i4",
        "U32": "<u4",
        "F32": "<f4",
        "F64": "<f8",
        "I64": "<i8",
        "U64": "<u8",
        "C64": "<c8",
    }
    if dtype in plain:
        return numpy.dtype(plain[dtype])
    extended = {
        "BF16": "bfloat16",
        "F8_E5M2": "float8_e5m2",
        "F8_E4M3": "float8_e4m3fn",
        "F8_E8M0": "float8_e8m0fnu",
        "F8_E4M3FNUZ": "float8_e4m3fnuz",
        "F8_E5M2FNUZ": "float8_e5m2fnuz",
    }
    if dtype in extended:
        import ml_dtypes

        scalar = getattr(ml_dtypes, extended[dtype], None)
        if scalar is None:
            raise malformed("", f"dtype {dtype} needs a newer ml_dtypes ({extended[dtype]})")
        result: numpy.dtype[Any] = numpy.dtype(scalar)
        return result
    if dtype in DTYPE_BITS:
        raise malformed("", f"dtype {dtype} is bit-packed; no numpy dtype holds it byte for byte")
    raise malformed("", f"unknown safetensors dtype {dtype!r}")


def _decode_json(raw: bytes, name: str) -> dict[str, Any]:
    try:
        return loads_object(raw)
    except StrictJSONError as exc:
        raise malformed(name, f"header: {exc}") from None


def _validate(
    document: dict[str, Any], data_length: int, name: str
) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    metadata = _metadata(document.get(METADATA_KEY), name)
    entries = [(key, value) for key, value in document.items() if key != METADATA_KEY]
    if len(entries) > MAX_TENSORS:
        raise malformed(name, f"header lists {len(entries)} tensors (limit {MAX_TENSORS})")
    infos = [_tensor_info(key, value, name) for key, value in entries]
    infos.sort(key=lambda info: (info.begin, info.end))
    expected = 0
    for info in infos:
        if info.begin != expected:
            problem = "overlaps the previous tensor" if info.begin < expected else "leaves a gap"
            raise malformed(
                name,
                f"tensor {_short(info.name)} {problem}: data_offsets start at {info.begin}, "
                f"expected {expected}",
            )
        bits = info.element_count * DTYPE_BITS[info.dtype]
        if bits % 8:
            raise malformed(name, f"tensor {_short(info.name)} does not fill whole bytes")
        if info.end - info.begin != bits // 8:
            raise malformed(
                name,
                f"tensor {_short(info.name)} shape {list(info.shape)} of {info.dtype} needs "
                f"{bits // 8} bytes but data_offsets span {info.end - info.begin}",
            )
        if info.end > data_length:
            raise malformed(
                name,
                f"tensor {_short(info.name)} data_offsets end at {info.end}, past the data "
                f"section ({data_length} bytes)",
            )
        expected = info.end
    if expected != data_length:
        raise malformed(
            name,
            f"tensors cover {expected} of {data_length} data bytes; the rest belongs to no tensor",
        )
    return {info.name: info for info in infos}, metadata


def _metadata(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise malformed(name, f"{METADATA_KEY} is not an object")
    for key, item in value.items():
        if not isinstance(item, str):
            raise malformed(name, f"{METADATA_KEY} value for {_short(key)} is not a string")
    return dict(value)


def _tensor_info(key: str, value: Any, name: str) -> TensorInfo:
    if not key:
        raise malformed(name, "tensor with an empty name")
    if len(key) > MAX_NAME_CHARS:
        raise malformed(name, f"tensor name longer than {MAX_NAME_CHARS} characters")
    if not isinstance(value, dict):
        raise malformed(name, f"tensor {_short(key)} entry is not an object")
    dtype = value.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise malformed(name, f"tensor {_short(key)} has unknown dtype {_short(repr(dtype))}")
    shape = value.get("shape")
    if not isinstance(shape, list):
        raise malformed(name, f"tensor {_short(key)} shape is not a list")
    if len(shape) > MAX_RANK:
        raise malformed(name, f"tensor {_short(key)} has rank {len(shape)} (limit {MAX_RANK})")
    for dim in shape:
        if not _is_size(dim):
            raise malformed(
                name, f"tensor {_short(key)} shape has an entry that is not a non-negative integer"
            )
    offsets = value.get("data_offsets")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and _is_size(offsets[0])
        and _is_size(offsets[1])
    ):
        raise malformed(
            name, f"tensor {_short(key)} data_offsets is not a pair of non-negative integers"
        )
    begin, end = offsets
    if begin > end:
        raise malformed(name, f"tensor {_short(key)} data_offsets begin {begin} is after end {end}")
    return TensorInfo(name=key, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _is_size(value: Any) -> bool:
    """A JSON integer that fits ``usize`` (``type(...) is int`` also rules out booleans)."""
    return type(value) is int and 0 <= value <= MAX_DIM


def _short(text: str, limit: int = 80) -> str:
    text = repr(text) if not text.isprintable() else text
    return text if len(text) <= limit else text[: limit - 3] + "..."

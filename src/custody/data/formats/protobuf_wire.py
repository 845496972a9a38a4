"""A minimal protobuf wire-format walker over a ``ByteSource``.

ONNX files are serialised protobuf messages that may hold gigabytes of initializer bytes.
Walking the wire format field by field (tags and lengths only, skipping payloads by
offset) recognises and summarises them without a protobuf runtime and without reading the
weights. Every walk draws on a shared field budget so hostile input cannot loop for long.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from custody.data.formats.source import ByteSource

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
FIXED32 = 5

MAX_VARINT_BYTES = 10
MAX_FIELD_NUMBER = (1 << 29) - 1


class WireError(Exception):
    """The bytes are not well-formed protobuf (the caller decides what that means)."""


class FieldBudget:
    """Caps the number of fields one inspection may visit, across all nested walks."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise WireError("too many protobuf fields")


@dataclass(frozen=True)
class Field:
    """One field. For length-delimited fields ``value`` is the payload offset in the file."""

    number: int
    wire_type: int
    value: int
    length: int = 0


def iter_fields(source: ByteSource, start: int, end: int, budget: FieldBudget) -> Iterator[Field]:
    """Fields of the message occupying bytes ``[start, end)``; payloads are skipped, not read."""
    pos = start
    while pos < end:
        budget.spend()
        tag, pos = read_varint(source, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0 or number > MAX_FIELD_NUMBER:
            raise WireError(f"invalid field number {number}")
        if wire_type == VARINT:
            value, pos = read_varint(source, pos, end)
            yield Field(number, wire_type, value)
        elif wire_type in (FIXED64, FIXED32):
            width = 8 if wire_type == FIXED64 else 4
            if pos + width > end:
                raise WireError("fixed-width field runs past its message")
            raw = source.read_buffered(pos, width, "protobuf field")
            pos += width
            yield Field(number, wire_type, int.from_bytes(raw, "little"))
        elif wire_type == LENGTH_DELIMITED:
            length, pos = read_varint(source, pos, end)
            if length > end - pos:
                raise WireError("length-delimited field runs past its message")
            yield Field(number, wire_type, pos, length)
            pos += length
        else:
            raise WireError(f"unsupported wire type {wire_type}")


def read_varint(source: ByteSource, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` (at most 10 bytes, below 2**64) and the offset after it."""
    available = min(MAX_VARINT_BYTES, end - pos)
    if available <= 0:
        raise WireError("varint runs past its message")
    raw = source.read_buffered(pos, available, "protobuf varint")
    return decode_varint(raw, 0, pos)


def decode_varint(raw: bytes, index: int, base: int = 0) -> tuple[int, int]:
    """The varint at ``raw[index]`` and ``base`` plus the index just after it."""
    value = 0
    for shift_index in range(MAX_VARINT_BYTES):
        if index + shift_index >= len(raw):
            raise WireError("truncated varint")
        byte = raw[index + shift_index]
        value |= (byte & 0x7F) << (7 * shift_index)
        if not byte & 0x80:
            if value >= 1 << 64:
                raise WireError("varint exceeds 64 bits")
            return value, base + index + shift_index + 1
    raise WireError("varint longer than 10 bytes")


def as_int64(value: int) -> int:
    """Reinterpret a decoded varint as a two's-complement int64 (how protobuf stores int64)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_packed_varints(raw: bytes, limit: int) -> list[int]:
    """All varints in a packed repeated field, at most ``limit`` of them."""
    values: list[int] = []
    index = 0
    while index < len(raw):
        if len(values) >= limit:
            raise WireError("too many packed values")
        value, index = decode_varint(raw, index)
        values.append(value)
    return values

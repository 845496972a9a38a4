"""Per-tensor SHA-256 digests computed from the chunks a pipeline already reads.

A file is read once, in chunks; `TensorHashes` is handed each chunk with its file offset and
feeds the slices that fall inside a tensor's byte range (from a validated safetensors or GGUF
header, ranges sorted and disjoint) to that tensor's hasher. Tensors cross chunk boundaries
freely; only the tensor being read has an open hasher, so memory does not grow with the file.
Nothing is parsed from tensor data.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy

from custody.data.formats import gguf, numpy_format, safetensors
from custody.domain.errors import CustodyError
from custody.domain.model import MIN_DISTINCTIVE_BYTES, TensorDigest

SAMPLE_BYTES = 64 * 1024
"""How much of each tensor's start is deflated to report how compressible it is (`TensorDigest.deflated`)."""

QUICK_CHECK_BYTES = 256
"""Bytes compared one by one before a full repetition check: real weights differ from their
first element within a few values, so the full check only runs on tensors that may be constant."""


@dataclass(frozen=True, slots=True)
class TensorSpan:
    """One tensor's bytes at absolute file offsets ``[start, end)``.

    ``unit`` is the byte length of the smallest whole group of elements: one element, three bytes
    of four packed 6-bit floats, or one quantised block (which holds its own scale), so "one
    repeated element value" means "one repeated unit".
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int
    unit: int


def safetensors_spans(header: safetensors.SafetensorsHeader) -> tuple[TensorSpan, ...]:
    spans = []
    for info in header.tensors.values():
        bits = safetensors.DTYPE_BITS[info.dtype]
        start, end = header.absolute_range(info.name)
        spans.append(TensorSpan(info.name, info.dtype, info.shape, start, end, bits // math.gcd(bits, 8)))
    return tuple(spans)


def npy_spans(header: numpy_format.NpyHeader) -> tuple[TensorSpan, ...]:
    """A .npy file's one array (none for an object array, whose data is a pickle)."""
    if header.has_object or not header.data_bytes:
        return ()
    try:
        unit = numpy.dtype(header.dtype).itemsize or 1
    except (TypeError, ValueError):
        unit = 1
    start = header.data_offset
    return (TensorSpan("(array)", header.dtype, header.shape, start, start + header.data_bytes, unit),)


def gguf_spans(header: gguf.GgufHeader) -> tuple[TensorSpan, ...]:
    block_bytes = {name: size for name, _, size in gguf.GGML_TYPES.values()}
    return tuple(
        TensorSpan(info.name, info.ggml_type, info.shape, header.data_start + info.offset,
                   header.data_start + info.offset + info.byte_length, block_bytes[info.ggml_type])
        for info in header.tensors.values()
    )


class _Running:
    """The hasher and repetition state of the tensor being read."""

    def __init__(self, span: TensorSpan) -> None:
        self.span = span
        self.hasher = hashlib.sha256()
        self.fed = 0
        self.first = b""  # the tensor's first unit, once read
        self.uniform = True
        self.sample = bytearray()  # its first SAMPLE_BYTES

    def feed(self, data: memoryview) -> None:
        self.hasher.update(data)
        if self.uniform:
            self.uniform = self._repeats_first(data)
        if len(self.sample) < SAMPLE_BYTES:
            self.sample += data[:SAMPLE_BYTES - len(self.sample)]
        self.fed += len(data)

    def _repeats_first(self, data: memoryview) -> bool:
        """Whether `data` continues the first unit repeated (at this tensor offset).

        A short prefix is compared first, which settles real weights at once; only data that
        passes is checked in full, with numpy comparing the slice to itself shifted by one unit
        (over ten times SHA-256's speed), so only a constant tensor pays for a second look.
        """
        unit = self.span.unit
        if len(self.first) < unit:
            take = unit - len(self.first)
            self.first += bytes(data[:take])
            return self._continues(data[take:], self.fed + take) if len(data) > take else True
        return self._continues(data, self.fed)

    def _continues(self, data: memoryview, at: int) -> bool:
        unit = len(self.first)
        phase = at % unit
        quick = min(len(data), unit + QUICK_CHECK_BYTES)
        pattern = (self.first * (quick // unit + 2))[phase: phase + quick]
        if bytes(data[:quick]) != pattern:
            return False
        if len(data) <= quick:
            return True
        import numpy

        values = numpy.frombuffer(data, dtype=numpy.uint8)
        return bool(numpy.array_equal(values[unit:], values[:-unit]))

    def _deflated(self) -> float:
        return round(len(zlib.compress(self.sample, 1)) / len(self.sample), 3) if self.sample else 1.0

    def result(self, path: str) -> TensorDigest:
        span = self.span
        size = span.end - span.start
        if self.fed != size:
            raise CustodyError(f"{path}: tensor {span.name[:80]!r} got {self.fed} of {size} bytes")
        distinctive = size >= MIN_DISTINCTIVE_BYTES and not self.uniform
        return TensorDigest(path, span.name, span.dtype, span.shape, size, self.hasher.hexdigest(), distinctive,
                            self._deflated())


class TensorHashes:
    """A chunk observer: `update(offset, data)` with chunks in file order; then `results`.

    ``seen`` is what the format parser read, as ``(offset, bytes)``: the chunks must hold the same
    bytes there, or the file changed between parsing its header and reading it, and the spans
    would describe bytes that were never sealed.
    """

    def __init__(self, path: str, spans: Sequence[TensorSpan], seen: Sequence[tuple[int, bytes]] = ()) -> None:
        self.path = path
        self._spans = sorted(spans, key=lambda s: (s.start, s.end))
        for before, after in zip(self._spans, self._spans[1:]):
            if after.start < before.end:  # the parsers refuse such headers; never hash across tensors
                raise CustodyError(f"{path}: tensors {before.name[:80]!r} and {after.name[:80]!r} overlap")
        self._next = 0
        self._running: _Running | None = None
        self._done: list[TensorDigest] = []
        self._seen = sorted(seen, key=lambda r: r[0])
        self._seen_next = 0
        self._offset = 0

    def update(self, offset: int, data: memoryview) -> None:
        if offset != self._offset:
            raise CustodyError(f"{self.path}: chunk at {offset} out of order (expected {self._offset})")
        self._offset = offset + len(data)
        self._check_seen(offset, data)
        end = offset + len(data)
        while self._next < len(self._spans) and self._spans[self._next].start < end:
            span = self._spans[self._next]
            running = self._running or _Running(span)
            lo, hi = max(span.start, offset), min(span.end, end)
            if lo < hi:
                running.feed(data[lo - offset: hi - offset])
            if span.end > end:
                self._running = running
                return
            self._done.append(running.result(self.path))
            self._running = None
            self._next += 1

    def results(self) -> tuple[TensorDigest, ...]:
        """Every tensor's digest in file order; empty tensors at the very end are finished here."""
        while self._next < len(self._spans) and self._spans[self._next].start >= self._offset:
            span = self._spans[self._next]
            self._done.append((self._running or _Running(span)).result(self.path))
            self._running = None
            self._next += 1
        if self._next != len(self._spans):
            raise CustodyError(f"{self.path}: {len(self._spans) - self._next} tensors were not read to the end")
        return tuple(self._done)

    def _check_seen(self, offset: int, data: memoryview) -> None:
        """Compare the chunk with every parser read it overlaps; drop reads it finishes."""
        end = offset + len(data)
        seen = self._seen
        j = self._seen_next
        while j < len(seen) and seen[j][0] < end:
            at, raw = seen[j]
            lo, hi = max(at, offset), min(at + len(raw), end)
            if lo < hi and bytes(data[lo - offset: hi - offset]) != raw[lo - at: hi - at]:
                raise CustodyError(f"{self.path} changed while it was being read")
            j += 1
        while self._seen_next < len(seen) and seen[self._seen_next][0] + len(seen[self._seen_next][1]) <= end:
            self._seen_next += 1

"""Bounded random access to the bytes of a model file.

Every format parser reads through a ``read_at(offset, length)`` callable plus the total
size, so the same parser runs over a plain file or over a decrypting reader. This module
holds that contract, the one place that turns short or out-of-range reads into
``FormatError``, and a small read-ahead window so parsers that walk many tiny records
(GGUF key/values, protobuf tags) do not pay one ``read_at`` call per record.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from custody.domain.errors import FormatError

ReadAt = Callable[[int, int], bytes]
"""``read_at(offset, length)`` returns up to ``length`` bytes starting at ``offset``."""

WINDOW_BYTES = 1 << 20
"""Largest read-ahead, reached by sequential walks: amortises calls, bounds memory."""
MIN_WINDOW_BYTES = 4096
"""Read-ahead after a jump, so skipping over large payloads does not read them."""

_MAX_LABEL_CHARS = 200


def label(name: str) -> str:
    """A printable one-line label for a file name, so error messages stay one line."""
    if not name:
        return "model file"
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in name)
    if len(cleaned) > _MAX_LABEL_CHARS:
        cleaned = "..." + cleaned[-(_MAX_LABEL_CHARS - 3) :]
    return cleaned


def malformed(name: str, problem: str) -> FormatError:
    """Build the ``FormatError`` every parser raises: one line, naming the file and the problem."""
    problem_line = " ".join(problem.split())
    return FormatError(f"{label(name)}: {problem_line}")


class ByteSource:
    """A ``read_at`` callable with its size and name, reading exact, in-bounds ranges only."""

    def __init__(self, read_at: ReadAt, size: int, name: str = "") -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise malformed(name, f"invalid file size {size!r}")
        self._read_at = read_at
        self.size = size
        self.name = name
        self._window_start = 0
        self._window = b""
        self._window_size = MIN_WINDOW_BYTES

    def fail(self, problem: str) -> FormatError:
        return malformed(self.name, problem)

    def read(self, offset: int, length: int, what: str = "data") -> bytes:
        """Exactly ``length`` bytes at ``offset``, or ``FormatError`` if the file is too short."""
        if offset < 0 or length < 0:
            raise self.fail(f"negative offset or length while reading {what}")
        if offset + length > self.size:
            raise self.fail(
                f"truncated: {what} needs bytes {offset}..{offset + length} of {self.size}"
            )
        if length == 0:
            return b""
        data = self._read_at(offset, length)
        if len(data) < length:
            raise self.fail(f"truncated: short read of {what} at offset {offset}")
        return bytes(data[:length])

    def read_buffered(self, offset: int, length: int, what: str = "data") -> bytes:
        """Like ``read`` but served from a read-ahead window, for walks over many small records."""
        window_end = self._window_start + len(self._window)
        if self._window_start <= offset and offset + length <= window_end:
            start = offset - self._window_start
            return self._window[start : start + length]
        if length > WINDOW_BYTES:
            return self.read(offset, length, what)
        if offset < 0 or offset + length > self.size:
            return self.read(offset, length, what)  # raises with the right message
        if self._window_start <= offset <= window_end:
            self._window_size = min(WINDOW_BYTES, self._window_size * 2)
        else:
            self._window_size = MIN_WINDOW_BYTES
        chunk = min(max(self._window_size, length), self.size - offset)
        self._window = self.read(offset, chunk, what)
        self._window_start = offset
        return self._window[:length]

    def prefix(self, length: int) -> bytes:
        """Up to ``length`` leading bytes (fewer if the file is shorter); used for magic tests."""
        return self.read(0, min(length, self.size), "file start")


class Cursor:
    """Sequential little/big-endian reads over a ``ByteSource``, tracking the position."""

    def __init__(self, source: ByteSource, offset: int = 0) -> None:
        self.source = source
        self.pos = offset

    @property
    def remaining(self) -> int:
        return self.source.size - self.pos

    def take(self, length: int, what: str) -> bytes:
        data = self.source.read_buffered(self.pos, length, what)
        self.pos += length
        return data

    def skip(self, length: int, what: str) -> None:
        if length < 0 or length > self.remaining:
            raise self.source.fail(
                f"truncated: {what} needs {length} bytes at {self.pos}, {self.remaining} remain"
            )
        self.pos += length


@contextmanager
def open_path(path: str | os.PathLike[str]) -> Iterator[ByteSource]:
    """Open a plain file as a ``ByteSource`` for the duration of a ``with`` block."""
    name = os.fspath(path)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        yield ByteSource(_file_read_at(handle), size, name)


def _file_read_at(handle: BinaryIO) -> ReadAt:
    def read_at(offset: int, length: int) -> bytes:
        handle.seek(offset)
        return handle.read(length)

    return read_at

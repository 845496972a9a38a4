"""Open zip containers (PyTorch checkpoints, ``.npz``) with bounds checked before ``zipfile``.

``zipfile`` reads the whole central directory into memory and trusts its entry count, so
the end-of-central-directory record is parsed here first and archives whose directory is
implausibly large are refused before ``zipfile`` sees them. Member reads go through a
file-like view of the ``ByteSource`` and are always bounded by the caller.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from custody.data.formats.source import ByteSource

LOCAL_HEADER_MAGIC = b"PK\x03\x04"
EMPTY_ARCHIVE_MAGIC = b"PK\x05\x06"
_EOCD_MAGIC = b"PK\x05\x06"
_ZIP64_LOCATOR_MAGIC = b"PK\x06\x07"
_ZIP64_EOCD_MAGIC = b"PK\x06\x06"
_EOCD_SIZE = 22
_MAX_COMMENT = 0xFFFF

MAX_MEMBERS = 100_000
MAX_DIRECTORY_BYTES = 64 * 1024 * 1024

ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    struct.error,
    NotImplementedError,
    RuntimeError,
    KeyError,
    IndexError,
    OverflowError,
)
"""What ``zipfile`` raises on malformed archives; converted to ``FormatError`` by callers."""


def looks_like_zip(start: bytes) -> bool:
    return start[:4] in (LOCAL_HEADER_MAGIC, EMPTY_ARCHIVE_MAGIC)


@contextmanager
def open_zip(source: ByteSource) -> Iterator[zipfile.ZipFile]:
    """A ``ZipFile`` over the source, after checking the directory's declared size and count."""
    _check_directory(source)
    try:
        archive = zipfile.ZipFile(_SourceFile(source), mode="r")
    except ZIP_ERRORS as exc:
        raise source.fail(f"malformed zip archive ({_describe(exc)})") from None
    with archive:
        if len(archive.infolist()) > MAX_MEMBERS:
            raise source.fail(f"zip archive has more than {MAX_MEMBERS} members")
        yield archive


def read_member_prefix(
    source: ByteSource, archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int
) -> bytes:
    """At most ``limit`` decompressed bytes from the start of a member."""
    try:
        with archive.open(info, "r") as member:
            return member.read(limit)
    except ZIP_ERRORS as exc:
        raise source.fail(
            f"cannot read zip member {info.filename[:80]!r} ({_describe(exc)})"
        ) from None


def _check_directory(source: ByteSource) -> None:
    if source.size < _EOCD_SIZE:
        raise source.fail("truncated zip archive (no end-of-central-directory record)")
    tail_length = min(source.size, _EOCD_SIZE + _MAX_COMMENT)
    tail_start = source.size - tail_length
    tail = source.read(tail_start, tail_length, "zip directory end")
    at = tail.rfind(_EOCD_MAGIC, 0, tail_length - _EOCD_SIZE + len(_EOCD_MAGIC))
    if at < 0:
        raise source.fail("malformed zip archive (no end-of-central-directory record)")
    _, _, _, count, directory_bytes, _, _ = struct.unpack_from("<HHHHIIH", tail, at + 4)
    if count == 0xFFFF or directory_bytes == 0xFFFFFFFF:
        count, directory_bytes = _zip64_directory(source, tail_start + at)
    if count > MAX_MEMBERS:
        raise source.fail(f"zip archive declares {count} members (limit {MAX_MEMBERS})")
    if directory_bytes > MAX_DIRECTORY_BYTES or directory_bytes > source.size:
        raise source.fail(f"zip central directory of {directory_bytes} bytes is out of bounds")


def _zip64_directory(source: ByteSource, eocd_offset: int) -> tuple[int, int]:
    locator_offset = eocd_offset - 20
    if locator_offset < 0:
        raise source.fail("malformed zip64 archive (no locator)")
    locator = source.read(locator_offset, 20, "zip64 locator")
    if locator[:4] != _ZIP64_LOCATOR_MAGIC:
        raise source.fail("malformed zip64 archive (no locator)")
    (record_offset,) = struct.unpack_from("<Q", locator, 8)
    if record_offset > source.size - 56:
        raise source.fail("malformed zip64 archive (record out of bounds)")
    record = source.read(record_offset, 56, "zip64 directory end")
    if record[:4] != _ZIP64_EOCD_MAGIC:
        raise source.fail("malformed zip64 archive (bad record)")
    count, directory_bytes = struct.unpack_from("<QQ", record, 32)
    return count, directory_bytes


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]


class _SourceFile(io.RawIOBase):
    """A read-only, seekable file view of a ``ByteSource`` for ``zipfile``."""

    def __init__(self, source: ByteSource) -> None:
        super().__init__()
        self._source = source
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self._source.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise OSError("seek before the start of the archive")
        self._pos = target
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        length = max(0, min(len(view), self._source.size - self._pos))
        if length == 0:
            return 0
        data = self._source.read(self._pos, length, "zip data")
        view[:length] = data
        self._pos += length
        return length

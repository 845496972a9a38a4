"""Where a backup reads plaintext from: model files on local disk, or a sealed replica's files.

Backing up a registered model reads its primary replica, so the plaintext exists only in memory
(as during a copy): each sealed chunk is decrypted, authenticated and bound to the replica, key
and path, once, in the order the backup walks the file. The backup then compares every file's
SHA-256 with the manifest the control plane handed over.

Both kinds give the backup's reader thread the same two calls: `read_at(offset, n)` for
planning (a safetensors header, content-defined windows), and `read_into(view, offset)` to fill
a piece buffer; a backup reads each file front to back, and the sealed reader keeps the chunk it
decrypted last so a piece that straddles two sealed chunks costs no second decryption.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from uuid import UUID

from custody.data import sealed
from custody.data.zones import ZoneStorage
from custody.domain.errors import CustodyError, IntegrityError, NotFound
from custody.domain.manifest import FileEntry

__all__ = ["Input", "PlainReader", "plain_input", "sealed_input"]


class PlainReader(Protocol):
    def read_at(self, offset: int, length: int) -> bytes: ...

    def read_into(self, view: memoryview, offset: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Input:
    """One file to back up: its path in the model, its size, how to open it, and (for a replica)
    the SHA-256 the manifest promises, checked once the file has been read."""

    relpath: str
    size: int
    open: Callable[[], AbstractContextManager[PlainReader]]
    expect_sha256: str | None = None


class _DiskFile:
    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self._name = name

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def read_into(self, view: memoryview, offset: int) -> None:
        got = 0
        while got < len(view):
            n = os.preadv(self._fd, [view[got:]], offset + got)
            if not n:
                raise CustodyError(f"{self._name} shrank while it was being read")
            got += n


def plain_input(relpath: str, path: Path, size: int) -> Input:
    """A model file on local disk; it must keep the size measured when the folder was listed."""

    @contextmanager
    def opened() -> Iterator[PlainReader]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise CustodyError(f"{relpath}: cannot open: {exc.strerror or exc}") from None
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            yield _DiskFile(fd, relpath)
            if os.fstat(fd).st_size != size:
                raise CustodyError(f"{relpath} changed size while it was being read")
        finally:
            os.close(fd)

    return Input(relpath, size, opened)


class _SealedFile:
    """Plaintext of one sealed file, decrypting each chunk when first needed (kept until the next)."""

    def __init__(self, reader: sealed.SealedReader) -> None:
        self._reader = reader
        self._chunk = reader.header.chunk_size
        self._index = -1
        self._plain = b""

    def _chunk_at(self, index: int) -> bytes:
        if index != self._index:
            try:
                self._plain = self._reader.read_chunk(index)  # authenticated, final flag checked
            except OSError as exc:
                raise CustodyError(f"{self._reader.header.path}: reading chunk {index} of the source failed: "
                                   f"{exc.strerror or exc}") from None
            self._index = index
        return self._plain

    def read_at(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self._reader.plaintext_size)
        parts: list[bytes] = []
        while offset < end:
            index, start = divmod(offset, self._chunk)
            plain = self._chunk_at(index)
            take = min(end - offset, len(plain) - start)
            parts.append(plain[start : start + take])
            offset += take
        return b"".join(parts)

    def read_into(self, view: memoryview, offset: int) -> None:
        if offset + len(view) > self._reader.plaintext_size:
            raise IntegrityError(f"{self._reader.header.path}: sealed file is shorter than its manifest entry")
        done = 0
        while done < len(view):
            index, start = divmod(offset + done, self._chunk)
            plain = self._chunk_at(index)
            take = min(len(view) - done, len(plain) - start)
            view[done : done + take] = plain[start : start + take]
            done += take


def sealed_input(zone: ZoneStorage, replica_id: str, key_id: str, dek: bytes, entry: FileEntry) -> Input:
    """One file of a sealed replica, bound to that replica, key and path, of the manifest's size."""
    rel = zone.sealed_path(replica_id, entry.path)

    @contextmanager
    def opened() -> Iterator[PlainReader]:
        with ExitStack() as stack:
            try:
                read_at, total = stack.enter_context(zone.reader(rel))
                reader = sealed.SealedReader(read_at, total, dek, expect_replica=UUID(replica_id),
                                             expect_key=UUID(key_id), expect_path=entry.path)
            except NotFound:
                raise IntegrityError(f"{entry.path}: sealed file is missing from source replica {replica_id}") from None
            except IntegrityError as exc:
                raise (exc if exc.message.startswith(f"{entry.path}:")
                       else IntegrityError(f"{entry.path}: source {exc.message}")) from None
            except OSError as exc:
                raise CustodyError(f"{entry.path}: reading the source failed: {exc.strerror or exc}") from None
            if reader.plaintext_size != entry.size:
                raise IntegrityError(f"{entry.path}: source holds {reader.plaintext_size} bytes, "
                                     f"the manifest says {entry.size}")
            yield _SealedFile(reader)

    return Input(entry.path, entry.size, opened, entry.sha256)

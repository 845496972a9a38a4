"""Data plane of a copy: re-seal one replica's files into another zone under a fresh data key.

Per file, one thread reads and decrypts the source chunk by chunk, a second hashes the plaintext
(checked against the manifest at the end of the file), and the file's own thread seals each chunk
under a new header (destination replica and key, fresh salt and nonce prefix) and writes it; two
files are copied at once. Plaintext exists only in a few chunk buffers per file, never on disk.

Resume. A copy killed part-way can be run again with the same arguments. For each destination
file whose header parses and names the destination replica, key and path:

- complete (right length, final chunk authenticates as final): kept untouched;
- otherwise, on a local zone: cut back to the last whole record that authenticates as a
  non-final chunk (a torn record, garbage or a bad tail is dropped) and sealed on from there,
  under the header already on disk.

Any other destination file is started over under a fresh header. The source is always read and
hashed in full, so the manifest is checked whatever was kept. On object stores an unfinished
upload leaves no object behind and objects cannot be appended to, so an incomplete file is
rewritten from its start.

Re-sealing chunk i under a kept header reuses chunk i's nonce. That is safe because the
plaintext is the same: it is chunk i of a source file that authenticates under the source key.

The data plane decides nothing: it is handed ids and keys, and reports sizes and timings.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator
from uuid import UUID

from custody.data import sealed
from custody.data.sealed_io import (
    DIRECT_ALIGN,
    FILES_IN_PARALLEL,
    ChunkPipeline,
    end_direct,
    open_for_write,
    spot_check,
    write_all,
)
from custody.data.zones import ZoneStorage
from custody.domain.errors import CustodyError, IntegrityError, InvalidInput, NotFound
from custody.domain.manifest import FileEntry, Manifest

__all__ = ["CopyReport", "copy_replica", "write_sealed"]

Progress = Callable[[int], None]
ReadAt = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True)
class CopyReport:
    """What a copy did. `bytes` is plaintext; `bytes_sealed` is what the destination now holds;
    `resumed_chunks` counts chunks found in place from an earlier run and not written again."""

    files: int
    bytes: int
    bytes_sealed: int
    seconds: float
    resumed_chunks: int


@dataclass(frozen=True, slots=True)
class _Kept:
    """A destination file worth keeping: its header and how many leading chunks are good."""

    header: sealed.SealedHeader
    chunks: int
    complete: bool


class _Cancelled(CustodyError):
    """Another file of the same copy failed; this one stops at its next chunk."""


class _SourceChunks(ChunkPipeline):
    """Authenticated plaintext chunks of one source sealed file, in order."""

    def __init__(self, header: sealed.SealedHeader, size: int, read_at: ReadAt, dek: bytes) -> None:
        super().__init__(header.path, size, header.chunk_size)
        self._header = header
        self._read_at = read_at
        self._cipher = sealed.ChunkCipher(dek, header)

    def _produce(self) -> None:
        record = self.chunk_size + sealed.TAG_SIZE
        for index in range(self.n_chunks):
            buf = self._take()
            if buf is None:
                return
            n = min(self.chunk_size, self.size - index * self.chunk_size)
            try:
                data = self._read_at(self._header.size + index * record, n + sealed.TAG_SIZE)
            except OSError as exc:
                raise CustodyError(f"{self.name}: reading chunk {index} of the source failed: "
                                   f"{exc.strerror or exc}") from None
            if len(data) != n + sealed.TAG_SIZE:
                raise IntegrityError(f"{self.name}: source sealed file is truncated at chunk {index}")
            # Raises IntegrityError naming the file and the chunk.
            self._cipher.open_into(index, data, index == self.n_chunks - 1, memoryview(buf)[:n])
            self._emit(index, buf, n)


def copy_replica(
    src: ZoneStorage,
    src_replica: str,
    src_key_id: str,
    src_dek: bytes,
    manifest: Manifest,
    dst: ZoneStorage,
    dst_replica: str,
    dst_key_id: str,
    dst_dek: bytes,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy every file of the manifest from the source replica into the destination replica.

    On failure the first error is raised and whatever was written stays for the sweeper; the
    caller marks the replica failed (or runs the copy again, which resumes).
    """
    started = time.perf_counter()
    ids = _check_arguments(src, src_replica, src_key_id, src_dek, dst, dst_replica, dst_key_id, dst_dek)
    abort = threading.Event()

    def one(entry: FileEntry) -> tuple[int, int]:
        if abort.is_set():
            raise _Cancelled("copy stopped")
        try:
            return _copy_file(entry, src, src_replica, src_dek, dst, dst_replica, dst_dek, ids, progress, abort)
        except BaseException:
            abort.set()  # the other files stop at their next chunk
            raise

    # Largest first so both workers finish together.
    ordered = sorted(manifest.files, key=lambda f: -f.size)
    with ThreadPoolExecutor(max_workers=FILES_IN_PARALLEL, thread_name_prefix="copy-file") as pool:
        futures = [pool.submit(one, entry) for entry in ordered]
    _raise_first_error(futures)
    results = [f.result() for f in futures]
    return CopyReport(
        files=len(results),
        bytes=manifest.total_size,
        bytes_sealed=sum(r[0] for r in results),
        seconds=time.perf_counter() - started,
        resumed_chunks=sum(r[1] for r in results),
    )


@dataclass(frozen=True, slots=True)
class _Ids:
    src_replica: UUID
    src_key: UUID
    dst_replica: UUID
    dst_key: UUID


def _check_arguments(src: ZoneStorage, src_replica: str, src_key_id: str, src_dek: bytes, dst: ZoneStorage,
                     dst_replica: str, dst_key_id: str, dst_dek: bytes) -> _Ids:
    """Refuse, before touching any byte, a copy onto its own source or under the source's key:
    the first would destroy the source, the second would defeat per-replica shredding."""
    ids = _Ids(_uuid("source replica id", src_replica), _uuid("source key id", src_key_id),
               _uuid("destination replica id", dst_replica), _uuid("destination key id", dst_key_id))
    for name, dek in (("source", src_dek), ("destination", dst_dek)):
        if not isinstance(dek, (bytes, bytearray)) or len(dek) != sealed.KEY_SIZE:
            raise InvalidInput(f"{name} data key must be {sealed.KEY_SIZE} bytes")
    same_zone = type(src.fs) is type(dst.fs) and src.root.rstrip("/") == dst.root.rstrip("/")
    if ids.src_replica == ids.dst_replica and same_zone:
        raise InvalidInput("a replica cannot be copied onto itself")
    if ids.src_key == ids.dst_key or bytes(src_dek) == bytes(dst_dek):
        raise InvalidInput("the destination replica needs its own data key")
    return ids


def _uuid(what: str, value: str) -> UUID:
    try:
        return UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise InvalidInput(f"{what} {value!r} is not a UUID") from None


def _raise_first_error(futures: list[Future[tuple[int, int]]]) -> None:
    errors = [e for e in (f.exception() for f in futures) if e is not None]
    if errors:
        raise next((e for e in errors if not isinstance(e, _Cancelled)), errors[0])


def _copy_file(entry: FileEntry, src: ZoneStorage, src_replica: str, src_dek: bytes, dst: ZoneStorage,
               dst_replica: str, dst_dek: bytes, ids: _Ids, progress: Progress | None,
               abort: threading.Event) -> tuple[int, int]:
    """Copy one file; returns (sealed bytes at the destination, chunks kept from an earlier run)."""
    src_rel = src.sealed_path(src_replica, entry.path)
    dst_rel = dst.sealed_path(dst_replica, entry.path)
    with ExitStack() as stack:
        try:
            read_at, size = stack.enter_context(src.reader(src_rel))
        except NotFound:
            raise IntegrityError(f"{entry.path}: sealed file is missing from source replica {src_replica}") from None
        header = _source_header(entry, read_at, size, src_dek, ids)
        chunks = _SourceChunks(header, entry.size, read_at, src_dek)
        kept = _inspect_destination(dst, dst_rel, dst_dek, ids, entry, header.chunk_size)
        out_header = kept.header if kept else sealed.new_header(ids.dst_replica, ids.dst_key, entry.path,
                                                                 header.chunk_size)
        keep = kept.chunks if kept else 0
        chunks.start()
        try:
            with _destination_errors(entry.path):
                if kept and kept.complete:
                    _drain(chunks, progress, abort)
                elif dst.local:
                    _write_local(dst.local_path(dst_rel), out_header, dst_dek, keep, chunks, progress, abort)
                else:
                    _write_stream(dst, dst_rel, out_header, dst_dek, chunks, progress, abort)
        finally:
            chunks.cancel()
            chunks.join()  # the source descriptor closes next
    if chunks.digest() != entry.sha256:
        raise IntegrityError(f"{entry.path}: SHA-256 of the source plaintext does not match the manifest")
    total = sealed.sealed_size(entry.size, out_header)
    with _destination_errors(entry.path):
        spot_check(dst, dst_rel, dst_dek, out_header, total)
    return total, keep


def _source_header(entry: FileEntry, read_at: ReadAt, size: int, dek: bytes, ids: _Ids) -> sealed.SealedHeader:
    """Parse the source header, bound to the source replica, key and path, and check its size.

    The final chunk is authenticated when the pipeline reaches it, not here, so the file is read once.
    """
    try:
        reader = sealed.SealedReader(read_at, size, dek, expect_replica=ids.src_replica, expect_key=ids.src_key,
                                     expect_path=entry.path, authenticate_size=False)
    except IntegrityError as exc:
        if exc.message.startswith(f"{entry.path}:"):
            raise
        raise IntegrityError(f"{entry.path}: source {exc.message}") from None
    except OSError as exc:
        raise CustodyError(f"{entry.path}: reading the source failed: {exc.strerror or exc}") from None
    if reader.plaintext_size != entry.size:
        raise IntegrityError(
            f"{entry.path}: source holds {reader.plaintext_size} bytes, the manifest says {entry.size}")
    return reader.header


def _inspect_destination(dst: ZoneStorage, rel: str, dek: bytes, ids: _Ids, entry: FileEntry,
                         chunk_size: int) -> _Kept | None:
    """What an earlier run left at the destination that can be kept; None to start the file over.

    Only authenticated chunks are kept: every kept chunk is opened with the destination key (a
    resume is rare; trusting a chunk nobody checked is not), and everything from the first chunk
    that does not open is dropped when the file is written.
    """
    try:
        with dst.reader(rel) as (read_at, size):
            try:
                header = sealed.SealedHeader.parse(read_at)
            except IntegrityError:
                return None
            if (header.replica_id, header.key_id, header.path, header.chunk_size) != (
                    ids.dst_replica, ids.dst_key, entry.path, chunk_size):
                return None
            cipher = sealed.ChunkCipher(dek, header)
            n = sealed.chunk_count(entry.size, chunk_size)
            record = chunk_size + sealed.TAG_SIZE
            final_len = sealed.sealed_size(entry.size, header) - header.size - (n - 1) * record

            def opens(index: int, last: bool) -> bool:
                want = final_len if last else record
                data = read_at(header.size + index * record, want)
                try:
                    return len(data) == want and cipher.open(index, data, last) is not None
                except IntegrityError:
                    return False

            def leading(count: int, ends_final: bool) -> int:
                """How many of the first `count` chunks open."""
                for index in range(count):
                    if not opens(index, ends_final and index == count - 1):
                        return index
                return count

            if size == sealed.sealed_size(entry.size, header) and leading(n, True) == n:
                return _Kept(header, n, True)
            if not dst.local:
                return None
            keep = leading(min(max(size - header.size, 0) // record, n - 1), False)
            return _Kept(header, keep, False) if keep else None
    except (NotFound, OSError):
        return None  # nothing usable; writing will say clearly if the place itself is broken


@contextmanager
def _destination_errors(path: str) -> Iterator[None]:
    """Turn a failed write into one line; the source side raises its own errors before this."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CustodyError(f"destination zone is full (writing {path})") from None
        raise CustodyError(f"{path}: writing to the destination zone failed: {exc.strerror or exc}") from None


def _each(chunks: ChunkPipeline, progress: Progress | None,
          abort: threading.Event) -> Iterator[tuple[int, memoryview, bytearray]]:
    for item in chunks.chunks():
        if abort.is_set():
            raise _Cancelled("copy stopped")
        yield item
        if progress:
            progress(len(item[1]))


def _drain(chunks: ChunkPipeline, progress: Progress | None, abort: threading.Event) -> None:
    """The destination file is already complete: only hash the source."""
    for _, _, buf in _each(chunks, progress, abort):
        chunks.release(buf)


def write_sealed(dst: ZoneStorage, rel: str, header: sealed.SealedHeader, dek: bytes, chunks: ChunkPipeline,
                 progress: Progress | None = None, abort: threading.Event | None = None) -> int:
    """Seal a started pipeline's plaintext chunks into a new sealed file at `rel`; returns its size.

    The one way a sealed file is written from a stream of plaintext, whatever produces it (a source
    replica for a copy, a backup repository's chunks for a restore): O_DIRECT records on a local
    zone, one streamed object elsewhere. The caller checks the pipeline's digest and spot-checks
    the file; setting `abort` stops the write at its next chunk.
    """
    stop = abort if abort is not None else threading.Event()
    with _destination_errors(header.path):
        if dst.local:
            _write_local(dst.local_path(rel), header, dek, 0, chunks, progress, stop)
        else:
            _write_stream(dst, rel, header, dek, chunks, progress, stop)
    return sealed.sealed_size(chunks.size, header)


def _write_local(path: str, header: sealed.SealedHeader, dek: bytes, keep: int, chunks: ChunkPipeline,
                 progress: Progress | None, abort: threading.Event) -> None:
    """Write with O_DIRECT from a page-aligned buffer, as registration does, after `keep` chunks.

    Records are 4 MiB with the default chunk size and the header is padded to 4 KiB, so every
    write, the resumed ones included, starts on a block boundary. A chunk size whose records are
    not block multiples is written through the page cache.
    """
    cipher = sealed.ChunkCipher(dek, header)
    record = header.chunk_size + sealed.TAG_SIZE
    flags = os.O_WRONLY | os.O_CREAT | (0 if keep else os.O_TRUNC)
    fd, direct = open_for_write(path, flags, record % DIRECT_ALIGN == 0)
    # Page-aligned, as O_DIRECT requires; freed with the last view of it, like registration's.
    view = memoryview(mmap.mmap(-1, max(record, header.size)))
    try:
        if keep:
            start = header.size + keep * record
            os.ftruncate(fd, start)
            os.lseek(fd, start, os.SEEK_SET)
        else:
            view[: header.size] = header.to_bytes()
            write_all(fd, view[: header.size])
        for index, plain, buf in _each(chunks, progress, abort):
            if index < keep:
                chunks.release(buf)
                continue
            n = cipher.seal_into(index, plain, index == chunks.n_chunks - 1, view[: len(plain) + sealed.TAG_SIZE])
            chunks.release(buf)
            if direct and n % DIRECT_ALIGN:  # the short final record
                end_direct(fd)
                direct = False
            write_all(fd, view[:n])
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_stream(dst: ZoneStorage, rel: str, header: sealed.SealedHeader, dek: bytes, chunks: ChunkPipeline,
                  progress: Progress | None, abort: threading.Event) -> None:
    """Write through fsspec (object stores): always the whole file, since objects are not appended to."""
    cipher = sealed.ChunkCipher(dek, header)
    with dst.writer(rel) as out:
        out.write(header.to_bytes())
        for index, plain, buf in _each(chunks, progress, abort):
            chunk = cipher.seal(index, plain, index == chunks.n_chunks - 1)
            chunks.release(buf)
            out.write(chunk)

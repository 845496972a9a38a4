"""Data plane of a restore: rebuild a model's files from a snapshot's chunks as a sealed replica.

A restore is a copy (DESIGN.md): it writes a normal sealed replica, one sealed file per file
with a fresh header under the destination replica's own data key, exactly as registration and
copies do, so nothing downstream knows the bytes came from a backup. Per file, one thread fetches
chunks from the repository (a shared pool decrypts and MAC-checks the next few in parallel) and
re-blocks them into sealed-chunk buffers, a second hashes the plaintext, and the file's own
thread seals and writes (O_DIRECT records on a local zone) through the copier's writer; two
files are restored at once. After each file, its SHA-256 is compared with the snapshot and the
written file is spot-checked.

Before anything is written, the key is checked against the repository and every chunk the
snapshot names is checked to be present, so a damaged repository fails fast with nothing
restored. A failure part-way leaves sealed files behind for the sweeper; the caller never marks
such a replica active.
"""

from __future__ import annotations

import errno
import hmac
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import UUID

from custody.data import sealed
from custody.data.backup.fetching import FETCHERS, chunks_in_order, file_chunks
from custody.data.backup.repository import Repository, short
from custody.data.backup.snapshot import FileChunks, SnapshotManifest
from custody.data.copier import write_sealed
from custody.data.sealed_io import FILES_IN_PARALLEL, ChunkPipeline, spot_check
from custody.data.zones import ZoneStorage
from custody.domain.errors import CustodyError, IntegrityError, InvalidInput

__all__ = ["RestoreReport", "iter_file", "restore_to_replica"]

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """`bytes` is plaintext restored; `bytes_sealed` is what the destination now holds."""

    files: int
    bytes: int
    bytes_sealed: int
    seconds: float


def iter_file(repo: Repository, fc: FileChunks) -> Iterator[bytes]:
    """A file's plaintext from the repository, chunk by chunk; see `fetching.file_chunks`."""
    return file_chunks(repo, fc)


class _SnapshotChunks(ChunkPipeline):
    """A snapshot file's pieces, re-blocked into the sealed format's fixed-size chunks."""

    def __init__(self, repo: Repository, fc: FileChunks, chunk_size: int, pool: Executor) -> None:
        super().__init__(fc.path, fc.size, chunk_size)
        self._repo = repo
        self._fc = fc
        self._pool = pool

    def _produce(self) -> None:
        index, buf, filled = 0, None, 0
        stream = chunks_in_order(self._repo, [cid for cid, _ in self._fc.chunks], self._pool)
        try:
            for (cid, length), plain in zip(self._fc.chunks, stream, strict=True):
                if len(plain) != length:
                    raise IntegrityError(f"{self.name}: chunk {short(cid)} holds {len(plain)} bytes, "
                                         f"the snapshot says {length}")
                view, pos = memoryview(plain), 0
                while pos < len(view):
                    if buf is None:
                        buf, filled = self._take(), 0
                        if buf is None:
                            return
                    want = min(self.chunk_size, self.size - index * self.chunk_size)
                    n = min(want - filled, len(view) - pos)
                    buf[filled : filled + n] = view[pos : pos + n]
                    filled += n
                    pos += n
                    if filled == want:
                        self._emit(index, buf, want)
                        index, buf = index + 1, None
        except IntegrityError as exc:
            raise IntegrityError(f"{self.name}: {exc.message}" if not exc.message.startswith(f"{self.name}:")
                                 else exc.message) from None
        finally:
            stream.close()
        if self.size == 0:
            empty = self._take()
            if empty is None:
                return
            self._emit(0, empty, 0)
            index = 1
        if index != self.n_chunks:  # FileChunks guarantees the pieces add up; this is a backstop
            raise IntegrityError(f"{self.name}: chunks rebuild {index} sealed chunks, expected {self.n_chunks}")


def restore_to_replica(
    repo: Repository,
    snap: SnapshotManifest,
    dst: ZoneStorage,
    dst_replica: str,
    dst_key_id: str,
    dst_dek: bytes,
    progress: Progress | None = None,
) -> RestoreReport:
    """Write every file of the snapshot into `dst` as sealed replica `dst_replica` under `dst_dek`."""
    started = time.perf_counter()
    replica, key = _uuid("destination replica id", dst_replica), _uuid("destination key id", dst_key_id)
    if not isinstance(dst_dek, (bytes, bytearray)) or len(dst_dek) != sealed.KEY_SIZE:
        raise InvalidInput(f"destination data key must be {sealed.KEY_SIZE} bytes")
    repo.check_key()
    _check_present(repo, snap)

    abort = threading.Event()
    first: list[BaseException] = []
    lock = threading.Lock()

    def one(fc: FileChunks, pool: Executor) -> int:
        try:
            return _restore_file(repo, fc, pool, dst, dst_replica, replica, key, bytes(dst_dek), progress, abort)
        except BaseException as exc:
            with lock:
                if not first:
                    first.append(exc)  # the cause; the other files stop with a cancellation
            abort.set()
            raise

    ordered = sorted(snap.files, key=lambda f: -f.size)  # largest first so both workers finish together
    with ThreadPoolExecutor(max_workers=FETCHERS, thread_name_prefix="restore-fetch") as pool, \
            ThreadPoolExecutor(max_workers=FILES_IN_PARALLEL, thread_name_prefix="restore-file") as files:
        futures = [files.submit(one, fc, pool) for fc in ordered]
        for future in futures:
            future.exception()
    if first:
        raise first[0]
    return RestoreReport(
        files=len(futures),
        bytes=snap.logical_bytes,
        bytes_sealed=sum(f.result() for f in futures),
        seconds=time.perf_counter() - started,
    )


def _restore_file(repo: Repository, fc: FileChunks, pool: Executor, dst: ZoneStorage, dst_replica: str,
                  replica: UUID, key: UUID, dek: bytes, progress: Progress | None, abort: threading.Event) -> int:
    if abort.is_set():
        raise CustodyError("restore stopped")
    header = sealed.new_header(replica, key, fc.path)
    rel = dst.sealed_path(dst_replica, fc.path)
    chunks = _SnapshotChunks(repo, fc, header.chunk_size, pool)
    chunks.start()
    try:
        written = write_sealed(dst, rel, header, dek, chunks, progress, abort)
    finally:
        chunks.cancel()
        chunks.join()
    if not hmac.compare_digest(chunks.digest(), fc.sha256):
        raise IntegrityError(f"{fc.path}: restored bytes do not match the snapshot's SHA-256")
    with _read_errors(fc.path):
        spot_check(dst, rel, dek, header, written)
    return written


def _check_present(repo: Repository, snap: SnapshotManifest) -> None:
    """Every chunk the snapshot names is in the repository (one listing, no reads)."""
    present = repo.list_chunks()
    missing = [(f.path, cid) for f in snap.files for cid, _ in f.chunks if cid not in present]
    if missing:
        path, cid = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise IntegrityError(f"{path}: chunk {short(cid)} is missing from backup repository {repo.repo_id}{more}")


def _uuid(what: str, value: str) -> UUID:
    try:
        return UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise InvalidInput(f"{what} {value!r} is not a UUID") from None


@contextmanager
def _read_errors(path: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        reason = "destination zone is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or exc
        raise CustodyError(f"{path}: checking the restored file failed: {reason}") from None

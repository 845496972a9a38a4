"""Data plane of a backup: cut a model's files into pieces and store the new ones in a repository.

The files come from local disk (`backup`) or, as the service does for a registered model, from a
sealed replica decrypted in memory (`backup_replica`).

One thread reads pieces (pread into a small pool of buffers), a second hashes each file in
stream order (SHA-256 for the manifest), and a few workers name each piece (HMAC-SHA256),
and store the ones the repository lacks (compress when it pays, encrypt, write). hashlib, hmac,
zstd and AESGCM release the GIL on large buffers, so the steps overlap on several cores, and
memory stays at BUFFERS pieces whatever the model size.

Deduplication is against the chunks listed once at the start plus those written by this run; a
piece seen twice in one run is written once (the second worker waits for the first).

A backup killed part-way leaves the chunks it wrote and no snapshot, since the snapshot is the
control plane's record, written after `backup` returns. The next run lists those chunks and
reuses them; `prune` removes the ones no snapshot ends up referencing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from custody.data.backup.chunking import PIECE_SIZE, cdc_pieces, safetensors_plan
from custody.data.backup.repository import Repository
from custody.data.backup.snapshot import FileChunks, SnapshotManifest
from custody.data.backup.sources import Input, plain_input, sealed_input
from custody.data.ingest import SourceFile
from custody.data.zones import ZoneStorage
from custody.domain.errors import CustodyError, IntegrityError
from custody.domain.manifest import Manifest

__all__ = ["BUFFERS", "WORKERS", "BackupReport", "backup", "backup_replica"]

Progress = Callable[[int], None]

WORKERS = min(8, max(2, os.cpu_count() or 2))
BUFFERS = WORKERS + 4  # pieces in memory: being hashed, being stored, and read ahead


@dataclass(frozen=True, slots=True)
class BackupReport:
    """`bytes_added` is what the repository grew by (stored bytes of new chunks); a reused
    chunk is one already present, or one that appeared earlier in this same run."""

    manifest: SnapshotManifest
    bytes_read: int
    bytes_added: int
    chunks_new: int
    chunks_reused: int
    seconds: float

    @property
    def bytes(self) -> int:
        """Plaintext bytes processed, as every data-plane report names them."""
        return self.bytes_read


@dataclass(frozen=True, slots=True)
class _Stored:
    chunk_id: str
    stored: int  # bytes written; 0 for a reused chunk
    new: bool


_Item = tuple[int, int, "Future[_Stored]"] | BaseException | None


class _Run:
    """One backup: the reader and hasher threads, the worker pool, and what they share."""

    def __init__(self, sources: list[Input], repo: Repository, known: set[str]) -> None:
        self.sources = sources
        self.repo = repo
        self.known = known
        self.inflight: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.free: queue.Queue[bytearray] = queue.Queue()
        self.made = 0
        self.holders: dict[int, int] = {}
        self.to_hash: queue.Queue[tuple[int, bytearray | None, int] | None] = queue.Queue()
        self.results: queue.Queue[_Item] = queue.Queue()
        self.digests: dict[int, str] = {}
        self.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="backup-store")
        self.reader = threading.Thread(target=self._read_all, name="backup-read", daemon=True)
        self.hasher = threading.Thread(target=self._hash_all, name="backup-hash", daemon=True)

    # -- buffers ------------------------------------------------------------------------------

    def _take(self) -> bytearray | None:
        """A free piece buffer (allocated lazily up to BUFFERS), or None once stopped."""
        try:
            buf = self.free.get_nowait()
        except queue.Empty:
            if self.made < BUFFERS:
                self.made += 1
                buf = bytearray(PIECE_SIZE)
            else:
                buf = self.free.get()
        return None if self.stop.is_set() else buf

    def _release(self, buf: bytearray) -> None:
        """Called by the hasher and by the worker; the second call frees the buffer."""
        with self.lock:
            seen = self.holders.pop(id(buf), 0) + 1
            if seen < 2:
                self.holders[id(buf)] = seen
                return
        self.free.put(buf)

    # -- reader -------------------------------------------------------------------------------

    def _read_all(self) -> None:
        try:
            for index, src in enumerate(self.sources):
                if not self._read_file(index, src):
                    return
            self.results.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, which raises it
            self.results.put(exc)
        finally:
            self.to_hash.put(None)

    def _read_file(self, index: int, src: Input) -> bool:
        """Read one file's pieces in order; False when the run was stopped."""
        with src.open() as reader:
            pieces = safetensors_plan(reader.read_at, src.size, src.relpath)
            if pieces is not None:
                for piece in pieces:
                    buf = self._take()
                    if buf is None:
                        return False
                    reader.read_into(memoryview(buf)[: piece.length], piece.offset)
                    self._emit(index, buf, piece.length)
            else:
                for piece, data in cdc_pieces(reader.read_at, src.size, src.relpath):
                    buf = self._take()
                    if buf is None:
                        return False
                    buf[: piece.length] = data
                    self._emit(index, buf, piece.length)
        self.to_hash.put((index, None, 0))  # end of file
        return True

    def _emit(self, index: int, buf: bytearray, n: int) -> None:
        self.to_hash.put((index, buf, n))
        future = self.pool.submit(self._store, buf, n)
        self.results.put((index, n, future))

    # -- hasher -------------------------------------------------------------------------------

    def _hash_all(self) -> None:
        hashers: dict[int, hashlib._Hash] = {}
        while (item := self.to_hash.get()) is not None:
            index, buf, n = item
            h = hashers.get(index)
            if h is None:
                h = hashers[index] = hashlib.sha256()
            if buf is None:  # end of file
                self.digests[index] = hashers.pop(index).hexdigest()
                continue
            h.update(memoryview(buf)[:n])
            self._release(buf)

    # -- workers ------------------------------------------------------------------------------

    def _store(self, buf: bytearray, n: int) -> _Stored:
        try:
            plain = memoryview(buf)[:n]
            cid = self.repo.chunk_id(plain)
            with self.lock:
                if cid in self.known:
                    return _Stored(cid, 0, False)
                waiting = self.inflight.get(cid)
                if waiting is None:
                    mine = self.inflight[cid] = threading.Event()
            if waiting is not None:  # the same piece is being stored by another worker
                waiting.wait()
                with self.lock:
                    if cid not in self.known:
                        raise CustodyError(f"storing chunk {cid[:12]} failed")
                return _Stored(cid, 0, False)
            stored = 0
            try:
                stored = self.repo.put(cid, plain, known_absent=True)
            finally:
                with self.lock:
                    if stored or self.repo.has(cid):
                        self.known.add(cid)
                    del self.inflight[cid]
                mine.set()
            return _Stored(cid, stored, True)
        finally:
            self._release(buf)

    # -- the caller's thread ------------------------------------------------------------------

    def run(self, progress: Progress | None) -> tuple[list[list[tuple[str, int]]], int, int, int]:
        chunks: list[list[tuple[str, int]]] = [[] for _ in self.sources]
        added = new = reused = 0
        self.reader.start()
        self.hasher.start()
        try:
            while (item := self.results.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                index, n, future = item
                got = future.result()
                chunks[index].append((got.chunk_id, n))
                added += got.stored
                new += got.new
                reused += not got.new
                if progress:
                    progress(n)
        except BaseException:
            self.stop.set()
            self.free.put(bytearray(0))  # wakes a reader waiting for a buffer
            raise
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.reader.join()
            self.hasher.join()
        return chunks, added, new, reused


def backup(sources: list[SourceFile], repo: Repository, progress: Progress | None = None) -> BackupReport:
    """Back up model files on local disk into the repository; returns the snapshot manifest to record.

    Every chunk the manifest names is durable in the repository when this returns. On any
    error, the chunks written so far stay (orphans until a snapshot references them or a prune
    removes them) and nothing else changes.
    """
    return _backup([plain_input(s.relpath, s.path, s.size) for s in sources], repo, progress)


def backup_replica(src: ZoneStorage, src_replica: str, src_key_id: str, src_dek: bytes, manifest: Manifest,
                   repo: Repository, progress: Progress | None = None) -> BackupReport:
    """Back up a sealed replica (decrypted in memory only) into the repository.

    Each file is authenticated chunk by chunk under the replica's key, and its SHA-256 must
    match the manifest, or the backup fails (with orphan chunks, and no manifest to record).
    """
    inputs = [sealed_input(src, src_replica, src_key_id, src_dek, entry) for entry in manifest.files]
    return _backup(inputs, repo, progress)


def _backup(inputs: list[Input], repo: Repository, progress: Progress | None) -> BackupReport:
    started = time.perf_counter()
    paths = [s.relpath for s in inputs]
    if len(set(paths)) != len(paths):
        raise CustodyError("a backup lists the same path twice")
    repo.ensure_key()
    run = _Run(inputs, repo, repo.list_chunks())
    chunks, added, new, reused = run.run(progress)
    for i, src in enumerate(inputs):
        if src.expect_sha256 is not None and not hmac.compare_digest(run.digests[i], src.expect_sha256):
            raise IntegrityError(f"{src.relpath}: SHA-256 of the source plaintext does not match the manifest")
    repo.sync()
    files = [FileChunks(src.relpath, src.size, run.digests[i], tuple(chunks[i])) for i, src in enumerate(inputs)]
    return BackupReport(
        manifest=SnapshotManifest.of(files),
        bytes_read=sum(s.size for s in inputs),
        bytes_added=added,
        chunks_new=new,
        chunks_reused=reused,
        seconds=time.perf_counter() - started,
    )

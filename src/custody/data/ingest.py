"""Data plane of registration: read a model's files, hash them, seal them into a zone.

Reading, hashing, sealing and writing overlap: per file, one thread reads and hashes (hashlib
releases the GIL) while another seals (AESGCM releases the GIL) and writes; two files are sealed
at once. At most `BUFFERS` plaintext chunks per file are held in memory, whatever the file size. The
data plane decides nothing: it is handed a data key and reports digests, sizes and timings.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import queue
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from uuid import UUID

from custody.data import sealed
from custody.data.formats.detect import inspect as inspect_format
from custody.data.zones import ZoneStorage
from custody.domain.errors import CustodyError, InvalidInput, NotFound
from custody.domain.manifest import FileEntry, Manifest, check_relpath
from custody.domain.model import FormatSummary

BUFFERS = 6  # plaintext chunks in memory per file being sealed
FILES_IN_PARALLEL = 2
# Version-control files are not model weights; OpenSSF model-signing leaves the top-level git
# names out of a signature, so they are left out of the manifest too.
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__"})
SKIPPED_TOP_LEVEL = frozenset({".git", ".gitattributes", ".github", ".gitignore"})

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class SourceFile:
    relpath: str
    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class IngestReport:
    manifest: Manifest
    formats: tuple[FormatSummary, ...]
    bytes_read: int
    bytes_sealed: int
    seconds: float


def collect_sources(path: Path) -> list[SourceFile]:
    """The files of a model at PATH (a file or a folder), with names checked.

    A symlink is followed only when it stays inside the folder; one that leaves it is refused,
    since following it would register (and seal) bytes from elsewhere on the machine.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise NotFound(f"no such file or folder: {path}") from None
    if stat.S_ISREG(st.st_mode):
        return [SourceFile(check_relpath(path.name), path, st.st_size)]
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidInput(f"{path} is neither a regular file nor a folder")
    root = path.resolve()
    found: list[SourceFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIPPED_DIRS and not (Path(dirpath) == root and d in SKIPPED_TOP_LEVEL)
        )
        for d in list(dirnames):
            full = Path(dirpath, d)
            if full.is_symlink():
                _inside(root, full)
                raise InvalidInput(f"{full.relative_to(root)}: symlinked folders are not followed; copy the files in")
        at_top = Path(dirpath) == root
        for name in filenames:
            if at_top and name in SKIPPED_TOP_LEVEL:
                continue
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                target = _inside(root, full)
                if not target.is_file():
                    raise InvalidInput(f"{rel}: symlink to something that is not a regular file")
                found.append(SourceFile(check_relpath(rel), target, target.stat().st_size))
                continue
            fst = full.lstat()
            if not stat.S_ISREG(fst.st_mode):
                raise InvalidInput(f"{rel}: not a regular file")
            found.append(SourceFile(check_relpath(rel), full, fst.st_size))
    if not found:
        raise InvalidInput(f"{path} holds no files")
    return sorted(found, key=lambda f: f.relpath.encode("utf-8"))


def _inside(root: Path, link: Path) -> Path:
    target = link.resolve()
    if not target.is_relative_to(root):
        raise InvalidInput(f"{link.relative_to(root)}: symlink leaves the model folder")
    return target


def seal_into_zone(
    sources: list[SourceFile],
    zone: ZoneStorage,
    replica_id: str,
    key_id: str,
    dek: bytes,
    progress: Progress | None = None,
    chunk_size: int = sealed.DEFAULT_CHUNK_SIZE,
) -> IngestReport:
    """Seal every source file into the zone, two files at a time, and check what was written."""
    started = time.perf_counter()

    def one(src: SourceFile) -> tuple[FileEntry, FormatSummary, int]:
        info = _inspect(src)
        header = sealed.new_header(UUID(replica_id), UUID(key_id), src.relpath, chunk_size)
        rel = zone.sealed_path(replica_id, src.relpath)
        if zone.local:
            digest, written = _seal_local(src, zone.local_path(rel), header, dek, progress)
        else:
            digest, written = _seal_stream(src, zone, rel, header, dek, progress)
        _spot_check(zone, rel, dek, header, written)
        return FileEntry(src.relpath, src.size, digest), FormatSummary(src.relpath, info.kind, info.parameters,
                                                                       info.unsafe), written

    # Largest files first so two workers finish together; SHA-256 of one file is sequential,
    # so a second file is what keeps the second core busy.
    ordered = sorted(sources, key=lambda s: -s.size)
    with ThreadPoolExecutor(max_workers=FILES_IN_PARALLEL, thread_name_prefix="seal-file") as pool:
        results = list(pool.map(one, ordered))
    return IngestReport(
        manifest=Manifest.of(r[0] for r in results),
        formats=tuple(sorted((r[1] for r in results), key=lambda f: f.path.encode("utf-8"))),
        bytes_read=sum(r[0].size for r in results),
        bytes_sealed=sum(r[2] for r in results),
        seconds=time.perf_counter() - started,
    )


def _inspect(src: SourceFile):  # noqa: ANN202
    fd = os.open(src.path, os.O_RDONLY)
    try:
        return inspect_format(lambda off, n: os.pread(fd, n, off), src.size, name=src.relpath)
    finally:
        os.close(fd)


class _Reader:
    """Reads a file chunk by chunk into a small pool of buffers; a second thread hashes them.

    Reading, hashing (here) and sealing (in the caller) run on three threads over the same
    buffers; each buffer returns to the pool once both the hasher and the sealer are done with
    it. hashlib and AESGCM release the GIL, so SHA-256, the one sequential step, gets a core
    of its own.
    """

    def __init__(self, src: SourceFile, chunk_size: int) -> None:
        self.src = src
        self.chunk_size = chunk_size
        self.hasher = hashlib.sha256()
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(BUFFERS):
            self.free.put(bytearray(chunk_size))
        self.ready: queue.Queue[tuple[int, bytearray, int] | BaseException | None] = queue.Queue()
        self.to_hash: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self.stop = threading.Event()
        self._done: dict[int, int] = {}
        self._lock = threading.Lock()
        self._hashed = threading.Event()
        self._threads = [threading.Thread(target=self._read, name=f"read:{src.relpath}", daemon=True),
                         threading.Thread(target=self._hash, name=f"hash:{src.relpath}", daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _read(self) -> None:
        try:
            n_chunks = sealed.chunk_count(self.src.size, self.chunk_size)
            with open(self.src.path, "rb", buffering=0) as fh:
                for index in range(n_chunks):
                    expected = min(self.chunk_size, self.src.size - index * self.chunk_size)
                    buf = self.free.get()
                    if self.stop.is_set():
                        return
                    view = memoryview(buf)[:expected]
                    got = 0
                    while got < expected:
                        n = fh.readinto(view[got:])
                        if not n:
                            raise CustodyError(f"{self.src.relpath} shrank while it was being read")
                        got += n
                    self.to_hash.put((buf, expected))
                    self.ready.put((index, buf, expected))
                if fh.read(1):
                    raise CustodyError(f"{self.src.relpath} grew while it was being read")
            self.ready.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the sealing thread, which raises it
            self.ready.put(exc)
        finally:
            self.to_hash.put(None)

    def _hash(self) -> None:
        while (item := self.to_hash.get()) is not None:
            buf, n = item
            self.hasher.update(memoryview(buf)[:n])
            self.release(buf)
        self._hashed.set()

    def chunks(self) -> Iterator[tuple[int, memoryview, bytearray]]:
        while True:
            item = self.ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            index, buf, n = item
            yield index, memoryview(buf)[:n], buf

    def release(self, buf: bytearray) -> None:
        """Called by the hasher and by the sealer; the second call frees the buffer."""
        with self._lock:
            seen = self._done.pop(id(buf), 0) + 1
            if seen < 2:
                self._done[id(buf)] = seen
                return
        self.free.put(buf)

    def digest(self) -> str:
        self._hashed.wait()
        return self.hasher.hexdigest()

    def cancel(self) -> None:
        self.stop.set()
        self.free.put(bytearray(0))


def _seal_local(src: SourceFile, path: str, header: sealed.SealedHeader, dek: bytes,
                progress: Progress | None) -> tuple[str, int]:
    """Seal into a local file with O_DIRECT: aligned 4 MiB records go straight to the disk.

    Bypassing the page cache makes the final fsync cheap and keeps a large registration from
    evicting everything else; the header is padded to 4 KiB so every record is aligned.
    """
    cipher = sealed.ChunkCipher(dek, header)
    n_chunks = sealed.chunk_count(src.size, header.chunk_size)
    record = header.chunk_size + sealed.TAG_SIZE
    direct = getattr(os, "O_DIRECT", 0)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | direct, 0o600)
    reader = _Reader(src, header.chunk_size)
    written = 0
    try:
        out = mmap.mmap(-1, max(record, header.size))  # page-aligned, as O_DIRECT requires
        out[: header.size] = header.to_bytes()
        written += _write_all(fd, memoryview(out)[: header.size])
        reader.start()
        for index, plain, buf in reader.chunks():
            n = cipher.seal_into(index, plain, index == n_chunks - 1, memoryview(out)[: len(plain) + sealed.TAG_SIZE])
            reader.release(buf)
            if n % 4096 and direct:  # the short last record: finish without O_DIRECT
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~direct)
                direct = 0
            written += _write_all(fd, memoryview(out)[:n])
            if progress:
                progress(len(plain))
        os.fsync(fd)
    finally:
        reader.cancel()
        os.close(fd)
    if written != sealed.sealed_size(src.size, header):
        raise CustodyError(f"{src.relpath}: wrote {written} sealed bytes, expected {sealed.sealed_size(src.size, header)}")
    return reader.digest(), written


def _write_all(fd: int, data: memoryview) -> int:
    done = 0
    while done < len(data):
        done += os.write(fd, data[done:])
    return done


def _seal_stream(src: SourceFile, zone: ZoneStorage, rel: str, header: sealed.SealedHeader, dek: bytes,
                 progress: Progress | None) -> tuple[str, int]:
    """Seal into any fsspec zone (object stores included) through a file-like writer."""
    cipher = sealed.ChunkCipher(dek, header)
    n_chunks = sealed.chunk_count(src.size, header.chunk_size)
    reader = _Reader(src, header.chunk_size)
    written = 0
    try:
        with zone.writer(rel) as out:
            head = header.to_bytes()
            out.write(head)
            written += len(head)
            reader.start()
            for index, plain, buf in reader.chunks():
                chunk = cipher.seal(index, plain, index == n_chunks - 1)
                reader.release(buf)
                out.write(chunk)
                written += len(chunk)
                if progress:
                    progress(len(plain))
    finally:
        reader.cancel()
    return reader.digest(), written


def _spot_check(zone: ZoneStorage, rel: str, dek: bytes, header: sealed.SealedHeader, written: int) -> None:
    """Read back the stored size, the header, and the first and last chunks, and authenticate them.

    Every chunk was sealed from bytes hashed in the same pass and the file was fsynced;
    this proves the stored object is complete, bound to this replica and key, and opens.
    `custody replica verify` decrypts every chunk.
    """
    with zone.reader(rel) as (read_at, size):
        if size != written:
            raise CustodyError(f"{header.path}: zone holds {size} sealed bytes, {written} were written")
        reader = sealed.SealedReader(read_at, size, dek, expect_replica=header.replica_id, expect_key=header.key_id,
                                     expect_path=header.path)  # authenticates the final chunk
        reader.read_chunk(0)

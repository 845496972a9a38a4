"""Data plane of registration: read a model's files, hash them, seal them into a zone.

Reading, hashing, sealing and writing overlap: the calling thread reads and hashes (hashlib
releases the GIL), a small pool seals chunks (AESGCM releases the GIL), and sealed chunks are
written in order. At most `IN_FLIGHT` chunks are held in memory, whatever the file size. The
data plane decides nothing: it is handed a data key and reports digests, sizes and timings.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from uuid import UUID

from custody.data import sealed
from custody.data.formats.detect import inspect as inspect_format
from custody.data.zones import ZoneStorage
from custody.domain.errors import CustodyError, InvalidInput, NotFound
from custody.domain.manifest import FileEntry, Manifest, check_relpath
from custody.domain.model import FormatSummary

IN_FLIGHT = 6
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
    """Seal every source file into the zone and check every written chunk authenticates."""
    started = time.perf_counter()
    entries: list[FileEntry] = []
    formats: list[FormatSummary] = []
    sealed_total = 0
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="seal") as pool:
        for src in sources:
            info = _inspect(src)
            formats.append(FormatSummary(src.relpath, info.kind, info.parameters, info.unsafe))
            header = sealed.new_header(UUID(replica_id), UUID(key_id), src.relpath, chunk_size)
            rel = zone.sealed_path(replica_id, src.relpath)
            digest, written = _seal_file(src, zone, rel, header, dek, pool, progress)
            _check_written(zone, rel, dek, header, pool)
            entries.append(FileEntry(src.relpath, src.size, digest))
            sealed_total += written
    return IngestReport(
        manifest=Manifest.of(entries),
        formats=tuple(formats),
        bytes_read=sum(e.size for e in entries),
        bytes_sealed=sealed_total,
        seconds=time.perf_counter() - started,
    )


def _inspect(src: SourceFile):  # noqa: ANN202
    fd = os.open(src.path, os.O_RDONLY)
    try:
        return inspect_format(lambda off, n: os.pread(fd, n, off), src.size, name=src.relpath)
    finally:
        os.close(fd)


def _seal_file(
    src: SourceFile,
    zone: ZoneStorage,
    rel: str,
    header: sealed.SealedHeader,
    dek: bytes,
    pool: ThreadPoolExecutor,
    progress: Progress | None,
) -> tuple[str, int]:
    cipher = sealed.ChunkCipher(dek, header)
    n_chunks = sealed.chunk_count(src.size, header.chunk_size)
    hasher = hashlib.sha256()
    pending: deque[tuple[Future[bytes], int]] = deque()
    written = 0
    with open(src.path, "rb", buffering=0) as fh, zone.writer(rel) as out:
        head = header.to_bytes()
        out.write(head)
        written += len(head)

        def drain(limit: int) -> None:
            nonlocal written
            while len(pending) > limit:
                fut, plain_len = pending.popleft()
                chunk = fut.result()
                out.write(chunk)
                written += len(chunk)
                if progress:
                    progress(plain_len)

        for index in range(n_chunks):
            expected = min(header.chunk_size, src.size - index * header.chunk_size)
            data = fh.read(expected)
            if len(data) != expected:
                raise CustodyError(f"{src.relpath} changed while it was being read")
            hasher.update(data)
            pending.append((pool.submit(cipher.seal, index, data, index == n_chunks - 1), expected))
            drain(IN_FLIGHT)
        drain(0)
        if fh.read(1):
            raise CustodyError(f"{src.relpath} grew while it was being read")
    if written != sealed.sealed_size(src.size, header):
        raise CustodyError(f"{src.relpath}: wrote {written} sealed bytes, expected {sealed.sealed_size(src.size, header)}")
    return hasher.hexdigest(), written


def _check_written(zone: ZoneStorage, rel: str, dek: bytes, header: sealed.SealedHeader, pool: ThreadPoolExecutor) -> None:
    """Read back what was written and check every chunk authenticates (GCM tags bind the plaintext)."""
    with zone.reader(rel) as (read_at, size):
        reader = sealed.SealedReader(read_at, size, dek, expect_replica=header.replica_id, expect_key=header.key_id,
                                     expect_path=header.path)
        for _ in pool.map(reader.read_chunk, range(reader.chunk_count)):
            pass  # each result is dropped at once: memory stays bounded by the pool size

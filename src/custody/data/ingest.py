"""Data plane of registration: read a model's files, hash them, seal them into a zone.

Reading, hashing, sealing and writing overlap: per file, one thread reads and hashes (hashlib
releases the GIL) while another seals (AESGCM releases the GIL) and writes; two files are sealed
at once. At most `BUFFERS` plaintext chunks per file are held in memory, whatever the file size. The
tensors of safetensors and GGUF files are hashed from the same chunks on a further thread. The data
plane decides nothing: it is handed a data key and reports digests, sizes and timings.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from uuid import UUID

from custody.data import sealed
from custody.data.derive.sketch import TensorSketches
from custody.data.formats import gguf, numpy_format, safetensors
from custody.data.formats.detect import FormatInfo
from custody.data.formats.detect import inspect as inspect_format
from custody.data.formats.tensor_digests import TensorHashes
from custody.data.sealed_io import FILES_IN_PARALLEL, ChunkObserver
from custody.data.sealed_io import FileChunks as _Reader
from custody.data.sealed_io import spot_check as _spot_check
from custody.data.sealed_io import write_all as _write_all
from custody.data.zones import ZoneStorage
from custody.domain.errors import CustodyError, InvalidInput, NotFound
from custody.domain.manifest import FileEntry, Manifest, check_relpath
from custody.domain.model import FormatSummary, TensorDigest

# OpenSSF model-signing leaves exactly the top-level git names out of a signature, so they are
# left out of the manifest too; everything else, hidden or nested, is sealed and signed.
SKIPPED_TOP_LEVEL = frozenset({".git", ".gitattributes", ".github", ".gitignore"})

Progress = Callable[[int], None]

MAX_HEADER_READS = safetensors.MAX_HEADER_BYTES + 16 * 1024 * 1024
"""Most bytes a format parser may read of a safetensors or GGUF file (the reference's header
limit plus read-ahead); they are kept until the file is sealed, to check the stream against."""


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
    tensors: tuple[TensorDigest, ...] = ()
    """Every tensor of every safetensors and GGUF file (and every .npy array), by path (bytewise) then file offset."""
    sketches: tuple[tuple[str, str, int, int, bytes], ...] = ()
    """(path, tensor, rows, cols, sketch) of every float matrix of every safetensors file (data/derive/sketch.py)."""


def collect_sources(path: Path) -> list[SourceFile]:
    try:
        return _collect(path)
    except (UnicodeError, RuntimeError, OSError) as exc:  # undecodable names, symlink loops, unreadable folders
        raise InvalidInput(f"{path}: cannot read the model's files: {type(exc).__name__}: {exc}"[:300]) from None


def _collect(path: Path) -> list[SourceFile]:
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
            d for d in dirnames if not (Path(dirpath) == root and d in SKIPPED_TOP_LEVEL)
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
    sketch_key: bytes | None = None,
) -> IngestReport:
    """Seal every source file into the zone, two files at a time, and check what was written;
    with `sketch_key`, sketch every float matrix of its safetensors files on the way."""
    started = time.perf_counter()

    def one(src: SourceFile) -> tuple[FileEntry, FormatSummary, int, tuple[TensorDigest, ...], list]:
        info, seen = _inspect(src)
        tensors = TensorHashes(src.relpath, info.tensors, seen) if info.tensors else None
        sketches = (TensorSketches(sketch_key, src.relpath, info.tensors)
                    if sketch_key and info.tensors and info.kind == "safetensors" else None)
        observers = tuple(o for o in (tensors, sketches) if o is not None)
        header = sealed.new_header(UUID(replica_id), UUID(key_id), src.relpath, chunk_size)
        rel = zone.sealed_path(replica_id, src.relpath)
        if zone.local:
            digest, written = _seal_local(src, zone.local_path(rel), header, dek, progress, observers)
        else:
            digest, written = _seal_stream(src, zone, rel, header, dek, progress, observers)
        _spot_check(zone, rel, dek, header, written)
        return (FileEntry(src.relpath, src.size, digest),
                FormatSummary(src.relpath, info.kind, info.parameters, info.unsafe), written,
                tensors.results() if tensors else (), sketches.results if sketches else [])

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
        tensors=tuple(t for r in sorted(results, key=lambda r: r[0].path.encode("utf-8")) for t in r[3]),
        sketches=tuple(s for r in results for s in r[4]),
    )


def _inspect(src: SourceFile) -> tuple[FormatInfo, list[tuple[int, bytes]]]:
    """What the file is, and for a safetensors or GGUF file the bytes its parser read.

    Tensor ranges come from those bytes; the sealing stream is checked against them, so a header
    rewritten between parsing and reading fails the registration instead of having its ranges
    hashed over other bytes. Other kinds keep nothing: their parsers may read much more.
    """
    fd = os.open(src.path, os.O_RDONLY)
    try:
        reads = _ParserReads(fd, src)
        info = inspect_format(reads, src.size, name=src.relpath)
    finally:
        os.close(fd)
    if info.tensors and not reads.kept:
        raise InvalidInput(f"{src.relpath}: changed while it was being read, or its header needs more than "
                           f"{MAX_HEADER_READS} bytes")
    return info, reads.reads if info.tensors else []


class _ParserReads:
    """`read_at` over a file descriptor that keeps what it returned, for files shaped like tensors."""

    def __init__(self, fd: int, src: SourceFile) -> None:
        self.fd = fd
        start = os.pread(fd, 64, 0)
        self.kept = (safetensors.looks_like_safetensors(start, src.size) or start[:4] == gguf.MAGIC
                     or start[:6] == numpy_format.MAGIC or src.relpath.lower().endswith(".safetensors"))
        self.reads: list[tuple[int, bytes]] = []
        self.total = 0

    def __call__(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if self.kept:
            self.total += len(data)
            self.kept = self.total <= MAX_HEADER_READS
            if self.kept:
                self.reads.append((offset, data))
            else:
                self.reads.clear()
        return data


def _seal_local(src: SourceFile, path: str, header: sealed.SealedHeader, dek: bytes,
                progress: Progress | None, observers: tuple[ChunkObserver, ...] = ()) -> tuple[str, int]:
    """Seal into a local file with O_DIRECT: aligned 4 MiB records go straight to the disk.

    Bypassing the page cache makes the final fsync cheap and keeps a large registration from
    evicting everything else; the header is padded to 4 KiB so every record is aligned.
    """
    cipher = sealed.ChunkCipher(dek, header)
    n_chunks = sealed.chunk_count(src.size, header.chunk_size)
    record = header.chunk_size + sealed.TAG_SIZE
    direct = getattr(os, "O_DIRECT", 0)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | direct, 0o600)
    reader = _Reader(src, header.chunk_size, observers)
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
        reader.observed()
        os.fsync(fd)
    finally:
        reader.cancel()
        os.close(fd)
    if written != sealed.sealed_size(src.size, header):
        raise CustodyError(f"{src.relpath}: wrote {written} sealed bytes, expected {sealed.sealed_size(src.size, header)}")
    return reader.digest(), written


def _seal_stream(src: SourceFile, zone: ZoneStorage, rel: str, header: sealed.SealedHeader, dek: bytes,
                 progress: Progress | None, observers: tuple[ChunkObserver, ...] = ()) -> tuple[str, int]:
    """Seal into any fsspec zone (object stores included) through a file-like writer."""
    cipher = sealed.ChunkCipher(dek, header)
    n_chunks = sealed.chunk_count(src.size, header.chunk_size)
    reader = _Reader(src, header.chunk_size, observers)
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
            reader.observed()  # before the writer completes the object
    finally:
        reader.cancel()
    return reader.digest(), written

"""Zone storage: where sealed bytes live, addressed by an fsspec URL (file://, s3://, ...).

Only the data plane touches it. Paths inside a zone are built from validated names, never
from raw input, so nothing can escape the zone's root.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterator

import fsspec

from custody.domain.errors import CustodyError, NotFound
from custody.domain.manifest import check_relpath

REPLICAS_DIR = "replicas"
SEALED_SUFFIX = ".sealed"


class ZoneStorage:
    def __init__(self, url: str) -> None:
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ValueError, ImportError) as exc:
            raise CustodyError(f"zone URL {url!r} is not usable: {exc}") from None
        self.url = url
        self.local = self.fs.protocol in ("file", ("file", "local")) or "file" in self.fs.protocol

    def _abs(self, rel: str) -> str:
        return self.root.rstrip("/") + "/" + rel

    def local_path(self, rel: str) -> str:
        """The absolute path of `rel` on a local zone (its parent folder created)."""
        if not self.local:
            raise CustodyError(f"zone {self.url} is not on a local file system")
        path = self._abs(rel)
        os.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        return path

    def replica_dir(self, replica_id: str) -> str:
        return f"{REPLICAS_DIR}/{replica_id}"

    def sealed_path(self, replica_id: str, relpath: str) -> str:
        return f"{self.replica_dir(replica_id)}/{check_relpath(relpath)}{SEALED_SUFFIX}"

    def ensure_root(self) -> None:
        self.fs.makedirs(self._abs(REPLICAS_DIR), exist_ok=True)

    @contextmanager
    def writer(self, rel: str) -> Iterator[BinaryIO]:
        """A file opened for writing; on a local zone it is fsynced before close."""
        path = self._abs(rel)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as fh:
            yield fh
            if self.local:
                fh.flush()
                os.fsync(fh.fileno())

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.writer(rel) as fh:
            fh.write(data)

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self._abs(rel))
        except FileNotFoundError:
            raise NotFound(f"{rel} is missing from zone storage") from None

    def size(self, rel: str) -> int:
        try:
            return int(self.fs.size(self._abs(rel)))
        except FileNotFoundError:
            raise NotFound(f"{rel} is missing from zone storage") from None

    @contextmanager
    def reader(self, rel: str) -> Iterator[tuple[Callable[[int, int], bytes], int]]:
        """(read_at, size) for random access; read_at is safe to call from several threads."""
        path = self._abs(rel)
        if self.local:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise NotFound(f"{rel} is missing from zone storage") from None
            try:
                yield (lambda off, n: os.pread(fd, n, off)), os.fstat(fd).st_size
            finally:
                os.close(fd)
            return
        lock = threading.Lock()
        try:
            fh = self.fs.open(path, "rb")
        except FileNotFoundError:
            raise NotFound(f"{rel} is missing from zone storage") from None
        with fh:

            def read_at(off: int, n: int) -> bytes:
                with lock:
                    fh.seek(off)
                    return fh.read(n)

            yield read_at, int(fh.size)

    def files_under(self, rel: str) -> list[str]:
        """Relative paths of every file below `rel` (empty if it does not exist)."""
        base = self._abs(rel)
        if not self.fs.exists(base):
            return []
        prefix = self.root.rstrip("/") + "/"
        return sorted(p[len(prefix) :] for p in self.fs.find(base))

    def replica_ids(self) -> list[str]:
        base = self._abs(REPLICAS_DIR)
        if not self.fs.exists(base):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False))

    def delete_tree(self, rel: str) -> None:
        path = self._abs(rel)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

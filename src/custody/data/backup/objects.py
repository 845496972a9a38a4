"""The objects of one backup repository in a zone: atomic writes, reads, listing, deletion.

A chunk that exists must be whole, because a backup trusts a present chunk and stores it again
never: a torn object would silently break every later snapshot that deduplicates against it. So
on a local zone an object is written under a temporary name, fsynced, and renamed into place;
the folders that gained entries are fsynced by `sync()` before a backup reports success. On an
object store one PUT is atomic already. Temporary names never look like chunk ids, so a write
killed part-way leaves a stray file that listing ignores and pruning removes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Iterator

from custody.data.zones import ZoneStorage

__all__ = ["ObjectStore"]

TEMP_MARK = ".tmp-"


class ObjectStore:
    """Objects below one folder of a zone, addressed by paths relative to that folder."""

    def __init__(self, zone: ZoneStorage, prefix: str) -> None:
        self.zone = zone
        self.root = zone.root.rstrip("/")
        self.base = self.root + "/" + prefix.strip("/")
        self.local = zone.local
        self._made: set[str] = set()
        self._dirty: set[str] = set()
        self._lock = threading.Lock()

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    # -- writing -------------------------------------------------------------------------------

    def put(self, rel: str, data: bytes | bytearray | memoryview) -> None:
        """Store `data` at `rel` atomically (replacing an object already there)."""
        path = self.path(rel)
        folder = path.rsplit("/", 1)[0]
        if not self.local:
            self.zone.fs.pipe_file(path, bytes(data))
            return
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            with self._lock:
                self._made.add(folder)
                self._dirty.update(_parents(folder, self.root))
        tmp = f"{path}{TEMP_MARK}{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        try:
            os.rename(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise
        with self._lock:
            self._dirty.add(folder)

    def sync(self) -> None:
        """Make the renames so far durable: fsync every folder that gained an entry."""
        if not self.local:
            return
        with self._lock:
            dirty, self._dirty = sorted(self._dirty, key=len, reverse=True), set()
        for folder in dirty:  # deepest first, so a new folder is durable before its parent names it
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- reading -------------------------------------------------------------------------------

    def read(self, rel: str, limit: int) -> bytes | None:
        """The object's bytes, None when it does not exist; refuses one over `limit` bytes
        (a planted or damaged object) by returning its first limit + 1 bytes."""
        path = self.path(rel)
        if self.local:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return None
            try:
                size = os.fstat(fd).st_size
                want = min(size, limit + 1)
                parts: list[bytes] = []
                got = 0
                while got < want:
                    part = os.pread(fd, want - got, got)
                    if not part:
                        break
                    parts.append(part)
                    got += len(part)
                return parts[0] if len(parts) == 1 else b"".join(parts)
            finally:
                os.close(fd)
        fs = self.zone.fs
        try:
            size = int(fs.size(path))
            if size > limit:
                return fs.cat_file(path, start=0, end=limit + 1)
            return fs.cat_file(path)
        except FileNotFoundError:
            return None

    def exists(self, rel: str) -> bool:
        path = self.path(rel)
        return os.path.isfile(path) if self.local else bool(self.zone.fs.exists(path))

    def walk(self, rel: str) -> Iterator[tuple[str, int]]:
        """(path relative to `rel`, size) of every file below `rel`, temporaries included."""
        root = self.path(rel)
        if self.local:
            yield from _walk_local(root, "")
            return
        fs = self.zone.fs
        if not fs.exists(root):
            return
        found = fs.find(root, detail=True)
        for path, info in found.items():
            path = "/" + path.lstrip("/") if root.startswith("/") else path
            if path.startswith(root + "/"):
                yield path[len(root) + 1 :], int(info.get("size") or 0)

    def remove(self, rel: str) -> int:
        """Delete one object; its size, or 0 when it was already gone."""
        path = self.path(rel)
        if self.local:
            try:
                size = os.stat(path).st_size
                os.unlink(path)
            except FileNotFoundError:
                return 0
            with self._lock:
                self._dirty.add(path.rsplit("/", 1)[0])
            return size
        fs = self.zone.fs
        try:
            size = int(fs.size(path))
            fs.rm_file(path)
        except FileNotFoundError:
            return 0
        return size


def _walk_local(folder: str, prefix: str) -> Iterator[tuple[str, int]]:
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        name = prefix + entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_local(entry.path, name + "/")
        elif entry.is_file(follow_symlinks=False):
            try:
                yield name, entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue


def _parents(folder: str, root: str) -> Iterator[str]:
    """`folder` and its parents up to the zone root: each may have gained an entry."""
    yield folder
    while len(folder) > len(root) and "/" in folder:
        folder = folder.rsplit("/", 1)[0]
        yield folder


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

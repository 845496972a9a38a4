"""Pieces shared by the pipelines that write sealed files: registration (ingest) and copy.

A `ChunkPipeline` produces plaintext chunks on one thread into a small pool of buffers while a
second thread hashes them (and observers, such as per-tensor hashing, read them on threads of
their own); the caller's thread seals and writes. hashlib and AESGCM release the GIL, so the
steps really overlap, and memory stays at `BUFFERS` chunks per file whatever the file size. The
helpers below write whole records and check what a zone holds afterwards.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading
from typing import Iterator, Protocol, Sequence

from custody.data import sealed
from custody.data.zones import ZoneStorage
from custody.domain.errors import CustodyError

BUFFERS = 6  # plaintext chunks in memory per file being sealed
FILES_IN_PARALLEL = 2
# O_DIRECT wants offsets, lengths and buffers aligned to the logical block size; 4 KiB covers
# every disk in practice, and the sealed header is padded to it.
DIRECT_ALIGN = 4096


class ChunkObserver(Protocol):
    def update(self, offset: int, data: memoryview) -> None:
        """Called with every chunk in file order; `data` is only valid during the call."""


class ChunkPipeline:
    """Fills plaintext chunks on one thread; a second thread hashes them in order.

    Subclasses implement `_produce`, which takes a free buffer with `_take`, fills it and hands it
    on with `_emit`. Each buffer goes back to the pool once the hasher, every observer and the
    consumer have called `release` on it, so the consumer (sealing and writing) never waits on a
    copy. An observer gets a thread of its own rather than sharing the hasher's: a second SHA-256
    over the same bytes then runs on the second core instead of halving one file's speed.
    """

    def __init__(self, name: str, size: int, chunk_size: int, observers: Sequence[ChunkObserver] = ()) -> None:
        self.name = name
        self.size = size
        self.chunk_size = chunk_size
        self.n_chunks = sealed.chunk_count(size, chunk_size)
        self.hasher = hashlib.sha256()
        self.free: queue.Queue[bytearray] = queue.Queue()
        # A small file gets one buffer of its own size rather than BUFFERS full chunks.
        for _ in range(min(BUFFERS, self.n_chunks)):
            self.free.put(bytearray(min(chunk_size, size)))
        self.ready: queue.Queue[tuple[int, bytearray, int] | BaseException | None] = queue.Queue()
        self.to_hash: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self.stop = threading.Event()
        self._done: dict[int, int] = {}
        self._lock = threading.Lock()
        self._hashed = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"read:{name}", daemon=True),
                         threading.Thread(target=self._hash, name=f"hash:{name}", daemon=True)]
        self._watching: list[queue.Queue[tuple[bytearray, int, int] | None]] = []
        self._watched: list[threading.Event] = []
        self._watch_errors: list[BaseException] = []
        for i, observer in enumerate(observers):
            todo: queue.Queue[tuple[bytearray, int, int] | None] = queue.Queue()
            done = threading.Event()
            self._watching.append(todo)
            self._watched.append(done)
            self._threads.append(threading.Thread(target=self._watch, args=(observer, todo, done),
                                                  name=f"watch{i}:{name}", daemon=True))
        self._holders = 2 + len(observers)  # hasher, consumer, observers: each releases every buffer

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _produce(self) -> None:
        raise NotImplementedError

    def _take(self) -> bytearray | None:
        """A free buffer, or None once the consumer has cancelled."""
        buf = self.free.get()
        return None if self.stop.is_set() else buf

    def _emit(self, index: int, buf: bytearray, n: int) -> None:
        for todo in self._watching:
            todo.put((buf, n, index * self.chunk_size))
        self.to_hash.put((buf, n))
        self.ready.put((index, buf, n))

    def _run(self) -> None:
        try:
            self._produce()
            self.ready.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, which raises it
            self.ready.put(exc)
        finally:
            self.to_hash.put(None)
            for todo in self._watching:
                todo.put(None)

    def _hash(self) -> None:
        while (item := self.to_hash.get()) is not None:
            buf, n = item
            self.hasher.update(memoryview(buf)[:n])
            self.release(buf)
        self._hashed.set()

    def _watch(self, observer: ChunkObserver, todo: queue.Queue[tuple[bytearray, int, int] | None],
               done: threading.Event) -> None:
        """Feed one observer; after a failure keep releasing buffers so the pipeline still drains."""
        failed = False
        while (item := todo.get()) is not None:
            buf, n, offset = item
            if not failed:
                try:
                    observer.update(offset, memoryview(buf)[:n])
                except BaseException as exc:  # noqa: BLE001 - raised by `observed` on the consuming thread
                    self._watch_errors.append(exc)
                    failed = True
            self.release(buf)
        done.set()

    def chunks(self) -> Iterator[tuple[int, memoryview, bytearray]]:
        """(index, plaintext, buffer) in order; pass the buffer to `release` when done with it."""
        while True:
            item = self.ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            index, buf, n = item
            yield index, memoryview(buf)[:n], buf

    def release(self, buf: bytearray) -> None:
        """Called by the hasher, each observer and the consumer; the last call frees the buffer."""
        with self._lock:
            seen = self._done.pop(id(buf), 0) + 1
            if seen < self._holders:
                self._done[id(buf)] = seen
                return
        self.free.put(buf)

    def digest(self) -> str:
        self._hashed.wait()
        return self.hasher.hexdigest()

    def observed(self) -> None:
        """Wait until every observer has seen every chunk; raise what one of them raised."""
        for done in self._watched:
            done.wait()
        if self._watch_errors:
            raise self._watch_errors[0]

    def cancel(self) -> None:
        self.stop.set()
        self.free.put(bytearray(0))

    def join(self) -> None:
        """Wait for both threads after `cancel` (at most one chunk of work), so that whatever the
        producer reads from, a descriptor included, can be closed safely afterwards."""
        for t in self._threads:
            if t.is_alive():
                t.join()


class _PlainFile(Protocol):
    relpath: str
    path: os.PathLike[str] | str
    size: int


class FileChunks(ChunkPipeline):
    """Plaintext chunks read from a file on local disk (registration's source).

    The file must stay exactly the size that was measured: one that shrinks or grows while it
    is read has changed, and sealing it would bind bytes nobody looked at.
    """

    def __init__(self, src: _PlainFile, chunk_size: int, observers: Sequence[ChunkObserver] = ()) -> None:
        super().__init__(src.relpath, src.size, chunk_size, observers)
        self.src = src

    def _produce(self) -> None:
        with open(self.src.path, "rb", buffering=0) as fh:
            for index in range(self.n_chunks):
                expected = min(self.chunk_size, self.size - index * self.chunk_size)
                buf = self._take()
                if buf is None:
                    return
                view = memoryview(buf)[:expected]
                got = 0
                while got < expected:
                    n = fh.readinto(view[got:])
                    if not n:
                        raise CustodyError(f"{self.src.relpath} shrank while it was being read")
                    got += n
                self._emit(index, buf, expected)
            if fh.read(1):
                raise CustodyError(f"{self.src.relpath} grew while it was being read")


def open_for_write(path: str, flags: int, direct: bool) -> tuple[int, bool]:
    """Open `path` for writing, with O_DIRECT when asked and the file system allows it.

    tmpfs and character devices refuse O_DIRECT with EINVAL; buffered writes plus the final fsync
    are correct there, only slower. Returns the descriptor and whether O_DIRECT is on.
    """
    o_direct = getattr(os, "O_DIRECT", 0)
    if direct and o_direct:
        try:
            return os.open(path, flags | o_direct, 0o600), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o600), False


def end_direct(fd: int) -> None:
    """Turn O_DIRECT off, for a record whose length is not a multiple of the block size."""
    import fcntl

    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~getattr(os, "O_DIRECT", 0))


def write_all(fd: int, data: memoryview) -> int:
    done = 0
    while done < len(data):
        done += os.write(fd, data[done:])
    return done


def spot_check(zone: ZoneStorage, rel: str, dek: bytes, header: sealed.SealedHeader, written: int) -> None:
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

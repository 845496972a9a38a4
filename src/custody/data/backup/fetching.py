"""Reading a file's chunks back in order while the next few are fetched and checked in parallel.

Every `get` reads an object, decrypts it, maybe decompresses it and recomputes its MAC; those
release the GIL, so a few run at once on a shared pool while the consumer hashes or seals the
chunk before them. `AHEAD` bounds how many are in flight per file, which bounds memory.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor

from custody.data.backup.repository import Repository, short
from custody.data.backup.snapshot import FileChunks
from custody.domain.errors import IntegrityError

__all__ = ["AHEAD", "FETCHERS", "chunks_in_order", "file_chunks"]

FETCHERS = min(8, max(2, os.cpu_count() or 2))
AHEAD = FETCHERS + 2


def chunks_in_order(repo: Repository, ids: Sequence[str], pool: Executor,
                    ahead: int = AHEAD) -> Generator[bytes, None, None]:
    """Plaintexts of `ids` in order, each authenticated by `repo.get`."""
    pending: deque[Future[bytes]] = deque()
    try:
        for cid in ids:
            pending.append(pool.submit(repo.get, cid))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def file_chunks(repo: Repository, fc: FileChunks, pool: Executor | None = None) -> Iterator[bytes]:
    """A file's plaintext chunk by chunk: every chunk MAC-checked as it arrives, each one's length
    checked against the snapshot, and the file's size and SHA-256 after the last one.

    The check of the whole file can only come at the end, so a consumer must not treat what it
    received as the file until the iterator has finished without error. Errors name the file and,
    where one is to blame, the chunk.
    """
    own = pool is None
    executor = ThreadPoolExecutor(max_workers=FETCHERS, thread_name_prefix="backup-fetch") if own else pool
    assert executor is not None
    digest = hashlib.sha256()
    total = 0
    try:
        stream = chunks_in_order(repo, [cid for cid, _ in fc.chunks], executor)
        for (cid, length), plain in zip(fc.chunks, _named(stream, fc), strict=True):
            if len(plain) != length:
                raise IntegrityError(f"{fc.path}: chunk {short(cid)} holds {len(plain)} bytes, "
                                     f"the snapshot says {length}")
            digest.update(plain)
            total += length
            yield plain
    finally:
        if own:
            executor.shutdown(wait=True, cancel_futures=True)
    if total != fc.size or not hmac.compare_digest(digest.hexdigest(), fc.sha256):
        raise IntegrityError(f"{fc.path}: restored bytes do not match the snapshot's SHA-256")


def _named(stream: Iterator[bytes], fc: FileChunks) -> Iterator[bytes]:
    """Prefix chunk errors with the file they belong to."""
    try:
        yield from stream
    except IntegrityError as exc:
        raise IntegrityError(f"{fc.path}: {exc.message}") from None

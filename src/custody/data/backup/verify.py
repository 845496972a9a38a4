"""Checking that a snapshot can be restored, at three depths.

- always: every chunk the snapshot names is present (one listing, no reads);
- `read_data`: every file is read back as a restore would read it: every chunk decrypted and
  MAC-checked, every file's size and SHA-256 compared with the snapshot;
- `subset=PCT`: a random PCT% of the distinct chunks is fetched and MAC-checked, for a cheap
  periodic check that spreads over the whole repository across runs.

Errors are IntegrityError naming the chunk (first 12 hex) and the file it belongs to.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from custody.data.backup.fetching import FETCHERS, chunks_in_order, file_chunks
from custody.data.backup.repository import Repository, short
from custody.data.backup.snapshot import FileChunks, SnapshotManifest
from custody.domain.errors import IntegrityError, InvalidInput

__all__ = ["VerifyReport", "verify"]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """`chunks_present`: distinct chunks the snapshot names (all found); `chunks_checked`: how
    many of them were fetched and authenticated; `bytes_read`: stored bytes fetched."""

    chunks_checked: int
    chunks_present: int
    bytes_read: int
    files_checked: int


def verify(repo: Repository, snap: SnapshotManifest, read_data: bool = False,
           subset: float | None = None) -> VerifyReport:
    if subset is not None:
        if read_data:
            raise InvalidInput("choose either read_data or a subset, not both")
        if isinstance(subset, bool) or not isinstance(subset, (int, float)) or not 0 < subset <= 100:
            raise InvalidInput("the subset to read must be a percentage in (0, 100]")
    repo.check_key()
    sizes = repo.chunk_sizes()
    owner: dict[str, str] = {}  # chunk id -> first file that uses it, for error messages
    missing: list[str] = []
    for f in snap.files:
        for cid, _ in f.chunks:
            if cid not in owner:
                owner[cid] = f.path
                if cid not in sizes:
                    missing.append(cid)
    if missing:
        cid = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise IntegrityError(f"{owner[cid]}: chunk {short(cid)} is missing from backup repository "
                             f"{repo.repo_id}{more}")
    if read_data:
        return _read_all(repo, snap, sizes, len(owner))
    if subset is not None:
        ids = sorted(owner)
        k = min(len(ids), max(1, round(len(ids) * subset / 100))) if ids else 0
        picked = random.SystemRandom().sample(ids, k)
        with ThreadPoolExecutor(max_workers=FETCHERS, thread_name_prefix="verify-fetch") as pool:
            stream = chunks_in_order(repo, picked, pool)
            done = 0  # chunks come back in order, so the one that failed is picked[done]
            try:
                for _ in stream:
                    done += 1
            except IntegrityError as exc:
                raise IntegrityError(f"{owner[picked[done]]}: {exc.message}") from None
            finally:
                stream.close()
        return VerifyReport(chunks_checked=k, chunks_present=len(owner),
                            bytes_read=sum(sizes[c] for c in picked), files_checked=0)
    return VerifyReport(chunks_checked=0, chunks_present=len(owner), bytes_read=0, files_checked=0)


def _read_all(repo: Repository, snap: SnapshotManifest, sizes: dict[str, int], distinct: int) -> VerifyReport:
    """Read every file as a restore would, two files at a time on a shared fetch pool."""
    bytes_read = 0
    with ThreadPoolExecutor(max_workers=FETCHERS, thread_name_prefix="verify-fetch") as pool, \
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify-file") as files:

        def one(fc: FileChunks) -> int:
            for _ in file_chunks(repo, fc, pool):
                pass
            return sum(sizes[cid] for cid, _ in fc.chunks)

        futures = [files.submit(one, fc) for fc in sorted(snap.files, key=lambda f: -f.size)]
        for future in futures:
            bytes_read += future.result()
    return VerifyReport(chunks_checked=distinct, chunks_present=distinct, bytes_read=bytes_read,
                        files_checked=len(snap.files))

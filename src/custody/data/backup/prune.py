"""Removing chunks no kept snapshot needs.

The control plane decides what to keep (the union of the chunk ids of every snapshot that
retention keeps) and must not run a prune while a backup into the same repository is running:
a running backup's new chunks are in no snapshot yet. Pruning also removes stray temporaries
left by a write that was killed part-way.
"""

from __future__ import annotations

from dataclasses import dataclass

from custody.data.backup.repository import Repository, check_chunk_id

__all__ = ["PruneReport", "prune"]


@dataclass(frozen=True, slots=True)
class PruneReport:
    """`deleted` chunks and the bytes freed (stray temporaries included); `strays` counts those."""

    deleted: int
    bytes_freed: int
    strays: int = 0


def prune(repo: Repository, keep: set[str]) -> PruneReport:
    """Delete every chunk whose id is not in `keep`."""
    keep = {check_chunk_id(cid) for cid in keep}
    doomed = [cid for cid in repo.list_chunks() if cid not in keep]
    freed = repo.delete(doomed)
    strays, stray_bytes = repo.delete_strays()
    return PruneReport(deleted=len(doomed), bytes_freed=freed + stray_bytes, strays=strays)

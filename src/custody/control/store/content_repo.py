"""Reading and writing what registered weights contain: file and tensor digests, and the links
between versions found to hold the same content."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, or_, select

from custody.control.store import schema as t
from custody.control.store.db import UnitOfWork
from custody.control.store.repositories import now
from custody.domain.model import new_id

_BATCH = 500  # digests per look-up statement


@dataclass(frozen=True, slots=True)
class Digest:
    """One identifying digest of a version's content: a weight file's, or a distinctive tensor's."""

    digest: str
    kind: str  # file | tensor
    path: str
    tensor: str | None
    size: int


@dataclass(frozen=True, slots=True)
class Found:
    digest: str
    kind: str
    version_id: str
    size: int


def add_digests(uow: UnitOfWork, version_id: str, digests: list[Digest]) -> None:
    if digests:
        uow.conn.execute(insert(t.content_digests), [
            {"id": new_id(), "digest": d.digest, "kind": d.kind, "version_id": version_id, "path": d.path,
             "tensor": d.tensor, "size": d.size} for d in digests])


def find(uow: UnitOfWork, digests: list[Digest]) -> list[Found]:
    """Stored digests equal to any of `digests`, of any version."""
    c = t.content_digests.c
    wanted = sorted({d.digest for d in digests})
    out: list[Found] = []
    for i in range(0, len(wanted), _BATCH):
        rows = uow.conn.execute(select(c.digest, c.kind, c.version_id, c.size).where(c.digest.in_(wanted[i:i + _BATCH])))
        out.extend(Found(r.digest, r.kind, r.version_id, int(r.size)) for r in rows)
    return out


def add_link(uow: UnitOfWork, version_id: str, matched_version_id: str, matched_by: str, matched_bytes: int) -> None:
    uow.conn.execute(insert(t.content_links).values(version_id=version_id, matched_version_id=matched_version_id,
                                                    matched_by=matched_by, matched_bytes=matched_bytes,
                                                    created_at=now()))


def links_of(uow: UnitOfWork, version_id: str) -> list[tuple[str, str, int]]:
    """(other version id, matched by, bytes) for every version linked to this one, either way."""
    c = t.content_links.c
    rows = uow.conn.execute(select(c.version_id, c.matched_version_id, c.matched_by, c.matched_bytes)
                            .where(or_(c.version_id == version_id, c.matched_version_id == version_id)))
    return [(r.matched_version_id if r.version_id == version_id else r.version_id, r.matched_by, int(r.matched_bytes))
            for r in rows]

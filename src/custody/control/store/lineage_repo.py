"""Where derivatives came from, whom each copy was marked for, identity sketches and traces.

Lineage and mark rows decide whom `trace` can accuse, so, like principals and zones, they carry
the custodian's signature and are checked on every read (control/records.py): a row inserted
or edited by someone who can only write the database fails closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select, update

from custody.control.store import schema as t
from custody.control.store.db import UnitOfWork
from custody.control.store.repositories import as_utc, now
from custody.domain.errors import IntegrityError


@dataclass(frozen=True, slots=True)
class Lineage:
    version_id: str
    parent_version_id: str
    parent_digest: str
    recipe: str
    request_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Mark:
    replica_id: str
    reference_version_id: str
    recipient: str
    key_id: str
    alpha: float
    tensors: tuple[str, ...]
    request_id: str | None
    created_at: datetime


def _lineage_fields(row) -> dict:  # noqa: ANN001
    return {"version": row.version_id, "parent": row.parent_version_id, "parent_digest": row.parent_digest,
            "recipe": row.recipe, "request": row.request_id}


def _mark_fields(row) -> dict:  # noqa: ANN001
    return {"replica": row.replica_id, "reference": row.reference_version_id, "recipient": row.recipient,
            "key": row.key_id, "alpha": repr(float(row.alpha)), "tensors": list(row.tensors), "request": row.request_id}


def _sign(uow: UnitOfWork, kind: str, ident: str, fields: dict) -> str:
    if uow.records is None:
        raise IntegrityError(f"{kind} {ident} cannot be signed: no custodian in this transaction")
    return uow.records.sign(kind, ident, fields, uow.signed)


def _check(uow: UnitOfWork, kind: str, ident: str, fields: dict, signature: str | None) -> None:
    if uow.records is not None:
        uow.records.check(kind, ident, f"{kind} record {ident}", fields, signature, uow.signed)


def add_lineage(uow: UnitOfWork, item: Lineage) -> None:
    uow.conn.execute(insert(t.lineage).values(
        version_id=item.version_id, parent_version_id=item.parent_version_id, parent_digest=item.parent_digest,
        recipe=item.recipe, request_id=item.request_id, created_at=item.created_at))
    row = uow.conn.execute(select(t.lineage).where(t.lineage.c.version_id == item.version_id)).one()
    uow.conn.execute(update(t.lineage).where(t.lineage.c.version_id == item.version_id).values(
        record_signature=_sign(uow, "lineage", item.version_id, _lineage_fields(row))))


def _lineage(uow: UnitOfWork, row) -> Lineage:  # noqa: ANN001
    _check(uow, "lineage", row.version_id, _lineage_fields(row), row.record_signature)
    return Lineage(row.version_id, row.parent_version_id, row.parent_digest, row.recipe, row.request_id,
                   as_utc(row.created_at))


def parent_of(uow: UnitOfWork, version_id: str) -> Lineage | None:
    row = uow.conn.execute(select(t.lineage).where(t.lineage.c.version_id == version_id)).first()
    if row is None and uow.records is not None and version_id in uow.records.noted("lineage"):
        raise IntegrityError(f"the lineage of version {version_id} was deleted outside custody: the custodian noted it")
    return _lineage(uow, row) if row else None


def children_of(uow: UnitOfWork, version_id: str) -> list[Lineage]:
    rows = uow.conn.execute(select(t.lineage).where(t.lineage.c.parent_version_id == version_id)
                            .order_by(t.lineage.c.created_at))
    return [_lineage(uow, r) for r in rows]


def all_lineage(uow: UnitOfWork) -> list[Lineage]:
    return [_lineage(uow, r) for r in uow.conn.execute(select(t.lineage).order_by(t.lineage.c.created_at))]


def add_mark(uow: UnitOfWork, m: Mark) -> None:
    uow.conn.execute(insert(t.marks).values(
        replica_id=m.replica_id, reference_version_id=m.reference_version_id, recipient=m.recipient,
        key_id=m.key_id, alpha=m.alpha, tensors=list(m.tensors), request_id=m.request_id, created_at=m.created_at))
    row = uow.conn.execute(select(t.marks).where(t.marks.c.replica_id == m.replica_id)).one()
    uow.conn.execute(update(t.marks).where(t.marks.c.replica_id == m.replica_id).values(
        record_signature=_sign(uow, "mark", m.replica_id, _mark_fields(row))))


def marks_on(uow: UnitOfWork, reference_version_id: str) -> list[Mark]:
    """Every mark on copies of this version; IntegrityError when a mark the custodian noted is gone
    from the store (a deleted row would otherwise take its recipient out of every trace)."""
    if uow.records is not None:
        present = {r.replica_id for r in uow.conn.execute(select(t.marks.c.replica_id))}
        gone = sorted(uow.records.noted("mark") - present)
        if gone:
            raise IntegrityError(f"the mark on replica {gone[0]} was deleted outside custody: the custodian noted it")
    rows = uow.conn.execute(select(t.marks).where(t.marks.c.reference_version_id == reference_version_id)
                            .order_by(t.marks.c.created_at))
    out = []
    for row in rows:
        _check(uow, "mark", row.replica_id, _mark_fields(row), row.record_signature)
        out.append(Mark(row.replica_id, row.reference_version_id, row.recipient, row.key_id, float(row.alpha),
                        tuple(row.tensors), row.request_id, as_utc(row.created_at)))
    return out


def add_sketches(uow: UnitOfWork, version_id: str, sketches) -> None:  # noqa: ANN001
    rows = [{"version_id": version_id, "path": path, "tensor": name, "rows": rows, "cols": cols, "sketch": raw}
            for path, name, rows, cols, raw in sketches]
    if rows:
        uow.conn.execute(insert(t.tensor_sketches), rows)


def sketches(uow: UnitOfWork, version_id: str | None = None) -> list[tuple[str, str, str, int, int, bytes]]:
    """(version id, path, tensor, rows, cols, sketch) of one version, or of every version."""
    q = select(t.tensor_sketches)
    if version_id is not None:
        q = q.where(t.tensor_sketches.c.version_id == version_id)
    return [(r.version_id, r.path, r.tensor, int(r.rows), int(r.cols), bytes(r.sketch)) for r in uow.conn.execute(q)]


def add_trace(uow: UnitOfWork, **values) -> None:  # noqa: ANN003
    uow.conn.execute(insert(t.traces).values(created_at=now(), **values))


def trace_count(uow: UnitOfWork) -> int:
    return int(uow.conn.execute(select(func.count()).select_from(t.traces)).scalar_one())

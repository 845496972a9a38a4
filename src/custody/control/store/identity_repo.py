"""Reading and writing identity proposals (governed additions and suspensions of principals)."""

from __future__ import annotations

from sqlalchemy import insert, select, update

from custody.control.store import schema as t
from custody.control.store.db import UnitOfWork
from custody.control.store.repositories import as_utc, now
from custody.domain.errors import NotFound
from custody.domain.model import new_id


def _row(row) -> dict:  # noqa: ANN001
    return dict(row._mapping) | {"created_at": as_utc(row.created_at), "applied_at": as_utc(row.applied_at),
                                 "roles": list(row.roles), "attributes": dict(row.attributes)}


def add(uow: UnitOfWork, *, change: str, principal: str, roles: list[str], team: str | None,
        attributes: dict[str, str], reason: str, proposer: str, token_id: str | None = None,
        token_hash: str | None = None) -> str:
    pid = new_id()
    uow.conn.execute(insert(t.identity_proposals).values(
        id=pid, change=change, principal=principal, roles=roles, team=team, attributes=attributes, reason=reason,
        proposer=proposer, state="proposed", created_at=now(), token_id=token_id, token_hash=token_hash))
    return pid


def by_id(uow: UnitOfWork, pid: str, lock: bool = False) -> dict:
    """`lock`: hold the row until commit (PostgreSQL), so two appliers cannot both act."""
    q = select(t.identity_proposals).where(t.identity_proposals.c.id == pid)
    row = uow.conn.execute(q.with_for_update() if lock and uow.dialect == "postgresql" else q).first()
    if row is None:
        raise NotFound(f"no identity proposal {pid}")
    return _row(row)


def listed(uow: UnitOfWork, state: str | None = None) -> list[dict]:
    q = select(t.identity_proposals).order_by(t.identity_proposals.c.created_at)
    if state is not None:
        q = q.where(t.identity_proposals.c.state == state)
    return [_row(r) for r in uow.conn.execute(q)]


def open_for(uow: UnitOfWork, principal: str, change: str) -> dict | None:
    """An open proposal of this change about `principal` (two additions at once would race each other)."""
    p = t.identity_proposals.c
    row = uow.conn.execute(select(t.identity_proposals).where(p.principal == principal, p.change == change,
                                                             p.state == "proposed")).first()
    return None if row is None else _row(row)


def token_pending(uow: UnitOfWork, token_id: str, other_than: str) -> bool:
    """Whether an open proposal to add someone other than `other_than` carries this token."""
    p = t.identity_proposals.c
    return uow.conn.execute(select(p.id).where(p.token_id == token_id, p.state == "proposed",
                                               p.principal != other_than)).first() is not None


def set_state(uow: UnitOfWork, pid: str, state: str) -> None:
    values = {"state": state} | ({"applied_at": now()} if state == "applied" else {})
    uow.conn.execute(update(t.identity_proposals).where(t.identity_proposals.c.id == pid).values(**values))

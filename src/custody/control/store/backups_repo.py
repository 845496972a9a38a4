"""Reading and writing backup policies, repositories and snapshots."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update

from custody.control.store import schema as t
from custody.control.store.db import UnitOfWork
from custody.control.store.repositories import as_utc, now
from custody.domain.errors import NotFound


@dataclass(frozen=True, slots=True)
class BackupPolicy:
    asset: str
    zone: str
    schedule: str
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    rpo_seconds: int
    rto_seconds: int

    def to_dict(self) -> dict:
        return {"asset": self.asset, "zone": self.zone, "schedule": self.schedule, "keep_daily": self.keep_daily,
                "keep_weekly": self.keep_weekly, "keep_monthly": self.keep_monthly, "rpo_seconds": self.rpo_seconds,
                "rto_seconds": self.rto_seconds}


@dataclass(frozen=True, slots=True)
class Snapshot:
    id: str
    repo_id: str
    asset: str
    version_id: str
    request_id: str | None
    created_at: datetime
    manifest_json: str
    bundle_json: str
    manifest_signature: str
    logical_bytes: int
    added_bytes: int
    immutable_until: datetime
    state: str
    verified_at: datetime | None


def set_policy(uow: UnitOfWork, p: BackupPolicy, by: str) -> None:
    uow.conn.execute(t.backup_policies.delete().where(t.backup_policies.c.asset_name == p.asset))
    uow.conn.execute(insert(t.backup_policies).values(
        asset_name=p.asset, zone=p.zone, schedule=p.schedule, keep_daily=p.keep_daily, keep_weekly=p.keep_weekly,
        keep_monthly=p.keep_monthly, rpo_seconds=p.rpo_seconds, rto_seconds=p.rto_seconds, updated_by=by,
        updated_at=now()))


def _policy(r) -> BackupPolicy:  # noqa: ANN001
    return BackupPolicy(r.asset_name, r.zone, r.schedule, r.keep_daily, r.keep_weekly, r.keep_monthly,
                        r.rpo_seconds, r.rto_seconds)


def policies(uow: UnitOfWork) -> list[BackupPolicy]:
    return [_policy(r) for r in uow.conn.execute(select(t.backup_policies).order_by(t.backup_policies.c.asset_name))]


def policy_of(uow: UnitOfWork, asset: str) -> BackupPolicy:
    row = uow.conn.execute(select(t.backup_policies).where(t.backup_policies.c.asset_name == asset)).first()
    if row is None:
        raise NotFound(f"asset {asset} has no backup policy: set one with `custody backup policy set`")
    return _policy(row)


def repository(uow: UnitOfWork, zone: str, asset_id: str) -> tuple[str, str] | None:
    """(repo id, key id) of the live repository for this zone and lineage (its key not shredded)."""
    r, k = t.repositories.c, t.data_keys.c
    row = uow.conn.execute(
        select(r.id, r.key_id).join(t.data_keys, k.id == r.key_id)
        .where(r.zone == zone, r.asset_id == asset_id, k.wrapped.is_not(None))
        .order_by(r.created_at.desc())
    ).first()
    return None if row is None else (row.id, row.key_id)


def repository_by_id(uow: UnitOfWork, repo_id: str) -> dict:
    row = uow.conn.execute(select(t.repositories).where(t.repositories.c.id == repo_id)).first()
    if row is None:
        raise NotFound(f"no backup repository {repo_id}")
    return dict(row._mapping)


def add_repository(uow: UnitOfWork, repo_id: str, zone: str, asset_id: str, key_id: str) -> None:
    uow.conn.execute(insert(t.repositories).values(id=repo_id, zone=zone, asset_id=asset_id, key_id=key_id,
                                                   created_at=now()))


def _snapshot(r) -> Snapshot:  # noqa: ANN001
    return Snapshot(r.id, r.repo_id, r.asset_name, r.version_id, r.request_id, as_utc(r.created_at), r.manifest_json,
                    r.bundle_json, r.manifest_signature, r.logical_bytes, r.added_bytes, as_utc(r.immutable_until), r.state,
                    as_utc(r.verified_at))


def add_snapshot(uow: UnitOfWork, s: Snapshot) -> None:
    uow.conn.execute(insert(t.snapshots).values(
        id=s.id, repo_id=s.repo_id, asset_name=s.asset, version_id=s.version_id, request_id=s.request_id,
        created_at=s.created_at, manifest_json=s.manifest_json, bundle_json=s.bundle_json,
        manifest_signature=s.manifest_signature,
        logical_bytes=s.logical_bytes, added_bytes=s.added_bytes, immutable_until=s.immutable_until,
        state=s.state, verified_at=None))


def snapshot_by_id(uow: UnitOfWork, snapshot_id: str) -> Snapshot:
    row = uow.conn.execute(select(t.snapshots).where(t.snapshots.c.id == snapshot_id)).first()
    if row is None:
        raise NotFound(f"no snapshot {snapshot_id}")
    return _snapshot(row)


def snapshots(uow: UnitOfWork, *, asset: str | None = None, repo_id: str | None = None,
              state: str | None = "active") -> list[Snapshot]:
    q = select(t.snapshots).order_by(t.snapshots.c.created_at, t.snapshots.c.id)
    if asset:
        q = q.where(t.snapshots.c.asset_name == asset)
    if repo_id:
        q = q.where(t.snapshots.c.repo_id == repo_id)
    if state:
        q = q.where(t.snapshots.c.state == state)
    return [_snapshot(r) for r in uow.conn.execute(q)]


def set_snapshot_state(uow: UnitOfWork, snapshot_id: str, state: str) -> None:
    uow.conn.execute(update(t.snapshots).where(t.snapshots.c.id == snapshot_id).values(state=state))


def mark_verified(uow: UnitOfWork, snapshot_id: str) -> None:
    uow.conn.execute(update(t.snapshots).where(t.snapshots.c.id == snapshot_id).values(verified_at=now()))


# -- deletions before retention ends ------------------------------------------------------


def add_deletion(uow: UnitOfWork, deletion_id: str, target_kind: str, target_id: str, proposer: str,
                 reason: str) -> None:
    uow.conn.execute(insert(t.deletions).values(id=deletion_id, target_kind=target_kind, target_id=target_id,
                                                proposer=proposer, reason=reason, created_at=now(), state="proposed"))


def deletion_by_id(uow: UnitOfWork, deletion_id: str) -> dict:
    row = uow.conn.execute(select(t.deletions).where(t.deletions.c.id == deletion_id)).first()
    if row is None:
        raise NotFound(f"no deletion proposal {deletion_id}")
    return dict(row._mapping) | {"created_at": as_utc(row.created_at)}


def open_deletion(uow: UnitOfWork, target_kind: str, target_id: str, proposer: str) -> dict | None:
    d = t.deletions.c
    row = uow.conn.execute(select(t.deletions).where(d.target_kind == target_kind, d.target_id == target_id,
                                                     d.proposer == proposer, d.state == "proposed")
                           .order_by(d.created_at.desc())).first()
    return None if row is None else dict(row._mapping) | {"created_at": as_utc(row.created_at)}


def close_deletion(uow: UnitOfWork, deletion_id: str) -> None:
    uow.conn.execute(update(t.deletions).where(t.deletions.c.id == deletion_id).values(state="done"))

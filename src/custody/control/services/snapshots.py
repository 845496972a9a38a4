"""Snapshots: list, show, verify, and forget under retention (immutable until retention ends)."""

from __future__ import annotations

from datetime import datetime, timezone

from custody.control import views
from custody.control.door import act, data_step, record_after
from custody.control.retention import keep
from custody.control.services.backups import check_snapshot, open_repository
from custody.control.services import deletions
from custody.control.store import backups_repo as br
from custody.control.store.db import UnitOfWork
from custody.control.workspace import Workspace
from custody.data.backup import prune as prune_plane
from custody.data.backup import verify as verify_plane
from custody.data.backup.snapshot import SnapshotManifest
from custody.domain.errors import InvalidInput, InvalidState



def _view(s: br.Snapshot) -> dict:
    return {"id": s.id, "asset": s.asset, "version_id": s.version_id, "repository": s.repo_id,
            "created_at": views.ts(s.created_at), "logical_bytes": s.logical_bytes, "added_bytes": s.added_bytes,
            "immutable_until": views.ts(s.immutable_until), "state": s.state, "verified_at": views.ts(s.verified_at)}


def list_snapshots(ws: Workspace, token: str | None, asset: str | None = None) -> list[dict]:
    with act(ws, token, "snapshot.read") as a:
        return [_view(s) for s in br.snapshots(a.uow, asset=asset)]


def show(ws: Workspace, token: str | None, snapshot_id: str) -> dict:
    with act(ws, token, "snapshot.read", subject=snapshot_id) as a:
        s = br.snapshot_by_id(a.uow, snapshot_id)
        out = _view(s)
        out["files"] = [{"path": f.path, "size": f.size, "sha256": f.sha256, "chunks": len(f.chunks)}
                        for f in SnapshotManifest.from_json(s.manifest_json).files]
        return out


def signature_bundle(ws: Workspace, token: str | None, snapshot_id: str) -> bytes:
    """The snapshot's signature bundle: restored files verify against it with `model_signing verify key`."""
    with act(ws, token, "snapshot.read", subject=snapshot_id, details={"what": "bundle"}) as a:
        return br.snapshot_by_id(a.uow, snapshot_id).bundle_json.encode()


def signed_manifest(ws: Workspace, s: br.Snapshot) -> SnapshotManifest:
    """The snapshot's manifest, checked against its signatures before anything trusts it (T7)."""
    return check_snapshot(ws, s)


def verify(ws: Workspace, token: str | None, snapshot_id: str, *, read_data: bool = False,
           subset: float | None = None) -> dict:
    if subset is not None and not 0 < subset <= 100:
        raise InvalidInput("--read-data-subset is a percentage in (0, 100]")
    with act(ws, token, "snapshot.verify", subject=snapshot_id, deferred=True) as a:
        s = br.snapshot_by_id(a.uow, snapshot_id)
        snap = signed_manifest(ws, s)
        repository = open_repository(ws, a.uow, s.repo_id)
    with data_step(ws, a):
        report = verify_plane.verify(repository, snap, read_data=read_data, subset=subset)
    with ws.uow() as uow:
        if read_data and subset is None:
            br.mark_verified(uow, snapshot_id)
    out = {"snapshot": snapshot_id, "signature": "ok", "chunks_present": report.chunks_present,
           "chunks_checked": report.chunks_checked, "files_checked": report.files_checked,
           "bytes_read": report.bytes_read, "read_data": read_data, "subset": subset}
    record_after(ws, a, details=out)
    return out


def forget(ws: Workspace, token: str | None, asset: str, *, prune: bool = False) -> dict:
    """Apply the asset's keep rules; snapshots still immutable stay. With prune, drop unreferenced chunks."""
    now = datetime.now(timezone.utc)
    with act(ws, token, "snapshot.forget", subject=asset) as a:
        br.policy_of(a.uow, asset)  # an asset without keep rules has nothing to apply: NotFound
        snaps = br.snapshots(a.uow, asset=asset)
        kept = _kept(a.uow, asset)
        forgotten, immutable = [], []
        for s in snaps:
            if s.id in kept:
                continue
            if s.immutable_until > now:
                immutable.append(s.id)  # forgotten early only by `snapshot delete` with two approvals
                continue
            if _in_use(a.uow, s.id):
                immutable.append(s.id)
                continue
            br.set_snapshot_state(a.uow, s.id, "forgotten")
            forgotten.append(s.id)
        if prune and _busy(a.uow, asset):
            raise InvalidState(f"a backup or restore of {asset} is under way: prune after it finishes")
        repos = {s.repo_id for s in snaps}
        keep_chunks = {r: _referenced(a.uow, r) for r in repos}
        a.record(details={"forgotten": forgotten, "kept": sorted(kept), "immutable": immutable})
        repositories = {r: open_repository(ws, a.uow, r) for r in repos} if prune else {}
    pruned = {"deleted": 0, "bytes_freed": 0}
    if prune:
        with data_step(ws, a):
            for r, repository in repositories.items():
                rep = prune_plane.prune(repository, keep_chunks[r])
                pruned["deleted"] += rep.deleted
                pruned["bytes_freed"] += rep.bytes_freed
        record_after(ws, a, details={"pruned": pruned})
    return {"asset": asset, "kept": sorted(kept), "forgotten": forgotten, "immutable": immutable, "pruned": pruned}


def _busy(uow: UnitOfWork, asset: str) -> bool:
    """A backup writing new chunks, or a restore reading them, for this asset right now."""
    from custody.control.services.sweep import writer_alive
    from custody.control.store import requests_repo as rq

    return any(r.asset == asset and (r.method == "snapshot" or r.source_snapshot) and writer_alive(rq.writer_of(uow, r.id))
               for r in rq.list_requests(uow, state="running"))


def _referenced(uow: UnitOfWork, repo_id: str) -> set[str]:
    ids: set[str] = set()
    for s in br.snapshots(uow, repo_id=repo_id):
        ids |= SnapshotManifest.from_json(s.manifest_json).chunk_ids()
    return ids


def delete(ws: Workspace, token: str | None, snapshot_id: str, reason: str) -> dict:
    """Forget one snapshot now: at once once its retention ended; before that, the first call
    proposes the deletion and a later call by the same principal completes it once approved."""
    with act(ws, token, "snapshot.forget", subject=snapshot_id, rationale=reason) as a:
        if not reason or not reason.strip():
            raise InvalidInput("deleting a snapshot needs a reason")
        s = br.snapshot_by_id(a.uow, snapshot_id)
        if s.state != "active":
            raise InvalidState(f"snapshot {snapshot_id} is {s.state}")
        if _in_use(a.uow, snapshot_id):
            raise InvalidState(f"snapshot {snapshot_id} is the source of a restore under way")
        if s.immutable_until > datetime.now(timezone.utc) or snapshot_id in _kept(a.uow, s.asset):
            pending = deletions.approved(ws, a, "snapshot", snapshot_id, reason)
            if pending is not None:
                a.record(outcome="awaiting_approval", details=pending)
                return {"snapshot": snapshot_id, **pending}
        br.set_snapshot_state(a.uow, snapshot_id, "forgotten")
        a.record(details={"immutable_until": views.ts(s.immutable_until)})
    return {"snapshot": snapshot_id, "state": "forgotten"}


def _kept(uow: UnitOfWork, asset: str) -> set[str]:
    """Snapshots the asset's keep rules keep now: within their retention."""
    policy = br.policy_of(uow, asset)
    snaps = br.snapshots(uow, asset=asset)
    return keep([(s.id, s.created_at) for s in snaps], policy.keep_daily, policy.keep_weekly, policy.keep_monthly)


def _in_use(uow: UnitOfWork, snapshot_id: str) -> bool:
    """Whether an approved or running restore or drill reads this snapshot."""
    from custody.control.store import requests_repo as rq

    return any(r.source_snapshot == snapshot_id for state in ("approved", "running")
               for r in rq.list_requests(uow, state=state))

"""Running an approved request: spend its grant, copy under a fresh key, activate with an expiry.

The grant is verified and spent in the same transaction that marks the request running, so a
second run of the same grant finds it spent. The source key is released and the destination key
created only by the custodian, against the grant (`keys/release.py`), which keeps its own record
of the grant's use: a database edit that resets the request meets that record. A copy killed part-way leaves a pending
replica that `request run` resumes from its last complete chunk, or that `custody sweep` removes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from custody.control.door import Act, act, data_step
from custody.control.ledger import store as ledger
from custody.control.services import egress, keys, lifetimes
from custody.control.services.assets import writer_tag
from custody.control.services.replicas import check_signed
from custody.control.services.requests import _current, concerning, view
from custody.control.services.sweep import writer_alive
from custody.control.store import repositories as repo
from custody.control.store import requests_repo as rq
from custody.control.store.db import purge_freed
from custody.control.workspace import Workspace
from custody.data import copier, replica_files
from custody.domain.errors import CustodyError, Denied, InvalidState
from custody.domain.manifest import Manifest
from custody.domain.model import AssetVersion, Replica, ReplicaKind, ReplicaState, Zone, new_id
from custody.domain.requests import NO_EXPIRY, Request, RequestKind, RequestState
from custody.control.grants import UNWRAP_SOURCE
from custody.keys import bundle
from custody.keys.release import Expected
from custody.keys.custodian import CustodianSigner

RUNNERS = ("admin",)  # besides the requester (a backup operator runs its own backups; others' it cannot see)


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Job:
    """One request's data-plane work, prepared inside the run's first transaction."""

    source_zone: str
    details: dict
    execute: Callable[[Progress | None], object]  # the data plane; returns a report with .bytes, .seconds
    finish: Callable[[Act, Request, object], dict]  # state changes in the closing transaction
    replica_id: str | None = None


Progress = Callable[[int], None]


def run(ws: Workspace, token: str | None, request_id: str, progress: Progress | None = None) -> dict:
    """The one door for running any approved request: a copy, a backup snapshot, a restore, a drill."""
    with act(ws, token, "request.run", subject=request_id, request_id=request_id) as a:
        request = _current(a.uow, request_id, lock=True, seen_by=a.principal)
        if request.kind is RequestKind.READ:
            raise InvalidState(f"request {request_id} is a read: it is spent by reading, e.g. "
                               f"custody.open_safetensors({request.source_replica!r}, purpose=..., request={request_id!r})")
        if request.requester != a.principal.name and not a.principal.has_role(*RUNNERS):
            raise Denied("only the requester or an admin runs a request")
        requester = repo.principal_by_name(a.uow, request.requester)
        if requester.suspended:
            raise Denied(f"requester {requester.name} is suspended: their grants are refused")
        found = rq.grant_of(a.uow, request_id)
        if found is None or request.state not in (RequestState.APPROVED, RequestState.RUNNING, RequestState.FAILED):
            raise InvalidState(f"request {request_id} is {request.state.value}; only approved requests run")
        still_allowed(ws, a.uow, request, requester)
        grant_token = found[0]
        claims = Expected(request_id=request.id, version_digest=request.version_digest,
                          source_replica=request.source, destination_zone=request.destination_zone)
        use_id = ws.release().check(grant_token, claims, UNWRAP_SOURCE).use_id  # from the token, not the store
        if request.state is RequestState.APPROVED:
            rq.use_grant(a.uow, use_id, request.id)  # single use, in this transaction
        elif not rq.grant_used(a.uow, use_id):
            raise InvalidState(f"request {request_id} has no spent grant to resume under")
        if request.state is RequestState.RUNNING and writer_alive(rq.writer_of(a.uow, request.id)):
            raise InvalidState(f"request {request_id} is already running ({rq.writer_of(a.uow, request.id)})")
        job = _prepare(ws, a, request, grant_token, claims)
        rq.set_writer(a.uow, request.id, writer_tag())
        if request.state is not RequestState.RUNNING:
            rq.move_request(a.uow, request, RequestState.RUNNING, result_replica=job.replica_id)
        elif job.replica_id and job.replica_id != request.result_replica:
            rq.set_result_replica(a.uow, request.id, job.replica_id)
        a.record(outcome="started", source=job.source_zone, destination=request.destination_zone,
                 details={**job.details, "grant": use_id[:16]})
        a.witness_now = True  # the custodian released keys for this copy
        started = a

    try:
        with data_step(ws, started):
            report = job.execute(progress)
    except BaseException as exc:
        _mark_failed(ws, request_id, str(getattr(exc, "message", type(exc).__name__)))
        raise

    try:
        with act(ws, token, "request.run", subject=request_id, request_id=request_id, source=job.source_zone,
                 destination=started.fields.get("destination")) as a:
            request = rq.request_by_id(a.uow, request_id)
            extra = job.finish(a, request, report)
            done = rq.move_request(a.uow, request, RequestState.DONE, writer=None)  # refused if revoked meanwhile
            extra.update({"bytes": report.bytes, "seconds": round(report.seconds, 3),
                          "mb_per_s": round(report.bytes / 1e6 / report.seconds, 1) if report.seconds else None})
            out = view(ws, a.uow, done)  # the runner sees what they ran, from its own transaction
            a.record(details=extra)
    except CustodyError as exc:  # refused at activation: the request fails, its pending replica is swept
        _mark_failed(ws, request_id, exc.message)
        raise
    ws.release().close(use_id, request_id)  # the custodian's record: this grant is spent for good
    out.update(extra)
    return out


def still_allowed(ws: Workspace, uow, request: Request, requester) -> None:  # noqa: ANN001
    """Policy is checked on every copy: the catalog and exceptions in force now, and the approvals
    that still count now (an approver suspended since no longer counts)."""
    from custody.control.services.requests import counting_approvals, decide_for

    decision = decide_for(ws, uow, request, requester)
    if not decision.allowed:
        raise Denied("policy no longer allows this copy: " + ("; ".join(decision.reasons) or "no policy permits it"))
    needed = request.decision.requirement.approvals if request.decision and request.decision.requirement else 0
    if decision.requirement and decision.requirement.approvals > needed:
        raise Denied(f"the catalog in force needs {decision.requirement.approvals} approvals; this request has {needed}")
    # counted under the rule decided now (roles, distinct teams), never the one stored with the request
    have = len(counting_approvals(ws, uow, request, decision.requirement)) if needed else 0
    if have < needed:
        raise Denied(f"only {have} of {needed} approvals still count (an approver was suspended or changed role)")


def _prepare(ws: Workspace, a: Act, request: Request, grant_token: str, claims: Expected) -> Job:
    if request.method == "snapshot":
        from custody.control.services.backups import prepare_snapshot

        return prepare_snapshot(ws, a, request, grant_token, claims)
    if request.source_snapshot:
        from custody.control.services.restores import prepare_restore

        return prepare_restore(ws, a, request, grant_token, claims)
    from custody.control.services import derivatives

    if derivatives.transforms(ws, a.uow, request):  # a derivative, or a copy the catalog marks for its recipient
        return derivatives.prepare(ws, a, request, grant_token, claims)
    return _prepare_copy(ws, a, request, grant_token, claims)


@dataclass(frozen=True)
class Source:
    """A copy's source replica, checked, with its data key released by the custodian."""

    replica: Replica
    zone: Zone
    version: AssetVersion
    manifest: Manifest
    dek: bytes


def open_source(ws: Workspace, a: Act, request: Request, grant_token: str, claims: Expected) -> Source:
    source = repo.replica_by_id(a.uow, request.source_replica)
    src_zone = repo.zone_by_name(a.uow, source.zone)
    version = repo.version_by_id(a.uow, request.version_id)
    if not source.readable:
        raise InvalidState(f"source replica {source.id} is {source.state.value}")
    lifetimes.check_source(source, request.ttl_seconds, request.kind)  # it may have expired since approval
    src_wrapped = repo.data_key(a.uow, source.key_id)
    if src_wrapped is None:
        raise InvalidState(f"source replica {source.id}: its data key was shredded")
    manifest = Manifest.from_json(version.manifest_json)
    check_signed(ws, repo.replica_bundle(a.uow, source.id) or version.bundle_json, manifest, f"replica {source.id}")
    return Source(source, src_zone, version, manifest, ws.release().source(grant_token, claims, src_wrapped))


def _prepare_copy(ws: Workspace, a: Act, request: Request, grant_token: str, claims: Expected) -> Job:
    src = open_source(ws, a, request, grant_token, claims)
    source, src_zone, version, manifest, src_dek = src.replica, src.zone, src.version, src.manifest, src.dek
    dst = destination(ws, a, request, grant_token, claims, ReplicaKind(request.kind.value), src_zone.name,
                      version.total_size)
    dst_zone = repo.zone_by_name(a.uow, request.destination_zone)

    def execute(progress: Progress | None):  # noqa: ANN202
        return copier.copy_replica(ws.zone_storage(src_zone), source.id, source.key_id, src_dek, manifest,
                                   ws.zone_storage(dst_zone), dst.id, dst.key_id, dst.dek, progress)

    def finish(a: Act, request: Request, report) -> dict:  # noqa: ANN001
        out = activate(ws, a, request, dst.id, manifest, report.bytes_sealed)
        out["resumed_chunks"] = report.resumed_chunks
        return out

    return Job(src_zone.name, {"replica": dst.id, "resumed": dst.resumed, "bytes": version.total_size},
               execute, finish, dst.id)


@dataclass(frozen=True)
class Destination:
    id: str
    key_id: str
    dek: bytes
    resumed: bool


def destination(ws: Workspace, a: Act, request: Request, grant_token: str, claims: Expected,
                kind: ReplicaKind, egress_zone: str, nbytes: int) -> Destination:
    """The pending replica a copy or restore writes into: resumed if one is left, else a fresh one
    whose data key is created only through the grant."""
    dst = repo.replica_by_id(a.uow, request.result_replica) if request.result_replica else None
    if dst is not None and dst.state is ReplicaState.PENDING:
        wrapped = repo.data_key(a.uow, dst.key_id)
        if wrapped is None:
            raise InvalidState(f"pending replica {dst.id}: its data key was shredded")
        dek = ws.release().destination(grant_token, claims, wrapped)
        repo.set_replica_writer(a.uow, dst.id, writer_tag())
        return Destination(dst.id, dst.key_id, dek, True)
    # a first run, or a retry after the sweeper removed a failed attempt
    egress.reserve(ws, a.uow, request, egress_zone, nbytes)
    dst_id, dst_key_id = new_id(), new_id()
    repo.lock_zone(a.uow, request.destination_zone)
    dek, wrapped = ws.release().new_destination(grant_token, claims, dst_key_id, dst_id)
    repo.add_data_key(a.uow, wrapped)
    repo.add_replica(a.uow, Replica(
        id=dst_id, version_id=request.version_id, zone=request.destination_zone, kind=kind,
        state=ReplicaState.PENDING, key_id=dst_key_id, created_by=request.requester, request_id=request.id,
        writer=writer_tag()), request.asset)
    return Destination(dst_id, dst_key_id, dek, False)


def activate(ws: Workspace, a: Act, request: Request, replica_id: str, manifest: Manifest, bytes_sealed: int,
             subject: str | None = None, own_manifest: bool = False) -> dict:
    """A written and checked replica becomes active, with its own signed manifest and its expiry.

    `own_manifest`: the replica holds other bytes than its version's (a marked copy), and keeps the
    manifest of what it holds; `subject`: the name its manifest is signed for (a derivative's asset)."""
    replica = repo.replica_by_id(a.uow, replica_id)
    key = repo.data_key(a.uow, replica.key_id)
    if key is not None and key.binding is not None:  # the expiry the custodian bound into the key
        expires = key.binding.expires_at
    else:
        expires = None if request.kind in NO_EXPIRY else _now() + timedelta(seconds=request.ttl_seconds or 0)
    if request.source_replica:  # the copy took time: it must still not outlive its source
        lifetimes.check_expiry(repo.replica_by_id(a.uow, request.source_replica), expires)
    signed = bundle.sign_manifest(manifest, subject or request.asset, CustodianSigner(ws.custodian()))
    extra = {"manifest_json": manifest.canonical_bytes().decode()} if own_manifest else {}
    repo.set_replica_state(a.uow, replica, ReplicaState.ACTIVE, bytes_sealed=bytes_sealed,
                           bundle_json=signed.decode(), writer=None, expires_at=expires, **extra)
    return {"replica": replica_id, "expires_at": expires.isoformat() if expires else None}


def _mark_failed(ws: Workspace, request_id: str, error: str) -> None:
    try:
        with ws.uow() as uow:
            request = rq.request_by_id(uow, request_id)
            if request.state is RequestState.RUNNING:
                rq.move_request(uow, request, RequestState.FAILED, error=error[:500])
                ledger.append(uow, actor="system", action="request.fail", outcome="failed", subject=request_id,
                              request_id=request_id, details={"reason": error[:500]})
    except Exception:  # noqa: BLE001
        pass  # a dead writer is found by `request run` (resume) or `custody sweep` all the same


def revoke(ws: Workspace, token: str | None, request_id: str, reason: str) -> dict:
    """Shred every replica the request produced: keys first, in one transaction; then the files."""
    from custody.control.services.replicas import shred

    if not reason or not reason.strip():
        from custody.domain.errors import InvalidInput

        raise InvalidInput("a revocation needs a reason")
    with act(ws, token, "request.revoke", subject=request_id, request_id=request_id, rationale=reason) as a:
        request = concerning(a.principal, rq.request_by_id(a.uow, request_id))
        if request.requester != a.principal.name and not a.principal.has_role("admin", "security"):
            raise Denied("only the requester, an admin or security can revoke a request's copies")
        shredded, zones = [], {}
        for replica, _ in repo.list_replicas(a.uow):
            if replica.request_id == request_id and replica.state is not ReplicaState.SHREDDED:
                if replica.state is ReplicaState.PENDING:  # a copy under way or cut short: it never activates
                    repo.set_replica_state(a.uow, replica, ReplicaState.FAILED, writer=None)
                    replica = repo.replica_by_id(a.uow, replica.id)
                shred(ws, a, replica)
                shredded.append(replica.id)
                zones[replica.id] = repo.zone_by_name(a.uow, replica.zone)
        if request.state in (RequestState.AWAITING_APPROVAL, RequestState.APPROVED, RequestState.RUNNING,
                             RequestState.FAILED):
            rq.move_request(a.uow, request, RequestState.CANCELLED)
        a.record(details={"shredded": shredded})
        found = rq.grant_of(a.uow, request_id)
    if found is not None:  # nothing more is released under its grant, whatever the store says later
        from custody.control import grants
        from custody.keys.custodian import grant_root_key

        public = grants.root_public_key(grant_root_key(ws.custodian()))
        ws.release().close(grants.use_id(found[0], public), request_id)
    purge_freed(ws.engine)
    with data_step(ws, a):
        for rid, zone in zones.items():
            replica_files.delete_replica_files(ws.zone_storage(zone), rid)
    epochs = keys.after_shred(ws, {z.name for z in zones.values()}, a.principal.name, f"request {request_id} revoked")
    return {"request": request_id, "shredded": shredded, "reason": reason, "epochs": epochs}

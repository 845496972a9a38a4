"""Backups: schedules and retention per asset, snapshots into a deduplicating repository, status.

A backup is a request of kind `backup` with method `snapshot`, decided and ledgered like any copy
(the default catalog lets backup operators run it without approvals); running it writes new
chunks into the repository of (backup zone, asset lineage) and records a signed snapshot.
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from custody.control import schedule, views
from custody.control.door import Act, act, data_step
from custody.control.policy.catalog import parse_duration
from custody.control.retention import immutable_floor
from custody.control.services import copies, deletions, keys, requests
from custody.control.store import backups_repo as br
from custody.control.store import repositories as repo
from custody.control.workspace import Workspace
from custody.data.backup import backup as backup_plane
from custody.data.backup.keys import derive
from custody.data.backup.repository import Repository
from custody.data.backup.snapshot import SnapshotManifest
from custody.domain.errors import CustodyError, IntegrityError, InvalidInput, InvalidState, NotFound
from custody.domain.manifest import Manifest
from custody.domain.model import ZoneKind, new_id
from custody.domain.requests import Request
from custody.keys import bundle
from custody.keys.release import Expected
from custody.keys.custodian import CustodianSigner, WrappedKey


def _now() -> datetime:
    return datetime.now(timezone.utc)


def set_policy(ws: Workspace, token: str | None, asset: str, *, zone: str, every: str, keep_daily: int,
               keep_weekly: int, keep_monthly: int, rpo: str, rto: str) -> dict:
    with act(ws, token, "backup.policy", subject=asset, destination=zone) as a:
        repo.asset_by_name(a.uow, asset)
        z = repo.zone_by_name(a.uow, zone)
        if z.kind not in (ZoneKind.BACKUP, ZoneKind.ARCHIVE):
            raise InvalidInput(f"zone {zone} is a {z.kind.value} zone; backups go to backup or archive zones")
        cron = schedule.parse(every)
        if min(keep_daily, keep_weekly, keep_monthly) < 0 or max(keep_daily, keep_weekly, keep_monthly) == 0:
            raise InvalidInput("retention keeps nothing: give --keep-daily, --keep-weekly or --keep-monthly")
        policy = br.BackupPolicy(asset, zone, cron.text, keep_daily, keep_weekly, keep_monthly,
                                 parse_duration(rpo), parse_duration(rto))
        br.set_policy(a.uow, policy, a.principal.name)
        a.record(details=policy.to_dict())
        return policy.to_dict()


def list_policies(ws: Workspace, token: str | None) -> list[dict]:
    with act(ws, token, "backup.read") as a:
        return [p.to_dict() for p in br.policies(a.uow)]


def run(ws: Workspace, token: str | None, asset: str | None = None, *, due: bool = False, progress=None) -> list[dict]:  # noqa: ANN001
    """Back up one asset, or every asset whose schedule has fired since its last snapshot."""
    if (asset is None) == (not due):
        raise InvalidInput("name an ASSET or pass --due")
    with act(ws, token, "backup.read", details={"due": due}) as a:
        if asset:
            targets = [br.policy_of(a.uow, asset)]
        else:
            now = _now()
            targets = [p for p in br.policies(a.uow)
                       if schedule.parse(p.schedule).due(_last_snapshot_time(a.uow, p.asset), now)]
        if due:  # an asset whose backup is already asked for or under way is not asked for again
            from custody.control.store import requests_repo as rq

            busy = {r.asset for st in ("awaiting_approval", "approved", "running") for r in rq.list_requests(a.uow, state=st)
                    if r.method == "snapshot"}
            targets = [p for p in targets if p.asset not in busy]
    out = []
    for p in targets:
        try:
            req = requests.create(ws, token, p.asset, to=p.zone, kind="backup", method="snapshot",
                                  purpose="scheduled backup" if due else "backup")
            out.append(copies.run(ws, token, req["id"], progress) if req["state"] == "approved" else req)
        except CustodyError as exc:
            if not due:
                raise
            # one asset's failure (already ledgered by its request) must not stop the others' backups
            out.append({"asset": p.asset, "state": "failed", "error": exc.message})
    return out


def _last_snapshot_time(uow, asset: str) -> datetime | None:  # noqa: ANN001
    snaps = br.snapshots(uow, asset=asset)
    return snaps[-1].created_at if snaps else None


def _snapshot_statement(snapshot_id: str, repo_id: str, manifest: SnapshotManifest) -> bytes:
    return f"custody-snapshot-v1|{snapshot_id}|{repo_id}|{manifest.digest}".encode()


def sign_snapshot(ws: Workspace, snapshot_id: str, repo_id: str, manifest: SnapshotManifest) -> str:
    """The control plane's signature over the chunk list itself, its repository and its id: the
    model-signing bundle covers file digests only, not which chunks make them up."""
    return base64.b64encode(ws.custodian().sign("signing", _snapshot_statement(snapshot_id, repo_id, manifest))).decode()


def check_snapshot(ws: Workspace, s: br.Snapshot) -> SnapshotManifest:
    """The snapshot's manifest, once both its signatures check out (T7); IntegrityError otherwise."""
    manifest = SnapshotManifest.from_json(s.manifest_json)
    key = load_pem_public_key(ws.public_key_pem("signing"))
    try:
        key.verify(base64.b64decode(s.manifest_signature), _snapshot_statement(s.id, s.repo_id, manifest),
                   ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise IntegrityError(f"snapshot {s.id}: its chunk list does not match its signature") from None
    bundle.verify_bundle(s.bundle_json.encode(), key).check_against(manifest.manifest())
    return manifest


def repository_key(uow, repo_id: str) -> WrappedKey:  # noqa: ANN001
    """The repository's wrapped master key: a shredded repository is a clear refusal."""
    wrapped = repo.data_key(uow, br.repository_by_id(uow, repo_id)["key_id"])
    if wrapped is None:
        raise InvalidState(f"backup repository {repo_id} was shredded: its key is destroyed, nothing can be restored")
    return wrapped


def open_repository(ws: Workspace, uow, repo_id: str, master: bytes | None = None) -> Repository:  # noqa: ANN001
    """The repository with its keys: `master` as the custodian released it under a grant, or else
    released for a check that hands no plaintext out (verify, prune)."""
    wrapped = repository_key(uow, repo_id)
    if master is None:
        master = ws.release().maintain(wrapped, f"backup repository {repo_id}")
    zone = repo.zone_by_name(uow, br.repository_by_id(uow, repo_id)["zone"])
    return Repository(ws.zone_storage(zone), repo_id, derive(master, repo_id))


def prepare_snapshot(ws: Workspace, a: Act, request: Request, grant_token: str, claims: Expected):  # noqa: ANN201
    from custody.control.services import egress, lifetimes
    from custody.control.services.copies import Job
    from custody.control.services.replicas import check_signed

    source = repo.replica_by_id(a.uow, request.source_replica)
    if not source.readable:
        raise InvalidState(f"source replica {source.id} is {source.state.value}")
    lifetimes.check_source(source, request.ttl_seconds, request.kind)
    src_zone = repo.zone_by_name(a.uow, source.zone)
    version = repo.version_by_id(a.uow, request.version_id)
    manifest = Manifest.from_json(version.manifest_json)
    check_signed(ws, repo.replica_bundle(a.uow, source.id) or version.bundle_json, manifest, f"replica {source.id}")
    src_wrapped = repo.data_key(a.uow, source.key_id)
    if src_wrapped is None:
        raise InvalidState(f"source replica {source.id}: its data key was shredded")
    src_dek = ws.release().source(grant_token, claims, src_wrapped)
    asset = repo.asset_by_name(a.uow, request.asset)
    br.policy_of(a.uow, request.asset)  # a backup needs the asset's policy (retention, RPO): NotFound otherwise
    egress.reserve(ws, a.uow, request, src_zone.name, version.total_size)  # locks the zones, in order
    repo.lock_zone(a.uow, request.destination_zone)  # two first backups must not make two repositories
    found = br.repository(a.uow, request.destination_zone, asset.id)
    if found is None:  # the lineage's first backup in this zone (or the first since a shred)
        repo_id, key_id = new_id(), new_id()
        master, wrapped = ws.release().new_destination(grant_token, claims, key_id, repo_id)
        repo.add_data_key(a.uow, wrapped)
        br.add_repository(a.uow, repo_id, request.destination_zone, asset.id, key_id)
        repository = Repository(ws.zone_storage(repo.zone_by_name(a.uow, request.destination_zone)), repo_id,
                                derive(master, repo_id))
    else:
        repo_id = found[0]
        master = ws.release().destination(grant_token, claims, repository_key(a.uow, repo_id))
        repository = open_repository(ws, a.uow, repo_id, master)

    def execute(progress):  # noqa: ANN001, ANN202
        return backup_plane.backup_replica(ws.zone_storage(src_zone), source.id, source.key_id, src_dek, manifest,
                                           repository, progress)

    def finish(a: Act, request: Request, report) -> dict:  # noqa: ANN001
        snap_manifest: SnapshotManifest = report.manifest
        if snap_manifest.manifest().digest != request.version_digest:
            raise IntegrityError("the snapshot's files do not hash to the version's digest")
        missing = snap_manifest.chunk_ids() - repository.list_chunks()
        if missing:  # a prune ran while this backup deduplicated against chunks it then removed
            raise IntegrityError(f"{len(missing)} chunks this snapshot needs are gone from the repository: run the "
                                 "backup again")
        created = _now()
        signed = bundle.sign_manifest(snap_manifest.manifest(), request.asset, CustodianSigner(ws.custodian()))
        snap_id = new_id()
        snap = br.Snapshot(
            id=snap_id, repo_id=repo_id, asset=request.asset, version_id=request.version_id, request_id=request.id,
            created_at=created, manifest_json=snap_manifest.to_json().decode("utf-8"), bundle_json=signed.decode(),
            manifest_signature=sign_snapshot(ws, snap_id, repo_id, snap_manifest),
            logical_bytes=snap_manifest.logical_bytes, added_bytes=report.bytes_added,
            immutable_until=immutable_floor(created),
            state="active", verified_at=None,
        )
        br.add_snapshot(a.uow, snap)
        return {"snapshot": snap.id, "repository": repo_id, "bytes_added": report.bytes_added,
                "chunks_new": report.chunks_new, "chunks_reused": report.chunks_reused,
                "immutable_until": views.ts(snap.immutable_until)}

    return Job(src_zone.name, {"repository": repo_id, "bytes": version.total_size}, execute, finish, None)


def shred_repository(ws: Workspace, token: str | None, asset: str, zone: str, reason: str) -> dict:
    """Destroy the repository key of (zone, asset lineage): every backup of it is unreadable at once
    (legal deletion); its chunk files are removed after the key is gone."""
    from custody.control.store.db import purge_freed

    with act(ws, token, "backup.shred", subject=asset, destination=zone, rationale=reason) as a:
        if not reason or not reason.strip():
            raise InvalidInput("shredding a backup repository needs a reason")
        found = br.repository(a.uow, zone, repo.asset_by_name(a.uow, asset).id)
        if found is None:
            raise NotFound(f"no backup repository of {asset} in zone {zone}")
        repo_id, key_id = found
        live = br.snapshots(a.uow, repo_id=repo_id)
        if live:  # backups within retention, or fresh, go only with two approvals, like one snapshot
            pending = deletions.approved(ws, a, "repository", repo_id, reason)
            if pending is not None:
                a.record(outcome="awaiting_approval", details=pending)
                return {"asset": asset, "zone": zone, "repository": repo_id, **pending}
        keys.destroy(ws, a.uow, key_id, f"backup repository {repo_id} shredded")
        forgotten = [s.id for s in live]
        for sid in forgotten:
            br.set_snapshot_state(a.uow, sid, "forgotten")
        storage = ws.zone_storage(repo.zone_by_name(a.uow, zone))
        a.record(details={"repository": repo_id, "snapshots": forgotten})
    purge_freed(ws.engine)
    with data_step(ws, a):
        storage.delete_tree(f"repos/{repo_id}")
    epochs = keys.after_shred(ws, {zone}, a.principal.name, f"backup repository {repo_id} shredded")
    return {"asset": asset, "zone": zone, "repository": repo_id, "snapshots_destroyed": len(forgotten),
            "epochs": epochs}


def stored_bytes(ws: Workspace, uow, repo_id: str) -> int:  # noqa: ANN001
    """Bytes a repository holds, from a listing: no key is unwrapped to count them."""
    info = br.repository_by_id(uow, repo_id)
    storage = ws.zone_storage(repo.zone_by_name(uow, info["zone"]))
    return sum(storage.size(p) for p in storage.files_under(f"repos/{repo_id}/chunks"))


def status(ws: Workspace, token: str | None) -> list[dict]:
    """Per asset: newest snapshot, its age against the RPO, repository and logical size, dedup ratio."""
    with act(ws, token, "backup.read") as a:
        now = _now()
        rows = []
        for p in br.policies(a.uow):
            snaps = br.snapshots(a.uow, asset=p.asset)
            last = snaps[-1] if snaps else None
            age = (now - last.created_at).total_seconds() if last else None
            if age is None or age > p.rpo_seconds:
                rpo_state = "breached"
            elif age > 0.75 * p.rpo_seconds:
                rpo_state = "at risk"
            else:
                rpo_state = "ok"
            stored = 0
            for repo_id in {s.repo_id for s in snaps}:
                stored += stored_bytes(ws, a.uow, repo_id)
            logical = sum(s.logical_bytes for s in snaps)
            rows.append({"asset": p.asset, "zone": p.zone, "last_snapshot": last.id if last else None,
                         "last_at": views.ts(last.created_at) if last else None,
                         "age_seconds": round(age) if age is not None else None, "rpo_seconds": p.rpo_seconds,
                         "rpo": rpo_state, "snapshots": len(snaps), "repository_bytes": stored,
                         "logical_bytes": logical, "dedup_ratio": round(logical / stored, 2) if stored else None})
        return rows



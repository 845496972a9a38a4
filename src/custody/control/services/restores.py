"""Restores: a snapshot back into a zone, as a request decided and approved like any copy (T11).

On run, the snapshot's signature is checked against its manifest, every chunk is MAC-checked and
every file's digest compared while a normal sealed replica is written under a fresh data key; the
replica becomes active only after all of it holds. The time taken is the achieved RTO.
"""

from __future__ import annotations

from custody.control.door import Act
from custody.control.services import copies, requests
from custody.control.services.backups import open_repository, repository_key
from custody.control.services.snapshots import signed_manifest
from custody.control.store import backups_repo as br
from custody.control.store import repositories as repo
from custody.control.workspace import Workspace
from custody.data.backup import restore as restore_plane
from custody.domain.errors import IntegrityError, InvalidState
from custody.domain.model import ReplicaKind
from custody.domain.requests import Request
from custody.keys.release import Expected


def restore(ws: Workspace, token: str | None, snapshot_id: str, *, to: str, purpose: str, kind: str = "restore",
            ttl: str | None = None, drill: bool = False) -> dict:
    return requests.create(ws, token, None, snapshot=snapshot_id, to=to, kind=kind, purpose=purpose, ttl=ttl,
                           drill=drill)


def prepare_restore(ws: Workspace, a: Act, request: Request, grant_token: str, claims: Expected):  # noqa: ANN201
    snap = br.snapshot_by_id(a.uow, request.source_snapshot)
    if snap.state != "active":  # forgotten or deleted since the request was approved
        raise InvalidState(f"snapshot {snap.id} is {snap.state}; nothing is restored from it")
    manifest = signed_manifest(ws, snap)
    if manifest.manifest().digest != request.version_digest:
        raise IntegrityError(f"snapshot {snap.id} does not hold the version it claims")
    master = ws.release().source(grant_token, claims, repository_key(a.uow, snap.repo_id))  # refused if shredded
    repository = open_repository(ws, a.uow, snap.repo_id, master)
    source_zone = br.repository_by_id(a.uow, snap.repo_id)["zone"]
    dst_zone = repo.zone_by_name(a.uow, request.destination_zone)
    kind = ReplicaKind(requests.destination_kind(a.uow, request))
    dst = copies.destination(ws, a, request, grant_token, claims, kind, source_zone, snap.logical_bytes)

    def execute(progress):  # noqa: ANN001, ANN202
        return restore_plane.restore_to_replica(repository, manifest, ws.zone_storage(dst_zone), dst.id, dst.key_id,
                                                dst.dek, progress)

    def finish(a: Act, request: Request, report) -> dict:  # noqa: ANN001
        out = copies.activate(ws, a, request, dst.id, manifest.manifest(), report.bytes_sealed)
        out["snapshot"] = snap.id
        out["rto_seconds"] = round(report.seconds, 3)
        return out

    return copies.Job(source_zone, {"snapshot": snap.id, "replica": dst.id, "bytes": snap.logical_bytes},
                      execute, finish, dst.id)

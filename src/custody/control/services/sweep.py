"""The sweeper: expires and shreds what outlived its time, and removes what dead writes left.

- pending replicas whose writer is gone (or older than a day) fail and lose their key (and the
  custodian is told, so the copy's grant may make a new destination when run again);
- active replicas past `expires_at`, or past the expiry bound into their key, are shredded;
- each zone that lost a key moves to a new KEK epoch (`keys.new_epoch`);
- sealed files of failed or shredded replicas, and folders no replica owns, are deleted.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta, timezone

from custody.control.door import act, data_step, record_after
from custody.control.services import keys
from custody.control.services.replicas import shred
from custody.control.store.db import purge_freed
from custody.control.store import repositories as repo
from custody.control.workspace import Workspace
from custody.data import replica_files
from custody.domain.model import ReplicaState

STALE_PENDING = timedelta(hours=24)


def writer_alive(writer: str | None) -> bool:
    if not writer:
        return False
    host, _, pid = writer.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine's writer: only age decides
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def sweep(ws: Workspace, token: str | None, as_of: datetime | None = None) -> dict:
    """`as_of` sweeps as if it were that (later) time: how a drill or the demo shows expiry."""
    now = as_of or datetime.now(timezone.utc)
    failed, expired, zones_shredded, abandoned = [], [], set(), []
    with act(ws, token, "sweep", details={"as_of": as_of.isoformat()} if as_of else {}) as a:
        for replica, _ in repo.list_replicas(a.uow, state=ReplicaState.PENDING.value):
            age = now - (replica.created_at or now)
            if not writer_alive(replica.writer) or age > STALE_PENDING or _copy_failed(a.uow, replica):
                repo.set_replica_state(a.uow, replica, ReplicaState.FAILED, writer=None)
                keys.destroy(ws, a.uow, replica.key_id, f"replica {replica.id} failed")
                failed.append(replica.id)
                zones_shredded.add(replica.zone)
                if replica.request_id:
                    abandoned.append((replica.request_id, replica.key_id))
        for replica, _ in repo.list_replicas(a.uow, state=ReplicaState.ACTIVE.value):
            if _expired(a.uow, replica, now):
                shred(ws, a, replica)
                expired.append(replica.id)
                zones_shredded.add(replica.zone)
        lapsed = _lapse_requests(a.uow, now)
        dead = _dead_runs(a.uow)
        zones = repo.list_zones(a.uow)
        a.record(details={"failed": failed, "expired": expired, "lapsed": lapsed, "dead_runs": dead})
    removed = []
    with data_step(ws, a):
        for zone in zones:
            storage = ws.zone_storage(zone)
            on_disk = storage.replica_ids()
            # Decided after listing: a replica row is committed before its first file is written,
            # so a folder whose row is missing here was not made by a write still under way.
            # Checked against every zone, not just this one: never delete a live replica's files.
            with ws.uow(readonly=True) as uow:
                live = repo.live_replica_ids(uow)
            for replica_id in on_disk:
                if replica_id not in live:
                    replica_files.delete_replica_files(storage, replica_id)
                    removed.append(f"{zone.name}/{replica_id}")
    purge_freed(ws.engine)
    if removed:
        record_after(ws, a, "ok", details={"removed": removed})
    _tell_custodian(ws, abandoned)
    epochs = keys.after_shred(ws, zones_shredded, a.principal.name, "sweep: keys destroyed")
    return {"failed": failed, "expired": expired, "lapsed": lapsed, "dead_runs": dead, "removed": removed,
            "epochs": epochs}


def _expired(uow, replica, now: datetime) -> bool:  # noqa: ANN001
    """Past the store's expiry, or past the one the custodian bound into the key (which no edit moves)."""
    if replica.expires_at is not None and replica.expires_at <= now:
        return True
    key = repo.data_key(uow, replica.key_id)
    return key is not None and key.binding is not None and key.binding.expired(now)


def _tell_custodian(ws: Workspace, abandoned: list[tuple[str, str]]) -> None:
    """The destination keys of failed copies are gone: their grants may make new ones on a retry."""
    from custody.control import grants
    from custody.control.store import requests_repo as rq
    from custody.keys.custodian import grant_root_key

    if not abandoned:
        return
    public = grants.root_public_key(grant_root_key(ws.custodian()))
    for request_id, key_id in abandoned:
        with ws.uow(readonly=True) as uow:
            found = rq.grant_of(uow, request_id)
        if found is not None:
            ws.release().abandon(grants.use_id(found[0], public), key_id, request_id)


def _copy_failed(uow, replica) -> bool:  # noqa: ANN001
    """A copy whose request already failed (destination full, source tampered): nothing will finish it."""
    from custody.control.store import requests_repo as rq
    from custody.domain.requests import RequestState

    return replica.request_id is not None and rq.request_by_id(uow, replica.request_id).state in (
        RequestState.FAILED, RequestState.CANCELLED, RequestState.LAPSED)


def _dead_runs(uow) -> list[str]:  # noqa: ANN001
    """Running requests whose process is gone: failed, so they show as such and can be run again."""
    from custody.control.store import requests_repo as rq
    from custody.domain.requests import RequestState

    dead = []
    for request in rq.list_requests(uow, state=RequestState.RUNNING.value):
        if not writer_alive(rq.writer_of(uow, request.id)):
            rq.move_request(uow, request, RequestState.FAILED, error="its process died", writer=None)
            dead.append(request.id)
    return dead


def _lapse_requests(uow, now: datetime) -> list[str]:  # noqa: ANN001
    """Requests whose approval window or unused grant ran out."""
    from custody.control.services.requests import lapsed
    from custody.control.store import requests_repo as rq
    from custody.domain.requests import RequestState

    out = []
    for state in (RequestState.AWAITING_APPROVAL, RequestState.APPROVED, RequestState.FAILED):
        for request in rq.list_requests(uow, state=state.value):
            if lapsed(request, now):
                rq.move_request(uow, request, RequestState.LAPSED)
                out.append(request.id)
    return out

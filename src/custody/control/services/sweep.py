"""The sweeper: expires and shreds what outlived its time, and removes what dead writes left.

- pending replicas whose writer is gone (or older than a day) fail and lose their key;
- active replicas past `expires_at` are shredded;
- sealed files of failed or shredded replicas, and folders no replica owns, are deleted.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta, timezone

from custody.control.door import act, data_step
from custody.control.store import repositories as repo
from custody.control.workspace import Workspace
from custody.data import replica_files
from custody.domain.model import ReplicaState

STALE_PENDING = timedelta(hours=24)


def _writer_alive(writer: str | None) -> bool:
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


def sweep(ws: Workspace, token: str | None) -> dict:
    now = datetime.now(timezone.utc)
    failed, expired = [], []
    with act(ws, token, "sweep") as a:
        for replica, _ in repo.list_replicas(a.uow, state=ReplicaState.PENDING.value):
            age = now - (replica.created_at or now)
            if not _writer_alive(replica.writer) or age > STALE_PENDING:
                repo.set_replica_state(a.uow, replica, ReplicaState.FAILED, writer=None)
                repo.shred_data_key(a.uow, replica.key_id)
                failed.append(replica.id)
        for replica, _ in repo.list_replicas(a.uow, state=ReplicaState.ACTIVE.value):
            if replica.expires_at is not None and replica.expires_at <= now:
                repo.shred_data_key(a.uow, replica.key_id)
                repo.set_replica_state(a.uow, replica, ReplicaState.SHREDDED, writer=None)
                expired.append(replica.id)
        zones = repo.list_zones(a.uow)
        a.record(details={"failed": failed, "expired": expired})
    removed = []
    with data_step(ws, a):
        for zone in zones:
            storage = ws.zone_storage(zone)
            on_disk = storage.replica_ids()
            # Decided after listing: a replica row is committed before its first file is written,
            # so a folder whose row is missing here was not made by a write still under way.
            with ws.uow(readonly=True) as uow:
                live = repo.live_replica_ids(uow, zone.name)
            for replica_id in on_disk:
                if replica_id not in live:
                    replica_files.delete_replica_files(storage, replica_id)
                    removed.append(f"{zone.name}/{replica_id}")
    return {"failed": failed, "expired": expired, "removed": removed}

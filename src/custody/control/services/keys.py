"""Key lifecycle: KEK status per zone, rotation with rewrap, public keys."""

from __future__ import annotations

from datetime import datetime, timezone

from custody.control import views
from custody.control.door import act
from custody.control.store import repositories as repo
from custody.control.workspace import Workspace
from custody.domain.errors import InvalidInput
from custody.keys.custodian import Purpose


def status(ws: Workspace, token: str | None) -> list[dict]:
    with act(ws, token, "keys.read") as a:
        counts = repo.data_keys_by_kek(a.uow)
        now = datetime.now(timezone.utc)
        out = []
        for zone in repo.list_zones(a.uow):
            for v in ws.custodian().kek_versions(zone.name):
                out.append({
                    "zone": zone.name, "custodian": zone.custodian, "kek_version": v.version, "state": v.state,
                    "created_at": views.ts(v.created_at), "age_days": round((now - v.created_at).total_seconds() / 86400, 2),
                    "data_keys": counts.get((zone.name, v.version), 0),
                })
        return out


def rotate(ws: Workspace, token: str | None, zone_name: str) -> dict:
    """New KEK version, every live data key of the zone rewrapped, old versions destroyed.

    No sealed byte is rewritten: only the wrapped data keys change. The rewrap commits with its
    ledger event before the old KEK versions are destroyed, so a crash in between leaves an
    unused old version behind (reported by `keys status`), never an unreadable replica.
    """
    with act(ws, token, "keys.rotate", subject=zone_name) as a:
        repo.lock_zone(a.uow, zone_name)  # new data keys of this zone wait until the rewrap commits
        custodian = ws.custodian()
        old_versions = [v.version for v in custodian.kek_versions(zone_name)]
        new_version = custodian.begin_rotation(zone_name)
        keys = repo.live_data_keys(a.uow, zone_name)
        for wrapped in keys:
            repo.replace_data_key(a.uow, custodian.rewrap(wrapped))
        a.record(details={"new_version": new_version, "retired": old_versions, "rewrapped": len(keys)})
    retired = []
    with ws.uow(readonly=True) as uow:
        still = repo.data_keys_by_kek(uow)
    for version in old_versions:
        if still.get((zone_name, version), 0) == 0:  # never destroy a KEK a live data key still needs
            custodian.retire(zone_name, version)
            retired.append(version)
    return {"zone": zone_name, "kek_version": new_version, "rewrapped": len(keys), "retired": retired}


def public_key(ws: Workspace, token: str | None, purpose: str) -> bytes:
    with act(ws, token, "keys.public", subject=purpose):
        if purpose not in ("signing", "ledger"):
            raise InvalidInput("purpose must be signing or ledger")
        p: Purpose = "signing" if purpose == "signing" else "ledger"
        return ws.public_key_pem(p)

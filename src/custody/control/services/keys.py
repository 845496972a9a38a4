"""Key lifecycle: status against cryptoperiods, rotation, and the epoch move that makes revocation final.

A zone's KEK moves to a new epoch (version) on rotation and after every key of the zone is
destroyed (a replica revoked, expired or failed; a backup repository shredded): every live data
key is rewrapped under the new KEK, then the old KEK is destroyed in the custodian. A copy of the
database taken before the revocation holds only keys wrapped under KEKs that no longer exist, so
it decrypts nothing, whatever sealed files come with it. No sealed byte is rewritten.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from custody.control import views
from custody.control.door import act
from custody.control.ledger import store as ledger
from custody.control.store import repositories as repo
from custody.control.workspace import Workspace
from custody.domain.errors import IntegrityError, InvalidInput
from custody.keys.custodian import Purpose

# SP 800-57 Part 1 suggests originator-usage periods of up to 2 years for KEKs and 1-3 years for
# signing keys; custody rotates KEKs yearly by default. `[keys] kek_days` etc. in custody.toml.
CRYPTOPERIOD_DAYS = {"kek": 365, "signing": 730, "ledger": 730, "witness": 730}


def cryptoperiods(ws: Workspace) -> dict[str, float]:
    return {**CRYPTOPERIOD_DAYS, **ws.cryptoperiods}


def status(ws: Workspace, token: str | None) -> list[dict]:
    """Every key the custodian holds: backend, version, age against its cryptoperiod, overdue or not,
    and for KEKs the data keys still wrapped under each version."""
    with act(ws, token, "keys.read") as a:
        counts = repo.data_keys_by_kek(a.uow)
        zones = {z.name for z in repo.list_zones(a.uow)}
    now = datetime.now(timezone.utc)
    periods = cryptoperiods(ws)
    custodian = ws.custodian()
    newest: dict[tuple[str, str | None], int] = {}
    infos = custodian.keys()
    for info in infos:
        newest[(info.purpose, info.zone)] = max(newest.get((info.purpose, info.zone), 0), info.version)
    out = []
    for info in infos:
        if info.zone is not None and info.zone not in zones:
            continue
        age = (now - info.created_at).total_seconds() / 86400
        current = info.version == newest[(info.purpose, info.zone)]
        out.append({
            "purpose": info.purpose, "zone": info.zone, "custodian": custodian.name, "version": info.version,
            "state": "active" if current else "retired", "where": info.where, "created_at": views.ts(info.created_at),
            "age_days": round(age, 2), "cryptoperiod_days": periods[info.purpose],
            "overdue": current and age > periods[info.purpose],
            "data_keys": counts.get((info.zone, info.version), 0) if info.purpose == "kek" else None,
        })
    return out


def rotate(ws: Workspace, token: str | None, zone_name: str) -> dict:
    """New KEK epoch for the zone, every live data key rewrapped, old epochs destroyed."""
    with act(ws, token, "keys.rotate", subject=zone_name) as a:
        repo.zone_by_name(a.uow, zone_name)
    return new_epoch(ws, zone_name, actor=a.principal.name, why="rotation")


def rotate_due(ws: Workspace, token: str | None) -> list[dict]:
    """Rotate every zone whose active KEK has outlived its cryptoperiod (what the scheduler runs)."""
    rows = status(ws, token)
    due = sorted({r["zone"] for r in rows if r["purpose"] == "kek" and r["overdue"]})
    return [rotate(ws, token, zone) for zone in due]


def new_epoch(ws: Workspace, zone_name: str, *, actor: str, why: str) -> dict:
    """Move a zone to a new KEK epoch: rewrap its live keys in one transaction (with its ledger
    event), then destroy every older epoch.

    Which keys move is the custodian's call as much as the store's: a key the custodian recorded as
    destroyed, or one that does not unwrap (a row planted or edited in the store), is left behind
    under the old epoch and goes with it; it never holds the old epoch alive. Any other failure (the
    token or KMS unreachable) stops the move before anything is destroyed."""
    started = time.perf_counter()
    custodian = ws.custodian()
    destroyed_keys = ws.release().shredded()
    with ws.uow() as uow:
        repo.lock_zone(uow, zone_name)  # new data keys of this zone wait until the rewrap commits
        old_versions = [v.version for v in custodian.kek_versions(zone_name)]
        new_version = custodian.begin_rotation(zone_name)
        moved, left = [], []
        for wrapped in repo.live_data_keys(uow, zone_name):
            if wrapped.key_id in destroyed_keys:
                left.append(wrapped.key_id)
                continue
            try:
                moved.append(custodian.rewrap(wrapped))
            except IntegrityError:
                left.append(wrapped.key_id)
        repo.replace_data_keys(uow, moved)
        rewrapped_at = time.perf_counter()
        ledger.append(uow, actor=actor, action="keys.epoch", outcome="ok", subject=zone_name,
                      details={"why": why, "new_version": new_version, "rewrapped": len(moved),
                               "left_behind": left[:100]})
    how = ""
    for version in old_versions:
        how = custodian.retire(zone_name, version)
    return {"zone": zone_name, "kek_version": new_version, "rewrapped": len(moved), "retired": old_versions,
            "left_behind": left, "destroyed": how, "rewrap_seconds": round(rewrapped_at - started, 4),
            "seconds": round(time.perf_counter() - started, 4)}


def destroy(ws: Workspace, uow, key_id: str, why: str) -> None:  # noqa: ANN001
    """Destroy a data key: first in the custodian's own record (never released or rewrapped again,
    whatever an old database says), then in the store, in the caller's transaction."""
    ws.release().shred(key_id, why)
    repo.shred_data_key(uow, key_id)


def after_shred(ws: Workspace, zones: set[str], actor: str, why: str) -> list[dict]:
    """Revocation is final: each zone that lost a key moves to a new epoch at once."""
    return [new_epoch(ws, zone, actor=actor, why=why) for zone in sorted(zones)]


def public_key(ws: Workspace, token: str | None, purpose: str) -> bytes:
    with act(ws, token, "keys.public", subject=purpose):
        if purpose not in ("signing", "ledger", "witness"):
            raise InvalidInput("purpose must be signing, ledger or witness")
        p: Purpose = purpose  # type: ignore[assignment]
        return ws.public_key_pem(p)


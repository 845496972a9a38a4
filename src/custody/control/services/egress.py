"""Egress: the bytes a copy takes, reserved when it starts against every budget that governs them.

A copy, a backup snapshot or a restore is charged its version's size once, when it starts (a copy
cut short still counts; a resumed one is not charged again):

- to its source zone and to every home zone of the asset (the zones holding a live primary
  replica of it), each against that zone's budget (`custody zone budget`). The bytes are the
  asset's wherever they are read from: naming a backup or DR replica, or a snapshot, as the
  source does not escape the home zone's budget;
- to the requester, against the principal budget of the catalog (`[budgets]` in rules.toml);
- to the asset, against the asset budget of the catalog.

The rows are locked first (zones by name, the destination among them, then the requester, then
the asset), so copies started together cannot all pass, and two copies never lock in opposite
orders. The source zone's egress row names the requester and the asset; the home zones' rows
do not, so each copy counts once against a principal or an asset.
"""

from __future__ import annotations

from datetime import datetime, timezone

from custody.control.policy.durations import format_duration
from custody.control.services.policy import active_catalog
from custody.control.store import repositories as repo
from custody.control.store import requests_repo as rq
from custody.control.store.db import UnitOfWork
from custody.control.workspace import Workspace
from custody.domain.errors import Denied
from custody.domain.model import ReplicaKind, ReplicaState
from custody.domain.requests import Request

_HOME_STATES = (ReplicaState.ACTIVE, ReplicaState.PENDING)


def reserve(ws: Workspace, uow: UnitOfWork, request: Request, source_zone: str, nbytes: int) -> None:
    """Charge `nbytes` to every budget of the copy, or refuse (Denied) naming the first one spent."""
    zones = charged_zones(uow, request.asset, source_zone)
    for name in sorted({*zones, request.destination_zone}):
        repo.lock_zone(uow, name)
    rq.lock_egress_holders(uow, request.requester, request.asset)
    since = datetime.now(timezone.utc) - rq.HOUR
    for zone in zones:
        _check(f"zone {zone} egress budget", rq.egress_budget(uow, zone), rq.egress_charges(uow, since, zone=zone),
               nbytes)
    budgets = active_catalog(ws, uow).budgets
    requester = repo.principal_by_name(uow, request.requester)
    limit, source = budgets.for_principal(requester.roles)
    _check(f"principal {requester.name} egress budget ({source}, rules.toml)", limit,
           rq.egress_charges(uow, since, principal=requester.name), nbytes)
    _check(f"asset {request.asset} egress budget (rules.toml)", budgets.asset_bytes_per_hour,
           rq.egress_charges(uow, since, asset=request.asset), nbytes)
    for zone in zones:
        mine = zone == source_zone
        rq.add_egress(uow, zone, request.id, nbytes, principal=request.requester if mine else None,
                      asset=request.asset if mine else None)


def charged_zones(uow: UnitOfWork, asset: str, source_zone: str) -> list[str]:
    """The source zone first, then the asset's home zones."""
    homes = {r.zone for r, _ in repo.list_replicas(uow, asset=asset)
             if r.kind is ReplicaKind.PRIMARY and r.state in _HOME_STATES}
    return [source_zone, *sorted(homes - {source_zone})]


def _check(what: str, budget: int | None, charges: list[tuple[datetime, int]], nbytes: int) -> None:
    if budget is None:
        return
    used = sum(b for _, b in charges)
    if used + nbytes <= budget:
        return
    if nbytes > budget:
        raise Denied(f"{what}: this copy needs {nbytes:,} bytes, more than the {budget:,} allowed per hour")
    retry = retry_at(charges, used + nbytes - budget)
    wait = max(1, int((retry - datetime.now(timezone.utc)).total_seconds()))
    raise Denied(f"{what}: {used:,} of {budget:,} bytes used in the last hour; this copy needs {nbytes:,} more; "
                 f"retry after {retry.isoformat(timespec='seconds')} (in {format_duration(wait)})")


def retry_at(charges: list[tuple[datetime, int]], excess: int) -> datetime:
    """When enough of the oldest charges leave the hour's window to free `excess` bytes."""
    freed = 0
    for at, nbytes in charges:
        freed += nbytes
        if freed >= excess:
            return at + rq.HOUR
    return charges[-1][0] + rq.HOUR if charges else datetime.now(timezone.utc)

"""Registering and reading zones: the only places copies may live."""

from __future__ import annotations

from custody.control import views
from custody.control.door import act
from custody.control.store import repositories as repo
from custody.control.workspace import Workspace
from custody.domain.errors import InvalidInput
from custody.domain.model import Zone, ZoneKind


def add_zone(
    ws: Workspace, token: str | None, *, name: str, url: str, kind: str, region: str, jurisdiction: str,
    security_level: int,
) -> dict:
    with act(ws, token, "zone.add", subject=name) as a:
        try:
            zone_kind = ZoneKind(kind)
        except ValueError:
            raise InvalidInput(f"unknown zone kind {kind!r}: one of {', '.join(k.value for k in ZoneKind)}") from None
        zone = Zone(name, url, zone_kind, region, jurisdiction.upper(), security_level)
        repo.add_zone(a.uow, zone)
        ws.custodian().ensure_zone(name)
        ws.zone_storage(zone).ensure_root()
        a.record(details={"url": url, "kind": kind, "jurisdiction": zone.jurisdiction, "security_level": security_level})
    return views.zone(zone)


def list_zones(ws: Workspace, token: str | None) -> list[dict]:
    with act(ws, token, "zone.read") as a:
        return [views.zone(z) for z in repo.list_zones(a.uow)]


def show_zone(ws: Workspace, token: str | None, name: str) -> dict:
    with act(ws, token, "zone.read", subject=name) as a:
        zone = repo.zone_by_name(a.uow, name)
        replicas = repo.list_replicas(a.uow, zone=name, state="active")
        out = views.zone(zone)
        out["active_replicas"] = len(replicas)
        out["bytes_sealed"] = sum(r.bytes_sealed or 0 for r, _ in replicas)
        return out

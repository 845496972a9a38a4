"""Registering and reading zones: the only places copies may live."""

from __future__ import annotations

from datetime import datetime, timezone

from custody.control import views
from custody.control.door import act
from custody.control.store import repositories as repo
from custody.control.store import requests_repo as rq
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
        zone = Zone(name, url, zone_kind, region, jurisdiction.upper(), security_level,
                    custodian=ws.custodian_table.get("kind", "local"))
        scheme = url.split("://", 1)[0]
        if scheme not in STORAGE_SCHEMES:
            raise InvalidInput(f"zone URL scheme {scheme!r} is not durable storage: use {' or '.join(STORAGE_SCHEMES)}")
        for other in repo.list_zones(a.uow):
            if _nested(url, other.url):
                raise InvalidInput(f"zone {name}'s URL overlaps zone {other.name} ({other.url})")
        repo.add_zone(a.uow, zone)
        ws.custodian().ensure_zone(name)
        ws.zone_storage(zone).ensure_root()
        a.record(details={"url": url, "kind": kind, "jurisdiction": zone.jurisdiction, "security_level": security_level})
    return views.zone(zone)


STORAGE_SCHEMES = ("file", "s3")


def _nested(a: str, b: str) -> bool:
    """Whether one URL is the other or inside it: two zones must never share files."""
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


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
        out["egress_bytes_per_hour"] = rq.egress_budget(a.uow, name)
        out["egress_used_last_hour"] = rq.egress_used(a.uow, name, datetime.now(timezone.utc) - rq.HOUR)
        return out


def set_budget(ws: Workspace, token: str | None, name: str, bytes_per_hour: int | None) -> dict:
    """Bytes per hour that copies may take out of a zone (None: no budget)."""
    if bytes_per_hour is not None and bytes_per_hour < 0:
        raise InvalidInput("an egress budget cannot be negative")
    with act(ws, token, "zone.budget", subject=name, details={"bytes_per_hour": bytes_per_hour}) as a:
        repo.zone_by_name(a.uow, name)
        rq.set_egress_budget(a.uow, name, bytes_per_hour)
    return show_zone(ws, token, name)

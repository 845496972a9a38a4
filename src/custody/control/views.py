"""Domain objects as JSON-ready dicts: the one shape the CLI, the API and the portal print."""

from __future__ import annotations

from datetime import datetime

from custody.domain.model import AssetVersion, Principal, Replica, Zone


def ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def zone(z: Zone) -> dict:
    return {
        "name": z.name, "url": z.url, "kind": z.kind.value, "region": z.region, "jurisdiction": z.jurisdiction,
        "security_level": z.security_level, "custodian": z.custodian, "created_at": ts(z.created_at),
    }


def principal(p: Principal) -> dict:
    return {
        "name": p.name, "roles": list(p.roles), "team": p.team, "attributes": p.attributes,
        "suspended": p.suspended, "created_at": ts(p.created_at),
    }


def version(v: AssetVersion, asset_name: str) -> dict:
    return {
        "asset": asset_name, "version": v.number, "id": v.id, "digest": v.digest, "bytes": v.total_size,
        "files": v.file_count, "format": v.format, "parameters": v.parameters, "unsafe": v.unsafe,
        "classification": v.classification.value, "jurisdictions": list(v.jurisdictions),
        "min_security_level": v.min_security_level, "labels": v.labels, "previous": v.previous_id,
        "signed": bool(v.bundle_json),
        "created_at": ts(v.created_at),
    }


def replica(r: Replica, asset_name: str) -> dict:
    return {
        "id": r.id, "asset": asset_name, "version_id": r.version_id, "zone": r.zone, "kind": r.kind.value,
        "state": r.state.value, "key_id": r.key_id, "created_by": r.created_by, "request_id": r.request_id,
        "expires_at": ts(r.expires_at), "created_at": ts(r.created_at), "bytes_sealed": r.bytes_sealed,
    }

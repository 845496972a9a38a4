"""Reading and writing domain objects in the store, one function per need.

Rows become frozen domain objects here and nowhere else, so the rest of the code never sees SQL.
"""

from __future__ import annotations

import functools
from datetime import datetime, timezone

from sqlalchemy import bindparam, func, insert, select, update

from custody.control.store import schema as t
from custody.control.store.db import UnitOfWork
from custody.domain.errors import IntegrityError, InvalidInput, NotFound
from custody.domain.model import (
    Asset,
    AssetVersion,
    Classification,
    Principal,
    Replica,
    ReplicaKind,
    ReplicaState,
    Zone,
    ZoneKind,
)
from custody.keys.custodian import Binding, WrappedKey


def now() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """Every stored time is UTC; SQLite hands them back without a zone."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# -- meta ---------------------------------------------------------------------------------


# The statements every action runs (authentication, policy facts, replicas) are built once:
# building a SQLAlchemy expression per call costs more than executing it.
_META = select(t.meta.c.value).where(t.meta.c.key == bindparam("key"))
_PRINCIPAL_BY_TOKEN = select(t.principals).where(t.principals.c.token_id == bindparam("token_id"))
_ZONE = select(t.zones).where(t.zones.c.name == bindparam("name"))
_ASSET = select(t.assets).where(t.assets.c.name == bindparam("name"))
_LATEST_VERSION = (select(t.asset_versions).where(t.asset_versions.c.asset_id == bindparam("asset_id"))
                   .order_by(t.asset_versions.c.number.desc()).limit(1))
_VERSION = select(t.asset_versions).where(t.asset_versions.c.id == bindparam("id"))
_REPLICA = select(t.replicas).where(t.replicas.c.id == bindparam("id"))


def get_meta(uow: UnitOfWork, key: str) -> str | None:
    return uow.conn.execute(_META, {"key": key}).scalar_one_or_none()


def set_meta(uow: UnitOfWork, key: str, value: str) -> None:
    if get_meta(uow, key) is None:
        uow.conn.execute(insert(t.meta).values(key=key, value=value))
    else:
        uow.conn.execute(update(t.meta).where(t.meta.c.key == key).values(value=value))


# -- principals ---------------------------------------------------------------------------


def _principal_fields(row) -> dict:  # noqa: ANN001
    """What a principal's custodian signature covers: everything that decides what they may do."""
    return {"id": row.id, "name": row.name, "roles": list(row.roles), "team": row.team,
            "attributes": dict(row.attributes), "token_id": row.token_id, "token_hash": row.token_hash,
            "suspended": bool(row.suspended), "created_at": as_utc(row.created_at).isoformat(),
            "created_by": row.created_by}


def _principal(uow: UnitOfWork, row) -> Principal:  # noqa: ANN001
    _checked(uow, "principal", row.id, f"principal {row.name}", _principal_fields(row), row.record_signature)
    return Principal(
        id=row.id,
        name=row.name,
        roles=tuple(row.roles),
        team=row.team,
        attributes=dict(row.attributes),
        suspended=bool(row.suspended),
        created_at=as_utc(row.created_at),
        created_by=row.created_by,
    )


def _checked(uow: UnitOfWork, kind: str, ident: str, what: str, fields: dict, signature: str | None) -> None:
    if uow.records is None:
        raise IntegrityError(f"{what} cannot be checked: no custodian public key in this transaction")
    uow.records.check(kind, ident, what, fields, signature, uow.signed)


def sign_principal(uow: UnitOfWork, name: str) -> None:
    """Sign the principal's row as it now stands (re-read, so the signature covers the stored values)."""
    row = uow.conn.execute(select(t.principals).where(t.principals.c.name == name)).one()
    if uow.records is None:
        raise IntegrityError(f"principal {name} cannot be signed: no custodian in this transaction")
    signature = uow.records.sign("principal", row.id, _principal_fields(row), uow.signed)
    uow.conn.execute(update(t.principals).where(t.principals.c.name == name).values(record_signature=signature))


def add_principal(uow: UnitOfWork, p: Principal, token_id: str, token_hash: str) -> None:
    if principal_by_name(uow, p.name, missing_ok=True):
        raise InvalidInput(f"principal {p.name} already exists")
    uow.conn.execute(
        insert(t.principals).values(
            id=p.id, name=p.name, roles=list(p.roles), team=p.team, attributes=p.attributes,
            token_id=token_id, token_hash=token_hash, suspended=False, created_at=now(), created_by=p.created_by,
        )
    )
    sign_principal(uow, p.name)


def principal_by_name(uow: UnitOfWork, name: str, missing_ok: bool = False) -> Principal | None:
    row = uow.conn.execute(select(t.principals).where(t.principals.c.name == name)).first()
    if row is None:
        if missing_ok:
            return None
        raise NotFound(f"no principal named {name}")
    return _principal(uow, row)


def principal_by_token_id(uow: UnitOfWork, token_id: str) -> tuple[Principal, str] | None:
    row = uow.conn.execute(_PRINCIPAL_BY_TOKEN, {"token_id": token_id}).first()
    return None if row is None else (_principal(uow, row), row.token_hash)


def list_principals(uow: UnitOfWork) -> list[Principal]:
    return [_principal(uow, r) for r in uow.conn.execute(select(t.principals).order_by(t.principals.c.name))]


def set_token(uow: UnitOfWork, name: str, token_id: str, token_hash: str) -> None:
    uow.conn.execute(update(t.principals).where(t.principals.c.name == name)
                     .values(token_id=token_id, token_hash=token_hash))
    sign_principal(uow, name)


def suspend_principal(uow: UnitOfWork, name: str) -> None:
    uow.conn.execute(update(t.principals).where(t.principals.c.name == name).values(suspended=True))
    sign_principal(uow, name)


# -- zones --------------------------------------------------------------------------------


def _zone_fields(row) -> dict:  # noqa: ANN001
    return {"name": row.name, "url": row.url, "kind": row.kind, "region": row.region, "jurisdiction": row.jurisdiction,
            "security_level": row.security_level, "custodian": row.custodian,
            "created_at": as_utc(row.created_at).isoformat(), "egress_bytes_per_hour": row.egress_bytes_per_hour}


def _zone(uow: UnitOfWork, row) -> Zone:  # noqa: ANN001
    _checked(uow, "zone", row.name, f"zone {row.name}", _zone_fields(row), row.record_signature)
    return Zone(
        name=row.name, url=row.url, kind=ZoneKind(row.kind), region=row.region, jurisdiction=row.jurisdiction,
        security_level=row.security_level, custodian=row.custodian, created_at=as_utc(row.created_at),
    )


def sign_zone(uow: UnitOfWork, name: str) -> None:
    """Sign the zone's row as it now stands (after custody added it or changed its budget)."""
    row = uow.conn.execute(select(t.zones).where(t.zones.c.name == name)).one()
    if uow.records is None:
        raise IntegrityError(f"zone {name} cannot be signed: no custodian in this transaction")
    uow.conn.execute(update(t.zones).where(t.zones.c.name == name).values(
        record_signature=uow.records.sign("zone", row.name, _zone_fields(row), uow.signed)))


def add_zone(uow: UnitOfWork, z: Zone) -> None:
    if zone_by_name(uow, z.name, missing_ok=True):
        raise InvalidInput(f"zone {z.name} already exists")
    uow.conn.execute(
        insert(t.zones).values(
            name=z.name, url=z.url, kind=z.kind.value, region=z.region, jurisdiction=z.jurisdiction,
            security_level=z.security_level, custodian=z.custodian, created_at=now(),
        )
    )
    sign_zone(uow, z.name)


def lock_zone(uow: UnitOfWork, name: str) -> Zone:
    """The zone, locked until commit (PostgreSQL; SQLite write transactions are already exclusive):
    key rotation and new data keys of one zone must not interleave."""
    q = select(t.zones).where(t.zones.c.name == name)
    if uow.dialect == "postgresql":
        q = q.with_for_update()
    row = uow.conn.execute(q).first()
    if row is None:
        raise NotFound(f"no zone named {name}")
    return _zone(uow, row)


def zone_by_name(uow: UnitOfWork, name: str, missing_ok: bool = False) -> Zone | None:
    row = uow.conn.execute(_ZONE, {"name": name}).first()
    if row is None:
        if missing_ok:
            return None
        raise NotFound(f"no zone named {name}")
    return _zone(uow, row)


def list_zones(uow: UnitOfWork) -> list[Zone]:
    return [_zone(uow, r) for r in uow.conn.execute(select(t.zones).order_by(t.zones.c.name))]


# -- assets and versions ------------------------------------------------------------------


def asset_by_name(uow: UnitOfWork, name: str, missing_ok: bool = False) -> Asset | None:
    row = uow.conn.execute(_ASSET, {"name": name}).first()
    if row is None:
        if missing_ok:
            return None
        raise NotFound(f"no asset named {name}")
    return Asset(id=row.id, name=row.name, owner=row.owner, created_at=as_utc(row.created_at))


def add_asset(uow: UnitOfWork, a: Asset) -> None:
    uow.conn.execute(insert(t.assets).values(id=a.id, name=a.name, owner=a.owner, created_at=now()))


def list_assets(uow: UnitOfWork) -> list[Asset]:
    return [
        Asset(id=r.id, name=r.name, owner=r.owner, created_at=as_utc(r.created_at))
        for r in uow.conn.execute(select(t.assets).order_by(t.assets.c.name))
    ]


def _version_fields(row) -> dict:  # noqa: ANN001
    """What a version's custodian signature covers: its bytes (digest) and the label that decides its copies."""
    return {"id": row.id, "asset_id": row.asset_id, "number": row.number, "digest": row.digest,
            "total_size": row.total_size, "parameters": row.parameters, "unsafe": bool(row.unsafe),
            "classification": row.classification, "jurisdictions": list(row.jurisdictions),
            "min_security_level": row.min_security_level, "labels": dict(row.labels), "previous_id": row.previous_id}


def _sign_version(uow: UnitOfWork, version_id: str) -> None:
    row = uow.conn.execute(_VERSION, {"id": version_id}).one()
    if uow.records is None:
        raise IntegrityError(f"asset version {version_id} cannot be signed: no custodian in this transaction")
    uow.conn.execute(update(t.asset_versions).where(t.asset_versions.c.id == version_id).values(
        record_signature=uow.records.sign("version", row.id, _version_fields(row), uow.signed)))


def _version(uow: UnitOfWork, row) -> AssetVersion:  # noqa: ANN001
    _checked(uow, "version", row.id, f"asset version {row.number} ({row.id})", _version_fields(row),
             row.record_signature)
    return AssetVersion(
        id=row.id, asset_id=row.asset_id, number=row.number, digest=row.digest, manifest_json=row.manifest_json,
        total_size=row.total_size, file_count=row.file_count, format=row.format, parameters=row.parameters,
        unsafe=bool(row.unsafe), classification=Classification(row.classification),
        jurisdictions=tuple(row.jurisdictions), min_security_level=row.min_security_level, labels=dict(row.labels),
        previous_id=row.previous_id, bundle_json=row.bundle_json, created_at=as_utc(row.created_at),
    )


def add_version(uow: UnitOfWork, v: AssetVersion, formats: list[dict]) -> None:
    uow.conn.execute(
        insert(t.asset_versions).values(
            id=v.id, asset_id=v.asset_id, number=v.number, digest=v.digest, manifest_json=v.manifest_json,
            total_size=v.total_size, file_count=v.file_count, format=v.format, parameters=v.parameters,
            unsafe=v.unsafe, classification=v.classification.value, jurisdictions=list(v.jurisdictions),
            min_security_level=v.min_security_level, labels=v.labels, formats=formats,
            previous_id=v.previous_id, bundle_json=v.bundle_json, created_at=now(),
        )
    )
    _sign_version(uow, v.id)


def version_formats(uow: UnitOfWork, version_id: str) -> list[dict]:
    return list(
        uow.conn.execute(select(t.asset_versions.c.formats).where(t.asset_versions.c.id == version_id)).scalar_one()
    )


def latest_version(uow: UnitOfWork, asset_id: str) -> AssetVersion | None:
    row = uow.conn.execute(_LATEST_VERSION, {"asset_id": asset_id}).first()
    return None if row is None else _version(uow, row)


def version_by_number(uow: UnitOfWork, asset: Asset, number: int) -> AssetVersion:
    row = uow.conn.execute(
        select(t.asset_versions).where(t.asset_versions.c.asset_id == asset.id, t.asset_versions.c.number == number)
    ).first()
    if row is None:
        raise NotFound(f"asset {asset.name} has no version {number}")
    return _version(uow, row)


def version_by_id(uow: UnitOfWork, version_id: str) -> AssetVersion:
    row = uow.conn.execute(_VERSION, {"id": version_id}).first()
    if row is None:
        raise NotFound(f"no asset version {version_id}")
    return _version(uow, row)


def set_version_label(uow: UnitOfWork, version_id: str, *, classification: Classification,
                      jurisdictions: tuple[str, ...], min_security_level: int) -> None:
    uow.conn.execute(update(t.asset_versions).where(t.asset_versions.c.id == version_id).values(
        classification=classification.value, jurisdictions=list(jurisdictions), min_security_level=min_security_level))
    _sign_version(uow, version_id)


def asset_name_of_version(uow: UnitOfWork, version: AssetVersion) -> str:
    return uow.conn.execute(select(t.assets.c.name).where(t.assets.c.id == version.asset_id)).scalar_one()


def versions_of(uow: UnitOfWork, asset_id: str) -> list[AssetVersion]:
    rows = uow.conn.execute(
        select(t.asset_versions).where(t.asset_versions.c.asset_id == asset_id).order_by(t.asset_versions.c.number)
    )
    return [_version(uow, r) for r in rows]


# -- data keys ----------------------------------------------------------------------------


def add_data_key(uow: UnitOfWork, w: WrappedKey) -> None:
    uow.conn.execute(
        insert(t.data_keys).values(id=w.key_id, zone=w.zone, kek_version=w.kek_version, wrapped=w.blob, created_at=now(),
                                   binding=w.binding.to_json() if w.binding else None)
    )


def _wrapped(row) -> WrappedKey:  # noqa: ANN001
    return WrappedKey(key_id=row.id, zone=row.zone, kek_version=row.kek_version, blob=bytes(row.wrapped),
                      binding=Binding.from_json(row.binding) if row.binding is not None else None)


def data_key(uow: UnitOfWork, key_id: str) -> WrappedKey | None:
    """The wrapped key, or None once it has been shredded."""
    row = uow.conn.execute(select(t.data_keys).where(t.data_keys.c.id == key_id)).first()
    if row is None:
        raise NotFound(f"no data key {key_id}")
    if row.wrapped is None:
        return None
    return _wrapped(row)


def live_data_keys(uow: UnitOfWork, zone: str) -> list[WrappedKey]:
    rows = uow.conn.execute(
        select(t.data_keys).where(t.data_keys.c.zone == zone, t.data_keys.c.wrapped.is_not(None)).order_by(t.data_keys.c.id)
    )
    return [_wrapped(r) for r in rows]


def replace_data_keys(uow: UnitOfWork, keys: list[WrappedKey]) -> None:
    """Rewrapped keys (same binding, new epoch), in one statement."""
    if not keys:
        return
    uow.conn.execute(
        update(t.data_keys).where(t.data_keys.c.id == bindparam("key_id")).values(
            kek_version=bindparam("epoch"), wrapped=bindparam("blob")),
        [{"key_id": w.key_id, "epoch": w.kek_version, "blob": w.blob} for w in keys],
    )


def shred_data_key(uow: UnitOfWork, key_id: str) -> None:
    uow.conn.execute(update(t.data_keys).where(t.data_keys.c.id == key_id).values(wrapped=None, shredded_at=now()))


def data_keys_by_kek(uow: UnitOfWork) -> dict[tuple[str, int], int]:
    k = t.data_keys.c
    rows = uow.conn.execute(
        select(k.zone, k.kek_version, func.count()).where(k.wrapped.is_not(None)).group_by(k.zone, k.kek_version)
    )
    return {(r[0], int(r[1])): int(r[2]) for r in rows}


# -- replicas -----------------------------------------------------------------------------


def _replica(row) -> Replica:  # noqa: ANN001
    return Replica(
        id=row.id, version_id=row.version_id, zone=row.zone, kind=ReplicaKind(row.kind), state=ReplicaState(row.state),
        key_id=row.key_id, created_by=row.created_by, request_id=row.request_id, expires_at=as_utc(row.expires_at),
        created_at=as_utc(row.created_at), bytes_sealed=row.bytes_sealed, writer=row.writer,
    )


def add_replica(uow: UnitOfWork, r: Replica, asset_name: str) -> None:
    uow.conn.execute(
        insert(t.replicas).values(
            id=r.id, version_id=r.version_id, asset_name=asset_name, zone=r.zone, kind=r.kind.value,
            state=r.state.value, key_id=r.key_id, created_by=r.created_by, request_id=r.request_id,
            expires_at=r.expires_at, created_at=now(), updated_at=now(), writer=r.writer,
        )
    )


def replica_by_id(uow: UnitOfWork, replica_id: str) -> Replica:
    row = uow.conn.execute(_REPLICA, {"id": replica_id}).first()
    if row is None:
        raise NotFound(f"no replica {replica_id}")
    return _replica(row)


def replica_asset_name(uow: UnitOfWork, replica_id: str) -> str:
    return uow.conn.execute(select(t.replicas.c.asset_name).where(t.replicas.c.id == replica_id)).scalar_one()


def replica_bundle(uow: UnitOfWork, replica_id: str) -> str | None:
    return uow.conn.execute(select(t.replicas.c.bundle_json).where(t.replicas.c.id == replica_id)).scalar_one()


def replica_manifest(uow: UnitOfWork, replica_id: str) -> str | None:
    """A marked copy's own manifest (None: the replica holds its version's files)."""
    return uow.conn.execute(select(t.replicas.c.manifest_json).where(t.replicas.c.id == replica_id)).scalar_one_or_none()


def set_replica_state(uow: UnitOfWork, replica: Replica, state: ReplicaState, **values) -> None:  # noqa: ANN003
    replica.check_move(state)
    uow.conn.execute(
        update(t.replicas).where(t.replicas.c.id == replica.id).values(state=state.value, updated_at=now(), **values)
    )


def set_replica_asset(uow: UnitOfWork, replica_id: str, version_id: str, asset_name: str) -> None:
    """A derivative's replica, written under its parent's request, belongs to the derivative's version."""
    uow.conn.execute(update(t.replicas).where(t.replicas.c.id == replica_id).values(
        version_id=version_id, asset_name=asset_name, updated_at=now()))


def set_replica_writer(uow: UnitOfWork, replica_id: str, writer: str) -> None:
    uow.conn.execute(update(t.replicas).where(t.replicas.c.id == replica_id).values(writer=writer, updated_at=now()))


def list_replicas(
    uow: UnitOfWork, *, asset: str | None = None, zone: str | None = None, state: str | None = None
) -> list[tuple[Replica, str]]:
    params = {k: v for k, v in (("asset", asset), ("zone", zone), ("state", state)) if v}
    return [(_replica(r), r.asset_name) for r in uow.conn.execute(_replicas_where(*sorted(params)), params)]


@functools.lru_cache(maxsize=None)
def _replicas_where(*filters: str):  # noqa: ANN202
    """The replica listing for one combination of filters, built once."""
    columns = {"asset": t.replicas.c.asset_name, "zone": t.replicas.c.zone, "state": t.replicas.c.state}
    return (select(t.replicas).where(*(columns[f] == bindparam(f) for f in filters))
            .order_by(t.replicas.c.created_at, t.replicas.c.id))


def live_replica_ids(uow: UnitOfWork) -> set[str]:
    """Replicas whose files must stay, in any zone: active ones and writes under way."""
    live = (ReplicaState.ACTIVE.value, ReplicaState.PENDING.value)
    q = select(t.replicas.c.id).where(t.replicas.c.state.in_(live))
    return set(uow.conn.execute(q).scalars())


# -- portal sessions ------------------------------------------------------------------------


def add_web_session(uow: UnitOfWork, id_hash: str, principal: str, created_at: datetime, expires_at: datetime) -> None:
    uow.conn.execute(insert(t.web_sessions).values(id_hash=id_hash, principal=principal, created_at=created_at,
                                                    expires_at=expires_at))


def web_session(uow: UnitOfWork, id_hash: str) -> tuple[str, datetime, datetime | None] | None:
    """(principal, expires_at, ended_at) of a session, or None."""
    s = t.web_sessions.c
    row = uow.conn.execute(select(s.principal, s.expires_at, s.ended_at).where(s.id_hash == id_hash)).first()
    return None if row is None else (row.principal, as_utc(row.expires_at), as_utc(row.ended_at))


def end_web_session(uow: UnitOfWork, id_hash: str, principal: str, at: datetime) -> bool:
    s = t.web_sessions.c
    return uow.conn.execute(update(t.web_sessions).where(s.id_hash == id_hash, s.principal == principal,
                                                         s.ended_at.is_(None)).values(ended_at=at)).rowcount == 1

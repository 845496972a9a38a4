"""Registering a model: seal its files into a zone under a fresh data key, sign its manifest.

Three steps, each behind the door: (1) a pending replica and its wrapped data key are recorded;
(2) the data plane reads, hashes, seals and checks every file; (3) the version, its signature
bundle and the now-active replica are recorded. A failure or a kill between them leaves a
pending or failed replica that is never readable; `custody sweep` removes its files.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from custody.control import views
from custody.control.door import act, data_step
from custody.control.ledger import store as ledger
from custody.control.services import content
from custody.control.store import content_repo
from custody.control.store import lineage_repo
from custody.control.store import repositories as repo
from custody.control.store.db import purge_freed
from custody.control.workspace import Workspace
from custody.data.derive import sketch
from custody.data import ingest, replica_files
from custody.domain.errors import Denied, InvalidInput, InvalidState, NotFound
from custody.domain.manifest import Manifest
from custody.domain.model import (
    Asset,
    AssetVersion,
    Classification,
    Replica,
    ReplicaKind,
    ReplicaState,
    check_name,
    new_id,
)
from custody.keys import bundle
from custody.keys.custodian import Binding, CustodianSigner


@dataclass(frozen=True)
class RegisterOptions:
    classification: str | None = None
    jurisdictions: tuple[str, ...] = ()
    min_security_level: int | None = None
    owner: str | None = None
    zone: str = "prod"


def writer_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`NAME` or `NAME@VERSION` (VERSION a number)."""
    name, at, number = ref.partition("@")
    if not at:
        return name, None
    if not number.isdigit() or int(number) < 1:
        raise InvalidInput(f"bad version in {ref!r}: use NAME@N with N >= 1")
    return name, int(number)


def register(ws: Workspace, token: str | None, name: str, path: Path, opts: RegisterOptions, progress=None) -> dict:  # noqa: ANN001
    with act(ws, token, "asset.register", subject=name, destination=opts.zone) as a:
        check_name("asset", name)
        sources = ingest.collect_sources(path)
        zone = repo.zone_by_name(a.uow, opts.zone)
        asset = repo.asset_by_name(a.uow, name, missing_ok=True)
        previous = repo.latest_version(a.uow, asset.id) if asset else None
        attrs = _attributes(opts, previous, zone.jurisdiction)
        _check_loosening(a, previous, attrs)
        if zone.jurisdiction not in attrs["jurisdictions"]:
            raise Denied(f"zone {zone.name} is in {zone.jurisdiction}, outside the asset's jurisdictions "
                         f"{', '.join(attrs['jurisdictions'])}")
        if zone.security_level < attrs["min_security_level"]:
            raise Denied(f"zone {zone.name} has security level {zone.security_level}, below the asset's minimum "
                         f"{attrs['min_security_level']}")
        replica_id, key_id = new_id(), new_id()
        repo.lock_zone(a.uow, zone.name)  # no rotation of this zone's KEK between wrap and commit
        # the registrant brings the plaintext: its new key needs no grant, and lives until revoked
        dek, wrapped = ws.custodian().new_data_key(Binding(key_id, replica_id, zone.name, ReplicaKind.PRIMARY.value,
                                                           "", None))
        repo.add_data_key(a.uow, wrapped)
        pending = Replica(id=replica_id, version_id=None, zone=zone.name, kind=ReplicaKind.PRIMARY,
                          state=ReplicaState.PENDING, key_id=key_id, created_by=a.principal.name, writer=writer_tag())
        repo.add_replica(a.uow, pending, name)
        a.record(outcome="started", details={"replica": replica_id, "files": len(sources),
                                             "bytes": sum(s.size for s in sources)})
        started = a

    storage = ws.zone_storage(zone)
    try:
        with data_step(ws, started):
            report = ingest.seal_into_zone(sources, storage, replica_id, key_id, dek, progress,
                                           sketch_key=ws.custodian().secret(sketch.SECRET))
    except BaseException:
        _abandon(ws, replica_id, storage)
        raise

    try:
        with act(ws, token, "asset.register", subject=name, destination=zone.name) as a:
            result = _record_version(ws, a, name, attrs, report, replica_id, path, sources, previous, opts, zone)
    except BaseException:
        _abandon(ws, replica_id, storage)
        raise
    return result


LOOSENERS = ("admin", "security")


def _check_loosening(a, previous: AssetVersion | None, attrs: dict) -> None:  # noqa: ANN001
    """A new version may not quietly lower its classification, widen where it may live, or lower
    its zone floor: that takes a security officer or an admin, and the ledger records old and new."""
    if previous is None:
        return
    looser = (attrs["classification"].rank < previous.classification.rank
              or not set(attrs["jurisdictions"]) <= set(previous.jurisdictions)
              or attrs["min_security_level"] < previous.min_security_level)
    if looser and not a.principal.has_role(*LOOSENERS):
        raise Denied("only security or an admin may lower an asset's classification, widen its jurisdictions "
                     "or lower its minimum security level")
    if looser:
        a.fields.setdefault("details", {})["loosened"] = {
            "classification": [previous.classification.value, attrs["classification"].value],
            "jurisdictions": [list(previous.jurisdictions), list(attrs["jurisdictions"])],
            "min_security_level": [previous.min_security_level, attrs["min_security_level"]],
        }


def _attributes(opts: RegisterOptions, previous: AssetVersion | None, zone_jurisdiction: str) -> dict:
    """A new version inherits its predecessor's attributes unless the caller sets them."""
    try:
        classification = Classification(opts.classification or (previous.classification.value if previous else "internal"))
    except ValueError:
        raise InvalidInput(
            f"unknown sensitivity {opts.classification!r}: one of {', '.join(c.value for c in Classification)}"
        ) from None
    jurisdictions = tuple(j.upper() for j in opts.jurisdictions) or (
        previous.jurisdictions if previous else (zone_jurisdiction,)
    )
    level = opts.min_security_level if opts.min_security_level is not None else (
        previous.min_security_level if previous else 1
    )
    if not 1 <= level <= 5:
        raise InvalidInput("minimum security level must be 1-5")
    return {"classification": classification, "jurisdictions": jurisdictions, "min_security_level": level,
            "owner": opts.owner}


def _record_version(ws, a, name, attrs, report, replica_id, path, sources, previous, opts, zone) -> dict:  # noqa: ANN001
    asset = repo.asset_by_name(a.uow, name, missing_ok=True)
    digests = content.identifying(report)
    found = content.matches(a.uow, content.looked_up(report, digests), report.manifest.total_size)
    explicit = {key for key, given in (("classification", opts.classification), ("jurisdictions", opts.jurisdictions),
                                       ("min_security_level", opts.min_security_level is not None)) if given}
    asked = attrs
    attrs, excepted = content.settle(ws, a, name, attrs, explicit, found, zone)
    if asset is None:
        asset = Asset(id=new_id(), name=name, owner=attrs["owner"] or a.principal.name)
        repo.add_asset(a.uow, asset)
    latest = repo.latest_version(a.uow, asset.id)
    if latest is not None and latest.digest == report.manifest.digest:
        raise InvalidState(f"{name}@{latest.number} already holds exactly these bytes (digest {latest.digest[:16]}…)")
    single = len(sources) == 1 and path.is_file()
    signed = bundle.sign_manifest(report.manifest, path.resolve().name or name, CustodianSigner(ws.custodian()),
                                  single_file=single)
    kinds = Counter(f.kind for f in report.formats)
    params = [f.parameters for f in report.formats if f.parameters is not None]
    version = AssetVersion(
        id=new_id(), asset_id=asset.id, number=(latest.number + 1) if latest else 1, digest=report.manifest.digest,
        manifest_json=report.manifest.canonical_bytes().decode(), total_size=report.manifest.total_size,
        file_count=len(report.manifest.files), format=_dominant(kinds), parameters=sum(params) if params else None,
        unsafe=any(f.unsafe for f in report.formats), classification=attrs["classification"],
        jurisdictions=attrs["jurisdictions"], min_security_level=attrs["min_security_level"],
        previous_id=latest.id if latest else None, bundle_json=signed.decode(),
    )
    repo.add_version(a.uow, version, [
        {"path": f.path, "kind": f.kind, "parameters": f.parameters, "unsafe": f.unsafe} for f in report.formats
    ])
    same = content.record(a, version.id, digests, found)
    lineage_repo.add_sketches(a.uow, version.id, report.sketches)
    raised = [] if excepted else content.tighten(a, found, attrs)  # an excepted relabel raises nothing
    replica = repo.replica_by_id(a.uow, replica_id)
    repo.set_replica_state(a.uow, replica, ReplicaState.ACTIVE, version_id=version.id,
                           bytes_sealed=report.bytes_sealed, bundle_json=signed.decode(), writer=None)
    mbps = report.bytes_read / 1e6 / report.seconds if report.seconds > 0 else None
    details = {"version": version.number, "digest": version.digest, "replica": replica_id,
               "bytes": report.bytes_read, "unsafe": version.unsafe,
               "classification": version.classification.value, "jurisdictions": list(version.jurisdictions),
               "min_security_level": version.min_security_level, "same_content_as": same}
    if raised:
        details["raised"] = raised
    if asked != attrs:
        details["label_asked"] = {"classification": asked["classification"].value,
                                  "jurisdictions": list(asked["jurisdictions"]),
                                  "min_security_level": asked["min_security_level"]}
    a.record(details=details)
    out = views.version(version, name)
    out["same_content_as"] = same
    out.update({"version_id": version.id, "replica": replica_id, "seconds": round(report.seconds, 3),
                "mb_per_s": round(mbps, 1) if mbps else None, "formats": dict(kinds)})
    return out


def _dominant(kinds: Counter) -> str:
    weights = [k for k in kinds if k != "opaque"]
    return max(weights, key=lambda k: kinds[k]) if weights else "opaque"


def _abandon(ws: Workspace, replica_id: str, storage) -> None:  # noqa: ANN001
    """A registration that did not finish: its replica fails, its key is shredded, its files go."""
    try:
        with ws.uow() as uow:
            replica = repo.replica_by_id(uow, replica_id)
            if replica.state is ReplicaState.PENDING:
                repo.set_replica_state(uow, replica, ReplicaState.FAILED, writer=None)
                from custody.control.services.keys import destroy

                destroy(ws, uow, replica.key_id, f"registration of replica {replica_id} did not finish")
                ledger.append(uow, actor=replica.created_by, action="replica.abandon", outcome="ok",
                              subject=replica_id, destination=replica.zone,
                              details={"why": "registration did not finish; key shredded, files removed"})
        purge_freed(ws.engine)
        replica_files.delete_replica_files(storage, replica_id)
    except Exception:  # noqa: BLE001
        pass  # the sweeper finishes what could not be cleaned here


def list_assets(ws: Workspace, token: str | None) -> list[dict]:
    with act(ws, token, "asset.read") as a:
        out = []
        for asset in repo.list_assets(a.uow):
            latest = repo.latest_version(a.uow, asset.id)
            row = views.version(latest, asset.name) if latest else {"asset": asset.name}
            row["owner"] = asset.owner
            out.append(row)
        return out


def resolve_version(uow, ref: str) -> tuple[Asset, AssetVersion]:  # noqa: ANN001
    name, number = parse_ref(ref)
    asset = repo.asset_by_name(uow, name)
    version = repo.version_by_number(uow, asset, number) if number is not None else repo.latest_version(uow, asset.id)
    if version is None:
        raise NotFound(f"asset {name} has no version")
    return asset, version


def show_asset(ws: Workspace, token: str | None, ref: str) -> dict:
    with act(ws, token, "asset.read", subject=ref) as a:
        asset, version = resolve_version(a.uow, ref)
        return _described(a.uow, asset, version)


def inventory(ws: Workspace, token: str | None) -> list[dict]:
    """Every asset's newest version as `show` gives it (versions, signature, every copy), in one read."""
    with act(ws, token, "asset.read", details={"what": "inventory"}) as a:
        return [_described(a.uow, asset, latest) for asset in repo.list_assets(a.uow)
                if (latest := repo.latest_version(a.uow, asset.id)) is not None]


def _described(uow, asset: Asset, version: AssetVersion) -> dict:  # noqa: ANN001
    out = views.version(version, asset.name)
    out["owner"] = asset.owner
    out["versions"] = [v.number for v in repo.versions_of(uow, asset.id)]
    out["manifest"] = [f.to_dict() for f in Manifest.from_json(version.manifest_json).files]
    out["file_formats"] = repo.version_formats(uow, version.id)
    out["replicas"] = [views.replica(r, n) for r, n in repo.list_replicas(uow, asset=asset.name)
                       if r.version_id == version.id]
    out["same_content_as"] = [_linked(uow, *link) for link in content_repo.links_of(uow, version.id)]
    parent = lineage_repo.parent_of(uow, version.id)
    out["derived_from"] = dict(_linked(uow, parent.parent_version_id, "lineage", 0), recipe=parent.recipe,
                               request=parent.request_id) if parent else None
    out["derivatives"] = [dict(_linked(uow, e.version_id, "lineage", 0), recipe=e.recipe, request=e.request_id)
                          for e in lineage_repo.children_of(uow, version.id)]
    return out


def _linked(uow, version_id: str, matched_by: str, nbytes: int) -> dict:  # noqa: ANN001
    other = repo.version_by_id(uow, version_id)
    return {"asset": repo.asset_name_of_version(uow, other), "version": other.number, "matched_by": matched_by,
            "bytes": nbytes}


def signature_bundle(ws: Workspace, token: str | None, ref: str) -> bytes:
    with act(ws, token, "asset.read", subject=ref, details={"what": "bundle"}) as a:
        _, version = resolve_version(a.uow, ref)
        if not version.bundle_json:
            raise NotFound(f"{ref} has no signature bundle")
        return version.bundle_json.encode()

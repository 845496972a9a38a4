"""Replicas: list, show, verify, read tensors from, and revoke (crypto-shred).

Revoking destroys the replica's wrapped data key in the same transaction that records the
revocation, and only then deletes the sealed files: from that commit on, no copy of those files
(in the zone, in a backup, on a stolen disk) can be decrypted by anyone.
"""

from __future__ import annotations

from datetime import datetime, timezone

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from custody.control import views
from custody.control.door import Act, act, data_step, record_after
from custody.control.services import keys, reads
from custody.control.store import repositories as repo
from custody.control.store.db import purge_freed
from custody.control.workspace import Workspace
from custody.data import replica_files, tensors
from custody.domain.errors import IntegrityError, InvalidInput, InvalidState, NotFound
from custody.domain.manifest import Manifest
from custody.keys import bundle
from custody.keys.custodian import WrappedKey
from custody.domain.model import Replica, ReplicaState


def list_replicas(ws: Workspace, token: str | None, *, asset: str | None = None, zone: str | None = None,
                  state: str | None = None) -> list[dict]:
    with act(ws, token, "replica.read") as a:
        if state is not None and state not in {s.value for s in ReplicaState}:
            raise InvalidInput(f"unknown replica state {state!r}: one of {', '.join(s.value for s in ReplicaState)}")
        if asset:
            repo.asset_by_name(a.uow, asset)
        if zone:
            repo.zone_by_name(a.uow, zone)
        return [views.replica(r, n) for r, n in repo.list_replicas(a.uow, asset=asset, zone=zone, state=state)]


def show_replica(ws: Workspace, token: str | None, replica_id: str) -> dict:
    with act(ws, token, "replica.read", subject=replica_id) as a:
        replica = repo.replica_by_id(a.uow, replica_id)
        out = views.replica(replica, repo.replica_asset_name(a.uow, replica_id))
        if replica.version_id:
            version = repo.version_by_id(a.uow, replica.version_id)
            out["version"] = version.number
            out["digest"] = version.digest
        key = repo.data_key(a.uow, replica.key_id)
        out["data_key"] = "shredded" if key is None else f"wrapped under {key.zone} KEK v{key.kek_version}"
        return out


def _readable(ws: Workspace, a: Act, replica_id: str, why: str) -> tuple[Replica, Manifest, bytes]:
    """What the data plane needs to check an active replica: its signed manifest and its key,
    released for a check that hands no plaintext to anyone."""
    replica = _active(a, replica_id)
    manifest, wrapped = _sealed(ws, a, replica)
    return replica, manifest, ws.release().maintain(wrapped, why)


def _active(a: Act, replica_id: str) -> Replica:
    """The replica, refused unless it is active and unexpired."""
    replica = repo.replica_by_id(a.uow, replica_id)
    if not replica.readable:
        raise InvalidState(f"replica {replica_id} is {replica.state.value}; only active replicas can be read")
    if replica.expires_at is not None and replica.expires_at <= datetime.now(timezone.utc):
        raise InvalidState(f"replica {replica_id} expired at {views.ts(replica.expires_at)}")
    return replica


def _sealed(ws: Workspace, a: Act, replica: Replica) -> tuple[Manifest, WrappedKey]:
    """The replica's signed manifest and its wrapped key (refused once shredded)."""
    wrapped = repo.data_key(a.uow, replica.key_id)
    if wrapped is None:
        raise InvalidState(f"replica {replica.id}: its data key was shredded")
    version = repo.version_by_id(a.uow, replica.version_id)
    manifest = Manifest.from_json(repo.replica_manifest(a.uow, replica.id) or version.manifest_json)
    check_signed(ws, repo.replica_bundle(a.uow, replica.id) or version.bundle_json, manifest, replica.id)
    return manifest, wrapped


def check_signed(ws: Workspace, bundle_json: str | None, manifest: Manifest, what: str) -> None:
    """The manifest the store hands over must be the one that was signed (T7)."""
    if not bundle_json:
        raise IntegrityError(f"{what} has no signed manifest")
    signed = bundle.verify_bundle(bundle_json.encode(), load_pem_public_key(ws.public_key_pem("signing")))
    signed.check_against(manifest)


def verify_replica(ws: Workspace, token: str | None, replica_id: str) -> dict:
    with act(ws, token, "replica.verify", subject=replica_id) as a:
        replica, manifest, dek = _readable(ws, a, replica_id, f"verify replica {replica_id}")
        zone = repo.zone_by_name(a.uow, replica.zone)
        a.record(outcome="started")
    with data_step(ws, a):
        report = replica_files.verify_replica(ws.zone_storage(zone), replica.id, replica.key_id, manifest, dek)
    record_after(ws, a, details={"files": report.files, "bytes": report.bytes, "chunks": report.chunks})
    return {"replica": replica_id, "verified": True, "files": report.files, "bytes": report.bytes,
            "chunks": report.chunks}


def revoke_replica(ws: Workspace, token: str | None, replica_id: str, reason: str) -> dict:
    with act(ws, token, "replica.revoke", subject=replica_id, rationale=reason) as a:
        if not reason or not reason.strip():
            raise InvalidInput("a revocation needs a reason")
        replica = repo.replica_by_id(a.uow, replica_id)
        zone = repo.zone_by_name(a.uow, replica.zone)
        shred(ws, a, replica)
        a.record(details={"zone": replica.zone, "kind": replica.kind.value})
    purge_freed(ws.engine)
    with data_step(ws, a):
        replica_files.delete_replica_files(ws.zone_storage(zone), replica_id)
    epochs = keys.after_shred(ws, {zone.name}, a.principal.name, f"replica {replica_id} revoked")
    return {"replica": replica_id, "state": ReplicaState.SHREDDED.value, "reason": reason, "epochs": epochs}


def shred(ws: Workspace, a: Act, replica: Replica) -> None:
    """Destroy a replica's data key and mark it shredded, in the caller's transaction."""
    replica.check_move(ReplicaState.SHREDDED)
    keys.destroy(ws, a.uow, replica.key_id, f"replica {replica.id} {a.action}")
    repo.set_replica_state(a.uow, replica, ReplicaState.SHREDDED, writer=None)


def open_safetensors(ws: Workspace, token: str | None, replica_id: str, *, purpose: str,
                     names: list[str] | None = None, request: str | None = None, evidence: str | None = None,
                     way: str = "direct") -> dict:
    """Tensors of an active replica, decrypted in memory, when the catalog allows this read (directly,
    or under the caller's approved read request, which the read spends); ledgered with its decision
    and purpose. `evidence`: attestation evidence over a nonce from `reads.attestation_nonce`, where
    the replica's zone requires it."""
    with act(ws, token, "replica.open", subject=replica_id, rationale=purpose,
             details={"tensors": names[:50] if names else "all"}) as a:
        if not purpose or not purpose.strip():
            raise InvalidInput("reading tensors needs a purpose")
        replica = _active(a, replica_id)
        ticket = reads.decide(ws, a, replica, purpose, request, evidence.encode() if evidence is not None else None,
                              way)
        _, wrapped = _sealed(ws, a, replica)
        dek = ws.release().read(ticket.token, ticket.expected, wrapped, kind=replica.kind.value, reader=ticket.reader,
                                attested=ticket.attested)
        a.witness_now = True
        zone = repo.zone_by_name(a.uow, replica.zone)
        files = [f["path"] for f in repo.version_formats(a.uow, replica.version_id) if f["kind"] == "safetensors"]
        if not files:
            raise InvalidInput(f"replica {replica_id} holds no safetensors file")
    storage = ws.zone_storage(zone)
    wanted = set(names) if names is not None else None
    out: dict = {}
    with data_step(ws, a):
        for path in files:
            with replica_files.open_sealed(storage, replica.id, replica.key_id, path, dek) as reader:
                available = tensors.tensor_names(reader)
                take = available if wanted is None else [n for n in available if n in wanted]
                if take:
                    out.update(tensors.read_tensors(reader, take))
        missing = sorted(wanted - out.keys()) if wanted is not None else []
        if missing:
            raise NotFound(f"replica {replica_id} has no tensor {missing[0]!r}")
    return out


def read_safetensors(ws: Workspace, token: str | None, replica_id: str, purpose: str, names: list[str] | None = None,
                     request: str | None = None, evidence: str | None = None) -> bytes:
    """`open_safetensors` for a caller that holds no key: the server decides, decrypts in its memory
    and answers the tensors in the safetensors layout (what `custody.open_safetensors` asks for when a
    server is configured)."""
    return tensors.to_safetensors(open_safetensors(ws, token, replica_id, purpose=purpose, names=names,
                                                   request=request, evidence=evidence))

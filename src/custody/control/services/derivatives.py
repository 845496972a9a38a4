"""Derivatives and marked copies: governed copies whose data plane transforms the weights.

A derivative request carries a recipe (domain/recipes.py), validated before the decision, shown to
approvers and signed into every approval. Running it spends the grant like any copy; the data plane
(data/derive/) reads the source tensor by tensor, applies the recipe, marks the result for the
requester and seals it into the destination. The result is a new asset, `PARENT.d-REQUEST`, whose
one version keeps its parent's label and records its lineage (parent version and digest, recipe,
request); its replica is the requester's derivative copy.

Research copies (and any kind `[marks]` in the catalog names) go the same way with an empty recipe:
the same files, each weight matrix carrying the recipient's mark, and the replica keeps a manifest
of its own. Every mark is recorded (recipient, replica, key id, alpha) in the store, signed, and in
the ledger, which is what `custody trace` tests a leaked copy against.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

from custody.control.door import Act
from custody.control.services import copies
from custody.control.services.policy import active_catalog
from custody.control.store import lineage_repo as lr
from custody.control.store import repositories as repo
from custody.control.store.db import UnitOfWork
from custody.control.workspace import Workspace
from custody.data.derive import derive, marks, sketch
from custody.domain import recipes
from custody.domain.errors import InvalidState
from custody.domain.model import Asset, AssetVersion, ReplicaKind, new_id
from custody.domain.requests import Request, RequestKind
from custody.keys import bundle
from custody.keys.custodian import CustodianSigner
from custody.keys.release import Expected

def transforms(ws: Workspace, uow: UnitOfWork, request: Request) -> bool:
    """Whether running this request changes the weights: a derivative, or a kind the catalog marks."""
    return request.kind is RequestKind.DERIVATIVE or request.kind.value in active_catalog(ws, uow).marking.kinds


def derived_name(parent: str, request_id: str) -> str:
    return f"{parent[:48]}.d-{request_id[:8]}"


def prepare(ws: Workspace, a: Act, request: Request, grant_token: str, claims: Expected) -> copies.Job:
    src = copies.open_source(ws, a, request, grant_token, claims)
    is_derivative = request.kind is RequestKind.DERIVATIVE
    unmarkable = sorted(f["path"] for f in repo.version_formats(a.uow, src.version.id)
                        if f["kind"] not in ("safetensors", "opaque"))
    if unmarkable and not is_derivative:  # it would leave production with weights nobody can trace
        raise InvalidState(f"{unmarkable[0]} holds weights custody cannot mark (only safetensors weights carry a "
                           f"recipient's mark): a {request.kind.value} copy of it is not made; ask for a derivative")
    recipe = recipes.parse(request.transform or "") if is_derivative else recipes.Recipe()
    marking = active_catalog(ws, a.uow).marking
    custodian = ws.custodian()
    mark_key = custodian.secret(marks.SECRET)
    spec = marks.MarkSpec(mark_key, marks.key_id(mark_key), src.version.id, request.requester, marking.alpha,
                          marking.include)
    sketch_key = custodian.secret(sketch.SECRET) if is_derivative else b""
    dst = copies.destination(ws, a, request, grant_token, claims, ReplicaKind(request.kind.value), src.zone.name,
                             src.version.total_size)
    dst_zone = repo.zone_by_name(a.uow, request.destination_zone)
    name = derived_name(request.asset, request.id)
    metadata = {"name": name, "recipe": recipe.text, "parent": src.version.digest} if is_derivative else {}
    keys = derive.Keys(src.replica.id, src.replica.key_id, src.dek, dst.id, dst.key_id, dst.dek)

    def execute(progress):  # noqa: ANN001, ANN202
        return derive.derive_replica(ws.zone_storage(src.zone), ws.zone_storage(dst_zone), keys, src.manifest,
                                     recipe, spec, sketch_key, metadata, progress, derivative=is_derivative)

    def finish(a: Act, request: Request, report: derive.DeriveReport) -> dict:
        out: dict = {"marked_tensors": len(report.marked), "mark_key": spec.key_id, "alpha": spec.alpha}
        subject = request.asset
        if is_derivative:
            version = _record_derivative(ws, a, request, src.version, name, recipe, report)
            subject = name
            repo.set_replica_asset(a.uow, dst.id, version.id, name)
            out.update({"asset": name, "version_id": version.id, "digest": version.digest, "recipe": recipe.text,
                        "bytes_before": report.source_bytes, "bytes_after": report.bytes,
                        "left_out": list(report.left_out)})
        elif report.left_out:
            out["unmarked_files"] = list(report.left_out)
        lr.add_mark(a.uow, lr.Mark(dst.id, src.version.id, request.requester, spec.key_id, spec.alpha,
                                   report.marked, request.id, datetime.now(timezone.utc)))
        out.update(copies.activate(ws, a, request, dst.id, report.manifest, report.bytes_sealed, subject=subject,
                                   own_manifest=not is_derivative))
        out["mark"] = {"recipient": request.requester, "replica": dst.id, "key_id": spec.key_id, "alpha": spec.alpha}
        return out

    details = {"replica": dst.id, "resumed": dst.resumed, "bytes": src.version.total_size,
               "marked_for": request.requester, **({"recipe": recipe.text} if is_derivative else {})}
    return copies.Job(src.zone.name, details, execute, finish, dst.id)


def _record_derivative(ws: Workspace, a: Act, request: Request, parent: AssetVersion, name: str,
                       recipe: recipes.Recipe, report: derive.DeriveReport) -> AssetVersion:
    """The derivative's asset and version: the parent's label, its own signed manifest, its lineage."""
    parent_asset = repo.asset_by_name(a.uow, request.asset)
    asset = repo.asset_by_name(a.uow, name, missing_ok=True)
    if asset is None:
        asset = Asset(id=new_id(), name=name, owner=parent_asset.owner)
        repo.add_asset(a.uow, asset)
    signed = bundle.sign_manifest(report.manifest, name, CustodianSigner(ws.custodian()))
    fmt = recipe.output
    formats = [{"path": f.path, "kind": fmt if f.path.endswith((".safetensors", ".gguf")) else "opaque",
                "parameters": None, "unsafe": False} for f in report.manifest.files]
    version = AssetVersion(
        id=new_id(), asset_id=asset.id, number=1, digest=report.manifest.digest,
        manifest_json=report.manifest.canonical_bytes().decode(), total_size=report.manifest.total_size,
        file_count=len(report.manifest.files), format=_dominant(formats), parameters=None, unsafe=False,
        classification=parent.classification, jurisdictions=parent.jurisdictions,
        min_security_level=parent.min_security_level, previous_id=None, bundle_json=signed.decode(),
    )
    repo.add_version(a.uow, version, formats)
    lr.add_lineage(a.uow, lr.Lineage(version.id, parent.id, parent.digest, recipe.text, request.id,
                                     datetime.now(timezone.utc)))
    lr.add_sketches(a.uow, version.id, report.sketches)
    return version


def _dominant(formats: list[dict]) -> str:
    kinds = Counter(f["kind"] for f in formats if f["kind"] != "opaque")
    return kinds.most_common(1)[0][0] if kinds else "opaque"

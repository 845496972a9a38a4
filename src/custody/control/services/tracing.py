"""`custody identify` and `custody trace`: which registered weights a file found elsewhere holds,
and for whom the copy it came from was made.

identify compares the file's tensors with every registered version's keyed identity sketches
(and its files with their digests); it reads no registered weights. trace goes further: it reads
the original weights of the version the suspect comes from (a read the catalog decides, with the
request "trace": security officers by default), regresses each suspect tensor on its original and
tests the residual against the mark of every recipient ever marked on that version. It accuses
only above tau = sqrt(2 ln(R·M/eps)) (see data/derive/evidence.py for why that bounds the chance of
accusing anyone innocent by eps). Every trace is ledgered with its verdict, and its evidence is
archived in the workspace (`traces/ID.json`, digest in the ledger and the store).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from custody.control.door import act, data_step
from custody.control.services import replicas
from custody.control.store import lineage_repo as lr
from custody.control.store import repositories as repo
from custody.control.workspace import Workspace
from custody.data.derive import evidence, marks, sketch, suspect
from custody.domain.errors import CustodyError, InvalidInput, NotFound
from custody.domain.model import AssetVersion, ReplicaState, new_id
from custody.keys.files import write_private

MIN_SCANS = 1000  # M in tau: at least this many scans are budgeted for, however few have run
ATTRIBUTED, UNATTRIBUTED, NOT_THIS = "attributed", "copy-unattributed", "not-this-asset"
EXIT = {ATTRIBUTED: 0, UNATTRIBUTED: 1, NOT_THIS: 4}


@dataclass
class Suspect:
    path: Path
    sha256: str
    tensors: dict[str, np.ndarray]


def load_suspect(path: str) -> Suspect:
    """The suspect's float tensors and the SHA-256 of its model files; InvalidInput when unreadable."""
    p = Path(path)
    files = suspect.files_of(p)
    hasher = hashlib.sha256()
    for f in files:
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        try:
            for name, values in suspect.load(f):
                tensors.setdefault(name, values)
        except CustodyError:
            raise
        except Exception as exc:  # noqa: BLE001 - a hostile or broken file: one line, no traceback
            raise suspect.open_error(f, exc) from None
    if not tensors:
        raise InvalidInput(f"{path}: holds no float tensor to compare")
    return Suspect(p, hasher.hexdigest(), tensors)


# -- identify -----------------------------------------------------------------------------


def _sketches_of(key: bytes, tensors: dict[str, np.ndarray]) -> dict[str, tuple[int, int, np.ndarray]]:
    out = {}
    for name, values in tensors.items():
        found = sketch.of(key, values)
        if found is not None:
            out[name] = (*sketch.matrix_shape(tuple(values.shape)), found)
    return out


def _candidates(uow, key: bytes, mine: dict[str, tuple[int, int, np.ndarray]],  # noqa: ANN001
                only: set[str] | None = None) -> list[dict]:
    """Every version with sketches, scored against the suspect's: tensors matched by name and shape,
    else by shape alone; z = Σ cos·sqrt(d) / sqrt(T)."""
    by_version: dict[str, list[tuple[str, int, int, np.ndarray]]] = {}
    for version_id, _, tensor, rows, cols, raw in lr.sketches(uow):
        if only is None or version_id in only:
            by_version.setdefault(version_id, []).append((tensor, rows, cols, sketch.from_bytes(raw)))
    out = []
    for version_id, theirs in by_version.items():
        named = {t: (r, c, s) for t, r, c, s in theirs}
        scores = []
        for name, (rows, cols, mine_sketch) in mine.items():
            match = named.get(name)
            if match is None or match[:2] != (rows, cols):
                same_shape = [s for t, r, c, s in theirs if (r, c) == (rows, cols)]
                if not same_shape:
                    continue
                cos = max(sketch.cosine(mine_sketch, s) for s in same_shape)
            else:
                cos = sketch.cosine(mine_sketch, match[2])
            scores.append(evidence.sketch_z(cos, cols))
        if scores:
            out.append({"version_id": version_id, "tensors": len(scores),
                        "z": round(evidence.combined_sketch_z(scores), 2)})
    return sorted(out, key=lambda c: -c["z"])


def _exact(uow, sha256s: list[str]) -> list[str]:  # noqa: ANN001
    """Versions holding one of these files byte for byte."""
    from sqlalchemy import select

    from custody.control.store import schema as t

    q = select(t.content_digests.c.version_id).where(t.content_digests.c.kind == "file",
                                                    t.content_digests.c.digest.in_(sha256s))
    return sorted({r.version_id for r in uow.conn.execute(q)})


def identify(ws: Workspace, token: str | None, path: str, *, eps: float = evidence.DEFAULT_EPS) -> dict:
    """Which registered asset the file at `path` is a copy or a derivative of."""
    found = load_suspect(path)
    file_digests = [_file_sha256(f) for f in suspect.files_of(found.path)]
    with act(ws, token, "asset.identify", subject=found.path.name,
             details={"suspect_sha256": found.sha256}) as a:
        key = ws.custodian().secret(sketch.SECRET)
        mine = _sketches_of(key, found.tensors)
        candidates = _candidates(a.uow, key, mine)
        tau = evidence.threshold(max(1, len(candidates)), 1, eps)
        exact = _exact(a.uow, file_digests)
        named = [dict(c, **_version_names(a.uow, c["version_id"])) for c in candidates[:5]]
        if exact:
            verdict, best = "copy", _version_names(a.uow, exact[0])
        elif named and named[0]["z"] >= tau:
            verdict, best = "derivative-or-reencoded", named[0]
        else:
            verdict, best = NOT_THIS, None
        out = {"verdict": verdict, "asset": best["asset"] if best else None,
               "version": best["version"] if best else None, "tau": round(tau, 2),
               "suspect": {"path": str(found.path), "sha256": found.sha256, "tensors": len(found.tensors),
                           "sketched": len(mine)},
               "candidates": named}
        a.record(details={"verdict": verdict, "asset": out["asset"], "version": out["version"], "tau": out["tau"],
                          "best_z": named[0]["z"] if named else None})
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version_names(uow, version_id: str) -> dict:  # noqa: ANN001
    version = repo.version_by_id(uow, version_id)
    return {"asset": repo.asset_name_of_version(uow, version), "version": version.number, "version_id": version.id}


# -- trace ----------------------------------------------------------------------------------


def _root(uow, version: AssetVersion) -> AssetVersion:  # noqa: ANN001
    """The version whose unmarked weights a (derivative's) mark is measured against."""
    seen = set()
    while (edge := lr.parent_of(uow, version.id)) is not None:
        if edge.parent_version_id in seen:
            raise InvalidInput("lineage loops")
        seen.add(edge.parent_version_id)
        version = repo.version_by_id(uow, edge.parent_version_id)
    return version


def _reference_replica(uow, version: AssetVersion) -> str:  # noqa: ANN001
    name = repo.asset_name_of_version(uow, version)
    for kind in ("primary", "dr", "backup"):
        for replica, _ in repo.list_replicas(uow, asset=name, state=ReplicaState.ACTIVE.value):
            if replica.version_id == version.id and replica.kind.value == kind:
                return replica.id
    raise NotFound(f"{name}@{version.number} has no active primary, dr or backup replica to trace against")


def trace(ws: Workspace, token: str | None, path: str, *, asset: str | None = None, purpose: str = "",
          eps: float = evidence.DEFAULT_EPS) -> dict:
    """The verdict on a suspected leak: attributed (to whom, z, tau, per-tensor evidence), a copy of
    the asset with no recipient above tau, or not this asset (`EXIT` maps each to an exit code)."""
    if not purpose or not purpose.strip():
        raise InvalidInput("a trace needs a purpose (--purpose), e.g. the incident it belongs to")
    if not 0 < eps < 0.5:
        raise InvalidInput("--eps must be between 0 and 0.5")
    found = load_suspect(path)
    trace_id = new_id()
    with act(ws, token, "asset.trace", subject=asset or found.path.name, rationale=purpose,
             details={"trace": trace_id, "suspect_sha256": found.sha256}) as a:
        key = ws.custodian().secret(sketch.SECRET)
        only = None
        if asset is not None:
            named = repo.asset_by_name(a.uow, asset)
            only = {v.id for v in repo.versions_of(a.uow, named.id)}
        ranked = _candidates(a.uow, key, _sketches_of(key, found.tensors), only)
        if ranked:
            version = repo.version_by_id(a.uow, ranked[0]["version_id"])
        elif asset is not None:
            version = repo.latest_version(a.uow, repo.asset_by_name(a.uow, asset).id)
        else:
            raise NotFound("the file matches no registered weights: name the asset with --asset to trace anyway")
        reference = _root(a.uow, version)
        replica_id = _reference_replica(a.uow, reference)
        recorded = lr.marks_on(a.uow, reference.id)
        scans = lr.trace_count(a.uow) + 1
        ref_name = repo.asset_name_of_version(a.uow, reference)
        label = f"{repo.asset_name_of_version(a.uow, version)}@{version.number}"
        reference_tensors = {t: (r, c) for _, _, t, r, c, _ in lr.sketches(a.uow, reference.id)}
        a.record(outcome="started", details={"trace": trace_id, "reference": f"{ref_name}@{reference.number}",
                                             "replica": replica_id, "marks": len(recorded)})
        started = a
    wanted = _wanted(found.tensors, reference_tensors)
    originals = replicas.open_safetensors(ws, token, replica_id, purpose=f"trace {trace_id}: {purpose}",
                                          names=wanted, way="trace")
    mark_key = ws.custodian().secret(marks.SECRET)
    with data_step(ws, started):
        result = weigh(found, originals, recorded, mark_key, reference.id, scans, eps)
    result.update({"trace": trace_id, "asset": label, "reference": f"{ref_name}@{reference.number}",
                   "suspect": {"path": str(found.path), "sha256": found.sha256, "tensors": len(found.tensors)}})
    raw = json.dumps(result, indent=2, sort_keys=True).encode()
    archive = ws.home / "traces" / f"{trace_id}.json"
    write_private(archive, raw)
    digest = hashlib.sha256(raw).hexdigest()
    with act(ws, token, "asset.trace", subject=result["asset"], rationale=purpose) as a:
        lr.add_trace(a.uow, id=trace_id, actor=a.principal.name, asset_name=ref_name, suspect_digest=found.sha256,
                     verdict=result["verdict"], recipient=result.get("recipient"), z=result.get("z"),
                     tau=result["tau"], evidence_sha256=digest)
        a.record(outcome=result["verdict"], details={
            "trace": trace_id, "verdict": result["verdict"], "recipient": result.get("recipient"),
            "z": result.get("z"), "tau": result["tau"], "copy_z": result["copy_z"], "evidence_sha256": digest})
    result["evidence_file"] = {"path": str(archive), "sha256": digest}
    return result


def _wanted(tensors: dict[str, np.ndarray], reference: dict[str, tuple[int, int]]) -> list[str] | None:
    """The original tensors to read: those the suspect's names (or, failing that, shapes) match;
    None (all) when the reference version has no sketches to plan from."""
    if not reference:
        return None
    out = set()
    for name, values in tensors.items():
        shape = sketch.matrix_shape(tuple(values.shape))
        if name in reference:
            out.add(name)
        elif shape is not None:
            out.update(t for t, rc in reference.items() if rc in (shape, shape[::-1]))
    return sorted(out) or None


def _pairs(found: Suspect, originals: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(original name, suspect values aligned to it, original values): by name first, then by shape."""
    pairs, used = [], set()
    for name, values in found.tensors.items():
        original = originals.get(name)
        aligned = evidence.align(values, original) if original is not None else None
        if aligned is not None:
            pairs.append((name, aligned, original))
            used.add(name)
    for name, values in found.tensors.items():
        if name in originals and name in used:
            continue
        options = [(o, evidence.align(values, v)) for o, v in originals.items() if o not in used]
        options = [(o, al) for o, al in options if al is not None]
        if len(options) == 1:
            o, al = options[0]
            pairs.append((o, al, originals[o]))
            used.add(o)
    return pairs


def weigh(found: Suspect, originals: dict[str, np.ndarray], recorded: list[lr.Mark], mark_key: bytes,
          reference_id: str, scans: int, eps: float) -> dict:
    """The verdict from the suspect's tensors, the original's and the recorded marks (no I/O)."""
    recipients = sorted({m.recipient for m in recorded})
    tensors_of: dict[str, set[str]] = {}
    alpha_of: dict[str, float] = {}
    replicas_of: dict[str, list[str]] = {}
    current_key = marks.key_id(mark_key)
    for m in recorded:
        if m.key_id != current_key:
            continue  # marked under a key this custodian no longer holds
        tensors_of.setdefault(m.recipient, set()).update(m.tensors)
        alpha_of[m.recipient] = m.alpha
        replicas_of.setdefault(m.recipient, []).append(m.replica_id)
    m_scans = max(scans, MIN_SCANS)
    tau = evidence.threshold(len(recipients), m_scans, eps)
    pairs = _pairs(found, originals)
    residuals = {name: evidence.regress(name, s, w, max(alpha_of.values(), default=marks.DEFAULT_ALPHA))
                 for name, s, w in pairs if s.size >= marks.MIN_ENTRIES}
    copy_z = evidence.copy_z(list(residuals.values()))
    scores = []
    for recipient in recipients:
        per = []
        for name in sorted(tensors_of.get(recipient, ())):
            r = residuals.get(name)
            if r is None:
                continue
            total, energy = evidence.tensor_score(r, mark_key, reference_id, recipient)
            per.append((name, r.weight, total, energy))
        z = evidence.combine([(w, t, e) for _, w, t, e in per])
        scores.append({"recipient": recipient, "z": round(z, 2), "replicas": replicas_of.get(recipient, []),
                       "tensors": [{"tensor": n, "z": round(t / math.sqrt(e), 2) if e > 0 else 0.0,
                                    "weight": round(w, 3)} for n, w, t, e in per]})
    scores.sort(key=lambda s: -s["z"])
    is_copy = copy_z >= tau
    above = [s for s in scores if s["z"] >= tau] if is_copy else []
    verdict = ATTRIBUTED if above else (UNATTRIBUTED if is_copy else NOT_THIS)
    out = {"verdict": verdict, "tau": round(tau, 2), "eps": eps, "recipients_tested": len(recipients),
           "scans": m_scans, "copy_z": round(copy_z, 1), "matched_tensors": len(residuals),
           "bound": f"P(any innocent recipient reaches tau) <= eps = {eps:g} over {len(recipients)} recipients and "
                    f"{m_scans} scans",
           "scores": [{k: v for k, v in s.items() if k != "tensors"} for s in scores]}
    if above:
        out.update({"recipient": above[0]["recipient"], "z": above[0]["z"], "replicas": above[0]["replicas"],
                    "evidence": above[0]["tensors"], "also_above_tau": [s["recipient"] for s in above[1:]]})
    elif scores:
        out["z"] = scores[0]["z"]
    return out

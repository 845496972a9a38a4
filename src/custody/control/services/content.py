"""The same weights keep their label (threat T3), whatever they are called.

Registration reports every file's digest and every safetensors or GGUF tensor's digest. The
identifying ones (weight files, large opaque files, and distinctive tensors: not tiny, not one
value repeated) are stored and looked up; a version holding any identifying digest of another
asset's version is linked to it ("same content as") and takes the strictest label of everything
it matched: the highest classification, the jurisdictions all of them allow, the highest zone
floor. Asking for a looser label than that is refused by the catalog (`forbid-relabel`) unless an
approved exception names the matched asset and the registration's zone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone

from custody.control.door import Act
from custody.control.policy.context import RegisterFacts, asset_facts, principal_facts, zone_facts
from custody.control.services.policy import active_catalog
from custody.control.store import content_repo as content
from custody.control.store import repositories as repo
from custody.control.store import requests_repo as rq
from custody.control.workspace import Workspace
from custody.data.ingest import IngestReport
from custody.domain.errors import Denied
from custody.domain.model import MIN_DISTINCTIVE_BYTES, Asset, AssetVersion, Classification, Zone

OPAQUE_WEIGHTS = 64 << 20  # an opaque file this large is taken for weights (a tokenizer or a config is smaller)
RELABEL = "forbid-relabel"  # the policy whose exception lets known weights take a looser label
GENERATED = 0.5
"""A tensor whose start deflates below this ratio is a generated or near-constant buffer (position
ids, masks, norm weights near 1: 0.02 to 0.3), shared by unrelated models: it identifies nothing.
Learned weights deflate to 0.8 (bf16) to 0.93 (fp32), quantised ones to about 0.9."""
MOST = 0.5  # "most of a version": the share of its bytes that shared content must cover
STRONG_BYTES = 1 << 20  # identifying digests covering this much link two versions whatever their sizes


def identifying(report: IngestReport) -> list[content.Digest]:
    """The digests that say whose weights these are: distinctive tensors that are not generated buffers
    (GENERATED); safetensors and GGUF files holding one; other model files of at least
    MIN_DISTINCTIVE_BYTES; opaque files of OPAQUE_WEIGHTS. Smaller opaque files are kept as "opaque"
    digests: weak evidence (a tokenizer or a config is shared by unrelated models), which links two
    versions only when it is most of both."""
    kinds = {f.path: f.kind for f in report.formats}
    with_tensors = {d.path for d in report.tensors}
    identifying_tensors = [d for d in report.tensors if d.distinctive and d.deflated >= GENERATED]
    telling = {d.path for d in identifying_tensors}

    def kind_of(path: str, size: int) -> str | None:
        if path in with_tensors:
            return "file" if path in telling else None
        if size < MIN_DISTINCTIVE_BYTES:
            return None
        if kinds.get(path, "opaque") == "opaque":
            return "file" if size >= OPAQUE_WEIGHTS else "opaque"
        return "file"

    files = [content.Digest(f.sha256, kind, f.path, None, f.size) for f in report.manifest.files
             if (kind := kind_of(f.path, f.size)) is not None]
    tensors = [content.Digest(d.digest, "tensor", d.path, d.name, d.size) for d in identifying_tensors]
    return files + tensors


def looked_up(report: IngestReport, stored: list[content.Digest]) -> list[content.Digest]:
    """What a registration looks for: what it stores, and every other file of MIN_DISTINCTIVE_BYTES,
    so one tensor's bytes dumped raw into a file of their own are found by that tensor's digest."""
    kept = {(d.path, d.tensor) for d in stored}
    return stored + [content.Digest(f.sha256, "file", f.path, None, f.size) for f in report.manifest.files
                     if f.size >= MIN_DISTINCTIVE_BYTES and (f.path, None) not in kept]


@dataclass(frozen=True)
class Match:
    version: AssetVersion
    asset: str
    matched_by: str  # file | tensor: the strongest kind of digest that matched
    bytes: int  # how many of the new version's bytes the matched digests cover
    holds_most: bool  # the new version holds most of the matched one's bytes


def matches(uow, digests: list[content.Digest], total_bytes: int) -> list[Match]:  # noqa: ANN001
    """Registered versions that share enough of `digests` to be the same weights (of other assets, and of
    this one: a new version that keeps its predecessor's weights keeps its label too). By identifying
    digests: most of either version, or at least STRONG_BYTES. By weak ("opaque") digests alone: most
    of both, so a common tokenizer registered on its own links no model that ships it."""
    by_version: dict[str, list[content.Found]] = {}
    for found in content.find(uow, digests):
        by_version.setdefault(found.version_id, []).append(found)
    out = []
    for version_id, found in by_version.items():
        strong = {f.digest for f in found if f.kind != "opaque"}
        hit = {f.digest for f in found}
        covered = sum(d.size for d in digests if d.digest in hit and d.kind == "tensor") or \
            sum(d.size for d in digests if d.digest in hit)
        version = repo.version_by_id(uow, version_id)
        holds_most = covered >= MOST * version.total_size
        if strong:
            linked = holds_most or covered >= STRONG_BYTES or covered >= MOST * total_bytes
        else:
            linked = covered >= MOST * max(total_bytes, version.total_size)
        if not linked:
            continue
        by = "file" if any(f.kind != "tensor" for f in found) else "tensor"
        out.append(Match(version, repo.asset_name_of_version(uow, version), by, covered, holds_most))
    return sorted(out, key=lambda m: (m.asset, m.version.number))


@dataclass(frozen=True)
class Label:
    classification: Classification
    jurisdictions: tuple[str, ...]
    min_security_level: int


def strictest(versions: list[AssetVersion]) -> Label:
    allowed = set(versions[0].jurisdictions)
    for v in versions[1:]:
        allowed &= set(v.jurisdictions)
    return Label(max((v.classification for v in versions), key=lambda c: c.rank),
                 tuple(j for j in versions[0].jurisdictions if j in allowed),
                 max(v.min_security_level for v in versions))


def settle(ws: Workspace, a: Act, name: str, asked: dict, explicit: set[str], found: list[Match], zone: Zone
           ) -> tuple[dict, bool]:
    """The label the new version gets, and whether an exception let it be looser than what it matched:
    the strictest of what was asked and what it matched. A looser label asked for explicitly goes to
    the catalog (`forbid-relabel` unless excepted; the exception is spent by this registration); one
    that came by default is tightened silently (and recorded)."""
    if not found:
        return asked, False
    floor = strictest([m.version for m in found])
    tightened = {"classification": max(asked["classification"], floor.classification, key=lambda c: c.rank),
                 "jurisdictions": tuple(j for j in asked["jurisdictions"] if j in floor.jurisdictions),
                 "min_security_level": max(asked["min_security_level"], floor.min_security_level)}
    looser = [k for k in ("classification", "jurisdictions", "min_security_level")
              if k in explicit and tightened[k] != asked[k]]
    strictest_match = max(found, key=lambda m: (m.version.classification.rank, m.version.min_security_level))
    if looser:
        proposed = replace(strictest_match.version, classification=asked["classification"],
                           jurisdictions=asked["jurisdictions"], min_security_level=asked["min_security_level"])
        asset = Asset(id="", name=name, owner=asked.get("owner") or a.principal.name)
        excepted = frozenset.intersection(*(rq.active_exceptions(a.uow, m.asset, zone.name, datetime.now(timezone.utc))
                                            for m in found))
        decision = active_catalog(ws, a.uow).decide_register(RegisterFacts(
            principal=principal_facts(a.principal), asset=asset_facts(asset, proposed), zone=zone_facts(zone),
            matched=strictest_match.asset, relabels=True, exceptions=excepted))
        a.fields["policy_ids"] = decision.policy_ids
        if not decision.allowed:
            raise Denied(f"these files hold the same weights as {_named(found)}: "
                         f"{'; '.join(decision.reasons) or 'no policy permits it'} (asked a looser "
                         f"{', '.join(looser)}; an exception needs `custody exception propose --policy forbid-relabel "
                         f"--asset {strictest_match.asset} --zone {zone.name} ...`)")
        for m in found:  # one approved exception, one looser registration
            rq.spend_exception(a.uow, RELABEL, m.asset, zone.name, datetime.now(timezone.utc))
        return asked, True
    if not tightened["jurisdictions"]:
        raise Denied(f"these files hold the same weights as {_named(found)}, which may live in no jurisdiction in common "
                     f"with {', '.join(asked['jurisdictions'])}")
    if zone.jurisdiction not in tightened["jurisdictions"] or zone.security_level < tightened["min_security_level"]:
        raise Denied(f"these files hold the same weights as {_named(found)}, which may not live in zone {zone.name} "
                     f"({zone.jurisdiction}, security level {zone.security_level})")
    return {**asked, **tightened}, False


def _named(found: list[Match]) -> str:
    return ", ".join(f"{m.asset}@{m.version.number} ({m.version.classification.value}, "
                     f"{'/'.join(m.version.jurisdictions)})" for m in found[:3]) + (" and others" if len(found) > 3 else "")


def tighten(a: Act, found: list[Match], label: dict) -> list[dict]:
    """Raise every matched version the new one holds most of, whose label is looser, to the strictest of
    the two: the same weights registered loosely first do not stay loose once their owner registers
    them properly (and whoever raises them must hold most of their bytes). Jurisdictions are narrowed
    only to a non-empty set. Existing copies stay where they are; later decisions read the raised label."""
    raised = []
    for m in found:
        v = m.version
        if not m.holds_most:
            continue
        common = tuple(j for j in v.jurisdictions if j in label["jurisdictions"])
        tight = {"classification": max(v.classification, label["classification"], key=lambda c: c.rank),
                 "jurisdictions": common or v.jurisdictions,
                 "min_security_level": max(v.min_security_level, label["min_security_level"])}
        if (tight["classification"], tight["jurisdictions"], tight["min_security_level"]) == \
                (v.classification, v.jurisdictions, v.min_security_level):
            continue
        repo.set_version_label(a.uow, v.id, **tight)
        raised.append({"asset": m.asset, "version": v.number,
                       "from": [v.classification.value, list(v.jurisdictions), v.min_security_level],
                       "to": [tight["classification"].value, list(tight["jurisdictions"]), tight["min_security_level"]]})
    return raised


def record(a: Act, version_id: str, digests: list[content.Digest], found: list[Match]) -> list[dict]:
    """Store the new version's digests and its links; what `asset show` and the event list as "same content as"."""
    content.add_digests(a.uow, version_id, digests)
    for m in found:
        content.add_link(a.uow, version_id, m.version.id, m.matched_by, m.bytes)
    return [{"asset": m.asset, "version": m.version.number, "matched_by": m.matched_by, "bytes": m.bytes} for m in found]

"""Facts to Cedar input: the request, its context and the entities JSON, built per call.

Only the entities a decision reads are sent (the principal, the asset, the zones), as one small
JSON string parsed by Cedar against the catalog's schema, so an attribute the schema requires
and the facts lack is an error, and errors deny. Entity ids go in the structured
`{"type", "id"}` form, so no name can be read as Cedar syntax.
"""

from __future__ import annotations

import json

from custody.control.policy.context import (ApproveFacts, AssetFacts, CopyFacts, PrincipalFacts, ReadFacts, RegisterFacts,
                                            ZoneFacts)
from custody.control.policy.errors import PolicyError
from custody.domain.model import Classification

KINDS = ("backup", "dr", "research", "derivative", "migration", "restore", "drill")
READ = "read"  # a read request: decided by Action::"read", approved like a copy
RULE_KINDS = (*KINDS, READ)  # what the approval-rule table and approvals speak of
READ_WAYS = ("direct", "asking", "approved", "trace")
SENSITIVITY = {c.value: c.rank for c in Classification}  # public 0 ... critical 4

COPY = {"type": "Action", "id": "copy"}
APPROVE = {"type": "Action", "id": "approve"}
READ_ACTION = {"type": "Action", "id": "read"}
REGISTER = {"type": "Action", "id": "register"}


def _uid(kind: str, name: str) -> dict:
    return {"type": kind, "id": name}


def _user(p: PrincipalFacts) -> dict:
    attrs: dict = {"roles": list(p.roles)}
    if p.team is not None:
        attrs["team"] = p.team
    return {"uid": _uid("User", p.name), "attrs": attrs, "parents": [], "tags": dict(p.attributes)}


def _asset(a: AssetFacts) -> dict:
    rank = SENSITIVITY.get(a.classification)
    if rank is None:
        raise PolicyError(f"asset {a.name}: unknown classification {a.classification!r}")
    attrs: dict = {"classification": a.classification, "sensitivity": rank, "jurisdictions": list(a.jurisdictions),
                   "min_security_level": a.min_security_level, "owner": a.owner, "size_bytes": a.size_bytes,
                   "unsafe": a.unsafe}
    if a.parameters is not None:
        attrs["parameters"] = a.parameters
    return {"uid": _uid("Asset", a.name), "attrs": attrs, "parents": []}


def _zone(z: ZoneFacts) -> dict:
    return {"uid": _uid("Zone", z.name), "parents": [],
            "attrs": {"kind": z.kind, "jurisdiction": z.jurisdiction, "security_level": z.security_level,
                      "region": z.region}}


def _zones(*zones: ZoneFacts) -> list[dict]:
    seen: dict[str, ZoneFacts] = {}
    for z in zones:
        if z.name in seen and seen[z.name] != z:
            raise PolicyError(f"zone {z.name}: two different sets of facts for one zone")
        seen[z.name] = z
    return [_zone(z) for z in seen.values()]


def _check_kind(kind: str, kinds: tuple[str, ...] = KINDS) -> None:
    if kind not in kinds:
        raise PolicyError(f"unknown copy kind {kind!r}: use one of {', '.join(kinds)}")


def copy_input(f: CopyFacts) -> tuple[dict, str]:
    """The Cedar request and entities JSON for `copy`: principal User, resource Asset, zones in context."""
    _check_kind(f.kind)
    context: dict = {"kind": f.kind, "purpose": f.purpose, "break_glass": f.break_glass,
                     "exceptions": sorted(f.exceptions),
                     "transform": sorted(f.transform), "transform_bits": f.transform_bits,
                     "source": {"__entity": _uid("Zone", f.source.name)},
                     "destination": {"__entity": _uid("Zone", f.destination.name)}}
    if f.ttl_seconds is not None:
        context["ttl_seconds"] = f.ttl_seconds
    request = {"principal": _uid("User", f.principal.name), "action": COPY,
               "resource": _uid("Asset", f.asset.name), "context": context}
    entities = [_user(f.principal), _asset(f.asset), *_zones(f.source, f.destination)]
    return request, json.dumps(entities)


def approve_input(f: ApproveFacts) -> tuple[dict, str]:
    """The Cedar request and entities JSON for `approve`: principal is the approver, resource the asset."""
    _check_kind(f.kind, RULE_KINDS)
    context: dict = {"kind": f.kind, "requester": {"__entity": _uid("User", f.requester)},
                     "destination": {"__entity": _uid("Zone", f.destination.name)}}
    if f.requester_team is not None:
        context["requester_team"] = f.requester_team
    request = {"principal": _uid("User", f.approver.name), "action": APPROVE,
               "resource": _uid("Asset", f.asset.name), "context": context}
    entities = [_user(f.approver), _asset(f.asset), _zone(f.destination)]
    return request, json.dumps(entities)


def read_input(f: ReadFacts) -> tuple[dict, str]:
    """The Cedar request and entities JSON for `read`: principal User, resource Asset, the replica's zone in context."""
    if f.request not in READ_WAYS:
        raise PolicyError(f"unknown way of reading {f.request!r}: use one of {', '.join(READ_WAYS)}")
    context: dict = {"replica_kind": f.replica_kind, "zone": {"__entity": _uid("Zone", f.zone.name)},
                     "zone_name": f.zone.name, "own_copy": f.own_copy, "request": f.request, "purpose": f.purpose,
                     "attestation_required": f.attestation_required, "attested": f.attested}
    if f.ttl_seconds is not None:
        context["ttl_seconds"] = f.ttl_seconds
    if f.measurement is not None:
        context["measurement"] = f.measurement
    request = {"principal": _uid("User", f.principal.name), "action": READ_ACTION,
               "resource": _uid("Asset", f.asset.name), "context": context}
    return request, json.dumps([_user(f.principal), _asset(f.asset), _zone(f.zone)])


def register_input(f: RegisterFacts) -> tuple[dict, str]:
    """The Cedar request and entities JSON for `register`: the new version as the resource."""
    context = {"zone": {"__entity": _uid("Zone", f.zone.name)}, "matched": f.matched, "relabels": f.relabels,
               "exceptions": sorted(f.exceptions)}
    request = {"principal": _uid("User", f.principal.name), "action": REGISTER,
               "resource": _uid("Asset", f.asset.name), "context": context}
    return request, json.dumps([_user(f.principal), _asset(f.asset), _zone(f.zone)])

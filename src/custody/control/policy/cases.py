"""The catalog's own test cases (`tests.toml`): a request described in facts, and the decision expected.

Cases are parsed when the catalog loads, so a malformed case is refused with the catalog; they
are run by `custody policy test` before a catalog change is proposed or applied. A `[defaults]`
table gives the principal, asset and zones each case starts from, so a case states only what
it is about.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

from custody.control.policy.context import (ApproveFacts, AssetFacts, CopyFacts, PrincipalFacts, ReadFacts, RegisterFacts,
                                            ZoneFacts)
from custody.control.policy.durations import parse_duration
from custody.control.policy.errors import PolicyError
from custody.domain.errors import InvalidInput
from custody.domain.requests import Decision

FILE = "tests.toml"
_PARTS = ("principal", "asset", "source", "destination")
_CASE_KEYS = {"name", "action", "kind", "ttl", "purpose", "break_glass", "exceptions", "requester", "requester_team",
              "transform",
              "replica_kind", "own_copy", "request", "attestation_required", "attested", "measurement", "matched", "relabels", "allow", "policies", "approvals", "rule", *_PARTS}
_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "principal": {"name": str, "roles": list, "team": str, "attributes": dict},
    "asset": {"name": str, "classification": str, "jurisdictions": list, "min_security_level": int, "owner": str,
              "size_bytes": int, "unsafe": bool, "parameters": int},
    "source": {"name": str, "kind": str, "jurisdiction": str, "security_level": int, "region": str},
    "destination": {"name": str, "kind": str, "jurisdiction": str, "security_level": int, "region": str},
}
_OPTIONAL = {"team", "attributes", "parameters"}


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    passed: bool
    expected: dict
    got: dict
    detail: str  # empty when passed; else what differed, in one line


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    facts: CopyFacts | ApproveFacts | ReadFacts | RegisterFacts
    expected: dict  # allow, and optionally policies, approvals, rule

    def check(self, decision: Decision) -> CaseResult:
        req = decision.requirement
        got = {"allow": decision.allowed, "policies": list(decision.policy_ids),
               "approvals": req.approvals if req else None, "rule": req.rule if req else None,
               "errors": list(decision.errors)}
        problems = []
        if decision.allowed != self.expected["allow"]:
            why = "; ".join(decision.reasons + decision.errors) or "no reason given"
            problems.append(f"expected {'allow' if self.expected['allow'] else 'deny'}, "
                            f"got {'allow' if decision.allowed else 'deny'} ({why})")
        missing = [p for p in self.expected.get("policies", ()) if p not in decision.policy_ids]
        if missing:
            problems.append(f"expected deciding policies {missing} among {list(decision.policy_ids)}")
        for key in ("approvals", "rule"):
            if key in self.expected and got[key] != self.expected[key]:
                problems.append(f"expected {key} {self.expected[key]!r}, got {got[key]!r}")
        return CaseResult(self.name, not problems, dict(self.expected), got, "; ".join(problems))


def parse_cases(text: str) -> tuple[Case, ...]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{FILE}: not valid TOML: {e}") from None
    extra = set(doc) - {"defaults", "case"}
    if extra:
        raise PolicyError(f"{FILE}: unknown table {sorted(extra)[0]!r}: use [defaults] and [[case]]")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict) or set(defaults) - set(_PARTS):
        raise PolicyError(f"{FILE}: [defaults] may hold only {', '.join(_PARTS)} tables")
    raw = doc.get("case", [])
    if not isinstance(raw, list):
        raise PolicyError(f"{FILE}: cases must be [[case]] entries")
    cases = tuple(_case(i, entry, defaults) for i, entry in enumerate(raw, 1))
    names = [c.name for c in cases]
    for name in names:
        if names.count(name) > 1:
            raise PolicyError(f"{FILE}: case name {name!r} is used twice")
    return cases


def _case(index: int, entry: Any, defaults: dict) -> Case:
    if not isinstance(entry, dict):
        raise PolicyError(f"{FILE}: case {index} is not a table")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip() or "\n" in name:
        raise PolicyError(f"{FILE}: case {index} needs a one-line name")
    where = f"{FILE}: case {name!r}"
    unknown = set(entry) - _CASE_KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    parts = {p: _part(where, p, defaults.get(p, {}), entry.get(p, {})) for p in _PARTS}
    principal = PrincipalFacts(name=parts["principal"]["name"], roles=tuple(parts["principal"]["roles"]),
                               team=parts["principal"].get("team"),
                               attributes=dict(parts["principal"].get("attributes", {})))
    a = parts["asset"]
    asset = AssetFacts(name=a["name"], classification=a["classification"], jurisdictions=tuple(a["jurisdictions"]),
                       min_security_level=a["min_security_level"], owner=a["owner"], size_bytes=a["size_bytes"],
                       unsafe=a["unsafe"], parameters=a.get("parameters"))
    source, destination = (ZoneFacts(**parts[z]) for z in ("source", "destination"))
    action = entry.get("action", "copy")
    ttl = entry.get("ttl")
    try:
        ttl_seconds = parse_duration(_typed(where, "ttl", ttl, str)) if ttl is not None else None
    except InvalidInput as e:
        raise PolicyError(f"{where}: ttl: {e}") from None
    if action == "read":  # the replica lives in the case's source zone
        facts: CopyFacts | ApproveFacts | ReadFacts | RegisterFacts = ReadFacts(
            principal=principal, asset=asset, zone=source,
            replica_kind=_typed(where, "replica_kind", entry.get("replica_kind", "primary"), str),
            own_copy=_typed(where, "own_copy", entry.get("own_copy", False), bool),
            request=_typed(where, "request", entry.get("request", "direct"), str),
            purpose=_typed(where, "purpose", entry.get("purpose", "catalog test"), str), ttl_seconds=ttl_seconds,
            attestation_required=_typed(where, "attestation_required", entry.get("attestation_required", False), bool),
            attested=_typed(where, "attested", entry.get("attested", False), bool),
            measurement=_typed(where, "measurement", entry["measurement"], str) if "measurement" in entry else None)
        return Case(name=name, facts=facts, expected=_expected(where, entry))
    if action == "register":  # registered into the case's destination zone
        exceptions = _typed(where, "exceptions", entry.get("exceptions", []), list)
        facts = RegisterFacts(principal=principal, asset=asset, zone=destination,
                              matched=_typed(where, "matched", entry.get("matched", "known"), str),
                              relabels=_typed(where, "relabels", entry.get("relabels", False), bool),
                              exceptions=frozenset(_typed(where, "exceptions", e, str) for e in exceptions))
        return Case(name=name, facts=facts, expected=_expected(where, entry))
    kind = _typed(where, "kind", entry.get("kind"), str)
    if action == "copy":
        exceptions = _typed(where, "exceptions", entry.get("exceptions", []), list)
        facts = CopyFacts(
            principal=principal, asset=asset, source=source, destination=destination, kind=kind,
            ttl_seconds=ttl_seconds, purpose=_typed(where, "purpose", entry.get("purpose", "catalog test"), str),
            break_glass=_typed(where, "break_glass", entry.get("break_glass", False), bool),
            exceptions=frozenset(_typed(where, "exceptions", e, str) for e in exceptions),
            **_transform(where, entry.get("transform")))
    elif action == "approve":
        team = entry.get("requester_team")
        facts = ApproveFacts(approver=principal, requester=_typed(where, "requester", entry.get("requester"), str),
                             requester_team=_typed(where, "requester_team", team, str) if team is not None else None,
                             asset=asset, destination=destination, kind=kind)
    else:
        raise PolicyError(f"{where}: action must be \"copy\", \"approve\", \"read\" or \"register\"")
    return Case(name=name, facts=facts, expected=_expected(where, entry))


def _expected(where: str, entry: dict) -> dict:
    expected: dict = {"allow": _typed(where, "allow", entry.get("allow"), bool)}
    if "policies" in entry:
        expected["policies"] = [_typed(where, "policies", p, str) for p in _typed(where, "policies", entry["policies"], list)]
    if "approvals" in entry:
        expected["approvals"] = _typed(where, "approvals", entry["approvals"], int)
    if "rule" in entry:
        expected["rule"] = _typed(where, "rule", entry["rule"], str)
    return expected


def _part(where: str, part: str, default: Any, given: Any) -> dict:
    if not isinstance(default, dict) or not isinstance(given, dict):
        raise PolicyError(f"{where}: {part} must be a table")
    merged = {**default, **given}
    fields = _FIELDS[part]
    for key, value in merged.items():
        if key not in fields:
            raise PolicyError(f"{where}: unknown {part} field {key!r}")
        _typed(where, f"{part}.{key}", value, fields[key])
        items = value if isinstance(value, list) else [*value, *value.values()] if isinstance(value, dict) else []
        if any(not isinstance(item, str) for item in items):
            raise PolicyError(f"{where}: {part}.{key} must hold only strings")
    missing = [k for k in fields if k not in merged and k not in _OPTIONAL]
    if missing:
        raise PolicyError(f"{where}: {part} lacks {missing[0]!r} (give it in the case or in [defaults.{part}])")
    return merged


def _transform(where: str, text: Any) -> dict:
    """A derivative case's recipe (`transform = "int4:group=64"`) as the facts the decision sees."""
    if text is None:
        return {}
    from custody.domain import recipes

    try:
        recipe = recipes.parse(_typed(where, "transform", text, str))
    except InvalidInput as e:
        raise PolicyError(f"{where}: transform: {e}") from None
    return {"transform": recipe.kinds, "transform_bits": recipe.bits}


def _typed(where: str, key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    # bool is an int in Python; a TOML `true` where a number is expected is a mistake, not a 1
    if value is None or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise PolicyError(f"{where}: {key} is missing or not a {getattr(kind, '__name__', kind)}")
    return value

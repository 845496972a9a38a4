"""The approval-rule table (`rules.toml`): which allowed copies need how many approvals, from whom.

Cedar says whether a copy may happen at all; this table says what it takes. Rules are tried in
order and the first match wins; the last rule must match everything, so no allowed copy is ever
without a requirement.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from custody.control.policy.cedar_input import RULE_KINDS, SENSITIVITY
from custody.control.policy.context import CopyFacts, ReadFacts
from custody.control.policy.durations import format_duration, parse_duration
from custody.control.policy.errors import PolicyError
from custody.domain.errors import InvalidInput
from custody.domain.requests import ApprovalRequirement

FILE = "rules.toml"
DEFAULT_WINDOW = 72 * 3600
MAX_APPROVALS = 20
_MATCH_KEYS = ("kinds", "min_classification", "min_bytes", "break_glass", "unsafe", "max_bits")
_RESULT_KEYS = ("approvals", "roles", "distinct_teams", "mfa", "max_ttl", "window")


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    name: str
    kinds: tuple[str, ...] | None
    min_classification: str | None
    min_bytes: int | None
    break_glass: bool | None
    unsafe: bool | None
    requirement: ApprovalRequirement
    max_bits: int | None = None  # a derivative whose recipe keeps at most this many bits per weight

    @property
    def catch_all(self) -> bool:
        return (self.kinds, self.min_classification, self.min_bytes, self.break_glass, self.unsafe,
                self.max_bits) == (None,) * 6

    def matches(self, f: CopyFacts | ReadFacts) -> bool:
        if self.kinds is not None and f.kind not in self.kinds:
            return False
        if self.min_classification is not None and \
                SENSITIVITY.get(f.asset.classification, 99) < SENSITIVITY[self.min_classification]:
            return False
        if self.min_bytes is not None and f.asset.size_bytes < self.min_bytes:
            return False
        if self.break_glass is not None and f.break_glass != self.break_glass:
            return False
        if self.max_bits is not None and not 0 < getattr(f, "transform_bits", 0) <= self.max_bits:
            return False
        return self.unsafe is None or f.asset.unsafe == self.unsafe

    def describe(self) -> dict:
        match = {k: v for k, v in (("kinds", list(self.kinds) if self.kinds else None),
                                   ("min_classification", self.min_classification), ("min_bytes", self.min_bytes),
                                   ("break_glass", self.break_glass), ("unsafe", self.unsafe),
                                   ("max_bits", self.max_bits)) if v is not None}
        r = self.requirement
        return {"name": self.name, "match": match, "approvals": r.approvals, "roles": list(r.roles),
                "distinct_teams": r.distinct_teams, "mfa": r.mfa,
                "max_ttl": format_duration(r.max_ttl_seconds) if r.max_ttl_seconds else None,
                "window": format_duration(r.window_seconds)}


def first_match(rules: tuple[ApprovalRule, ...], f: CopyFacts | ReadFacts) -> ApprovalRule:
    for rule in rules:
        if rule.matches(f):
            return rule
    raise AssertionError("the rule table has no catch-all")  # load() refuses such a table


def parse_rules(text: str) -> tuple[ApprovalRule, ...]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{FILE}: not valid TOML: {e}") from None
    extra = set(doc) - {"rule", "budgets", "marks"}  # [budgets]: see budgets.py; [marks]: marking.py
    if extra:
        raise PolicyError(f"{FILE}: unknown table {sorted(extra)[0]!r}: only [[rule]], [budgets] and [marks] are allowed")
    raw = doc.get("rule")
    if not isinstance(raw, list) or not raw:
        raise PolicyError(f"{FILE}: no [[rule]] entries")
    rules = tuple(_rule(i, entry) for i, entry in enumerate(raw, 1))
    names = [r.name for r in rules]
    for name in names:
        if names.count(name) > 1:
            raise PolicyError(f"{FILE}: rule name {name!r} is used twice")
    for rule in rules[:-1]:
        if rule.catch_all:
            raise PolicyError(f"{FILE}: rule {rule.name!r} matches everything, so the rules after it never apply")
    if not rules[-1].catch_all:
        raise PolicyError(f"{FILE}: the last rule ({rules[-1].name!r}) must be a catch-all with no match fields")
    return rules


def _rule(index: int, entry: object) -> ApprovalRule:
    if not isinstance(entry, dict):
        raise PolicyError(f"{FILE}: rule {index} is not a table")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip() or "\n" in name:
        raise PolicyError(f"{FILE}: rule {index} needs a one-line name")
    where = f"{FILE}: rule {name!r}"
    unknown = set(entry) - {"name", *_MATCH_KEYS, *_RESULT_KEYS}
    if unknown:
        raise PolicyError(f"{where}: unknown field {sorted(unknown)[0]!r}")

    kinds = entry.get("kinds")
    if kinds is not None:
        if not isinstance(kinds, list) or not kinds or any(k not in RULE_KINDS for k in kinds):
            raise PolicyError(f"{where}: kinds must be a non-empty list of {', '.join(RULE_KINDS)}")
        kinds = tuple(kinds)
    min_class = entry.get("min_classification")
    if min_class is not None and min_class not in SENSITIVITY:
        raise PolicyError(f"{where}: min_classification must be one of {', '.join(SENSITIVITY)}")
    min_bytes = entry.get("min_bytes")
    if min_bytes is not None and (type(min_bytes) is not int or min_bytes < 0):
        raise PolicyError(f"{where}: min_bytes must be a whole number of bytes")
    max_bits = entry.get("max_bits")
    if max_bits is not None and (type(max_bits) is not int or not 1 <= max_bits <= 32):
        raise PolicyError(f"{where}: max_bits must be a whole number of bits from 1 to 32")
    for flag in ("break_glass", "unsafe", "distinct_teams", "mfa"):
        if flag in entry and type(entry[flag]) is not bool:
            raise PolicyError(f"{where}: {flag} must be true or false")
    if entry.get("mfa") is False:
        raise PolicyError(f"{where}: mfa = false is not allowed: every approval needs a verified one-time code")

    approvals = entry.get("approvals")
    if type(approvals) is not int or not 0 <= approvals <= MAX_APPROVALS:
        raise PolicyError(f"{where}: approvals must be a whole number from 0 to {MAX_APPROVALS}")
    roles = entry.get("roles", [])
    if not isinstance(roles, list) or any(not isinstance(r, str) or not r for r in roles):
        raise PolicyError(f"{where}: roles must be a list of role names")
    if approvals and not roles:
        raise PolicyError(f"{where}: a rule that needs approvals must name the approving roles")
    distinct = entry.get("distinct_teams", False)
    if distinct and approvals < 2:
        raise PolicyError(f"{where}: distinct_teams needs at least 2 approvals")
    max_ttl = _duration(where, "max_ttl", entry.get("max_ttl"))
    window = _duration(where, "window", entry.get("window")) or DEFAULT_WINDOW

    requirement = ApprovalRequirement(rule=name, approvals=approvals, roles=tuple(roles), distinct_teams=distinct,
                                      mfa=True, max_ttl_seconds=max_ttl, window_seconds=window)
    return ApprovalRule(name=name, kinds=kinds, min_classification=min_class, min_bytes=min_bytes,
                        break_glass=entry.get("break_glass"), unsafe=entry.get("unsafe"), requirement=requirement,
                        max_bits=max_bits)


def _duration(where: str, key: str, value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PolicyError(f"{where}: {key} must be a duration string such as \"30d\"")
    try:
        return parse_duration(value)
    except InvalidInput as e:
        raise PolicyError(f"{where}: {key}: {e}") from None

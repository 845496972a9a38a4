"""A policy catalog, parsed once: Cedar schema and policies, approval rules, and the catalog's own tests.

Loading refuses anything doubtful (syntax, schema violations, a policy without `@id` or
`@reason`, a duplicate id, a rule table without a catch-all, a schema that cannot take the
facts custody sends), so a catalog that loads can decide. Deciding never re-parses: the schema
and policy set are Cedar handles, and each call sends only a small entities JSON. Any Cedar
error is a deny (DESIGN.md: fail closed), and the error is listed in the decision.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import cedarpy

from custody.control.policy import cedar_input
from custody.control.policy.budgets import Budgets, parse_budgets
from custody.control.policy.marking import Marking, parse_marking
from custody.control.policy.cases import Case, CaseResult, parse_cases
from custody.control.policy.context import (ApproveFacts, AssetFacts, CopyFacts, PrincipalFacts, ReadFacts, RegisterFacts,
                                            ZoneFacts)
from custody.control.policy.durations import format_duration, parse_duration
from custody.control.policy.errors import PolicyError
from custody.control.policy.rules import ApprovalRule, first_match, parse_rules
from custody.domain.requests import Decision

__all__ = ["Catalog", "PolicyError", "PolicyInfo", "parse_duration"]  # parse_duration: callers import it from here

SCHEMA_FILE = "schema.cedarschema"
RULES_FILE = "rules.toml"
TESTS_FILE = "tests.toml"
MAX_FILE_BYTES = 1 << 20
_HASH_DOMAIN = b"custody policy catalog v1\x00"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
_POSITIONAL = re.compile(r"`(policy\d+)`")
# Errors that mean the facts did not fit the schema (as opposed to a policy failing at run time).
_INPUT_ERRORS = ("failed to build request", "failed to parse entities", "entity does not conform")


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    id: str
    reason: str
    effect: str  # permit | forbid
    actions: tuple[str, ...]  # the action ids its scope names; ("*",) for any
    file: str


class Catalog:
    """Use `Catalog.load(folder)`; the constructor is for `load` only."""

    def __init__(self, folder: Path, files: dict[str, str], digest: str, schema: cedarpy.Schema,
                 policy_set: cedarpy.PolicySet, policies: tuple[PolicyInfo, ...], positional: dict[str, PolicyInfo],
                 rules: tuple[ApprovalRule, ...], cases: tuple[Case, ...]) -> None:
        self.folder = folder
        self.files = files
        self.hash = digest
        self.policies = policies
        self.rules = rules
        self.cases = cases
        self.budgets: Budgets = Budgets()  # [budgets] of rules.toml, set by load
        self.marking: Marking = Marking()  # [marks] of rules.toml, set by load
        self._schema = schema
        self._policy_set = policy_set
        self._positional = positional  # Cedar's policy0, policy1, ... -> the policy behind it
        self._order = {p.id: i for i, p in enumerate(policies)}

    # ---- loading -------------------------------------------------------------------------

    @classmethod
    def default_folder(cls) -> Path:
        return Path(__file__).resolve().parent / "default"

    @classmethod
    def folder_hash(cls, folder: Path) -> str:
        """The hash `load` would give, without parsing: checked before every decision.

        Re-read and re-hashed whenever any file's or folder's inode, size, mtime or ctime moved
        (ctime cannot be set back from user space), else the hash of the last read is reused."""
        folder = Path(folder)
        seen = _HASHED.get(folder)
        if seen is not None and _fingerprint(folder, seen[0]) == seen[1]:
            return seen[2]
        files = _read_files(folder)
        paths = sorted({folder, *(folder / rel for rel in files), *(d for d in folder.rglob("*") if d.is_dir())})
        digest = _hash(files)
        _HASHED[folder] = (paths, _fingerprint(folder, paths), digest)
        return digest

    @classmethod
    def load(cls, folder: Path) -> "Catalog":
        folder = Path(folder)
        raw = _read_files(folder)
        files: dict[str, str] = {}
        for rel, data in raw.items():
            try:
                files[rel] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise PolicyError(f"{rel}: not UTF-8 text") from None

        try:
            schema = cedarpy.Schema.from_str(files[SCHEMA_FILE])
        except ValueError as e:
            raise PolicyError(f"{SCHEMA_FILE}: {_one_line(e)}") from None

        policy_files = [rel for rel in files if rel.endswith(".cedar")]
        infos: list[PolicyInfo] = []
        for rel in policy_files:
            infos.extend(_check_policy_file(rel, files[rel], schema))
        if not infos:
            raise PolicyError(f"{folder}: the catalog has no policies, so it would deny everything")
        seen: dict[str, str] = {}
        for info in infos:
            if info.id in seen:
                raise PolicyError(f"{info.file}: policy id {info.id!r} is also used in {seen[info.id]}")
            seen[info.id] = info.file

        combined = "\n".join(files[rel] for rel in policy_files)
        policy_set = cedarpy.PolicySet.from_str(combined)
        by_id = {i.id: i for i in infos}
        est = json.loads(cedarpy.policies_to_json_str(combined))["staticPolicies"]
        positional = {pos: by_id[p["annotations"]["id"]] for pos, p in est.items()}

        rules = parse_rules(files[RULES_FILE])
        cases = parse_cases(files.get(TESTS_FILE, ""))
        catalog = cls(folder, files, _hash(raw), schema, policy_set, tuple(infos), positional, rules, cases)
        catalog.budgets = parse_budgets(files[RULES_FILE])
        catalog.marking = parse_marking(files[RULES_FILE])
        catalog._check_schema_fits()
        for case in cases:
            unknown = [p for p in case.expected.get("policies", ()) if p not in by_id and not p.startswith("rule:")]
            if unknown:
                raise PolicyError(f"{TESTS_FILE}: case {case.name!r} names unknown policy {unknown[0]!r}")
        return catalog

    def _check_schema_fits(self) -> None:
        """Refuse a schema that cannot take what custody sends: it would deny every request, silently."""
        for facts in _sample_facts():
            request, entities = _input(facts)
            try:
                result = cedarpy.is_authorized(request, self._policy_set, entities, schema=self._schema)
            except Exception as e:  # noqa: BLE001 - an engine that cannot answer here will not answer later
                raise PolicyError(f"{SCHEMA_FILE}: the policy engine cannot decide with it: {_one_line(e)}") from None
            for err in result.diagnostics.errors:
                if (isinstance(facts, ReadFacts) and _NO_READS in err) or \
                        (isinstance(facts, RegisterFacts) and _NO_REGISTER in err):
                    continue  # a catalog from before this action: it loads, and the action is denied
                if any(marker in err for marker in _INPUT_ERRORS):
                    raise PolicyError(f"{SCHEMA_FILE}: does not accept the facts custody sends for "
                                      f"{request['action']['id']}: {_one_line(_without(err, entities))}")

    # ---- deciding ------------------------------------------------------------------------

    def decide_copy(self, facts: CopyFacts) -> Decision:
        """Cedar first (may this copy happen at all?), then the rule table (what does it take?)."""
        request, entities = cedar_input.copy_input(facts)
        decision = self._authorize(request, entities, "copy")
        if not decision.allowed:
            return decision
        return self._with_requirement(decision, facts)

    def _with_requirement(self, decision: Decision, facts: CopyFacts | ReadFacts) -> Decision:
        """An allowed decision with what the first matching approval rule requires (a TTL above its cap denies)."""
        rule = first_match(self.rules, facts)
        cap = rule.requirement.max_ttl_seconds
        if cap is not None and facts.ttl_seconds is not None and facts.ttl_seconds > cap:
            return Decision(False, (f"rule:{rule.name}",),
                            (f"TTL {format_duration(facts.ttl_seconds)} is above the {format_duration(cap)} "
                             f"that approval rule {rule.name!r} allows",), None, self.hash)
        return replace(decision, requirement=rule.requirement)

    def decide_read(self, facts: ReadFacts) -> Decision:
        """Cedar first (may this principal read this replica, this way?); when a read request is being
        asked for, the rule table then says what approving it takes, like for a copy."""
        request, entities = cedar_input.read_input(facts)
        decision = self._authorize(request, entities, "read")
        if any(_NO_READS in e for e in decision.errors):
            return Decision(False, (), ("the policy catalog in force does not decide reads (its schema has no "
                                        "Action::\"read\"): propose one that does",), None, self.hash, decision.errors)
        if not decision.allowed or facts.request != "asking":
            return decision
        return self._with_requirement(decision, facts)

    def decide_register(self, facts: RegisterFacts) -> Decision:
        """May content that matches registered weights be registered under the label asked for?"""
        request, entities = cedar_input.register_input(facts)
        decision = self._authorize(request, entities, "registration")
        if any(_NO_REGISTER in e for e in decision.errors):
            return Decision(False, (), ("the policy catalog in force does not decide registrations of known content "
                                        "(its schema has no Action::\"register\"): propose one that does",), None,
                            self.hash, decision.errors)
        return decision

    def decide_approval(self, facts: ApproveFacts) -> Decision:
        """May this principal approve this request? Quorum and distinct teams are the workflow's to count."""
        request, entities = cedar_input.approve_input(facts)
        return self._authorize(request, entities, "approval")

    def _authorize(self, request: dict, entities: str, what: str) -> Decision:
        """Cedar's answer as a Decision without a requirement; any error makes it a deny."""
        try:
            result = cedarpy.is_authorized(request, self._policy_set, entities, schema=self._schema)
            raw_errors = result.diagnostics.errors
            fired = self._ids(result.diagnostics.reasons)
            allowed = result.allowed
        except Exception as e:  # noqa: BLE001 - whatever the engine raises, the answer is no
            raw_errors, fired, allowed = [f"policy engine failed: {e}"], (), False
        if raw_errors:
            failed = self._ids(_POSITIONAL.findall(" ".join(raw_errors)))
            ids = tuple(dict.fromkeys((*(() if allowed else fired), *failed)))
            reasons = (f"the {what} is denied because policy evaluation failed (fail closed)",
                       *(self._reason(i) for i in ids))
            errors = tuple(self._name_positional(_without(e, entities)) for e in raw_errors)
            return Decision(False, ids, reasons, None, self.hash, errors)
        reasons = tuple(self._reason(i) for i in fired)
        if not allowed:
            return Decision(False, fired, reasons or (f"no policy permits this {what} (default deny)",), None,
                            self.hash)
        return Decision(True, fired, reasons, None, self.hash)

    def _ids(self, positional: list[str]) -> tuple[str, ...]:
        ids = {self._positional[p].id for p in positional if p in self._positional}
        return tuple(sorted(ids, key=self._order.__getitem__))

    def _reason(self, policy_id: str) -> str:
        return self.policies[self._order[policy_id]].reason

    def _name_positional(self, error: str) -> str:
        """Cedar names policies policy0, policy1...; people know them by @id."""
        return _one_line(_POSITIONAL.sub(
            lambda m: f"`{self._positional[m.group(1)].id}`" if m.group(1) in self._positional else m.group(0), error))

    # ---- the catalog's own tests and description -----------------------------------------

    def run_tests(self) -> list[CaseResult]:
        results = []
        for case in self.cases:
            f = case.facts
            decision = (self.decide_copy(f) if isinstance(f, CopyFacts) else self.decide_read(f)
                        if isinstance(f, ReadFacts) else self.decide_register(f) if isinstance(f, RegisterFacts)
                        else self.decide_approval(f))
            results.append(case.check(decision))
        return results

    def describe(self) -> dict:
        return {"hash": self.hash, "files": sorted(self.files),
                "policies": [{"id": p.id, "reason": p.reason, "effect": p.effect, "actions": list(p.actions),
                              "file": p.file} for p in self.policies],
                "rules": [r.describe() for r in self.rules], "budgets": self.budgets.describe(),
                "marks": self.marking.describe(),
                "cases": len(self.cases)}


_NO_READS = 'action `Action::"read"` does not exist'
_NO_REGISTER = 'action `Action::"register"` does not exist'
Facts = CopyFacts | ApproveFacts | ReadFacts | RegisterFacts


def _input(facts: Facts) -> tuple[dict, str]:
    if isinstance(facts, CopyFacts):
        return cedar_input.copy_input(facts)
    if isinstance(facts, ReadFacts):
        return cedar_input.read_input(facts)
    if isinstance(facts, RegisterFacts):
        return cedar_input.register_input(facts)
    return cedar_input.approve_input(facts)


def _check_policy_file(rel: str, text: str, schema: cedarpy.Schema) -> list[PolicyInfo]:
    try:
        cedarpy.PolicySet.from_str(text)
        est = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as e:
        raise PolicyError(f"{rel}: Cedar syntax error: {_one_line(e)}") from None
    if est.get("templates"):
        raise PolicyError(f"{rel}: policy templates are not supported; write static policies")
    infos = []
    for pos, policy in sorted(est["staticPolicies"].items(), key=lambda kv: int(kv[0].removeprefix("policy"))):
        notes = policy.get("annotations", {})
        where = f"{rel}: policy {int(pos.removeprefix('policy')) + 1}"
        pid, reason = notes.get("id"), notes.get("reason")
        if not pid:
            raise PolicyError(f"{where} has no @id(\"...\")")
        if not _ID_RE.match(pid):
            raise PolicyError(f"{where}: @id {pid[:40]!r} must be 1-100 of A-Z a-z 0-9 . _ : -")
        if not reason or not reason.strip():
            raise PolicyError(f"{rel}: policy {pid!r} has no @reason(\"...\")")
        if "\n" in reason or "\r" in reason:
            raise PolicyError(f"{rel}: policy {pid!r}: @reason must be one line")
        infos.append(PolicyInfo(pid, reason.strip(), policy["effect"], _actions(policy["action"]), rel))
    result = cedarpy.validate_policies(text, schema)
    if not result.validation_passed:
        err = result.errors[0] if result.errors else None
        names = result.id_annotations_by_policy_id
        pid = names.get(err.policy_id, err.policy_id) if err else "?"
        message = _POSITIONAL.sub(lambda m: f"`{names.get(m.group(1), m.group(1))}`", err.error) if err else "?"
        raise PolicyError(f"{rel}: policy {pid!r} does not fit {SCHEMA_FILE}: {_one_line(message)}")
    return infos


def _actions(scope: dict) -> tuple[str, ...]:
    if "entity" in scope:
        return (scope["entity"]["id"],)
    if "entities" in scope:
        return tuple(e["id"] for e in scope["entities"])
    return ("*",)


def _read_files(folder: Path) -> dict[str, bytes]:
    """Every catalog file, by POSIX path relative to `folder`, in sorted order. Other files are ignored."""
    if not folder.is_dir():
        raise PolicyError(f"{folder}: no policy catalog folder here")
    paths = [folder / SCHEMA_FILE, folder / RULES_FILE, *folder.rglob("*.cedar")]
    if (folder / TESTS_FILE).exists():
        paths.append(folder / TESTS_FILE)
    out: dict[str, bytes] = {}
    for path in sorted(paths, key=lambda p: p.relative_to(folder).as_posix()):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise PolicyError(f"{rel}: a policy catalog may not hold symbolic links")
        if not path.is_file():
            raise PolicyError(f"{rel}: missing from the policy catalog in {folder}")
        data = path.read_bytes()
        if len(data) > MAX_FILE_BYTES:
            raise PolicyError(f"{rel}: larger than {MAX_FILE_BYTES} bytes")
        out[rel] = data
    return out


_HASHED: dict[Path, tuple[list[Path], tuple, str]] = {}  # folder -> (paths, their fingerprint, hash)


def _fingerprint(folder: Path, paths: list[Path]) -> tuple:
    """Stat of the catalog's files and of every folder in it (a new file changes its folder)."""
    out = []
    for p in paths:
        try:
            st = p.lstat()
        except OSError:
            return ()
        out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode))
    return tuple(out)


def _hash(files: dict[str, bytes]) -> str:
    """SHA-256 over length-framed (path, bytes) pairs in path order: no two catalogs share a framing."""
    h = hashlib.sha256(_HASH_DOMAIN)
    for rel in sorted(files):
        name = rel.encode("utf-8")
        h.update(struct.pack(">Q", len(name)) + name + struct.pack(">Q", len(files[rel])))
        h.update(files[rel])
    return h.hexdigest()


def _without(error: str, entities: str) -> str:
    """Cedar quotes the whole entities document in some errors; the facts are known, the cause is what matters."""
    return error.replace(f" from:\n{entities}:", ":").replace(entities, "<entities>")


def _one_line(e: object) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = " ".join(lines) if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _sample_facts() -> list[Facts]:
    """Two shapes of facts, with every optional field present and with every one absent."""
    zone = ZoneFacts("sample-a", "production", "US", 3, "us-east")
    other = ZoneFacts("sample-b", "backup", "US", 3, "us-east")
    out: list[Facts] = []
    for full in (True, False):
        who = PrincipalFacts("sample", ("admin",), "infra" if full else None, {"clearance": "high"} if full else {})
        asset = AssetFacts("sample", "internal", ("US",), 1, "owner", 1, False, 1 if full else None)
        out.append(CopyFacts(who, asset, zone, other, "backup", 3600 if full else None, "check", False,
                             frozenset({"x"}) if full else frozenset()))
        out.append(ApproveFacts(who, "someone", "research" if full else None, asset, other, "backup"))
        out.append(ReadFacts(who, asset, zone, "primary", full, "asking" if full else "direct", "check",
                             3600 if full else None))
        out.append(RegisterFacts(who, asset, zone, "other", full, frozenset({"x"}) if full else frozenset()))
    return out

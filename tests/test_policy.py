"""The policy catalog: loading refuses what it cannot trust, deciding fails closed, the default says what DESIGN.md says.

Real cedarpy throughout; hand-made catalogs are written to tmp folders.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import cedarpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from custody.control.policy import (ApproveFacts, AssetFacts, Catalog, CopyFacts, PolicyError, PrincipalFacts,
                                    ReadFacts, RegisterFacts, ZoneFacts, format_duration, parse_duration)
from custody.control.policy.rules import parse_rules
from custody.control.policy import cedar_input
from custody.control.policy.bench import bench_decisions
from custody.control.policy.durations import MAX_SECONDS
from custody.domain.errors import InvalidInput

DAY = 86_400
DEFAULT = Catalog.load(Catalog.default_folder())

RITA = PrincipalFacts("rita", ("researcher",), "research", {"clearance": "high"})
OLGA = PrincipalFacts("olga", ("backup-operator",), "infra")
OTTO = PrincipalFacts("otto", ("on-call",), "sre")
LENA = PrincipalFacts("lena", ("ml-lead",), "ml")
ADA = PrincipalFacts("ada", ("admin",), "infra")
SAM = PrincipalFacts("sam", ("security",), "security")
MODEL = AssetFacts("llama-small", "internal", ("US", "EU"), 2, "ml-platform", 500_000_000, False, 10**9)
PROD = ZoneFacts("prod-us", "production", "US", 4, "us-east-1")
RESEARCH = ZoneFacts("research-us", "research", "US", 3, "us-east-1")
QUARANTINE = ZoneFacts("quarantine-us", "quarantine", "US", 3, "us-east-1")
BACKUP = ZoneFacts("backup-us", "backup", "US", 3, "us-east-1")
ARCHIVE = ZoneFacts("archive-eu", "archive", "EU", 3, "eu-west-1")
DR = ZoneFacts("dr-eu", "dr", "EU", 4, "eu-west-1")
PROD_EU = ZoneFacts("prod-eu", "production", "EU", 4, "eu-west-1")


def research(**changes) -> CopyFacts:
    facts = CopyFacts(RITA, MODEL, PROD, RESEARCH, "research", 7 * DAY, "eval run")
    return replace(facts, **changes)


def approve(**changes) -> ApproveFacts:
    return replace(ApproveFacts(LENA, "rita", "research", MODEL, RESEARCH, "research"), **changes)


def catalog_dir(tmp_path: Path, files: dict[str, str | None] | None = None) -> Path:
    """A copy of the default catalog with some files replaced (text) or removed (None)."""
    folder = tmp_path / "policies"
    shutil.copytree(Catalog.default_folder(), folder)
    for rel, text in (files or {}).items():
        if text is None:
            (folder / rel).unlink()
        else:
            (folder / rel).write_text(text)
    return folder


def refused(folder: Path) -> str:
    with pytest.raises(PolicyError) as info:
        Catalog.load(folder)
    message = str(info.value)
    assert "\n" not in message and message
    assert isinstance(info.value, InvalidInput)
    return message


# ---- the default catalog -----------------------------------------------------------------------


def test_default_catalog_loads_and_its_own_cases_pass() -> None:
    results = DEFAULT.run_tests()
    assert len(results) >= 15
    assert [r for r in results if not r.passed] == []
    assert {p.id for p in DEFAULT.policies} >= {
        "permit-backup-operators", "permit-dr-responders", "permit-research", "permit-migration",
        "forbid-jurisdiction", "forbid-security-level", "forbid-research-zone", "forbid-research-without-ttl",
        "forbid-critical-leaving-production", "forbid-backup-zone", "forbid-dr-zone", "forbid-break-glass",
        "permit-approve", "forbid-self-approval", "forbid-approve-without-role"}


def test_default_cases_name_every_policy_and_rule() -> None:
    named = {p for case in DEFAULT.cases for p in case.expected.get("policies", ())}
    rules = {case.expected["rule"] for case in DEFAULT.cases if "rule" in case.expected}
    rules |= {p.removeprefix("rule:") for p in named if p.startswith("rule:")}
    assert {p.id for p in DEFAULT.policies} <= named
    assert {r.name for r in DEFAULT.rules} <= rules


@pytest.mark.parametrize(("principal", "kind", "destination", "source", "policy"), [
    (OLGA, "backup", BACKUP, PROD, "permit-backup-operators"),
    (ADA, "backup", ARCHIVE, PROD, "permit-backup-operators"),
    (ADA, "dr", DR, PROD, "permit-backup-operators"),
    (OTTO, "dr", DR, PROD, "permit-dr-responders"),
    (LENA, "dr", DR, PROD, "permit-dr-responders"),
    (OLGA, "dr", PROD, DR, "permit-backup-operators"),  # a restore from dr into production
    (RITA, "research", RESEARCH, PROD, "permit-research"),
    (LENA, "derivative", QUARANTINE, PROD, "permit-research"),
    (ADA, "migration", PROD_EU, PROD, "permit-migration"),
    (LENA, "migration", PROD_EU, PROD, "permit-migration"),
])
def test_permits_by_role(principal, kind, destination, source, policy) -> None:
    decision = DEFAULT.decide_copy(research(principal=principal, kind=kind, destination=destination, source=source))
    assert decision.allowed, decision
    assert policy in decision.policy_ids
    assert decision.requirement is not None and decision.catalog_hash == DEFAULT.hash
    assert decision.reasons and all(decision.reasons)


@pytest.mark.parametrize(("principal", "kind", "destination"), [
    (RITA, "backup", BACKUP), (RITA, "dr", DR), (RITA, "migration", PROD_EU), (OLGA, "research", RESEARCH),
    (OTTO, "backup", BACKUP), (OTTO, "migration", PROD_EU), (SAM, "research", RESEARCH),
    (PrincipalFacts("nobody", ()), "backup", BACKUP),
])
def test_no_permit_means_deny(principal, kind, destination) -> None:
    decision = DEFAULT.decide_copy(research(principal=principal, kind=kind, destination=destination))
    assert not decision.allowed
    assert decision.policy_ids == () and decision.requirement is None
    assert "default deny" in decision.reasons[0]


# Facts that trigger exactly one forbid of the default catalog each.
TRIGGERS: dict[str, CopyFacts] = {
    "forbid-jurisdiction": research(destination=replace(RESEARCH, name="research-cn", jurisdiction="CN")),
    "forbid-security-level": research(destination=replace(RESEARCH, name="research-sl1", security_level=1)),
    "forbid-research-zone": research(destination=PROD_EU),
    "forbid-research-without-ttl": research(ttl_seconds=None),
    "forbid-critical-leaving-production": research(principal=ADA, kind="migration", destination=DR,
                                                   asset=replace(MODEL, classification="critical")),
    "forbid-backup-zone": research(principal=OLGA, kind="backup", destination=RESEARCH),
    "forbid-dr-zone": research(principal=OLGA, kind="dr", destination=BACKUP),
    "forbid-break-glass": research(principal=OLGA, kind="dr", destination=DR, break_glass=True),
    "forbid-restore-zone": research(principal=OLGA, kind="restore", destination=RESEARCH, source=BACKUP),
    "forbid-drill-zone": research(principal=OLGA, kind="drill", destination=BACKUP, source=BACKUP, ttl_seconds=3600),
}


@pytest.mark.parametrize("policy", sorted(TRIGGERS))
def test_each_forbid_denies_and_names_its_id(policy: str) -> None:
    decision = DEFAULT.decide_copy(TRIGGERS[policy])
    assert not decision.allowed
    assert decision.policy_ids == (policy,)
    assert decision.reasons == (next(p.reason for p in DEFAULT.policies if p.id == policy),)
    assert decision.requirement is None and decision.errors == ()


def test_every_copy_forbid_has_a_trigger() -> None:
    forbids = {p.id for p in DEFAULT.policies if p.effect == "forbid" and "copy" in p.actions}
    assert forbids == set(TRIGGERS)


def test_derivative_without_ttl_and_research_into_quarantine() -> None:
    assert DEFAULT.decide_copy(research(kind="derivative", ttl_seconds=None)).policy_ids == \
        ("forbid-research-without-ttl",)
    assert DEFAULT.decide_copy(research(destination=QUARANTINE)).allowed


def test_critical_assets_leave_production_only_as_backup_dr_or_derivative() -> None:
    critical = replace(MODEL, classification="critical")
    assert DEFAULT.decide_copy(research(principal=OLGA, kind="backup", destination=BACKUP, asset=critical)).allowed
    assert DEFAULT.decide_copy(research(principal=OTTO, kind="dr", destination=DR, asset=critical)).allowed
    assert DEFAULT.decide_copy(research(kind="derivative", asset=critical)).allowed
    denied = DEFAULT.decide_copy(research(asset=critical))
    assert denied.policy_ids == ("forbid-critical-leaving-production",)
    # from a zone that is not production (a backup, a quarantine copy) the rule applies all the same:
    # otherwise a copy of a copy would launder a critical asset out of production
    assert DEFAULT.decide_copy(research(asset=critical, source=QUARANTINE)).policy_ids == \
        ("forbid-critical-leaving-production",)


def test_break_glass_only_for_on_call_dr_and_needs_no_approval() -> None:
    ok = DEFAULT.decide_copy(research(principal=OTTO, kind="dr", source=DR, destination=PROD, break_glass=True,
                                      ttl_seconds=None))
    assert ok.allowed and ok.requirement.rule == "dr-break-glass" and ok.requirement.approvals == 0
    normal = DEFAULT.decide_copy(research(principal=OTTO, kind="dr", destination=DR, ttl_seconds=None))
    assert normal.requirement.rule == "dr" and normal.requirement.approvals == 1
    on_call_researcher = replace(OTTO, roles=("on-call", "researcher"))
    assert DEFAULT.decide_copy(research(principal=on_call_researcher, break_glass=True)).policy_ids == \
        ("forbid-break-glass",)


def test_approval_rules_of_the_default_catalog() -> None:
    def rule(facts: CopyFacts) -> tuple[str, int, bool, bool]:
        r = DEFAULT.decide_copy(facts).requirement
        return r.rule, r.approvals, r.distinct_teams, r.mfa

    assert rule(research(principal=OLGA, kind="backup", destination=BACKUP)) == ("backup", 0, False, True)
    assert rule(research()) == ("research", 1, False, True)
    assert rule(research(asset=replace(MODEL, classification="restricted"))) == ("sensitive-copy", 2, True, True)
    assert rule(research(asset=replace(MODEL, size_bytes=1 << 30))) == ("large-copy", 2, True, True)
    assert rule(research(asset=replace(MODEL, size_bytes=(1 << 30) - 1))) == ("research", 1, False, True)
    assert rule(research(asset=replace(MODEL, unsafe=True))) == ("unsafe-format", 2, True, True)
    assert rule(research(principal=LENA, kind="migration", destination=PROD_EU)) == ("catch-all", 2, True, True)
    req = DEFAULT.decide_copy(research()).requirement
    assert req.roles == ("ml-lead", "security") and req.max_ttl_seconds == 30 * DAY and req.window_seconds == 72 * 3600


def test_approve_action() -> None:
    ok = DEFAULT.decide_approval(approve())
    assert ok.allowed and ok.policy_ids == ("permit-approve",) and ok.requirement is None
    assert DEFAULT.decide_approval(approve(approver=SAM)).allowed
    self_approval = DEFAULT.decide_approval(approve(requester="lena", requester_team="ml"))
    assert not self_approval.allowed and self_approval.policy_ids == ("forbid-self-approval",)
    no_role = DEFAULT.decide_approval(approve(approver=ADA))
    assert not no_role.allowed and no_role.policy_ids == ("forbid-approve-without-role",)
    both = DEFAULT.decide_approval(approve(approver=RITA, requester="rita"))
    assert set(both.policy_ids) == {"forbid-self-approval", "forbid-approve-without-role"}


def test_decision_is_plain_data() -> None:
    d = DEFAULT.decide_copy(research()).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["requirement"]["rule"] == "research" and d["catalog_hash"] == DEFAULT.hash


def test_unknown_kind_or_classification_is_refused() -> None:
    with pytest.raises(PolicyError, match="unknown copy kind"):
        DEFAULT.decide_copy(research(kind="exfiltration"))
    with pytest.raises(PolicyError, match="unknown classification"):
        DEFAULT.decide_copy(research(asset=replace(MODEL, classification="secret")))


# ---- exceptions and TTL caps ---------------------------------------------------------------------


@pytest.mark.parametrize("policy", sorted(TRIGGERS))
def test_an_exception_switches_off_exactly_its_policy(policy: str) -> None:
    facts = TRIGGERS[policy]
    others = frozenset(TRIGGERS) - {policy}
    assert not DEFAULT.decide_copy(replace(facts, exceptions=others)).allowed
    excepted = DEFAULT.decide_copy(replace(facts, exceptions=frozenset({policy})))
    assert excepted.allowed, excepted
    assert policy not in excepted.policy_ids


def test_an_exception_leaves_other_forbids_in_force() -> None:
    facts = research(destination=replace(RESEARCH, name="research-cn", jurisdiction="CN", security_level=1))
    assert set(DEFAULT.decide_copy(facts).policy_ids) == {"forbid-jurisdiction", "forbid-security-level"}
    one = DEFAULT.decide_copy(replace(facts, exceptions=frozenset({"forbid-jurisdiction"})))
    assert not one.allowed and one.policy_ids == ("forbid-security-level",)


def test_self_approval_takes_no_exception() -> None:
    text = (Catalog.default_folder() / "approvals.cedar").read_text()
    assert "exceptions" not in text.split('@id("forbid-self-approval")')[1].split("@id(")[0]


def test_ttl_above_the_rules_cap_is_denied() -> None:
    assert DEFAULT.decide_copy(research(ttl_seconds=30 * DAY)).allowed
    over = DEFAULT.decide_copy(research(ttl_seconds=30 * DAY + 1))
    assert not over.allowed and over.policy_ids == ("rule:research",) and over.requirement is None
    assert "30d" in over.reasons[0] and "research" in over.reasons[0]
    backup = research(principal=OLGA, kind="backup", destination=BACKUP)
    assert not DEFAULT.decide_copy(replace(backup, ttl_seconds=401 * DAY)).allowed
    no_ttl = DEFAULT.decide_copy(replace(backup, ttl_seconds=None))
    assert no_ttl.allowed and no_ttl.requirement.max_ttl_seconds == 400 * DAY  # the service applies the cap
    dr = DEFAULT.decide_copy(research(principal=OTTO, kind="dr", destination=DR, ttl_seconds=3650 * DAY))
    assert dr.allowed and dr.requirement.max_ttl_seconds is None


# ---- loading refuses what it cannot trust --------------------------------------------------------

BAD_POLICIES = {
    "schema violation": ('@id("x") @reason("r")\nforbid (principal, action == Action::"copy", resource)\n'
                         'when { resource.secret_level > 2 };\n', "does not fit schema.cedarschema"),
    "syntax error": ('@id("x") @reason("r")\nforbid (principal, action == Action::"copy", resource)\n'
                     'when { resource.unsafe \n', "Cedar syntax error"),
    "missing @id": ('@reason("r")\nforbid (principal, action == Action::"copy", resource);\n', "no @id"),
    "missing @reason": ('@id("x")\nforbid (principal, action == Action::"copy", resource);\n', "no @reason"),
    "empty @reason": ('@id("x") @reason(" ")\nforbid (principal, action == Action::"copy", resource);\n',
                      "no @reason"),
    "duplicate @id": ('@id("forbid-jurisdiction") @reason("again")\n'
                      'forbid (principal, action == Action::"copy", resource);\n', "also used in"),
    "unguarded optional attribute": ('@id("x") @reason("r")\nforbid (principal, action == Action::"copy", resource)\n'
                                     'when { resource.parameters > 1000 };\n', "does not fit schema.cedarschema"),
    "unknown action": ('@id("x") @reason("r")\nforbid (principal, action == Action::"delete", resource);\n',
                       "does not fit schema.cedarschema"),
    "template": ('@id("x") @reason("r")\npermit (principal == ?principal, action, resource);\n', "templates"),
    "multi-line reason": ('@id("x") @reason("one\ntwo")\nforbid (principal, action, resource);\n', "one line"),
    "bad id": ('@id("has space") @reason("r")\nforbid (principal, action, resource);\n', "@id"),
}


@pytest.mark.parametrize("case", sorted(BAD_POLICIES))
def test_load_refuses_bad_policies(tmp_path: Path, case: str) -> None:
    text, expected = BAD_POLICIES[case]
    message = refused(catalog_dir(tmp_path, {"extra.cedar": text}))
    assert "extra.cedar" in message and expected in message


def test_schema_violation_names_the_policy(tmp_path: Path) -> None:
    message = refused(catalog_dir(tmp_path, {"extra.cedar": BAD_POLICIES["schema violation"][0]}))
    assert "'x'" in message and "secret_level" in message


RULE = '[[rule]]\nname = "{name}"\n{match}approvals = {n}\nroles = ["ml-lead"]\n{extra}\n'
CATCH_ALL = RULE.format(name="all", match="", n=1, extra="")

BAD_RULES = {
    "no catch-all": (RULE.format(name="r", match='kinds = ["dr"]\n', n=1, extra=""), "catch-all"),
    "catch-all not last": (CATCH_ALL + RULE.format(name="r", match='kinds = ["dr"]\n', n=1, extra=""),
                           "never apply"),
    "bad max_ttl": (RULE.format(name="r", match='kinds = ["dr"]\n', n=1, extra='max_ttl = "7 days"') + CATCH_ALL,
                    "bad duration"),
    "zero window": (RULE.format(name="r", match='kinds = ["dr"]\n', n=1, extra='window = "0h"') + CATCH_ALL,
                    "longer than zero"),
    "unknown field": (RULE.format(name="r", match='kind = ["dr"]\n', n=1, extra="") + CATCH_ALL, "unknown field"),
    "unknown kind": (RULE.format(name="r", match='kinds = ["copy"]\n', n=1, extra="") + CATCH_ALL, "kinds"),
    "bad classification": (RULE.format(name="r", match='min_classification = "secret"\n', n=1, extra="") + CATCH_ALL,
                           "min_classification"),
    "approvals without roles": ('[[rule]]\nname = "all"\napprovals = 2\n', "approving roles"),
    "duplicate name": (CATCH_ALL.replace('"all"', '"r"') + CATCH_ALL.replace('"all"', '"r"'), "used twice"),
    "not toml": ("[[rule]\n", "not valid TOML"),
    "empty": ("", "no [[rule]]"),
}


@pytest.mark.parametrize("case", sorted(BAD_RULES))
def test_load_refuses_bad_rules(tmp_path: Path, case: str) -> None:
    text, expected = BAD_RULES[case]
    message = refused(catalog_dir(tmp_path, {"rules.toml": text, "tests.toml": None}))
    assert message.startswith("rules.toml") and expected in message


def test_load_refuses_bad_cases_and_missing_files(tmp_path: Path) -> None:
    cases = (Catalog.default_folder() / "tests.toml").read_text()
    bad_case = cases + '[[case]]\nname = "c"\nkind = "research"\nallow = true\nasset = { classfication = "x" }\n'
    assert "tests.toml: case 'c': unknown asset field 'classfication'" == \
        refused(catalog_dir(tmp_path / "a", {"tests.toml": bad_case}))
    bad_ttl = cases + '[[case]]\nname = "c"\nkind = "research"\nttl = "-1d"\nallow = true\n'
    assert "tests.toml: case 'c': ttl: bad duration" in refused(catalog_dir(tmp_path / "b", {"tests.toml": bad_ttl}))
    twice = cases + '[[case]]\nname = "a researcher may not approve"\nkind = "dr"\nallow = false\n'
    assert "used twice" in refused(catalog_dir(tmp_path / "f", {"tests.toml": twice}))
    unknown = (Catalog.default_folder() / "tests.toml").read_text().replace('"forbid-dr-zone"', '"forbid-dr-zones"')
    assert "unknown policy" in refused(catalog_dir(tmp_path / "c", {"tests.toml": unknown}))
    assert "schema.cedarschema" in refused(catalog_dir(tmp_path / "d", {"schema.cedarschema": None}))
    assert "rules.toml" in refused(catalog_dir(tmp_path / "e", {"rules.toml": None}))
    assert "no policy catalog" in refused(tmp_path / "nowhere")


def test_load_refuses_a_schema_that_cannot_take_the_facts(tmp_path: Path) -> None:
    schema = (Catalog.default_folder() / "schema.cedarschema").read_text()
    stricter = schema.replace("team?: String,", "team?: String,\n  badge: String,")
    message = refused(catalog_dir(tmp_path / "a", {"schema.cedarschema": stricter}))
    assert message.startswith("schema.cedarschema") and "badge" in message
    assert "schema.cedarschema" in refused(catalog_dir(tmp_path / "b", {"schema.cedarschema": "entity User = {"}))


def test_tests_toml_is_optional_and_a_failing_case_is_reported(tmp_path: Path) -> None:
    assert Catalog.load(catalog_dir(tmp_path / "a", {"tests.toml": None})).run_tests() == []
    wrong = ('[defaults.principal]\nname = "p"\nroles = ["researcher"]\n'
             '[defaults.asset]\nname = "m"\nclassification = "internal"\njurisdictions = ["US"]\n'
             'min_security_level = 1\nowner = "o"\nsize_bytes = 1\nunsafe = false\n'
             '[defaults.source]\nname = "s"\nkind = "production"\njurisdiction = "US"\nsecurity_level = 3\n'
             'region = "r"\n[defaults.destination]\nname = "d"\nkind = "research"\njurisdiction = "US"\n'
             'security_level = 3\nregion = "r"\n'
             '[[case]]\nname = "wrong on purpose"\nkind = "research"\nallow = true\napprovals = 2\n')
    [result] = Catalog.load(catalog_dir(tmp_path / "b", {"tests.toml": wrong})).run_tests()
    assert not result.passed and result.name == "wrong on purpose"
    assert result.expected == {"allow": True, "approvals": 2} and result.got["allow"] is False
    assert "expected allow, got deny (research and derivative copies need a TTL)" in result.detail


# ---- fail closed ---------------------------------------------------------------------------------

OVERFLOW = ('@id("permit-all") @reason("everyone may copy")\n'
            'permit (principal, action == Action::"copy", resource);\n'
            '@id("forbid-overflow") @reason("arithmetic that overflows at run time")\n'
            'forbid (principal, action == Action::"copy", resource)\n'
            'when { context has ttl_seconds && context.ttl_seconds * 4611686018427387904 > 0 };\n')


def test_an_evaluation_error_is_a_deny(tmp_path: Path) -> None:
    folder = catalog_dir(tmp_path, {"tests.toml": None})
    for f in folder.glob("*.cedar"):
        f.unlink()
    (folder / "only.cedar").write_text(OVERFLOW)
    catalog = Catalog.load(folder)
    assert catalog.decide_copy(research(ttl_seconds=None)).allowed  # no TTL: nothing to overflow
    facts = research(ttl_seconds=1)  # 1 * 2^62 fits; no error, the forbid holds
    assert catalog.decide_copy(facts).policy_ids == ("forbid-overflow",)

    facts = research(ttl_seconds=2)  # 2 * 2^62 overflows
    request, entities = cedar_input.copy_input(facts)
    raw = cedarpy.is_authorized(request, "".join(f.read_text() for f in folder.glob("*.cedar")), entities,
                                schema=(folder / "schema.cedarschema").read_text())
    assert raw.allowed and raw.diagnostics.errors  # Cedar skips the failing forbid and allows ...

    decision = catalog.decide_copy(facts)  # ... the catalog does not
    assert not decision.allowed and decision.requirement is None
    assert decision.policy_ids == ("forbid-overflow",)
    assert len(decision.errors) == 1 and "forbid-overflow" in decision.errors[0] and "overflow" in decision.errors[0]
    assert "fail closed" in decision.reasons[0]


def test_the_fail_open_pitfall_cannot_happen(tmp_path: Path) -> None:
    # The pitfall, shown on bare cedarpy: without a schema a forbid reading a missing attribute
    # errors, is skipped, and the answer is Allow.
    policies = ('permit (principal, action, resource);\n'
                'forbid (principal, action, resource) when { resource.classification == "critical" };\n')
    bare = cedarpy.is_authorized({"principal": 'User::"rita"', "action": 'Action::"copy"',
                                  "resource": 'Asset::"m"', "context": {}}, policies,
                                 [{"uid": {"type": "Asset", "id": "m"}, "attrs": {}, "parents": []}])
    assert bare.allowed and bare.diagnostics.errors

    # 1. The catalog refuses a policy reading an attribute the schema lacks, or an optional one unguarded.
    for body in ("resource.clearance == \"top\"", "resource.parameters > 1"):
        text = f'@id("x") @reason("r")\nforbid (principal, action == Action::"copy", resource) when {{ {body} }};\n'
        assert "does not fit schema.cedarschema" in refused(catalog_dir(tmp_path / str(len(body)), {"x.cedar": text}))
    # 2. Facts that miss an attribute the schema requires never reach a policy: loading refuses the schema
    #    (test above), and at decision time Cedar cannot even build the request, which is a deny.
    catalog = Catalog.load(catalog_dir(tmp_path / "ok"))
    catalog._schema = cedarpy.Schema.from_str(
        (Catalog.default_folder() / "schema.cedarschema").read_text().replace("unsafe: Bool,", "unsafe: Bool, x: Long,"))
    decision = catalog.decide_copy(research())
    assert not decision.allowed and decision.errors and "x" in decision.errors[0]
    # 3. An optional attribute, guarded with `has`, decides the same whether it is there or not.
    guarded = ('@id("forbid-huge") @reason("no copies of models over a trillion parameters")\n'
               'forbid (principal, action == Action::"copy", resource)\n'
               'when { resource has parameters && resource.parameters > 1000000000000 };\n')
    catalog = Catalog.load(catalog_dir(tmp_path / "guarded", {"huge.cedar": guarded}))
    assert catalog.decide_copy(research(asset=replace(MODEL, parameters=None))).allowed
    assert catalog.decide_copy(research(asset=replace(MODEL, parameters=2 * 10**12))).policy_ids == ("forbid-huge",)


def test_one_zone_with_two_sets_of_facts_is_refused() -> None:
    with pytest.raises(PolicyError, match="two different sets of facts"):
        DEFAULT.decide_copy(research(source=replace(RESEARCH, kind="production")))
    assert DEFAULT.decide_copy(research(source=RESEARCH)).allowed  # the same zone twice is fine


# ---- the catalog hash ----------------------------------------------------------------------------


def test_hash_changes_when_any_catalog_file_changes_and_not_otherwise(tmp_path: Path) -> None:
    base = Catalog.load(catalog_dir(tmp_path / "base"))
    assert base.hash == DEFAULT.hash == Catalog.folder_hash(Catalog.default_folder())
    assert len(base.hash) == 64 and int(base.hash, 16) >= 0

    folder = catalog_dir(tmp_path / "same")
    (folder / "README.md").write_text("notes for people are not part of the catalog\n")
    assert Catalog.folder_hash(folder) == base.hash

    seen = {base.hash}
    for rel in sorted(base.files):
        folder = catalog_dir(tmp_path / rel.replace(".", "_"))
        (folder / rel).write_text(base.files[rel] + "\n# \n".replace("#", "//" if not rel.endswith(".toml") else "#"))
        changed = Catalog.load(folder).hash
        assert changed == Catalog.folder_hash(folder)
        assert changed not in seen, rel
        seen.add(changed)

    renamed = catalog_dir(tmp_path / "renamed")
    (renamed / "permits.cedar").rename(renamed / "permit.cedar")
    assert Catalog.load(renamed).hash not in seen
    added = catalog_dir(tmp_path / "added")
    (added / "z.cedar").write_text("// no policies, just a comment\n")
    assert Catalog.load(added).hash not in seen


def test_files_round_trip_to_the_same_hash(tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    for rel, text in DEFAULT.files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    assert Catalog.load(folder).hash == DEFAULT.hash


# ---- durations, description, bench ----------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("7d", 7 * DAY), ("12h", 43_200), ("90m", 5_400), ("30s", 30), ("1d12h", 129_600), ("1d2h3m4s", 93_784),
    ("3653d", 3653 * DAY),
])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=1, max_value=MAX_SECONDS))
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "0s", "0d0h", "-1d", "7", "d", "7 d", "7D", "12h1d", "1d1d", "1.5h", "3654d",
                                  "99999999999999999999s", "1w", " 7d", "7d\n"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_duration(text)


def test_describe() -> None:
    d = DEFAULT.describe()
    assert d["hash"] == DEFAULT.hash and json.loads(json.dumps(d)) == d
    ids = [p["id"] for p in d["policies"]]
    # 15 for copies and approvals, restore and drill permits and placements (4), 6 for reads, 2 for registrations
    assert len(ids) == len(set(ids)) == 28
    jurisdiction = next(p for p in d["policies"] if p["id"] == "forbid-jurisdiction")
    assert jurisdiction == {"id": "forbid-jurisdiction", "effect": "forbid", "actions": ["copy"],
                            "file": "placement.cedar", "reason": jurisdiction["reason"]}
    assert [r["name"] for r in d["rules"]][-1] == "catch-all" and d["rules"][-1]["match"] == {}
    assert d["rules"][0] == {"name": "backup", "match": {"kinds": ["backup"]}, "approvals": 0, "roles": [],
                             "distinct_teams": False, "mfa": True, "max_ttl": "400d", "window": "3d"}


def test_bench_runs() -> None:
    result = bench_decisions(n=50)
    assert result["decisions"] == 50 and result["assets"] == 1000 and result["zones"] == 50
    assert result["copy_p50_us"] > 0 and result["copy_p99_us"] >= result["copy_p50_us"]


def test_the_catalog_hash_notices_every_edit_even_when_cached(tmp_path: Path) -> None:
    folder = tmp_path / "cat"
    shutil.copytree(Catalog.default_folder(), folder)
    first = Catalog.folder_hash(folder)
    assert Catalog.folder_hash(folder) == first  # cached
    (folder / "sub").mkdir()
    assert Catalog.folder_hash(folder) == first  # an empty folder holds no catalog file
    (folder / "sub" / "extra.cedar").write_text('forbid (principal, action, resource);\n')
    second = Catalog.folder_hash(folder)
    assert second != first
    target = folder / "sub" / "extra.cedar"
    st = target.stat()
    target.write_text('forbid (principal, action, resource) when { true };\n'[:len(target.read_text())])
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, mtime put back: ctime still moves
    assert Catalog.folder_hash(folder) != second


def test_every_approval_needs_a_second_factor() -> None:
    """A rule cannot waive MFA: a principal without a second factor never counts as an approver."""
    text = (Catalog.default_folder() / "rules.toml").read_text()
    assert all(r.requirement.mfa for r in DEFAULT.rules)
    with pytest.raises(PolicyError, match="mfa = false is not allowed"):
        parse_rules(text.replace("approvals = 1\n", "approvals = 1\nmfa = false\n", 1))


def test_reads_are_decided_like_copies() -> None:
    """No standing read of weights: an admin or ml lead reads a primary only under an approved read request."""
    prod = ZoneFacts("prod", "production", "US", 4, "us")
    def read(who, way="direct", kind="primary", own=False, zone=prod, asset=MODEL):  # noqa: ANN001, ANN202
        return DEFAULT.decide_read(ReadFacts(who, asset, zone, kind, own, way, "eval", 3600 if way == "asking" else None))

    for who in (ADA, LENA, RITA, OLGA, SAM):
        assert not read(who).allowed
    assert read(RITA, kind="research", own=True, zone=replace(prod, kind="research")).policy_ids == ("permit-read-own-copy",)
    assert not read(RITA, kind="primary", own=True).allowed  # "own" counts only for research and derivative copies
    svc = PrincipalFacts("svc", ("service",), "serving", {"zone": "prod"})
    assert read(svc).policy_ids == ("permit-read-serving-zone",)
    assert not read(replace(svc, attributes={"zone": "prod-eu"})).allowed
    assert not read(replace(svc, attributes={})).allowed
    assert not read(svc, zone=replace(prod, kind="backup")).allowed
    asking = read(LENA, way="asking")
    assert asking.allowed and asking.requirement.rule == "read" and asking.requirement.approvals == 1
    critical = read(LENA, way="asking", asset=replace(MODEL, classification="critical"))
    assert critical.requirement.rule == "critical-copy" and critical.requirement.roles == ("security",)
    assert read(ADA, way="approved").policy_ids == ("permit-read-approved",)
    assert not read(ADA, way="approved", kind="drill").allowed
    assert not read(PrincipalFacts("aud", ("auditor",), "audit"), way="asking").allowed
    with pytest.raises(PolicyError):
        read(ADA, way="sideways")


def test_a_catalog_from_before_reads_still_decides_copies_and_denies_reads(tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(Catalog.default_folder(), old)
    (old / "reads.cedar").unlink()
    (old / "content.cedar").unlink()
    schema = (old / "schema.cedarschema").read_text()
    (old / "schema.cedarschema").write_text(schema[:schema.index("// Decrypt a replica's weights")])
    cases = (old / "tests.toml").read_text()
    (old / "tests.toml").write_text(cases[:cases.index("# ---- reads of plaintext")])
    catalog = Catalog.load(old)
    assert catalog.decide_copy(research()).allowed
    denied = catalog.decide_read(ReadFacts(ADA, MODEL, ZoneFacts("prod", "production", "US", 4, "us"), "primary",
                                           False, "approved", "eval"))
    assert not denied.allowed and "does not decide reads" in denied.reasons[0]
    zone = ZoneFacts("prod", "production", "US", 4, "us")
    known = catalog.decide_register(RegisterFacts(ADA, MODEL, zone, "other", False))
    assert not known.allowed and "does not decide registrations" in known.reasons[0]


def test_known_weights_keep_their_label() -> None:
    zone = ZoneFacts("prod", "production", "US", 4, "us")
    assert DEFAULT.decide_register(RegisterFacts(LENA, MODEL, zone, "crown", False)).allowed
    looser = DEFAULT.decide_register(RegisterFacts(LENA, MODEL, zone, "crown", True))
    assert not looser.allowed and looser.policy_ids == ("forbid-relabel",)
    assert DEFAULT.decide_register(RegisterFacts(LENA, MODEL, zone, "crown", True, frozenset({"forbid-relabel"}))).allowed

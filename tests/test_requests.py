"""Governed copies end to end: decisions, separation of duties, MFA, grants, copies, expiry."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import text

import custody
from conftest import Env, People, cli, events, register
from custody.control import grants
from custody.control.store import repositories as repo
from custody.control.store import requests_repo as rq
from custody.keys.custodian import grant_root_key


@dataclass
class Team(People):
    replica: str = ""


PEOPLE = {
    "alice": ("researcher", "nlp"), "bob": ("ml-lead", "platform"), "carol": ("security", "security"),
    "dave": ("backup-operator", "infra"), "erin": ("on-call", "infra"), "frank": ("ml-lead", "platform"),
}


@pytest.fixture
def team(env: Env, model_dir: Path, tmp_path: Path) -> Team:
    team = Team(env, {"admin": env.token}, {}, {})
    team.add(PEOPLE)
    cli("zone", "add", "eu-research", "--url", (tmp_path / "eu").as_uri(), "--kind", "research", "--region", "eu",
        "--jurisdiction", "DE", "--security-level", "4", "--json", token=env.token)
    team.replica = register(env, model_dir, "tiny", "--sensitivity", "confidential", "--jurisdiction", "US")["replica"]
    return team


def create(team: Team, who: str, *args: str):  # noqa: ANN201
    return cli("request", "create", "tiny", *args, "--json", token=team.t(who))


def test_backup_runs_without_approval(team: Team) -> None:
    r = create(team, "dave", "--to", "backup", "--kind", "backup", "--purpose", "nightly", "--run")
    assert r.code == 0, r.stdout
    doc = r.json
    assert doc["state"] == "done" and doc["decision"]["requirement"]["rule"] == "backup"
    replica = cli("replica", "show", doc["result_replica"], "--json", token=team.t("admin")).json
    assert replica["zone"] == "backup" and replica["kind"] == "backup" and replica["state"] == "active"
    expires = datetime.fromisoformat(replica["expires_at"].replace("Z", "+00:00"))
    assert timedelta(days=399) < expires - datetime.now(timezone.utc) <= timedelta(days=400)
    assert cli("replica", "verify", doc["result_replica"], "--json", token=team.t("admin")).code == 0
    # a fresh data key: the copy's sealed files differ from the source's
    assert replica["key_id"] != cli("replica", "show", team.replica, "--json", token=team.t("admin")).json["key_id"]


def test_research_clone_needs_two_mfa_approvals_from_distinct_teams(team: Team) -> None:
    r = create(team, "alice", "--to", "research", "--kind", "research", "--purpose", "eval of layer norms", "--ttl", "7d")
    assert r.code == 0, r.stdout
    req = r.json
    assert req["state"] == "awaiting_approval"
    assert req["still_needed"] == {"approvals": 2, "of": 2, "roles": ["ml-lead", "security"], "distinct_teams": True,
                                   "mfa": True}
    rid = req["id"]
    assert cli("request", "list", "--awaiting-me", "--json", token=team.t("bob")).json[0]["id"] == rid
    assert cli("request", "list", "--awaiting-me", "--json", token=team.t("alice")).json == []
    # separation of duties
    assert cli("request", "approve", rid, "--json", token=team.t("alice")).code == 3
    assert cli("request", "approve", rid, "--json", token=team.t("bob")).code == 3  # MFA required
    assert cli("request", "approve", rid, "--otp", "000000", "--json", token=team.t("bob")).code in (3, 6)
    ok = cli("request", "approve", rid, "--otp", team.otp("bob"), "--comment", "fine", "--json", token=team.t("bob"))
    assert ok.code == 0 and ok.json["still_needed"]["approvals"] == 1
    assert cli("request", "approve", rid, "--otp", team.otp("bob"), "--json", token=team.t("bob")).code == 6
    # same team as bob: signs, but does not count toward distinct teams
    same_team = cli("request", "approve", rid, "--otp", team.otp("frank"), "--json", token=team.t("frank"))
    assert same_team.code == 0 and same_team.json["still_needed"]["approvals"] == 1
    done = cli("request", "approve", rid, "--otp", team.otp("carol"), "--json", token=team.t("carol"))
    assert done.code == 0 and done.json["state"] == "approved"
    ran = cli("request", "run", rid, "--json", token=team.t("alice"))
    assert ran.code == 0, ran.stdout
    clone = ran.json["result_replica"]
    shown = cli("replica", "show", clone, "--json", token=team.t("admin")).json
    assert shown["zone"] == "research" and shown["kind"] == "research"
    expires = datetime.fromisoformat(shown["expires_at"].replace("Z", "+00:00"))
    assert timedelta(days=6, hours=23) < expires - datetime.now(timezone.utc) <= timedelta(days=7)
    tensors = custody.open_safetensors(clone, purpose="research eval", token=team.t("alice"))
    assert "model.embed.weight" in tensors
    # the approval events carry signatures; the run spent the grant
    approvals = [e for e in events(team.env) if e["action"] == "request.approve" and e["outcome"] == "ok"]
    assert len(approvals) == 3 and all(e["details"]["signature"] for e in approvals)
    second = cli("request", "run", rid, "--json", token=team.t("alice"))
    assert second.code == 6
    assert events(team.env)[-1]["outcome"] == "invalid_state"
    # revocation shreds what the request produced
    rev = cli("request", "revoke", rid, "--reason", "study over", "--json", token=team.t("alice"))
    assert rev.code == 0 and rev.json["shredded"] == [clone]
    assert cli("replica", "verify", clone, "--json", token=team.t("admin")).code == 6


def test_policy_refusals_name_their_reason(team: Team) -> None:
    r = create(team, "alice", "--to", "eu-research", "--kind", "research", "--purpose", "x", "--ttl", "1d")
    assert r.code == 3
    assert "jurisdiction" in r.json["error"].lower() and r.json["decision"]["policy_ids"]
    assert cli("request", "show", r.json["request"], "--json", token=team.t("alice")).json["state"] == "denied"
    assert create(team, "alice", "--to", "research", "--kind", "research", "--purpose", "x", "--ttl", "90d").code == 3
    assert create(team, "alice", "--to", "research", "--kind", "research", "--purpose", "x").code == 3  # no TTL
    assert create(team, "alice", "--to", "backup", "--kind", "backup", "--purpose", "x").code == 3  # role
    assert create(team, "alice", "--to", "prod", "--kind", "research", "--purpose", "x", "--ttl", "1d").code == 3
    for args, code in [
        (("--to", "research", "--kind", "theft", "--purpose", "x"), 2),
        (("--to", "mars", "--kind", "research", "--purpose", "x", "--ttl", "1d"), 4),
        (("--to", "research", "--kind", "research", "--purpose", " ", "--ttl", "1d"), 2),
        (("--to", "research", "--kind", "research", "--purpose", "x", "--ttl", "soon"), 2),
        (("--to", "research", "--kind", "research", "--purpose", "x", "--ttl", "-1d"), 2),
        (("--to", "research", "--kind", "backup", "--purpose", "x", "--break-glass"), 2),
    ]:
        assert create(team, "alice", *args).code == code, args
    assert cli("request", "create", "nothing", "--to", "research", "--kind", "research", "--purpose", "x",
               "--json", token=team.t("alice")).code == 4
    explained = cli("policy", "explain", r.json["request"], "--json", token=team.t("carol")).json
    assert explained["recorded"]["allowed"] is False and explained["now"]["allowed"] is False


def test_states_that_cannot_be_approved(team: Team) -> None:
    denied = create(team, "alice", "--to", "eu-research", "--kind", "research", "--purpose", "x", "--ttl", "1d")
    assert cli("request", "approve", denied.json["request"], "--otp", team.otp("carol"), "--json",
               token=team.t("carol")).code == 6
    # a denied request needs no approver: to an ml lead it does not exist
    assert cli("request", "approve", denied.json["request"], "--otp", team.otp("bob"), "--json",
               token=team.t("bob")).code == 4
    pending = create(team, "alice", "--to", "research", "--kind", "research", "--purpose", "x", "--ttl", "1d").json
    assert cli("request", "cancel", pending["id"], "--json", token=team.t("bob")).code == 3
    assert cli("request", "cancel", pending["id"], "--json", token=team.t("alice")).json["state"] == "cancelled"
    assert cli("request", "approve", pending["id"], "--otp", team.otp("bob"), "--json", token=team.t("bob")).code == 6
    done = create(team, "dave", "--to", "backup", "--kind", "backup", "--purpose", "x", "--run").json
    assert cli("request", "approve", done["id"], "--json", token=team.t("carol")).code == 6
    assert cli("request", "approve", done["id"], "--json", token=team.t("bob")).code == 4
    other = create(team, "alice", "--to", "research", "--kind", "research", "--purpose", "y", "--ttl", "1d").json
    assert cli("request", "deny", other["id"], "--reason", "no", "--json", token=team.t("bob")).json["state"] == "denied"
    assert cli("request", "run", other["id"], "--json", token=team.t("alice")).code == 6
    assert cli("request", "show", "nope", "--json", token=team.t("alice")).code == 4


def test_second_factor_cannot_be_swapped_or_guessed(team: Team) -> None:
    # replacing a factor in force needs a code from it
    assert cli("mfa", "enroll", "--json", token=team.t("bob")).code == 3
    new = cli("mfa", "enroll", "--otp", team.otp("bob"), "--json", token=team.t("bob")).json["secret"]
    # the new seed is not in force until one of its codes is verified: the old one still approves
    rid = create(team, "alice", "--to", "research", "--kind", "research", "--purpose", "x", "--ttl", "1d").json["id"]
    assert cli("request", "approve", rid, "--otp", pyotp.TOTP(new).now(), "--json", token=team.t("bob")).code in (3, 6)
    team.secrets["bob"] = new
    team.steps.pop("bob", None)
    assert cli("mfa", "verify", team.otp("bob"), "--json", token=team.t("bob")).json["activated"] is True
    # a first code for a never-enrolled principal is refused; non-ASCII digits are bad input, not a crash
    assert cli("mfa", "verify", "123456", "--json", token=team.t("alice")).code == 3
    assert cli("mfa", "verify", "١٢٣٤٥٦", "--json", token=team.t("carol")).code == 2
    # five wrong codes lock the factor, even against the right code
    right = team.otp("carol")
    wrong = str((int(right) + 1) % 1_000_000).zfill(6)
    for _ in range(5):
        assert cli("mfa", "verify", wrong, "--json", token=team.t("carol")).code == 3
    locked = cli("mfa", "verify", right, "--json", token=team.t("carol"))
    assert locked.code == 3 and "locked" in locked.json["error"]


def test_totp_codes_are_single_use(team: Team) -> None:
    code = team.otp("bob")
    assert cli("mfa", "verify", code, "--json", token=team.t("bob")).code == 0
    assert cli("mfa", "verify", code, "--json", token=team.t("bob")).code == 6
    assert cli("mfa", "verify", "12345", "--json", token=team.t("bob")).code == 2
    wrong = str((int(team.otp("bob")) + 1) % 1_000_000).zfill(6)
    assert cli("mfa", "verify", wrong, "--json", token=team.t("bob")).code in (3, 6)
    assert cli("mfa", "verify", "123456", "--json", token=team.t("alice")).code == 3  # not enrolled


def _approved_research(team: Team) -> str:
    rid = create(team, "alice", "--to", "research", "--kind", "research", "--purpose", "x", "--ttl", "1d").json["id"]
    cli("request", "approve", rid, "--otp", team.otp("bob"), "--json", token=team.t("bob"))
    assert cli("request", "approve", rid, "--otp", team.otp("carol"), "--json", token=team.t("carol")).json["state"] == "approved"
    return rid


def _set_token(team: Team, rid: str, token: str) -> None:
    ws = team.env.open()
    with ws.engine.begin() as conn:
        conn.execute(text("UPDATE grants SET token = :t WHERE request_id = :r"), {"t": token, "r": rid})
    ws.close()


def _claims(team: Team, rid: str, **change) -> grants.GrantClaims:  # noqa: ANN003
    r = cli("request", "show", rid, "--json", token=team.t("admin")).json
    ws = team.env.open()
    with ws.uow(readonly=True) as uow:
        source_key = repo.replica_by_id(uow, r["source_replica"]).key_id
    ws.close()
    base = dict(request_id=rid, version_digest=r["version_digest"], source_replica=r["source_replica"],
                destination_zone=r["destination"], expires_at=datetime.now(timezone.utc) + timedelta(hours=1),
                source_key=source_key, kind="research", ttl_seconds=86400, holder="alice")
    base.update(change)
    return grants.GrantClaims(**base)


@pytest.mark.parametrize("forgery", ["other_key", "other_destination", "expired", "garbage", "narrowed"])
def test_grant_forgeries_are_refused_and_ledgered(team: Team, forgery: str) -> None:
    rid = _approved_research(team)
    ws = team.env.open()
    root = grant_root_key(ws.custodian())
    ws.close()
    if forgery == "other_key":
        token = grants.mint(grants.new_root_key(), _claims(team, rid)).token
    elif forgery == "other_destination":
        token = grants.mint(root, _claims(team, rid, destination_zone="eu-research")).token
    elif forgery == "expired":
        token = grants.mint(root, _claims(team, rid, expires_at=datetime.now(timezone.utc) - timedelta(seconds=5))).token
    elif forgery == "garbage":
        token = "not-a-biscuit"
    else:  # a holder narrowed the grant to unwrapping only: it can no longer create the destination key
        ws = team.env.open()
        with ws.uow(readonly=True) as uow:
            real = rq.grant_of(uow, rid)[0]
        ws.close()
        token = grants.attenuate(real, grants.root_public_key(root), operation="unwrap-source")
    _set_token(team, rid, token)
    r = cli("request", "run", rid, "--json", token=team.t("alice"))
    assert r.code == 3, r.stdout
    assert "grant" in r.json["error"]
    last = [e for e in events(team.env) if e["action"] == "request.run"][-1]
    assert last["outcome"] == "denied" and "grant" in last["details"]["reason"]
    assert cli("replica", "list", "--zone", "research", "--json", token=team.t("admin")).json == []


def test_suspension_stops_approvals_and_grants(team: Team) -> None:
    rid = create(team, "alice", "--to", "research", "--kind", "research", "--purpose", "x", "--ttl", "1d").json["id"]
    cli("request", "approve", rid, "--otp", team.otp("bob"), "--json", token=team.t("bob"))
    cli("principal", "suspend", "bob", "--json", token=team.t("admin"))
    r = cli("request", "show", rid, "--json", token=team.t("alice")).json
    assert r["still_needed"]["approvals"] == 2  # bob's approval no longer counts
    rid2 = _approved_research_by(team, "frank", "carol")
    cli("principal", "suspend", "alice", "--json", token=team.t("admin"))
    r = cli("request", "run", rid2, "--json", token=team.t("admin"))
    assert r.code == 3 and "suspended" in r.json["error"]


def _approved_research_by(team: Team, first: str, second: str) -> str:
    rid = create(team, "alice", "--to", "research", "--kind", "research", "--purpose", "z", "--ttl", "1d").json["id"]
    cli("request", "approve", rid, "--otp", team.otp(first), "--json", token=team.t(first))
    assert cli("request", "approve", rid, "--otp", team.otp(second), "--json",
               token=team.t(second)).json["state"] == "approved"
    return rid


def test_sweep_shreds_expired_copies_and_lapses_requests(team: Team) -> None:
    done = create(team, "dave", "--to", "backup", "--kind", "backup", "--purpose", "x", "--ttl", "1d", "--run").json
    waiting = create(team, "alice", "--to", "research", "--kind", "research", "--purpose", "x", "--ttl", "1d").json
    ws = team.env.open()
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    with ws.engine.begin() as conn:
        conn.execute(text("UPDATE replicas SET expires_at = :t WHERE id = :i"), {"t": past, "i": done["result_replica"]})
        conn.execute(text("UPDATE requests SET window_expires_at = :t WHERE id = :i"), {"t": past, "i": waiting["id"]})
    ws.close()
    r = cli("sweep", "--json", token=team.t("admin")).json
    assert r["expired"] == [done["result_replica"]] and r["lapsed"] == [waiting["id"]]
    assert cli("request", "show", waiting["id"], "--json", token=team.t("alice")).json["state"] == "lapsed"
    assert cli("replica", "show", done["result_replica"], "--json", token=team.t("admin")).json["state"] == "shredded"


def test_break_glass_dr_opens_a_review(team: Team) -> None:
    assert create(team, "alice", "--to", "dr", "--kind", "dr", "--purpose", "x", "--break-glass").code == 3
    r = create(team, "erin", "--to", "dr", "--kind", "dr", "--purpose", "prod region down", "--break-glass", "--run")
    assert r.code == 0, r.stdout
    assert r.json["state"] == "done"
    assert [e["action"] for e in events(team.env)].count("alert.break_glass") == 1
    review = cli("review", "list", "--open", "--json", token=team.t("carol")).json
    assert len(review) == 1 and review[0]["overdue"] is False
    rid = review[0]["id"]
    assert cli("review", "close", rid, "--comment", "ok", "--json", token=team.t("erin")).code == 3
    assert cli("review", "close", rid, "--comment", "ok", "--json", token=team.t("bob")).code == 3  # no code
    assert cli("review", "close", rid, "--comment", "ok", "--otp", team.otp("bob"), "--json",
               token=team.t("bob")).json["state"] == "open"
    assert cli("review", "close", rid, "--comment", "ok", "--otp", team.otp("bob"), "--json",
               token=team.t("bob")).code == 6
    assert cli("review", "close", rid, "--comment", "fine", "--otp", team.otp("carol"), "--json",
               token=team.t("carol")).json["state"] == "closed"
    dr = cli("replica", "show", r.json["result_replica"], "--json", token=team.t("admin")).json
    assert dr["expires_at"] is None  # DR replicas do not expire


def test_exception_lets_one_denied_copy_through(team: Team) -> None:
    denied = create(team, "alice", "--to", "eu-research", "--kind", "research", "--purpose", "x", "--ttl", "1d").json
    policy_id = [p for p in denied["decision"]["policy_ids"] if "jurisdiction" in p][0]
    e = cli("exception", "propose", "--policy", policy_id, "--asset", "tiny", "--zone", "eu-research",
            "--justification", "EU partner study, legal ok'd", "--expires", "2d", "--json", token=team.t("bob"))
    assert e.code == 0, e.stdout
    exc = e.json["id"]
    assert cli("exception", "approve", exc, "--otp", team.otp("bob"), "--json", token=team.t("bob")).code == 3  # own
    assert cli("exception", "approve", exc, "--json", token=team.t("carol")).code == 3  # MFA required
    assert cli("exception", "approve", exc, "--otp", team.otp("carol"), "--json",
               token=team.t("carol")).json["state"] == "proposed"
    active = cli("exception", "approve", exc, "--otp", team.otp("frank"), "--json", token=team.t("frank")).json
    assert active["state"] == "active"
    lasts = datetime.fromisoformat(active["expires_at"].replace("Z", "+00:00")) - datetime.now(timezone.utc)
    assert timedelta(days=1, hours=23) < lasts <= timedelta(days=2)  # two days from activation
    allowed = create(team, "alice", "--to", "eu-research", "--kind", "research", "--purpose", "x", "--ttl", "1d")
    assert allowed.code == 0 and allowed.json["state"] == "awaiting_approval"
    assert cli("exception", "list", "--json", token=team.t("alice")).json[0]["state"] == "active"
    assert cli("exception", "revoke", exc, "--reason", "study cancelled", "--json", token=team.t("bob")).code == 3
    assert cli("exception", "revoke", exc, "--reason", "study cancelled", "--json",
               token=team.t("carol")).json["state"] == "revoked"
    again = create(team, "alice", "--to", "eu-research", "--kind", "research", "--purpose", "x", "--ttl", "1d")
    assert again.code == 3  # the jurisdiction policy applies again at once
    # the request made while the exception stood is decided again when its grant would be minted: no grant now
    rid = allowed.json["id"]
    cli("request", "approve", rid, "--otp", team.otp("bob"), "--json", token=team.t("bob"))
    late = cli("request", "approve", rid, "--otp", team.otp("carol"), "--json", token=team.t("carol"))
    assert late.code == 3 and "policy no longer allows" in late.json["error"]
    assert cli("request", "run", rid, "--json", token=team.t("alice")).code == 6  # never approved
    assert cli("exception", "propose", "--policy", "no-such-policy", "--asset", "tiny", "--zone", "eu-research",
               "--justification", "x", "--expires", "1d", "--json", token=team.t("bob")).code == 4


def test_egress_budget(team: Team) -> None:
    assert cli("zone", "budget", "prod", "--bytes-per-hour", "1000", "--json", token=team.t("admin")).code == 0
    r = create(team, "dave", "--to", "backup", "--kind", "backup", "--purpose", "x", "--run")
    assert r.code == 3 and "egress budget" in r.json["error"]
    cli("zone", "budget", "prod", "--bytes-per-hour", str(10**9), "--json", token=team.t("admin"))
    rid = [x for x in cli("request", "list", "--json", token=team.t("dave")).json if x["state"] == "approved"][0]["id"]
    assert cli("request", "run", rid, "--json", token=team.t("dave")).code == 0
    shown = cli("zone", "show", "prod", "--json", token=team.t("admin")).json
    assert shown["egress_used_last_hour"] > 0 and shown["egress_bytes_per_hour"] == 10**9


def test_policy_catalog_changes_are_governed(team: Team, tmp_path: Path) -> None:
    shown = cli("policy", "show", "--json", token=team.t("alice")).json
    assert cli("policy", "test", "--json", token=team.t("alice")).json["failed"] == 0
    new = tmp_path / "catalog"
    import shutil

    shutil.copytree(team.env.home / "policies", new)
    rules = (new / "rules.toml").read_text().replace('max_ttl = "30d"', 'max_ttl = "14d"')
    (new / "rules.toml").write_text(rules)
    broken = tmp_path / "broken"
    shutil.copytree(new, broken)
    first = sorted(broken.glob("*.cedar"))[0]
    first.write_text(first.read_text() + "\npermit(principal, action, resource) when { principal.nonexistent };\n")
    assert cli("policy", "propose", str(broken), "--purpose", "x", "--json", token=team.t("carol")).code == 2
    syntax = tmp_path / "syntax"
    shutil.copytree(new, syntax)
    (syntax / "bad.cedar").write_text("permit(principal,, action)")
    assert cli("policy", "propose", str(syntax), "--purpose", "x", "--json", token=team.t("carol")).code == 2
    wrong = tmp_path / "wrong-case"
    shutil.copytree(new, wrong)
    cases = (wrong / "tests.toml").read_text()
    assert "allow = true" in cases
    (wrong / "tests.toml").write_text(cases.replace("allow = true", "allow = false", 1))
    failed = cli("policy", "test", str(wrong), "--json", token=team.t("carol"))
    assert failed.code == 1 and failed.json["failed"] >= 1
    assert cli("policy", "test", str(new), "--json", token=team.t("carol")).json["failed"] == 0
    team.add({"sam": ("security", "security"), "sue": ("security", "grc")})
    p = cli("policy", "propose", str(new), "--purpose", "shorter research copies", "--json", token=team.t("carol")).json
    team.add({"lou": ("security", "grc")})
    assert cli("policy", "approve", p["proposal"], "--otp", team.otp("carol"), "--json",
               token=team.t("carol")).code == 3  # proposer
    assert cli("policy", "approve", p["proposal"], "--otp", team.otp("bob"), "--json",
               token=team.t("bob")).code == 3  # not security
    assert cli("policy", "approve", p["proposal"], "--json", token=team.t("sam")).code == 3  # no one-time code
    assert cli("policy", "apply", p["proposal"], "--json", token=team.t("carol")).code == 3  # no approvals yet
    assert cli("policy", "approve", p["proposal"], "--otp", team.otp("sam"), "--json", token=team.t("sam")).code == 0
    assert cli("policy", "apply", p["proposal"], "--json", token=team.t("carol")).code == 3  # one of two
    assert cli("policy", "approve", p["proposal"], "--otp", team.otp("lou"), "--json",
               token=team.t("lou")).code == 3  # added after the proposal
    assert cli("policy", "approve", p["proposal"], "--otp", team.otp("sue"), "--json", token=team.t("sue")).code == 0
    applied = cli("policy", "apply", p["proposal"], "--json", token=team.t("carol"))
    assert applied.code == 0 and applied.json["old_hash"] == shown["hash"] and applied.json["new_hash"] == p["hash"]
    assert create(team, "alice", "--to", "research", "--kind", "research", "--purpose", "x", "--ttl", "20d").code == 3
    ev = [e for e in events(team.env) if e["action"] == "policy.apply"][-1]
    assert ev["details"]["old_hash"] == shown["hash"] and ev["details"]["new_hash"] == p["hash"]
    # editing the active folder by hand makes every decision fail closed
    active = team.env.home / "policies" / "rules.toml"
    active.write_text(active.read_text() + "\n# sneaky\n")
    r = create(team, "alice", "--to", "research", "--kind", "research", "--purpose", "x", "--ttl", "1d")
    assert r.code == 5 and "not the active one" in r.json["error"]


def _big_env_request(env: Env, tmp_path: Path, size: int) -> tuple[str, str]:
    """A model of `size` bytes registered, and an approved backup request for it (dave's)."""
    import numpy as np

    from conftest import write_safetensors

    path = tmp_path / "big.safetensors"
    write_safetensors(path, {"w": np.random.default_rng(3).integers(0, 255, size=size, dtype=np.uint8)})
    register(env, path, "big")
    dave = cli("principal", "add", "dave", "--role", "backup-operator", "--team", "infra", "--json",
               token=env.token).json["token"]
    rid = cli("request", "create", "big", "--to", "backup", "--kind", "backup", "--purpose", "x", "--json",
              token=dave).json["id"]
    return rid, dave


def test_killed_copy_resumes_and_sweep_cleans_dead_ones(env: Env, tmp_path: Path) -> None:
    import signal
    import subprocess

    from conftest import CUSTODY_BIN

    rid, dave = _big_env_request(env, tmp_path, 400 * 2**20)
    proc = subprocess.Popen([CUSTODY_BIN, "request", "run", rid, "--json"], env=env.environ(CUSTODY_TOKEN=dave),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = env.home / "zones" / "backup" / "replicas"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sealed = list(folder.rglob("*.sealed"))
        if sealed and sealed[0].stat().st_size > 40 * 2**20:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shown = cli("request", "show", rid, "--json", token=dave).json
    assert shown["state"] == "running", "the kill came too late to test anything"
    pending = shown["result_replica"]
    assert cli("replica", "show", pending, "--json", token=env.token).json["state"] == "pending"
    resumed = cli("request", "run", rid, "--json", token=dave)
    assert resumed.code == 0, resumed.stdout
    assert resumed.json["result_replica"] == pending and resumed.json["resumed_chunks"] > 0
    assert cli("replica", "verify", pending, "--json", token=env.token).code == 0

    # A second copy killed the same way, then swept instead of resumed: nothing is left behind.
    rid2 = cli("request", "create", "big", "--to", "backup", "--kind", "backup", "--purpose", "y", "--json",
               token=dave).json["id"]
    proc = subprocess.Popen([CUSTODY_BIN, "request", "run", rid2, "--json"], env=env.environ(CUSTODY_TOKEN=dave),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sealed = [p for p in folder.rglob("*.sealed") if pending not in str(p)]
        if sealed and sealed[0].stat().st_size > 40 * 2**20:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    dead = cli("request", "show", rid2, "--json", token=dave).json["result_replica"]
    swept = cli("sweep", "--json", token=env.token).json
    assert swept["failed"] == [dead] and swept["removed"] == [f"backup/{dead}"]
    assert sorted(p.name for p in folder.iterdir()) == [pending]


@pytest.fixture
def tiny_disk(tmp_path: Path):  # noqa: ANN201
    """A real 64 KiB file system, so a copy runs out of space for real."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_destination_out_of_space_fails_cleanly(env: Env, tmp_path: Path, tiny_disk: Path) -> None:
    rid, dave = _big_env_request(env, tmp_path, 512 * 1024)
    cli("zone", "add", "small", "--url", tiny_disk.as_uri(), "--kind", "backup", "--region", "r", "--jurisdiction",
        "US", "--security-level", "4", "--json", token=env.token)
    rid = cli("request", "create", "big", "--to", "small", "--kind", "backup", "--purpose", "x", "--json",
              token=dave).json["id"]
    r = cli("request", "run", rid, "--json", token=dave)
    assert r.code == 1 and "destination zone is full" in r.json["error"] and "\n" not in r.json["error"]
    shown = cli("request", "show", rid, "--json", token=dave).json
    assert shown["state"] == "failed"
    assert cli("replica", "list", "--zone", "small", "--state", "active", "--json", token=env.token).json == []
    swept = cli("sweep", "--json", token=env.token).json
    assert swept["failed"] == [shown["result_replica"]]
    assert not list((tiny_disk / "replicas").iterdir())
    # the request can be retried (into a fresh replica) once there is room: here there never is
    again = cli("request", "run", rid, "--json", token=dave)
    assert again.code == 1 and "full" in again.json["error"]


def test_requester_cannot_mint_their_own_approvers(team: Team) -> None:
    """An admin asks, then has two approvers added and approves through them: none of it counts."""
    rid = create(team, "admin", "--to", "research", "--kind", "migration", "--purpose", "x", "--ttl", "1d").json
    assert rid["state"] == "awaiting_approval"
    asked = cli("principal", "add", "ghost0", "--role", "ml-lead", "--team", "a", "--json", token=team.t("admin"))
    assert asked.code == 2 and "makes their own token" in asked.json["error"]  # an approver's token is never the admin's
    team.add({"ghost1": ("ml-lead", "a"), "ghost2": ("security", "b")})  # approved by the security officers
    for name in ("ghost1", "ghost2"):
        r = cli("request", "approve", rid["id"], "--otp", team.otp(name), "--json", token=team.t(name))
        assert r.code == 3 and "added by admin" in r.json["error"]


def test_no_approver_through_a_chain_of_principals(team: Team) -> None:
    """admin has admin2 added, admin2 has an approver added: that approver cannot approve for admin."""
    rid = create(team, "admin", "--to", "research", "--kind", "migration", "--purpose", "x", "--ttl", "1d").json["id"]
    team.add({"admin2": ("admin", "platform")})
    team.add({"puppet": ("security", "c")}, by="admin2")
    r = cli("request", "approve", rid, "--otp", team.otp("puppet"), "--json", token=team.t("puppet"))
    assert r.code == 3 and "added by admin (through admin2)" in r.json["error"]
    assert events(team.env)[-1]["outcome"] == "denied"


def test_approvals_recounted_when_the_copy_runs(team: Team) -> None:
    rid = _approved_research(team)
    cli("principal", "suspend", "bob", "--json", token=team.t("admin"))
    r = cli("request", "run", rid, "--json", token=team.t("alice"))
    assert r.code == 3 and "approvals still count" in r.json["error"]


def test_revoking_a_running_or_failed_request_ends_it(team: Team) -> None:
    rid = _approved_research(team)
    source = team.env.home / "zones" / "prod" / "replicas" / team.replica
    source.rename(source.with_name("gone"))  # the copy's source files go missing: the run fails part-way
    assert cli("request", "run", rid, "--json", token=team.t("alice")).code in (4, 5)
    assert cli("request", "show", rid, "--json", token=team.t("alice")).json["state"] == "failed"
    rev = cli("request", "revoke", rid, "--reason", "stop", "--json", token=team.t("alice"))
    assert rev.code == 0 and len(rev.json["shredded"]) == 1
    assert cli("request", "show", rid, "--json", token=team.t("alice")).json["state"] == "cancelled"
    assert cli("request", "run", rid, "--json", token=team.t("alice")).code == 6


def test_copies_come_from_primaries_and_never_outlive_their_source(team: Team) -> None:
    backup = create(team, "dave", "--to", "backup", "--kind", "backup", "--purpose", "x", "--ttl", "2d", "--run").json
    src = backup["result_replica"]
    r = create(team, "dave", "--to", "backup", "--kind", "backup", "--purpose", "y", "--from", src, "--ttl", "30d")
    assert r.code == 3 and "must expire sooner" in r.json["error"]
    ok = create(team, "dave", "--to", "backup", "--kind", "backup", "--purpose", "y", "--from", src, "--ttl", "1d")
    assert ok.code == 0
    clone = _approved_research(team)
    made = cli("request", "run", clone, "--json", token=team.t("alice")).json["result_replica"]
    r = create(team, "dave", "--to", "backup", "--kind", "backup", "--purpose", "z", "--from", made, "--ttl", "1h")
    assert r.code == 2 and "copies come from" in r.json["error"]


def test_a_stale_policy_proposal_cannot_roll_back_the_catalog(team: Team, tmp_path: Path) -> None:
    import shutil

    team.add({"sam": ("security", "s2"), "sue": ("security", "s3"), "tom": ("security", "s4"),
              "uma": ("security", "s5")})
    proposals = []
    for ttl in ("14d", "21d"):
        folder = tmp_path / ttl
        shutil.copytree(team.env.home / "policies", folder)
        (folder / "rules.toml").write_text((folder / "rules.toml").read_text().replace('max_ttl = "30d"',
                                                                                       f'max_ttl = "{ttl}"'))
        proposals.append(cli("policy", "propose", str(folder), "--purpose", ttl, "--json", token=team.t("carol")).json)
    for p, pair in zip(proposals, (("sam", "sue"), ("tom", "uma"))):
        for who in pair:
            assert cli("policy", "approve", p["proposal"], "--otp", team.otp(who), "--json", token=team.t(who)).code == 0
    assert cli("policy", "apply", proposals[0]["proposal"], "--json", token=team.t("carol")).code == 0
    stale = cli("policy", "apply", proposals[1]["proposal"], "--json", token=team.t("carol"))
    assert stale.code == 6 and "propose it again" in stale.json["error"]


@pytest.mark.parametrize("tamper", [
    "UPDATE signoffs SET signature = 'AAAA' WHERE principal = 'carol'",  # a forged signature
    "UPDATE signoffs SET mfa_verified = 1 - mfa_verified WHERE principal = 'carol'",  # a claim it did not sign
    "UPDATE signoffs SET principal = 'frank' WHERE principal = 'carol'",  # someone else's name on it
])
def test_tampered_sign_offs_stop_counting_before_the_copy(team: Team, tamper: str) -> None:
    """Approvals are re-verified against their signatures when the copy runs, not taken from the table."""
    rid = _approved_research(team)
    ws = team.env.open()
    with ws.engine.begin() as conn:
        conn.execute(text(tamper.replace("1 - mfa_verified", "NOT mfa_verified")
                          if ws.engine.dialect.name == "postgresql" else tamper))
    ws.close()
    r = cli("request", "run", rid, "--json", token=team.t("alice"))
    assert r.code == 3 and "approvals still count" in r.json["error"], r.stdout
    assert cli("replica", "list", "--zone", "research", "--json", token=team.t("admin")).json == []

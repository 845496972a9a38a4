"""Identity is governed: one administrator cannot reach approvers, readers or admins of their own.

Each test performs the attempt for real: through the CLI in process, in parallel processes on
PostgreSQL, and with database edits."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import text

from conftest import Env, People, cli, events, people, register, run_custody
from custody.control.store import repositories as repo


def test_the_first_two_security_officers_are_the_bootstrap(env: Env) -> None:
    r = cli("principal", "add", "lena", "--role", "ml-lead", "--json", token=env.token)
    assert r.code == 6 and "has 0" in r.json["error"] and "--role security" in r.json["error"]
    assert cli("principal", "add", "sam", "--role", "security", "--role", "admin", "--json", token=env.token).code == 6
    crew = People.of(env)
    crew._officers()  # two bootstrap officers, added directly
    public = cli("principal", "new-token", "--json").json["public"]
    third = cli("principal", "add", "sue", "--role", "security", "--public-token", public, "--json", token=env.token)
    assert third.code == 0 and "token" not in third.json  # the bootstrap is over: a proposal
    for role in ("admin", "security", "ml-lead", "on-call", "service"):
        assert cli("principal", "add", f"x-{role}", "--role", role, "--json", token=env.token).code == 2  # no token
        r = cli("principal", "add", f"x-{role}", "--role", role, "--public-token",
                cli("principal", "new-token", "--json").json["public"], "--json", token=env.token)
        assert r.code == 0 and r.json["state"] == "proposed", role
    for role in ("researcher", "backup-operator", "auditor"):
        assert "token" in cli("principal", "add", f"y-{role}", "--role", role, "--json", token=env.token).json
    added = [e for e in events(env) if e["action"] == "principal.add" and e["outcome"] == "ok"]
    assert [e["subject"] for e in added if e["details"].get("bootstrap")] == ["officer-a", "officer-b"]


def test_nobody_but_its_holder_sees_the_token_of_a_principal_with_power(env: Env) -> None:
    """The holder makes it; the proposal, the officers' approvals and the store see only its public part."""
    crew = People.of(env)
    crew._officers()
    no_token = cli("principal", "add", "lena", "--role", "ml-lead", "--json", token=env.token)
    assert no_token.code == 2 and "principal new-token" in no_token.json["error"]
    made = cli("principal", "new-token", "--json").json
    assert made["public"] == f"{made['token'].split('_')[1]}:{__import__('hashlib').sha256(made['token'].encode()).hexdigest()}"
    asked = cli("principal", "add", "lena", "--role", "ml-lead", "--public-token", made["public"], "--json",
                token=env.token).json
    assert "token" not in asked and asked["token_fingerprint"] == made["fingerprint"]
    assert made["fingerprint"].replace(" ", "") == made["public"].split(":")[1][:32]  # of the hash, not the id
    first = cli("principal", "approve", asked["proposal"], "--otp", crew.otp("officer-a"), "--json",
                token=crew.t("officer-a")).json[0]
    assert first["state"] == "proposed" and cli("zone", "list", "--json", token=made["token"]).code == 3
    second = cli("principal", "approve", asked["proposal"], "--otp", crew.otp("officer-b"), "--json",
                 token=crew.t("officer-b"))
    assert second.code == 0 and made["token"] not in second.stdout and second.json[0]["state"] == "applied"
    assert cli("zone", "list", "--json", token=made["token"]).code == 0  # her own token works
    assert events(env)[-1]["actor"] == "lena"
    for e in events(env):  # and it is nowhere in the ledger
        assert made["token"] not in json.dumps(e)
    r = cli("principal", "add", "lena2", "--role", "ml-lead", "--public-token", made["public"], "--json",
            token=env.token)
    assert r.code == 2 and "someone else's" in r.json["error"]  # one token, one principal: refused when proposed
    first = cli("principal", "new-token", "--json").json["public"]  # and when two proposals race for one token
    pids = [cli("principal", "add", name, "--role", "ml-lead", "--public-token", first, "--json",
                token=env.token).json["proposal"] for name in ("lena3", "lena4")]
    for officer in ("officer-a", "officer-b"):
        cli("principal", "approve", pids[0], "--otp", crew.otp(officer), "--json", token=crew.t(officer))
    r = cli("principal", "approve", pids[1], "--otp", crew.otp("officer-a"), "--json", token=crew.t("officer-a"))
    r = cli("principal", "approve", pids[1], "--otp", crew.otp("officer-b"), "--json", token=crew.t("officer-b"))
    assert r.code == 2 and "someone else's" in r.json["error"]


def test_a_proposal_whose_token_is_swapped_in_the_database_no_longer_counts(env: Env) -> None:
    crew = People.of(env)
    crew._officers()
    made = cli("principal", "new-token", "--json").json
    pid = cli("principal", "add", "lena", "--role", "ml-lead", "--public-token", made["public"], "--json",
              token=env.token).json["proposal"]
    cli("principal", "approve", pid, "--otp", crew.otp("officer-a"), "--json", token=crew.t("officer-a"))
    mine = cli("principal", "new-token", "--json").json  # a database writer puts their own token in
    token_id, token_hash = mine["public"].split(":")
    ws = env.open()
    with ws.engine.begin() as conn:
        conn.execute(text("UPDATE identity_proposals SET token_id = :i, token_hash = :h WHERE id = :p"),
                     {"i": token_id, "h": token_hash, "p": pid})
    ws.close()
    r = cli("principal", "approve", pid, "--otp", crew.otp("officer-b"), "--json", token=crew.t("officer-b"))
    assert r.code == 0 and r.json[0]["state"] == "proposed" and r.json[0]["approved_by"] == ["officer-b"]
    assert cli("zone", "list", "--json", token=mine["token"]).code == 3


def test_an_admin_who_is_also_an_approver_cannot_approve_for_their_creations(env: Env, model_dir: Path) -> None:
    crew = people(env, {"boss": ("admin", "platform")})
    crew.add({"boss-lead": ("ml-lead", "platform")})
    register(env, model_dir, "tiny", "--jurisdiction", "US")
    ws = env.open()  # give boss the ml-lead role too, as a dual-role principal would have it (signed, as custody
    with ws.uow() as uow:  # signs what it writes)
        uow.conn.execute(text("UPDATE principals SET roles = :r WHERE name = 'boss'"), {"r": '["admin", "ml-lead"]'})
        repo.sign_principal(uow, "boss")
    ws.close()
    crew.enroll("boss")
    crew.tokens["sock"] = cli("principal", "add", "sock", "--role", "researcher", "--json",
                              token=crew.t("boss")).json["token"]
    rid = cli("request", "create", "tiny", "--kind", "read", "--purpose", "a look", "--json",
              token=crew.t("sock")).json["id"]
    r = cli("request", "approve", rid, "--otp", crew.otp("boss"), "--json", token=crew.t("boss"))
    assert r.code == 3 and "sock was added by boss" in r.json["error"]
    assert events(env)[-1]["outcome"] == "denied"


def test_suspending_an_officer_is_governed_and_nobody_approves_their_own(env: Env) -> None:
    crew = people(env, {"sam": ("security", "grc"), "admin2": ("admin", "platform")})
    asked = cli("principal", "suspend", "officer-a", "--reason", "left", "--json", token=env.token).json["proposal"]
    r = cli("principal", "approve", asked, "--otp", crew.otp("sam"), "--json", token=crew.t("sam"))
    assert r.code == 3 and "sam was added by admin" in r.json["error"]  # admin asked for sam: not independent
    cli("principal", "approve", asked, "--otp", crew.otp("officer-a"), "--json", token=crew.t("officer-a"))
    # an open (perhaps decoy) suspension does not block another: they stand side by side
    r = cli("principal", "suspend", "officer-a", "--reason", "left", "--json", token=crew.t("admin2"))
    assert r.code == 0 and r.json["change"] == "suspend" and r.json["state"] == "proposed"
    pid = r.json["proposal"]
    assert pid != asked
    assert cli("principal", "withdraw", asked, "--json", token=crew.t("admin2")).code == 3  # not admin2's
    assert cli("principal", "withdraw", asked, "--json", token=crew.t("officer-a")).code == 3  # nor its target's
    assert cli("principal", "withdraw", asked, "--json", token=env.token).json["state"] == "withdrawn"
    assert cli("principal", "list", "--json", token=env.token).json[2]["suspended"] is False
    own = cli("principal", "approve", pid, "--otp", crew.otp("officer-a"), "--json", token=crew.t("officer-a"))
    assert own.code == 3 and "own suspension" in own.json["error"]
    cli("principal", "approve", pid, "--otp", crew.otp("officer-b"), "--json", token=crew.t("officer-b"))
    done = cli("principal", "approve", pid, "--otp", crew.otp("sam"), "--json", token=crew.t("sam"))
    assert done.code == 0 and done.json[0]["state"] == "applied"
    assert cli("zone", "list", "--json", token=crew.t("officer-a")).code == 3  # suspended at once
    # two officers remain: the bootstrap does not open again
    public = cli("principal", "new-token", "--json").json["public"]
    assert cli("principal", "add", "ghost", "--role", "security", "--public-token", public, "--json",
               token=env.token).json["state"] == "proposed"


def test_an_identity_proposal_edited_after_its_approvals_no_longer_counts(env: Env) -> None:
    crew = People.of(env)
    crew._officers()
    pid = cli("principal", "add", "lena", "--role", "researcher", "--role", "ml-lead", "--public-token",
              cli("principal", "new-token", "--json").json["public"], "--json", token=env.token).json["proposal"]
    cli("principal", "approve", pid, "--otp", crew.otp("officer-b"), "--json", token=crew.t("officer-b"))
    ws = env.open()
    with ws.engine.begin() as conn:  # a database writer widens what was approved
        conn.execute(text("UPDATE identity_proposals SET roles = :r WHERE id = :i"),
                     {"r": '["ml-lead", "admin", "researcher"]', "i": pid})
    ws.close()
    r = cli("principal", "approve", pid, "--otp", crew.otp("officer-a"), "--json", token=crew.t("officer-a"))
    # officer-b signed the roles as proposed, not as edited: that approval no longer counts
    assert r.code == 0 and (r.json[0]["state"], r.json[0]["approved_by"]) == ("proposed", ["officer-a"])
    assert "lena" not in [p["name"] for p in cli("principal", "list", "--json", token=env.token).json]


def test_racing_bootstrap_additions_name_two_officers_at_most(pg_env: Env) -> None:
    assert cli("principal", "add", "first", "--role", "security", "--json", token=pg_env.token).code == 0
    environ = pg_env.environ()
    public = [cli("principal", "new-token", "--json").json["public"] for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: run_custody("principal", "add", f"officer{i}", "--role", "security",
                                                      "--public-token", public[i], "--json", env=environ), range(6)))
    assert all(r.code == 0 for r in results), [r.stdout + r.stderr for r in results]
    direct = [r for r in results if "token" in r.json]
    assert len(direct) == 1  # the second officer; every other one became a proposal
    assert sum(1 for r in results if r.json.get("state") == "proposed") == 5


def test_a_token_made_with_someone_elses_id_shows_another_fingerprint(env: Env) -> None:
    """A token's id is whatever its maker wrote; the fingerprint officers compare comes from its hash."""
    lenas = cli("principal", "new-token", "--json").json
    token_id = lenas["public"].split(":")[0]
    forged = f"cst_{token_id}_" + "A" * 43  # the admin's own token, with lena's id
    from custody.control.tokens import digest, fingerprint

    crew = People.of(env)
    crew._officers()
    asked = cli("principal", "add", "lena", "--role", "ml-lead", "--public-token", f"{token_id}:{digest(forged)}",
                "--json", token=env.token).json
    assert asked["token_fingerprint"] == fingerprint(digest(forged)) != lenas["fingerprint"]


def test_a_token_pending_in_a_proposal_cannot_be_given_to_someone_else(env: Env) -> None:
    crew = People.of(env)
    crew._officers()
    public = cli("principal", "new-token", "--json").json["public"]
    assert cli("principal", "add", "lena", "--role", "ml-lead", "--public-token", public, "--json",
               token=env.token).json["state"] == "proposed"
    r = cli("principal", "add", "decoy", "--role", "researcher", "--public-token", public, "--json", token=env.token)
    assert r.code == 2 and "someone else's" in r.json["error"]

"""Reads of plaintext are decided like copies: no standing read, single-use read requests, all ledgered.

Each test performs the read as an attacker would try it (another role, someone else's request, a
spent request revived by a database edit) on real SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

import custody
from conftest import Env, People, cli, events, last_event, people, register
from custody.domain.errors import CustodyError

CREW = {"alice": ("researcher", "nlp"), "rob": ("researcher", "vision"), "lena": ("ml-lead", "platform"),
        "carol": ("security", "security"), "svc": ("service", "serving", {"zone": "prod"}),
        "svc-b": ("service", "serving", {"zone": "backup"})}


@pytest.fixture
def crew(any_env: Env, model_dir: Path) -> People:
    crew = people(any_env, CREW)
    crew.tokens["replica"] = register(any_env, model_dir, "tiny", "--jurisdiction", "US")["replica"]
    return crew


def read(crew: People, who: str, replica: str | None = None, **kw) -> dict:  # noqa: ANN003
    return custody.open_safetensors(replica or crew.t("replica"), purpose=kw.pop("purpose", f"{who} reads"),
                                    token=crew.t(who), home=crew.env.home, **kw)


def refused(crew: People, who: str, replica: str | None = None, **kw) -> CustodyError:  # noqa: ANN003
    with pytest.raises(CustodyError) as caught:
        read(crew, who, replica, **kw)
    return caught.value


def test_no_role_has_a_standing_read_of_the_primary(crew: People) -> None:
    for who in ("admin", "lena", "carol", "alice", "officer-a"):
        exc = refused(crew, who, purpose="just looking")
        assert exc.exit_code == 3 and "--kind read" in exc.message, exc.message
        event = last_event(crew.env)
        assert (event["action"], event["outcome"], event["actor"]) == ("replica.open", "denied", who)
        assert event["rationale"] == "just looking" and event["details"]["decision"]["allowed"] is False


def test_a_service_reads_only_the_production_zone_it_is_bound_to(crew: People) -> None:
    tensors = read(crew, "svc", purpose="serve traffic", tensors=["lm_head.ids"])
    assert list(tensors) == ["lm_head.ids"]
    event = last_event(crew.env)
    assert event["outcome"] == "ok" and event["policy_ids"] == ["permit-read-serving-zone"]
    assert event["details"]["decision"]["allowed"] is True and event["rationale"] == "serve traffic"
    assert refused(crew, "svc-b").exit_code == 3
    backup = cli("request", "create", "tiny", "--to", "backup", "--kind", "backup", "--purpose", "nightly", "--run",
                 "--json", token=crew.t("admin")).json["result_replica"]
    assert refused(crew, "svc", backup).exit_code == 3  # a backup replica is not served from
    assert refused(crew, "svc-b", backup).exit_code == 3  # bound to the backup zone: not a production zone


def test_a_service_is_added_only_through_an_identity_proposal(crew: People) -> None:
    r = cli("principal", "add", "svc2", "--role", "service", "--attr", "zone=prod", "--json", token=crew.t("admin"))
    assert r.code == 2 and "makes their own token" in r.json["error"]
    public = cli("principal", "new-token", "--json").json["public"]
    r = cli("principal", "add", "svc2", "--role", "service", "--attr", "zone=prod", "--public-token", public, "--json",
            token=crew.t("admin"))
    assert r.code == 0 and "token" not in r.json and r.json["state"] == "proposed"


def test_a_research_copy_is_read_by_its_requester_only(crew: People) -> None:
    rid = cli("request", "create", "tiny", "--to", "research", "--kind", "research", "--purpose", "eval", "--ttl", "1d",
              "--json", token=crew.t("alice")).json["id"]
    assert cli("request", "approve", rid, "--otp", crew.otp("lena"), "--json", token=crew.t("lena")).code == 0
    clone = cli("request", "run", rid, "--json", token=crew.t("alice")).json["result_replica"]
    assert "model.embed.weight" in read(crew, "alice", clone)
    assert last_event(crew.env)["policy_ids"] == ["permit-read-own-copy"]
    for who in ("rob", "lena", "admin"):
        assert refused(crew, who, clone).exit_code == 3


def test_a_read_request_is_approved_spent_once_and_by_its_requester_only(crew: People) -> None:
    asked = cli("request", "create", "tiny", "--kind", "read", "--purpose", "inspect the head", "--json",
                token=crew.t("lena"))
    assert asked.code == 0, asked.stdout
    req = asked.json
    assert req["state"] == "awaiting_approval" and req["source_replica"] == crew.t("replica")
    assert req["decision"]["policy_ids"] == ["permit-read-request"] and req["ttl_seconds"] == 3600
    assert req["still_needed"]["approvals"] == 1
    assert refused(crew, "lena").exit_code == 3  # asked, not approved
    assert cli("request", "approve", req["id"], "--otp", crew.otp("carol"), "--json",
               token=crew.t("carol")).json["state"] == "approved"
    assert cli("request", "run", req["id"], "--json", token=crew.t("lena")).code == 6  # a read is not run
    stolen = refused(crew, "carol", request=req["id"])  # carol may see it, and may still not use it
    assert stolen.exit_code == 3 and "lena's" in stolen.message
    hidden = refused(crew, "alice", request=req["id"])  # alice may not even see it
    assert hidden.exit_code == 4 and hidden.message == f"no request {req['id']}"
    got = read(crew, "lena", purpose="inspect the head", tensors=["lm_head.ids"], request=req["id"])
    assert list(got) == ["lm_head.ids"]
    event = last_event(crew.env)
    assert event["outcome"] == "ok" and event["request_id"] == req["id"]
    assert event["policy_ids"] == ["permit-read-approved"] and event["rationale"] == "inspect the head"
    assert cli("request", "show", req["id"], "--json", token=crew.t("lena")).json["state"] == "done"
    assert refused(crew, "lena").exit_code == 3  # spent: one approval, one read
    assert refused(crew, "lena", request=req["id"]).exit_code == 3


def test_a_spent_read_revived_in_the_database_is_refused(crew: People) -> None:
    rid = cli("request", "create", "tiny", "--kind", "read", "--purpose", "x", "--json", token=crew.t("lena")).json["id"]
    cli("request", "approve", rid, "--otp", crew.otp("carol"), "--json", token=crew.t("carol"))
    read(crew, "lena", request=rid)
    ws = crew.env.open()
    with ws.engine.begin() as conn:  # an attacker with database write access sets the request back
        conn.execute(text("UPDATE requests SET state = 'approved' WHERE id = :i"), {"i": rid})
    ws.close()
    exc = refused(crew, "lena", request=rid)
    assert exc.exit_code in (3, 6) and "grant" in exc.message
    assert last_event(crew.env)["outcome"] in ("denied", "invalid_state")


def test_an_expired_read_request_reads_nothing(crew: People) -> None:
    rid = cli("request", "create", "tiny", "--kind", "read", "--purpose", "x", "--ttl", "10m", "--json",
              token=crew.t("lena")).json["id"]
    approved = cli("request", "approve", rid, "--otp", crew.otp("carol"), "--json", token=crew.t("carol")).json
    left = datetime.fromisoformat(approved["grant_expires_at"].replace("Z", "+00:00")) - datetime.now(timezone.utc)
    assert timedelta(minutes=9) < left <= timedelta(minutes=10)  # usable for the TTL asked for
    ws = crew.env.open()
    with ws.engine.begin() as conn:
        conn.execute(text("UPDATE requests SET grant_expires_at = :t WHERE id = :i"),
                     {"t": datetime.now(timezone.utc) - timedelta(seconds=1), "i": rid})
    ws.close()
    assert refused(crew, "lena", request=rid).exit_code == 6  # lapsed


def test_reading_a_critical_asset_takes_two_security_approvals(crew: People, tmp_path: Path) -> None:
    from conftest import hf_model

    hf_model(tmp_path / "crown", seed=7)
    register(crew.env, tmp_path / "crown", "crown", "--sensitivity", "critical", "--jurisdiction", "US")
    req = cli("request", "create", "crown", "--kind", "read", "--purpose", "audit", "--json", token=crew.t("lena")).json
    assert req["decision"]["requirement"]["rule"] == "critical-copy"
    assert req["still_needed"] | {} == req["still_needed"] and req["still_needed"]["roles"] == ["security"]
    assert req["still_needed"]["approvals"] == 2


def test_a_read_request_reads_in_place(crew: People) -> None:
    r = cli("request", "create", "tiny", "--kind", "read", "--to", "research", "--purpose", "x", "--json",
            token=crew.t("lena"))
    assert r.code == 2 and "reads replica" in r.json["error"]
    assert cli("request", "create", "tiny", "--kind", "read", "--purpose", "x", "--json",
               token=crew.t("admin")).json["state"] == "awaiting_approval"  # an admin asks like anyone
    assert events(crew.env)[-1]["action"] == "request.create"

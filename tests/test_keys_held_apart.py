"""Keys held apart from the database: each attack an owner of the database could try, performed.

The control-plane database is convenient, not trusted (DESIGN.md, "Trust roots"). These tests edit
it as an attacker with write access would (an expiry stretched, a done request reset, a spent grant
forgotten, a requester swapped, an old copy of the database put back) and show that the custodian,
which believes only the grant it verifies, the binding authenticated with each key and its own
journal, refuses. They run with every custodian (CUSTODY_TEST_CUSTODIAN).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

import custody
from conftest import Env, People, cli, events, last_event, people, register, serving
from custody.control.store import repositories as repo
from custody.domain.errors import CustodyError, IntegrityError
from custody.keys.attestation import signed_evidence

CREW = {"alice": ("researcher", "nlp"), "rob": ("researcher", "vision"), "lena": ("ml-lead", "platform"),
        "svc": ("service", "serving", {"zone": "prod"})}


@pytest.fixture
def crew(env: Env, model_dir: Path) -> People:
    crew = people(env, CREW)
    crew.tokens["replica"] = register(env, model_dir, "tiny", "--jurisdiction", "US")["replica"]
    return crew


def sql(env: Env, statement: str, **params: object) -> None:
    """What an attacker with write access to the database does."""
    ws = env.open()
    with ws.engine.begin() as conn:
        conn.execute(text(statement), params)
    ws.close()


def research_copy(crew: People, ttl: str = "1d") -> tuple[str, str]:
    rid = cli("request", "create", "tiny", "--to", "research", "--kind", "research", "--purpose", "eval", "--ttl", ttl,
              "--json", token=crew.t("alice")).json["id"]
    assert cli("request", "approve", rid, "--otp", crew.otp("lena"), "--json", token=crew.t("lena")).code == 0
    r = cli("request", "run", rid, "--json", token=crew.t("alice"))
    assert r.code == 0, r.stdout
    return rid, r.json["result_replica"]


def read(crew: People, who: str, replica: str, **kw) -> dict:  # noqa: ANN003
    return custody.open_safetensors(replica, purpose=f"{who} reads", token=crew.t(who), home=crew.env.home, **kw)


def refused(crew: People, who: str, replica: str, **kw) -> CustodyError:  # noqa: ANN003
    with pytest.raises(CustodyError) as caught:
        read(crew, who, replica, **kw)
    return caught.value


def test_a_stretched_expiry_revives_nothing(crew: People) -> None:
    _, clone = research_copy(crew, ttl="3s")
    assert "model.embed.weight" in read(crew, "alice", clone)
    time.sleep(3.5)
    later = datetime.now(timezone.utc) + timedelta(days=30)
    sql(crew.env, "UPDATE replicas SET expires_at = :t WHERE id = :i", t=later, i=clone)  # the row says: a month left
    exc = refused(crew, "alice", clone)
    assert exc.exit_code == 6 and "bound into the key" in exc.message, exc.message
    event = last_event(crew.env)
    assert (event["action"], event["outcome"]) == ("replica.open", "invalid_state")
    # the binding stored beside the key is stretched too: then the key does not unwrap at all
    ws = crew.env.open()
    with ws.uow(readonly=True) as uow:
        key_id = repo.replica_by_id(uow, clone).key_id
        binding = json.loads(uow.conn.execute(text("SELECT binding FROM data_keys WHERE id = :k"), {"k": key_id}).scalar())
    ws.close()
    stretched = {**binding, "expires": later.replace(microsecond=0).isoformat()}
    sql(crew.env, "UPDATE data_keys SET binding = :b WHERE id = :k", b=json.dumps(stretched), k=key_id)
    exc = refused(crew, "alice", clone)
    assert exc.exit_code == 5 and "does not unwrap" in exc.message, exc.message
    sql(crew.env, "UPDATE data_keys SET binding = :b WHERE id = :k", b=json.dumps(binding), k=key_id)
    # the sweeper believes the key, not the row: the copy is shredded and its zone moves to a new epoch
    swept = cli("sweep", "--json", token=crew.t("admin")).json
    assert clone in swept["expired"] and [e["zone"] for e in swept["epochs"]] == ["research"]


def test_a_done_copy_reset_in_the_database_is_not_copied_again(crew: People) -> None:
    rid, clone = research_copy(crew)
    sql(crew.env, "UPDATE requests SET state = 'approved', result_replica = NULL WHERE id = :i", i=rid)
    sql(crew.env, "DELETE FROM grant_uses WHERE request_id = :i", i=rid)  # the store forgets the grant was spent
    r = cli("request", "run", rid, "--json", token=crew.t("alice"))
    assert r.code == 3 and "custodian's own record" in r.json["error"], r.stdout
    live = [x for x in cli("replica", "list", "--zone", "research", "--json", token=crew.t("admin")).json
            if x["state"] in ("active", "pending")]
    assert [x["id"] for x in live] == [clone]  # still one copy


def test_a_spent_read_forgotten_by_the_database_is_not_read_again(crew: People) -> None:
    lead = "carol"
    crew.add({lead: ("security", "security")})
    rid = cli("request", "create", "tiny", "--kind", "read", "--purpose", "x", "--json", token=crew.t("lena")).json["id"]
    assert cli("request", "approve", rid, "--otp", crew.otp(lead), "--json", token=crew.t(lead)).code == 0
    read(crew, "lena", crew.t("replica"), request=rid)
    sql(crew.env, "UPDATE requests SET state = 'approved' WHERE id = :i", i=rid)
    sql(crew.env, "DELETE FROM grant_uses WHERE request_id = :i", i=rid)
    exc = refused(crew, "lena", crew.t("replica"), request=rid)
    assert exc.exit_code == 3 and "one approval, one read" in exc.message, exc.message


def test_a_swapped_requester_does_not_read_someone_elses_copy(crew: People) -> None:
    rid, clone = research_copy(crew)
    assert refused(crew, "rob", clone).exit_code == 3  # the catalog says no
    sql(crew.env, "UPDATE requests SET requester = 'rob' WHERE id = :i", i=rid)  # now the store says it is rob's
    exc = refused(crew, "rob", clone)
    assert exc.exit_code == 3 and "made for alice" in exc.message, exc.message


def test_a_database_from_before_a_revocation_decrypts_nothing(crew: People, tmp_path: Path) -> None:
    from conftest import hf_model

    hf_model(tmp_path / "other", seed=3)
    other = register(crew.env, tmp_path / "other", "other", "--jurisdiction", "US")["replica"]
    victim = crew.t("replica")
    db = crew.env.home / "custody.db"
    stash = tmp_path / "stash"
    stash.mkdir()
    with sqlite3.connect(db) as live, sqlite3.connect(stash / "custody.db") as copy:
        live.backup(copy)  # the attacker's backup of the database, taken before the revocation
    shutil.copytree(crew.env.home / "zones" / "prod" / "replicas" / victim, stash / victim)

    r = cli("replica", "revoke", victim, "--reason", "model leaked", "--json", token=crew.t("admin"))
    assert r.code == 0 and r.json["epochs"][0]["zone"] == "prod" and r.json["epochs"][0]["rewrapped"] == 1
    kek = {k["version"]: k for k in cli("keys", "status", "--json", token=crew.t("admin")).json
           if k["purpose"] == "kek" and k["zone"] == "prod"}
    assert list(kek) == [2] and kek[2]["data_keys"] == 1  # epoch 1 is destroyed; the other replica moved on
    assert cli("replica", "verify", other, "--json", token=crew.t("admin")).code == 0

    # the old database and the sealed files go back in place
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(stash / "custody.db", db)
    shutil.copytree(stash / victim, crew.env.home / "zones" / "prod" / "replicas" / victim)
    ws = crew.env.open()
    with ws.uow(readonly=True) as uow:
        wrapped = repo.data_key(uow, repo.replica_by_id(uow, victim).key_id)
    assert wrapped is not None and wrapped.kek_version == 1
    with pytest.raises(IntegrityError, match="was destroyed"):
        ws.custodian().unwrap(wrapped)  # the passphrase and the custodian in hand: epoch 1 is gone
    ws.close()
    # nothing in the old database opens any more: the revoked key is in the custodian's record of destroyed
    # keys, and every other key of the zone is wrapped under the destroyed epoch
    r = cli("replica", "verify", victim, "--json", token=crew.t("admin"))
    assert r.code == 3 and "was destroyed (the custodian's own record)" in r.json["error"], r.stdout
    r = cli("replica", "verify", other, "--json", token=crew.t("admin"))
    assert r.code == 5 and "KEK version 1 of zone prod was destroyed" in r.json["error"], r.stdout


def test_an_altered_journal_releases_nothing(crew: People) -> None:
    _, clone = research_copy(crew)
    journal = crew.env.home / "keys" / "release.journal"
    lines = journal.read_text().splitlines()
    first = json.loads(lines[0])
    first["request"] = "someone-else"
    lines[0] = json.dumps(first, sort_keys=True, separators=(",", ":"))
    journal.write_text("\n".join(lines) + "\n")
    exc = refused(crew, "alice", clone)
    assert exc.exit_code == 5 and "journal was altered at line 1" in exc.message, exc.message
    journal.write_text("\n".join(lines[:1]) + "\n")  # a truncated journal is refused too
    assert refused(crew, "alice", clone).exit_code == 5


def test_revocation_moves_the_zone_to_a_new_epoch(crew: People, tmp_path: Path) -> None:
    from conftest import hf_model

    hf_model(tmp_path / "other", seed=5)
    other = register(crew.env, tmp_path / "other", "other", "--jurisdiction", "US")["replica"]
    rid, clone = research_copy(crew)
    r = cli("request", "revoke", rid, "--reason", "project over", "--json", token=crew.t("alice"))
    assert r.code == 0 and [e["zone"] for e in r.json["epochs"]] == ["research"]
    assert r.json["epochs"][0]["retired"] == [1] and r.json["epochs"][0]["destroyed"]
    prod = [k for k in cli("keys", "status", "--json", token=crew.t("admin")).json if k["zone"] == "prod"]
    assert [k["version"] for k in prod] == [1]  # other zones keep their epoch
    epoch = [e for e in events(crew.env) if e["action"] == "keys.epoch"]
    assert epoch[-1]["subject"] == "research" and epoch[-1]["details"]["why"] == f"request {rid} revoked"
    assert cli("replica", "verify", other, "--json", token=crew.t("admin")).code == 0


def test_keys_past_their_cryptoperiod_are_flagged_and_rotated(crew: People) -> None:
    config = crew.env.home / "custody.toml"
    config.write_text(config.read_text() + "\n[keys]\nkek_days = 0.00002\n")  # about 1.7 s, for the test
    time.sleep(2)
    rows = cli("keys", "status", "--json", token=crew.t("admin")).json
    keks = [k for k in rows if k["purpose"] == "kek"]
    assert keks and all(k["overdue"] for k in keks)
    assert not any(k["overdue"] for k in rows if k["purpose"] == "signing")  # two years
    done = cli("keys", "rotate", "--due", "--json", token=crew.t("admin"))
    assert done.code == 0 and sorted(d["zone"] for d in done.json) == sorted({k["zone"] for k in keks})
    assert all(d["kek_version"] == 2 for d in done.json)
    assert cli("replica", "verify", crew.t("replica"), "--json", token=crew.t("admin")).code == 0
    assert cli("keys", "rotate", "--json", token=crew.t("admin")).code == 2  # a zone or --due


def test_a_reader_with_a_server_holds_no_key(crew: People, monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(crew.env) as base:
        for secret in ("CUSTODY_PASSPHRASE", "CUSTODY_HOME", "CUSTODY_PKCS11_PIN", "AWS_ACCESS_KEY_ID",
                       "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(secret, raising=False)
        got = custody.open_safetensors(crew.t("replica"), purpose="serve", tensors=["lm_head.ids"], token=crew.t("svc"),
                                       server=base)
        assert list(got) == ["lm_head.ids"] and got["lm_head.ids"].dtype.name == "int64"
        event = last_event(crew.env)
        assert (event["action"], event["actor"], event["outcome"]) == ("replica.open", "svc", "ok")
        with pytest.raises(CustodyError) as caught:  # a local read needs the custodian's secret, which it lacks
            custody.open_safetensors(crew.t("replica"), purpose="serve", token=crew.t("svc"), home=crew.env.home)
        assert caught.value.exit_code in (1, 3)


@pytest.fixture
def attested(crew: People) -> Ed25519PrivateKey:
    """The production zone releases keys only to attested readers; the attester's key is trusted."""
    attester = Ed25519PrivateKey.generate()
    (crew.env.home / "keys" / "attester.pub.pem").write_bytes(attester.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    config = crew.env.home / "custody.toml"
    config.write_text(config.read_text() + '\n[attestation]\nzones = ["prod"]\nkey = "keys/attester.pub.pem"\n')
    return attester


def test_a_zone_that_requires_attestation_releases_only_to_fresh_evidence(crew: People, attested) -> None:  # noqa: ANN001
    replica = crew.t("replica")
    exc = refused(crew, "svc", replica)
    assert exc.exit_code == 3 and "attested reader" in exc.message
    seen = []

    def attest(nonce: str) -> bytes:
        seen.append(evidence := signed_evidence(attested, nonce, "sha256:serving-image"))
        return evidence

    assert "lm_head.ids" in read(crew, "svc", replica, attest=attest)
    event = last_event(crew.env)
    assert event["details"]["attestation"]["measurement"] == "sha256:serving-image"
    replay = refused(crew, "svc", replica, attest=lambda nonce: seen[0])  # yesterday's evidence
    assert replay.exit_code == 3 and "did not issue" in replay.message
    forged = refused(crew, "svc", replica, attest=lambda n: signed_evidence(Ed25519PrivateKey.generate(), n, "x"))
    assert forged.exit_code == 3 and "trusted attester" in forged.message
    elsewhere = refused(crew, "svc", replica, attest=lambda n: signed_evidence(attested, "another-nonce", "x"))
    assert elsewhere.exit_code == 3
    config = crew.env.home / "custody.toml"
    config.write_text(config.read_text().replace('key = "keys/attester.pub.pem"',
                                                 'key = "keys/attester.pub.pem"\nmeasurements = ["sha256:approved"]'))
    unknown = refused(crew, "svc", replica, attest=attest)
    assert unknown.exit_code == 3 and "not one this workspace accepts" in unknown.message


def test_attestation_through_a_server(crew: People, attested, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    with serving(crew.env) as base:
        monkeypatch.delenv("CUSTODY_PASSPHRASE", raising=False)
        kw = dict(purpose="serve", tensors=["lm_head.ids"], token=crew.t("svc"), server=base)
        with pytest.raises(CustodyError) as caught:
            custody.open_safetensors(crew.t("replica"), **kw)
        assert caught.value.exit_code == 3 and "attested reader" in caught.value.message
        got = custody.open_safetensors(crew.t("replica"), attest=lambda n: signed_evidence(attested, n, "m"), **kw)
        assert list(got) == ["lm_head.ids"]


def test_the_custodian_journal_is_outside_the_database(crew: People) -> None:
    _, clone = research_copy(crew)
    read(crew, "alice", clone)
    journal = [json.loads(line) for line in (crew.env.home / "keys" / "release.journal").read_text().splitlines()]
    ops = [e["op"] for e in journal if e["op"] != "record"]  # records: newest signed rows (control/records.py)
    assert ops[:3] == ["source", "destination", "close"] and ops[-1] == "read"
    assert all(len(e["mac"]) == 64 for e in journal)
    assert oct(os.stat(crew.env.home / "keys" / "release.journal").st_mode & 0o777) == "0o600"


def test_a_planted_key_does_not_keep_an_old_epoch_alive(crew: People) -> None:
    sql(crew.env, "INSERT INTO data_keys (id, zone, kek_version, wrapped, created_at) VALUES "
                  "('planted', 'prod', 1, X'00', CURRENT_TIMESTAMP)")
    r = cli("keys", "rotate", "prod", "--json", token=crew.t("admin"))
    assert r.code == 0 and r.json["left_behind"] == ["planted"] and r.json["retired"] == [1], r.stdout
    assert cli("replica", "verify", crew.t("replica"), "--json", token=crew.t("admin")).code == 0


def test_a_replica_moved_to_another_zone_in_the_database_is_not_read_there(crew: People, attested) -> None:  # noqa: ANN001
    """The zone that requires attestation is copied to a new zone row (its signature too) and the replica
    pointed at it: the forged row fails its custodian signature, and the key is bound to prod anyway."""
    sql(crew.env, "INSERT INTO zones SELECT 'prod2', url, kind, region, jurisdiction, security_level, "
                  "custodian, created_at, egress_bytes_per_hour, record_signature FROM zones WHERE name = 'prod'")
    sql(crew.env, "UPDATE replicas SET zone = 'prod2' WHERE id = :i", i=crew.t("replica"))
    exc = refused(crew, "svc", crew.t("replica"))
    assert exc.exit_code == 5 and "zone prod2 was altered outside custody" in exc.message, exc.message


@pytest.mark.parametrize("edit", ["roles", "token", "insert", "unsuspend", "backdate"])
def test_a_principal_edited_in_the_database_is_nobody(crew: People, edit: str) -> None:
    """Making oneself a service of prod, taking over alice's identity with one's own token, inserting a
    principal, lifting a suspension, backdating who was added when: each row fails its signature."""
    from custody.control import tokens

    mine, mine_id, mine_hash = tokens.mint()
    if edit == "roles":
        sql(crew.env, "UPDATE principals SET roles = :r, attributes = :a WHERE name = 'rob'",
            r=json.dumps(["service"]), a=json.dumps({"zone": "prod"}))
        who, token = "rob", crew.t("rob")
    elif edit == "token":
        sql(crew.env, "UPDATE principals SET token_id = :i, token_hash = :h WHERE name = 'alice'", i=mine_id,
            h=mine_hash)
        who, token = "alice", mine
    elif edit == "insert":
        sql(crew.env, "INSERT INTO principals (id, name, roles, team, attributes, token_id, token_hash, suspended, "
                      "created_at) VALUES ('x', 'mallory', :r, 'ops', :a, :i, :h, 0, CURRENT_TIMESTAMP)",
            r=json.dumps(["service"]), a=json.dumps({"zone": "prod"}), i=mine_id, h=mine_hash)
        who, token = "mallory", mine
    elif edit == "unsuspend":
        assert cli("principal", "suspend", "rob", "--json", token=crew.t("admin")).code == 0
        sql(crew.env, "UPDATE principals SET suspended = 0 WHERE name = 'rob'")
        who, token = "rob", crew.t("rob")
    else:
        sql(crew.env, "UPDATE principals SET created_at = '2001-01-01 00:00:00' WHERE name = 'lena'")
        who, token = "lena", crew.t("lena")
    with pytest.raises(CustodyError) as caught:
        custody.open_safetensors(crew.t("replica"), purpose="serve", token=token, home=crew.env.home)
    assert caught.value.exit_code == 5 and ("outside custody" in caught.value.message or
                                            "not written by custody" in caught.value.message), caught.value.message
    assert who in caught.value.message
    # and nothing else this principal could do either: every read of the row checks it
    r = cli("zone", "list", "--json", token=token)
    assert r.code == 5, r.stdout


def test_a_request_whose_kind_is_swapped_in_the_database_releases_nothing(crew: People) -> None:
    carol = {"carol": ("security", "security")}
    crew.add(carol)
    read_rid = cli("request", "create", "tiny", "--kind", "read", "--purpose", "x", "--json",
                   token=crew.t("lena")).json["id"]
    assert cli("request", "approve", read_rid, "--otp", crew.otp("carol"), "--json", token=crew.t("carol")).code == 0
    sql(crew.env, "UPDATE requests SET kind = 'derivative', destination_zone = 'prod' WHERE id = :i", i=read_rid)
    r = cli("request", "run", read_rid, "--json", token=crew.t("lena"))
    assert r.code == 3, r.stdout  # a read grant makes no copy (or the policy refuses first)
    copy_rid = cli("request", "create", "tiny", "--to", "research", "--kind", "research", "--purpose", "eval",
                   "--ttl", "1d", "--json", token=crew.t("alice")).json["id"]
    assert cli("request", "approve", copy_rid, "--otp", crew.otp("lena"), "--json", token=crew.t("lena")).code == 0
    sql(crew.env, "UPDATE requests SET kind = 'read' WHERE id = :i", i=copy_rid)
    exc = refused(crew, "alice", crew.t("replica"), request=copy_rid)
    assert exc.exit_code == 3, exc.message  # a copy grant is not a read


def test_a_ttl_stretched_before_the_last_approval_mints_no_grant(crew: People) -> None:
    rid = cli("request", "create", "tiny", "--to", "research", "--kind", "research", "--purpose", "eval", "--ttl", "1d",
              "--json", token=crew.t("alice")).json["id"]
    sql(crew.env, "UPDATE requests SET ttl_seconds = 315360000 WHERE id = :i", i=rid)  # ten years
    r = cli("request", "approve", rid, "--otp", crew.otp("lena"), "--json", token=crew.t("lena"))
    assert r.code == 3 and "policy no longer allows" in r.json["error"] and "TTL" in r.json["error"], r.stdout
    sql(crew.env, "UPDATE requests SET ttl_seconds = 86400 WHERE id = :i", i=rid)
    assert cli("request", "show", rid, "--json", token=crew.t("alice")).json["state"] == "awaiting_approval"
    assert cli("request", "run", rid, "--json", token=crew.t("alice")).code == 6


def test_a_label_lowered_in_the_database_decides_nothing(crew: People) -> None:
    """Lowering a version's classification would lower the approvals its copies need: the row fails its
    custodian signature, and every request for it is refused until someone looks."""
    sql(crew.env, "UPDATE asset_versions SET classification = 'public'")
    r = cli("request", "create", "tiny", "--to", "research", "--kind", "research", "--purpose", "x", "--ttl", "1d",
            "--json", token=crew.t("alice"))
    assert r.code == 5 and "asset version 1" in r.json["error"] and "outside custody" in r.json["error"]


def test_an_earlier_signed_state_put_back_is_refused(crew: People) -> None:
    """A suspension lifted, or a rotated-out token restored, by putting back the row as custody once signed it."""
    ws = crew.env.open()
    with ws.uow(readonly=True) as uow:
        before = dict(uow.conn.execute(text("SELECT * FROM principals WHERE name = 'rob'")).one()._mapping)
    ws.close()
    assert cli("principal", "suspend", "rob", "--json", token=crew.t("admin")).code == 0
    sql(crew.env, "UPDATE principals SET suspended = :s, record_signature = :r WHERE name = 'rob'",
        s=before["suspended"], r=before["record_signature"])
    r = cli("zone", "list", "--json", token=crew.t("rob"))
    assert r.code == 5 and "put back to an earlier state" in r.json["error"], r.stdout


def test_a_read_whose_event_is_deleted_is_found_by_its_journal_line(crew: People, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attacker stops checkpoints (a planted checkpoint row that does not verify), reads, then deletes the
    read's event and the planted row: the witness never saw the read, but the custodian's journal did."""
    from test_witness import TRIGGERS, truncate

    from custody.control.services import audit

    for statement in [s for s in TRIGGERS if "checkpoints" in s]:
        sql(crew.env, statement)
    sql(crew.env, "INSERT INTO ledger_checkpoints (size, note, created_at) VALUES (999999, 'forged', CURRENT_TIMESTAMP)")
    ws = crew.env.open()
    with ws.uow(readonly=True) as uow:
        from custody.control.ledger import store as ledger

        before = ledger.size(uow)
    ws.close()
    read(crew, "svc", crew.t("replica"), tensors=["lm_head.ids"])
    truncate(crew.env, before)  # the read's event and everything after it
    sql(crew.env, "DELETE FROM ledger_checkpoints WHERE size = 999999")
    monkeypatch.setattr(audit, "SETTLE", timedelta(0))  # the release is old enough to have its event by now
    r = cli("audit", "verify", "--json", token=crew.t("admin"))
    assert r.code == 5 and "the ledger holds no event of it" in r.json["error"], r.stdout


def test_hiding_the_officers_does_not_reopen_the_bootstrap(crew: People) -> None:
    ws = crew.env.open()
    with ws.uow(readonly=True) as uow:
        officers = [dict(r._mapping) for r in uow.conn.execute(text(
            "SELECT * FROM principals WHERE name IN ('officer-a', 'officer-b')"))]
    ws.close()
    sql(crew.env, "DELETE FROM principals WHERE name IN ('officer-a', 'officer-b')")
    public = cli("principal", "new-token", "--json").json["public"]
    r = cli("principal", "add", "puppet", "--role", "security", "--team", "x", "--public-token", public, "--json",
            token=crew.t("admin"))
    assert r.code == 6 and "bootstrap is over" in r.json["error"], r.stdout
    assert len(officers) == 2


@pytest.mark.parametrize("table, message", [
    ("[keys]\nkek_days = 0", "kek_days must be a number of days above 0"),
    ("[keys]\nkek_weeks = 3", "kek_weeks is not a setting"),
    ('[attestation]\nzones = ["prod"]\nverifier = "tpm"\nkey = "k.pem"', "verifier 'tpm' is not one custody has"),
    ('[attestation]\nzones = ["prod"]\nkey = "keys/missing.pem"', "is not a readable PEM public key"),
])
def test_bad_key_settings_are_refused_clearly(crew: People, table: str, message: str) -> None:
    config = crew.env.home / "custody.toml"
    config.write_text(config.read_text() + "\n" + table + "\n")
    with pytest.raises(CustodyError) as caught:
        read(crew, "svc", crew.t("replica"))
    assert message in caught.value.message and len(caught.value.message.splitlines()) == 1, caught.value.message

"""Workspace creation, passphrases, principals, tokens and zones, through the CLI."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conftest import CUSTODIAN, PASSPHRASE, Env, cli, events, last_event
from custody.control.services import setup
from custody.domain.errors import AuthenticationError, InvalidInput


def test_init_refuses_without_passphrase(tmp_path: Path) -> None:
    r = cli("init", "--home", str(tmp_path / "ws"), "--json")
    assert r.code == 3
    assert "CUSTODY_PASSPHRASE" in r.json["error"]
    assert not (tmp_path / "ws").exists()


def test_init_json_prints_home_and_token_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTODY_PASSPHRASE", PASSPHRASE)
    r = cli("init", "--home", str(tmp_path / "ws"), "--json")
    assert r.code == 0, r.stderr
    doc = r.json
    assert doc["home"] == str((tmp_path / "ws").resolve())
    assert doc["admin_token"].startswith("cst_")
    # Only a hash of the token is stored anywhere in the workspace.
    for f in (tmp_path / "ws").rglob("*"):
        if f.is_file():
            assert doc["admin_token"].encode() not in f.read_bytes(), f
    zones = cli("zone", "list", "--json", "--home", doc["home"], token=doc["admin_token"]).json
    assert {z["name"]: z["kind"] for z in zones} == {
        "prod": "production", "backup": "backup", "dr": "dr", "research": "research", "quarantine": "quarantine"}
    for z in zones:
        assert z["url"].startswith("file://") and str((tmp_path / "ws").resolve()) in z["url"]
    again = cli("init", "--home", str(tmp_path / "ws"), "--json")
    assert again.code == 2 and "already holds" in again.json["error"]


def test_demo_init_says_so_loudly(tmp_path: Path) -> None:
    r = cli("init", "--home", str(tmp_path / "ws"), "--demo")
    assert r.code == 0
    assert "DEMO WORKSPACE" in r.stderr
    assert any(p.name.startswith("DEMO-PASSPHRASE") for p in (tmp_path / "ws" / "keys").iterdir())


@pytest.mark.skipif(CUSTODIAN != "local", reason="a passphrase seals only the local keyring")
def test_wrong_passphrase_is_refused_and_keyring_untouched(env: Env, model_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    keyring = env.home / "keys" / "keyring.sealed"
    before = keyring.read_bytes()
    monkeypatch.setenv("CUSTODY_PASSPHRASE", "not the passphrase")
    r = cli("zone", "add", "eu", "--url", (env.home / "eu").as_uri(), "--kind", "dr", "--region", "eu-west",
            "--jurisdiction", "DE", "--security-level", "4", "--json", token=env.token)
    assert r.code == 3
    assert r.json["error"] == "wrong passphrase: the keyring did not unseal"
    assert keyring.read_bytes() == before
    assert PASSPHRASE not in r.stdout
    assert cli("zone", "show", "eu", "--json", token=env.token).code == 4  # nothing half-written
    r = cli("asset", "register", "tiny", str(model_dir), "--json", token=env.token)
    assert r.code == 3
    assert last_event(env)["outcome"] == "denied"


@pytest.mark.parametrize("token", [None, "", "cst_0000000000000000_" + "A" * 43, "garbage"])
def test_bad_tokens_are_refused_and_ledgered(env: Env, token: str | None) -> None:
    r = cli("zone", "list", "--json", token=token if token is not None else "")
    assert r.code == 3
    event = last_event(env)
    assert (event["action"], event["outcome"]) == ("zone.read", "denied")
    assert event["actor"] in ("anonymous", "token:0000000000000000")
    assert "A" * 43 not in str(event)  # the secret part of a token never reaches the ledger


def test_token_from_option_or_env(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli("zone", "list", "--json", "--token", env.token).code == 0
    monkeypatch.setenv("CUSTODY_TOKEN", env.token)
    assert cli("zone", "list", "--json").code == 0


def test_principals_roles_and_suspension(env: Env) -> None:
    r = cli("principal", "add", "alice", "--role", "researcher", "--team", "nlp", "--attr", "clearance=2",
            "--json", token=env.token)
    assert r.code == 0, r.stdout
    alice = r.json
    assert alice["roles"] == ["researcher"] and alice["attributes"] == {"clearance": "2"}
    # A researcher may read zones but not add principals (refusal is exit 3 and ledgered).
    assert cli("zone", "list", "--json", token=alice["token"]).code == 0
    r = cli("principal", "add", "mallory", "--role", "admin", "--json", token=alice["token"])
    assert r.code == 3
    assert last_event(env)["actor"] == "alice" and last_event(env)["outcome"] == "denied"
    names = [p["name"] for p in cli("principal", "list", "--json", token=env.token).json]
    assert names == ["admin", "alice"]
    assert cli("principal", "suspend", "alice", "--json", token=env.token).json["suspended"] is True
    r = cli("zone", "list", "--json", token=alice["token"])
    assert r.code == 3 and "suspended" in r.json["error"]
    assert cli("principal", "add", "bob", "--role", "wizard", "--json", token=env.token).code == 2
    assert cli("principal", "add", "Bad Name", "--role", "admin", "--json", token=env.token).code == 2
    assert cli("principal", "add", "alice", "--role", "admin", "--json", token=env.token).code == 2
    assert cli("principal", "suspend", "nobody", "--json", token=env.token).code == 4


def test_token_hash_only_in_database(env: Env) -> None:
    token = cli("principal", "add", "carol", "--role", "auditor", "--json", token=env.token).json["token"]
    con = sqlite3.connect(env.home / "custody.db")
    dump = "\n".join(con.iterdump())
    assert token not in dump
    assert token.split("_", 2)[2] not in dump  # the secret part (it may itself contain "_")


def test_zones(env: Env, tmp_path: Path) -> None:
    url = (tmp_path / "eu-dr").as_uri()
    r = cli("zone", "add", "eu-dr", "--url", url, "--kind", "dr", "--region", "eu-central", "--jurisdiction", "de",
            "--security-level", "4", "--json", token=env.token)
    assert r.code == 0, r.stdout
    assert r.json["jurisdiction"] == "DE"
    shown = cli("zone", "show", "eu-dr", "--json", token=env.token).json
    assert shown["kind"] == "dr" and shown["active_replicas"] == 0
    assert cli("zone", "show", "nowhere", "--json", token=env.token).code == 4
    bad = [
        ("--kind", "moon"), ("--security-level", "9"), ("--jurisdiction", "Germany"), ("--url", "not-a-url"),
    ]
    for opt, value in bad:
        args = {"--url": url, "--kind": "dr", "--region": "r", "--jurisdiction": "DE", "--security-level": "3"}
        args[opt] = value
        flat = [x for kv in args.items() for x in kv]
        r = cli("zone", "add", "zz", *flat, "--json", token=env.token)
        assert r.code == 2, (opt, r.stdout)
    assert cli("zone", "add", "eu-dr", "--url", url, "--kind", "dr", "--region", "r", "--jurisdiction", "DE",
               "--security-level", "3", "--json", token=env.token).code == 2
    actions = [e["action"] for e in events(env)]
    assert actions.count("zone.add") == 5 + 1 + 4 + 1  # defaults, eu-dr, four refused, the duplicate


def test_every_action_is_ledgered_once(env: Env) -> None:
    before = len(events(env))
    cli("zone", "list", "--json", token=env.token)
    cli("zone", "show", "prod", "--json", token=env.token)
    cli("zone", "show", "nope", "--json", token=env.token)
    after = events(env)[before:]
    assert [(e["action"], e["outcome"]) for e in after] == [
        ("zone.read", "ok"), ("zone.read", "ok"), ("zone.read", "not_found")]


def test_init_leaves_nothing_when_it_fails(tmp_path: Path) -> None:
    with pytest.raises(AuthenticationError):
        setup.init_workspace(tmp_path / "ws", passphrase="")
    with pytest.raises(Exception):
        setup.init_workspace(tmp_path / "ws2", passphrase=PASSPHRASE, scrypt_log_n=3)
    assert not (tmp_path / "ws").exists() and not (tmp_path / "ws2").exists()
    with pytest.raises(InvalidInput):
        setup.init_workspace(tmp_path / "ws3", passphrase=PASSPHRASE, jurisdiction="Mars", scrypt_log_n=14)
    assert not (tmp_path / "ws3").exists()

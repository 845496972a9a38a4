"""The CLI on a local workspace and through a server (--server / CUSTODY_SERVER): same cases, same
output, same exit codes. One scenario runs both ways on twin workspaces; the transcripts must be
equal once ids, tokens, keys and measured numbers are masked."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable

import pyotp
import pytest

from conftest import Env, Result, cli, hf_model, make_env, serving

Run = Callable[..., Result]

MASKS = [
    (re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d)?"), "<time>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f-]*…?"), "<uuid>"),  # whole or cut short by a table column
    (re.compile(r"[A-Za-z0-9+/_=-]{16,}"), "<id>"),  # ids, tokens, digests, base32 seeds, PEM lines
    (re.compile(r"\b[0-9a-f]{6,}\b|(?<=%2F)[0-9a-f]+"), "<hex>"),  # short ids, the workspace's origin
    (re.compile(r"\d+(\.\d+)?"), "0"),  # sizes are equal anyway; speeds and durations are not
]


def mask(text: str) -> str:
    for pattern, repl in MASKS:
        text = pattern.sub(repl, text)
    return text


def scenario(run: Run, env: Env, model: Path) -> list[tuple[str, int, str]]:
    """Every kind of command and refusal once; returns (command, exit code, masked output) per step."""
    transcript: list[tuple[str, int, str]] = []

    def step(*args: str, token: str | None = None, expect: int | None = 0) -> Result:
        r = run(*args, token=env.token if token is None else token)
        transcript.append((mask(" ".join(args[:3])), r.code, mask(r.stdout + r.stderr)))
        if expect is not None:
            assert r.code == expect, (args, r.stdout, r.stderr)
        return r

    step("zone", "list")
    step("zone", "show", "mars", "--json", expect=4)
    step("zone", "list", token="cst_not_a_token", expect=3)
    tokens, totp = {}, {}
    step("principal", "add", "bob", "--role", "ml-lead", "--team", "platform", expect=6)  # no security officers yet
    for name in ("olga", "omar"):  # the bootstrap: the first two security officers are named directly
        tokens[name] = step("principal", "add", name, "--role", "security", "--team", "office", "--json").json["token"]
    tokens["alice"] = step("principal", "add", "alice", "--role", "researcher", "--team", "nlp", "--json").json["token"]
    step("principal", "add", "bob", "--role", "ml-lead", "--team", "platform", expect=2)  # no token of bob's own
    proposals = {}
    for name, role, team in (("bob", "ml-lead", "platform"), ("carol", "security", "security")):
        made = step("principal", "new-token", "--json").json  # made by its holder, wherever they are
        tokens[name] = made["token"]
        proposals[name] = step("principal", "add", name, "--role", role, "--team", team, "--reason", "joins",
                               "--public-token", made["public"], "--json").json["proposal"]
    step("principal", "add", "mallory", "--role", "wizard", expect=2)
    step("principal", "proposals", "--open")
    step("principal", "approve", proposals["bob"], token=tokens["alice"], expect=3)  # not a security officer
    for name in ("olga", "omar"):
        totp[name] = pyotp.TOTP(step("mfa", "enroll", "--json", token=tokens[name]).json["secret"])
        step("mfa", "verify", totp[name].now(), token=tokens[name])
        step("principal", "approve", *proposals.values(), "--otp", totp[name].at(time.time() + totp[name].interval),
             token=tokens[name])
    for name in ("bob", "carol"):
        totp[name] = pyotp.TOTP(step("mfa", "enroll", "--json", token=tokens[name]).json["secret"])
        step("mfa", "verify", totp[name].now(), token=tokens[name])
    step("asset", "register", "tiny", str(model), "--sensitivity", "confidential", "--jurisdiction", "US", "--json")
    step("asset", "show", "tiny")
    step("asset", "list")
    denied = step("request", "create", "tiny", "--to", "prod", "--kind", "research", "--purpose", "x", "--ttl", "1d",
                  "--json", token=tokens["alice"], expect=3)
    assert denied.json["decision"]["policy_ids"] and denied.json["request"]
    step("request", "create", "tiny", "--to", "prod", "--kind", "research", "--purpose", "x", "--ttl", "1d",
         token=tokens["alice"], expect=3)
    step("request", "create", "tiny", "--to", "research", "--kind", "research", "--purpose", " ",
         token=tokens["alice"], expect=2)
    rid = step("request", "create", "tiny", "--to", "research", "--kind", "research", "--purpose", "eval",
               "--ttl", "7d", "--json", token=tokens["alice"]).json["id"]
    step("request", "approve", rid, token=tokens["alice"], expect=3)
    for name in ("bob", "carol"):
        code = totp[name].at(time.time() + totp[name].interval)  # the current step was spent verifying
        step("request", "approve", rid, "--otp", code, token=tokens[name])
    step("request", "list", "--mine", token=tokens["alice"])
    step("request", "create", "tiny", "--kind", "read", "--purpose", "look at the head", token=tokens["bob"])
    step("request", "show", rid, token=tokens["alice"])
    step("policy", "explain", rid)
    done = step("request", "run", rid, "--json", token=tokens["alice"])
    step("request", "run", rid, token=tokens["alice"], expect=6)
    replica = done.json["result_replica"]
    step("replica", "list", "--zone", "research")
    step("replica", "verify", replica)
    step("replica", "revoke", replica, "--reason", "done with it")
    step("replica", "show", replica, "--json")
    step("request", "create", "tiny", "--to", "backup", "--kind", "backup", "--purpose", "nightly", "--run", "--json")
    step("backup", "policy", "set", "tiny", "--zone", "backup", "--every", "@daily")
    step("backup", "run", "tiny", "--json")
    step("snapshot", "list")
    step("policy", "test")
    step("policy", "show")
    step("keys", "status")
    step("keys", "public", "--purpose", "ledger")
    step("audit", "checkpoint")
    step("audit", "prove", "3", "--json")
    step("audit", "prove", "100000", expect=4)
    step("audit", "verify", "--json")
    step("sweep")
    return transcript


@pytest.fixture
def twin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Env, Env, Path]:
    model = tmp_path / "m"
    hf_model(model)
    local = make_env(tmp_path / "local", monkeypatch, "sqlite")
    remote = make_env(tmp_path / "remote", monkeypatch, "sqlite")  # CUSTODY_HOME now names this one
    return local, remote, model


def test_the_cli_behaves_the_same_through_a_server(twin: tuple[Env, Env, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    local, remote, model = twin
    with serving(remote, CUSTODY_SERVER_PATHS=str(model.parent)) as base:
        monkeypatch.setenv("CUSTODY_HOME", str(local.home))
        here = scenario(lambda *a, token: cli(*a, token=token), local, model)
        monkeypatch.setenv("CUSTODY_HOME", "/nonexistent")  # the remote CLI must not need a workspace
        there = scenario(lambda *a, token: cli(*a, token=token, env={"CUSTODY_SERVER": base}), remote, model)
    assert [(cmd, code) for cmd, code, _ in here] == [(cmd, code) for cmd, code, _ in there]
    for (cmd, _, a), (_, _, b) in zip(here, there):
        assert a == b, f"{cmd}: local and remote output differ\n--- local\n{a}\n--- remote\n{b}"


def test_a_server_reads_and_writes_only_where_it_is_told(env: Env, tmp_path: Path) -> None:
    model = tmp_path / "m"
    hf_model(model)
    with serving(env, CUSTODY_SERVER_PATHS=str(tmp_path / "allowed")) as base:
        r = cli("asset", "register", "tiny", str(model), "--json", token=env.token, env={"CUSTODY_SERVER": base})
        assert r.code == 2 and "is outside the folders this server may read or write" in r.json["error"]
        r = cli("audit", "export", "--out", "/etc/custody-export.jsonl", "--json", token=env.token,
                env={"CUSTODY_SERVER": base})
        assert r.code == 2 and not Path("/etc/custody-export.jsonl").exists()
        r = cli("audit", "export", "--out", str(tmp_path / "allowed" / ".." / "escape.jsonl"), "--json",
                token=env.token, env={"CUSTODY_SERVER": base})
        assert r.code == 2 and not (tmp_path / "escape.jsonl").exists()


def test_remote_mode_refuses_what_only_a_local_workspace_can_do(env: Env) -> None:
    r = cli("init", "--server", "http://127.0.0.1:9", "--json")
    assert r.code == 2 and "local workspace only" in r.json["error"]


def test_an_unreachable_server_is_one_clear_line(env: Env) -> None:
    r = cli("zone", "list", "--server", "http://127.0.0.1:9", "--json", token=env.token)
    assert r.code == 1 and r.json["error"].startswith("cannot reach the custody server at http://127.0.0.1:9")
    assert env.token not in json.dumps(r.json)
    r = cli("zone", "list", "--server", "ftp://somewhere", token=env.token)
    assert r.code == 1 and "bad server URL" in r.stderr

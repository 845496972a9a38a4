"""Several processes on one PostgreSQL store: ledger appends stay gapless, racing approvals and runs
of one grant resolve to one outcome."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import Env, cli, hf_model, make_env, register, reset_postgres, run_custody

WORKER = """
import os, sys
from pathlib import Path
from custody.control.workspace import Workspace
from custody.control.services import zones
ws = Workspace.open(Path(os.environ["CUSTODY_HOME"]))
for _ in range(int(sys.argv[1])):
    zones.show_zone(ws, os.environ["CUSTODY_TOKEN"], "prod")
ws.close()
"""


@pytest.fixture
def pg_env(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    """Several processes sharing one store is the PostgreSQL deployment."""
    reset_postgres(pg_url)
    monkeypatch.setenv("CUSTODY_DB_URL", pg_url)
    return make_env(tmp_path, monkeypatch, "postgresql")


def test_appends_from_many_processes_stay_gapless(pg_env: Env) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, "40"], env=pg_env.environ()) for _ in range(6)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 6
    r = cli("audit", "verify", "--json", token=pg_env.token)
    assert r.code == 0, r.stdout  # recomputes every leaf and node: a gap, a duplicate or a fork fails here
    assert cli("audit", "export", "--out", str(pg_env.home / "e.jsonl"), "--json", token=pg_env.token).code == 0
    events = [json.loads(line) for line in (pg_env.home / "e.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert sum(1 for e in events if e["action"] == "zone.read" and e["subject"] == "prod") == 240


def test_racing_approvals_and_runs(pg_env: Env, tmp_path: Path) -> None:
    model = tmp_path / "m"
    hf_model(model)
    register(pg_env, model, "tiny", "--jurisdiction", "US")
    tokens = {}
    for name, role, team in (("alice", "researcher", "nlp"), ("bob", "ml-lead", "platform"),
                             ("carol", "security", "security"), ("dave", "backup-operator", "infra")):
        tokens[name] = cli("principal", "add", name, "--role", role, "--team", team, "--json",
                           token=pg_env.token).json["token"]
    # internal, not confidential: one approval from ml-lead or security
    rid = cli("request", "create", "tiny", "--to", "research", "--kind", "research", "--purpose", "race",
              "--ttl", "1d", "--json", token=tokens["alice"]).json["id"]
    env = pg_env.environ()
    with ThreadPoolExecutor(2) as pool:
        approvals = list(pool.map(lambda who: run_custody("request", "approve", rid, "--json",
                                                          env={**env, "CUSTODY_TOKEN": tokens[who]}), ["bob", "carol"]))
    assert sorted(a.code for a in approvals) in ([0, 0], [0, 6])  # the second finds it approved already
    shown = cli("request", "show", rid, "--json", token=tokens["alice"]).json
    assert shown["state"] == "approved"
    with ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda _: run_custody("request", "run", rid, "--json",
                                                   env={**env, "CUSTODY_TOKEN": tokens["alice"]}), range(3)))
    assert sorted(r.code for r in runs).count(0) == 1, [r.stdout + r.stderr for r in runs]
    replicas = cli("replica", "list", "--zone", "research", "--json", token=pg_env.token).json
    assert [r["state"] for r in replicas] == ["active"]
    assert cli("audit", "verify", "--json", token=pg_env.token).code == 0

"""Budgets, sources and lifetimes: each bypass performed for real, on SQLite and PostgreSQL.

Backup copies need no approval (a backup operator's, or an admin's, `--run`), so every attack
here is made by the principals an admin adds directly.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from conftest import Env, cli, events, register, run_custody
from custody.control.policy.catalog import Catalog, PolicyError
from custody.control.services import copies
from custody.domain.errors import Denied
from custody.control.services.policy import POLICY_DIR
from custody.control.store import repositories as repo


@pytest.fixture
def ops(any_env: Env, model_dir: Path) -> dict:
    """dave (backup operator) and tiny, registered in prod; `bytes` is tiny's size."""
    dave = cli("principal", "add", "dave", "--role", "backup-operator", "--team", "infra", "--json",
               token=any_env.token)
    assert dave.code == 0, dave.stdout
    reg = register(any_env, model_dir, "tiny", "--jurisdiction", "US")
    return {"env": any_env, "admin": any_env.token, "dave": dave.json["token"], "bytes": reg["bytes"],
            "replica": reg["replica"]}


def backup_copy(token: str, *args: str):  # noqa: ANN201
    return cli("request", "create", "tiny", "--to", "backup", "--kind", "backup", "--purpose", "nightly",
               *args, "--json", token=token)


def refusal(env: Env, action: str) -> dict:
    """The newest ledger event of `action`: every refusal leaves one."""
    return [e for e in events(env) if e["action"] == action][-1]


def one_line(r) -> str:  # noqa: ANN001
    assert r.json["error"] and "\n" not in r.json["error"], r.stdout
    return r.json["error"]


def set_budgets(env: Env, budgets: str) -> None:
    """Install a catalog whose [budgets] table is `budgets`, as `custody init` installs one (the
    two-person proposal that changes a catalog in use is tested elsewhere)."""
    folder = env.home / POLICY_DIR
    rules = (folder / "rules.toml").read_text()
    (folder / "rules.toml").write_text(rules[:rules.index("[budgets]")] + "[budgets]\n" + budgets + "\n")
    ws = env.open()
    try:
        with ws.uow() as uow:
            repo.set_meta(uow, "policy_hash", Catalog.load(folder).hash)
    finally:
        ws.close()


def sql(env: Env, statement: str, **params: object) -> None:
    ws = env.open()
    try:
        with ws.engine.begin() as conn:
            conn.execute(text(statement), params)
    finally:
        ws.close()


# -- zone budgets follow the asset's bytes ------------------------------------------------------


def test_a_backup_replica_as_source_does_not_escape_prods_budget(ops: dict) -> None:
    env = ops["env"]
    assert cli("zone", "budget", "prod", "--bytes-per-hour", str(ops["bytes"]), "--json", token=ops["admin"]).code == 0
    first = backup_copy(ops["dave"], "--run")
    assert first.code == 0, first.stdout  # prod's hour is now spent
    dodge = backup_copy(ops["dave"], "--from", first.json["result_replica"], "--ttl", "1d", "--run")
    assert dodge.code == 3
    assert "zone prod egress budget" in one_line(dodge) and "retry after" in dodge.json["error"]
    event = refusal(env, "request.run")
    assert event["outcome"] == "denied" and "zone prod egress budget" in event["details"]["reason"]
    # the home zone was charged when the backup zone was read: nothing more left prod's budget
    shown = cli("zone", "show", "prod", "--json", token=ops["admin"]).json
    assert shown["egress_used_last_hour"] == ops["bytes"]


def test_a_snapshot_backup_is_charged_too(ops: dict) -> None:
    r = cli("backup", "policy", "set", "tiny", "--zone", "backup", "--every", "@daily", "--keep-daily", "2",
            "--keep-weekly", "0", "--keep-monthly", "0", "--rpo", "24h", "--rto", "10m", "--json", token=ops["dave"])
    assert r.code == 0, r.stdout
    assert cli("zone", "budget", "prod", "--bytes-per-hour", str(ops["bytes"] - 1), "--json",
               token=ops["admin"]).code == 0
    snap = cli("backup", "run", "tiny", "--json", token=ops["dave"])
    assert snap.code == 3 and "zone prod egress budget" in one_line(snap)
    assert "more than the" in snap.json["error"]  # one copy alone is over: no retry time would help
    assert refusal(ops["env"], "request.run")["outcome"] == "denied"


def test_a_restore_from_a_backup_snapshot_is_charged_to_prod_as_well(ops: dict) -> None:
    cli("backup", "policy", "set", "tiny", "--zone", "backup", "--every", "@daily", "--keep-daily", "2",
        "--keep-weekly", "0", "--keep-monthly", "0", "--rpo", "24h", "--rto", "10m", "--json", token=ops["dave"])
    assert cli("backup", "run", "tiny", "--json", token=ops["dave"]).code == 0
    drill = cli("drill", "dr", "--all", "--json", token=ops["dave"])  # a snapshot restored into dr, then shredded
    assert drill.code == 0 and drill.json["passed"], drill.stdout
    ws = ops["env"].open()
    try:
        with ws.engine.connect() as conn:
            rows = conn.execute(text("SELECT zone, principal, asset_name FROM egress")).all()
    finally:
        ws.close()
    size = ops["bytes"]
    # the snapshot read prod; the restore read the backup zone, and prod paid for it too (once per copy
    # against dave and tiny: the home zone's row names neither)
    expected = [("prod", "dave", "tiny"), ("backup", "dave", "tiny"), ("prod", None, None)]
    assert sorted(map(repr, map(tuple, rows))) == sorted(map(repr, expected))
    assert cli("zone", "show", "prod", "--json", token=ops["admin"]).json["egress_used_last_hour"] == 2 * size


# -- per-principal and per-asset budgets (rules.toml) -------------------------------------------


def test_a_backup_operators_burst_stops_at_its_budget(ops: dict) -> None:
    env, size = ops["env"], ops["bytes"]
    set_budgets(env, f"principal_bytes_per_hour = {3 * size}")
    shown = cli("policy", "show", "--json", token=ops["admin"]).json["budgets"]
    assert shown == {"principal_bytes_per_hour": 3 * size, "asset_bytes_per_hour": None, "roles": {}}
    for _ in range(3):
        ok = backup_copy(ops["dave"], "--run")
        assert ok.code == 0, ok.stdout
    burst = backup_copy(ops["dave"], "--run")
    assert burst.code == 3
    reason = one_line(burst)
    assert "principal dave egress budget" in reason and "rules.toml" in reason
    assert f"{3 * size:,} of {3 * size:,} bytes used" in reason and "retry after" in reason
    event = refusal(env, "request.run")
    assert event["outcome"] == "denied" and event["actor"] == "dave" and "principal dave" in event["details"]["reason"]
    ws = env.open()
    try:
        with ws.engine.connect() as conn:
            rows = conn.execute(text("SELECT zone, principal, asset_name, bytes FROM egress")).all()
    finally:
        ws.close()
    assert sorted(tuple(r) for r in rows) == [("prod", "dave", "tiny", size)] * 3  # the refused copy took nothing


def test_a_roles_budget_replaces_the_default(ops: dict) -> None:
    size = ops["bytes"]
    set_budgets(ops["env"], f"principal_bytes_per_hour = {10 * size}\nroles = {{ backup-operator = {size} }}")
    assert backup_copy(ops["dave"], "--run").code == 0
    r = backup_copy(ops["dave"], "--run")
    assert r.code == 3 and "principal dave egress budget (role backup-operator" in one_line(r)
    assert backup_copy(ops["admin"], "--run").code == 0  # the admin's own budget is the default


def test_an_assets_budget_holds_across_principals(ops: dict) -> None:
    set_budgets(ops["env"], f"asset_bytes_per_hour = {2 * ops['bytes']}")
    assert backup_copy(ops["dave"], "--run").code == 0
    assert backup_copy(ops["admin"], "--run").code == 0
    r = backup_copy(ops["dave"], "--run")
    assert r.code == 3 and "asset tiny egress budget" in one_line(r)
    assert refusal(ops["env"], "request.run")["outcome"] == "denied"


def test_parallel_copies_cannot_all_pass_a_budget(ops: dict) -> None:
    """Copies started at once, in separate processes, some from prod and some from a backup replica
    (zones locked in one order, so none deadlocks): exactly the budget's worth pass."""
    env, size = ops["env"], ops["bytes"]
    src = _backup_replica(ops)
    set_budgets(env, f"principal_bytes_per_hour = {3 * size}")  # the copy above already spent a third
    ids = [backup_copy(ops["dave"], *(("--from", src, "--ttl", "1d") if i % 2 else ())).json["id"] for i in range(4)]
    environ = env.environ(CUSTODY_TOKEN=ops["dave"])
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda rid: run_custody("request", "run", rid, "--json", env=environ), ids))
    codes = sorted(r.code for r in runs)
    assert codes == [0, 0, 3, 3], [r.stdout + r.stderr for r in runs]
    assert all("principal dave egress budget" in r.json["error"] for r in runs if r.code == 3)


@pytest.mark.parametrize("budgets, error", [
    ("principal_bytes_per_hour = -1", "whole number of bytes"),
    ('asset_bytes_per_hour = "1TB"', "whole number of bytes"),
    ("principal_bytes_per_hour = 1.5", "whole number of bytes"),
    ("bytes_per_hour = 10", "unknown field 'bytes_per_hour'"),
    ("roles = { janitor = 10 }", "unknown role 'janitor'"),
    ("roles = 10", "roles must be a table"),
])
def test_a_malformed_budget_refuses_the_catalog(tmp_path: Path, budgets: str, error: str) -> None:
    folder = tmp_path / "catalog"
    shutil.copytree(Catalog.default_folder(), folder)
    rules = (folder / "rules.toml").read_text()
    (folder / "rules.toml").write_text(rules[:rules.index("[budgets]")] + "[budgets]\n" + budgets + "\n")
    with pytest.raises(PolicyError, match=error):
        Catalog.load(folder)


def test_the_default_budgets_pass_ordinary_use() -> None:
    catalog = Catalog.load(Catalog.default_folder())
    assert all(r.passed for r in catalog.run_tests())
    limit, _ = catalog.budgets.for_principal(("backup-operator",))
    assert limit is not None and limit >= 4 * 140 * 10**9  # a few full copies of a 70B model an hour
    assert catalog.budgets.asset_bytes_per_hour >= limit


# -- sources and lifetimes ----------------------------------------------------------------------


def _backup_replica(ops: dict, *args: str) -> str:
    r = backup_copy(ops["dave"], "--run", *args)
    assert r.code == 0, r.stdout
    return r.json["result_replica"]


def test_a_copy_from_an_expired_source_is_refused_before_the_sweeper_runs(ops: dict) -> None:
    src = _backup_replica(ops)
    sql(ops["env"], "UPDATE replicas SET expires_at = :t WHERE id = :i",
        t=datetime.now(timezone.utc) - timedelta(minutes=1), i=src)  # expired, still marked active
    r = backup_copy(ops["dave"], "--from", src, "--ttl", "1h")
    assert r.code == 6 and f"replica {src} expired at" in one_line(r)
    event = refusal(ops["env"], "request.create")
    assert event["outcome"] == "invalid_state" and "expired" in event["details"]["reason"]


def test_a_source_that_expires_between_approval_and_run_is_refused_at_run(ops: dict) -> None:
    env = ops["env"]
    src = _backup_replica(ops)
    rid = backup_copy(ops["dave"], "--from", src, "--ttl", "1d").json["id"]  # approved at once
    sql(env, "UPDATE replicas SET expires_at = :t WHERE id = :i", t=datetime.now(timezone.utc) + timedelta(hours=1),
        i=src)
    r = cli("request", "run", rid, "--json", token=ops["dave"])
    assert r.code == 3 and "must expire sooner" in one_line(r)
    assert refusal(env, "request.run")["outcome"] == "denied"
    sql(env, "UPDATE replicas SET expires_at = :t WHERE id = :i", t=datetime.now(timezone.utc) - timedelta(seconds=1),
        i=src)
    r = cli("request", "run", rid, "--json", token=ops["dave"])
    assert r.code == 6 and "expired at" in one_line(r)
    assert refusal(env, "request.run")["outcome"] == "invalid_state"
    shown = cli("request", "show", rid, "--json", token=ops["dave"]).json
    assert shown["state"] == "approved" and shown["result_replica"] is None  # no grant spent, nothing written


def test_a_copy_that_would_outlive_its_source_is_refused(ops: dict) -> None:
    src = _backup_replica(ops, "--ttl", "2d")
    for args in (("--ttl", "3d"), ()):  # longer than the source, or the rule's 400d by default
        r = backup_copy(ops["dave"], "--from", src, *args)
        assert r.code == 3 and "must expire sooner" in one_line(r)
        assert refusal(ops["env"], "request.create")["outcome"] == "denied"
    ok = backup_copy(ops["dave"], "--from", src, "--ttl", "1d", "--run")
    assert ok.code == 0, ok.stdout
    made = cli("replica", "show", ok.json["result_replica"], "--json", token=ops["admin"]).json
    source = cli("replica", "show", src, "--json", token=ops["admin"]).json
    assert made["expires_at"] < source["expires_at"]


def test_a_source_that_expires_during_the_copy_is_never_activated(ops: dict) -> None:
    env = ops["env"]
    src = _backup_replica(ops)
    rid = backup_copy(ops["dave"], "--from", src, "--ttl", "1d").json["id"]
    shortened = []

    def progress(_: int) -> None:  # while the data plane writes, the source's life runs short
        if not shortened:
            sql(env, "UPDATE replicas SET expires_at = :t WHERE id = :i",
                t=datetime.now(timezone.utc) + timedelta(hours=1), i=src)
            shortened.append(True)

    ws = env.open()
    try:
        with pytest.raises(Denied, match="would outlive it") as caught:
            copies.run(ws, ops["dave"], rid, progress)
    finally:
        ws.close()
    assert "\n" not in caught.value.message and shortened
    assert refusal(env, "request.run")["outcome"] == "denied"
    shown = cli("request", "show", rid, "--json", token=ops["dave"]).json
    assert shown["state"] == "failed"
    replica = cli("replica", "show", shown["result_replica"], "--json", token=ops["admin"]).json
    assert replica["state"] == "pending" and replica["expires_at"] is None  # never active; the sweeper removes it

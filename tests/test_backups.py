"""Backup and disaster recovery end to end: snapshots, dedup, retention, governed restores, drills."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from conftest import CUSTODY_BIN, Env, People, cli, people, events, register, write_safetensors
from custody.control.store import backups_repo as br
from custody.control.store import repositories as repo
from custody.data import sealed
from custody.data.backup.snapshot import SnapshotManifest
from test_register import model_signing_verify


@pytest.fixture
def ops(env: Env, model_dir: Path) -> People:
    """dave (backup operator), bob (ml-lead), carol (security); tiny registered with a backup policy."""
    tokens = people(env, {"dave": ("backup-operator", "infra"), "bob": ("ml-lead", "platform"),
                          "carol": ("security", "security")})
    register(env, model_dir, "tiny", "--jurisdiction", "US")
    r = cli("backup", "policy", "set", "tiny", "--zone", "backup", "--every", "@daily", "--keep-daily", "2",
            "--keep-weekly", "0", "--keep-monthly", "0", "--rpo", "24h", "--rto", "10m", "--json", token=tokens["dave"])
    assert r.code == 0, r.stdout
    return tokens


def backup(env: Env, token: str, asset: str = "tiny") -> dict:
    r = cli("backup", "run", asset, "--json", token=token)
    assert r.code == 0, r.stdout
    return r.json[0]


def chunk_files(env: Env) -> list[Path]:
    """Stored chunk objects (named by their 64-hex id; a killed write's temporary files are not chunks)."""
    return sorted(p for p in (env.home / "zones" / "backup" / "repos").rglob("chunks/*/*")
                  if p.is_file() and len(p.name) == 64)


def test_backup_restore_and_signature(env: Env, ops: People, model_dir: Path, tmp_path: Path) -> None:
    first = backup(env, ops["dave"])
    assert first["state"] == "done" and first["kind"] == "backup" and first["method"] == "snapshot"
    snap = first["snapshot"]
    shown = cli("snapshot", "show", snap, "--json", token=ops["bob"]).json
    assert [f["path"] for f in shown["files"]][0] == "config.json"
    status = cli("backup", "status", "--json", token=ops["bob"]).json[0]
    assert status["rpo"] == "ok" and status["snapshots"] == 1 and status["repository_bytes"] > 0
    # the snapshot's bundle verifies the model's files with the OpenSSF tool
    bundle, pub = tmp_path / "snap.sig", tmp_path / "pub.pem"
    cli("snapshot", "bundle", snap, "--out", str(bundle), token=ops["bob"])
    cli("keys", "public", "--out", str(pub), token=ops["bob"])
    assert model_signing_verify(model_dir, bundle, pub).returncode == 0
    assert cli("snapshot", "verify", snap, "--read-data", "--json", token=ops["dave"]).json["files_checked"] == 4
    # a restore is a copy: decided by policy, approved, then made under a fresh key
    assert cli("restore", snap, "--to", "research", "--purpose", "x", "--json", token=ops["dave"]).code == 3
    req = cli("restore", snap, "--to", "prod", "--purpose", "prod volume lost", "--json", token=ops["dave"])
    assert req.code == 0 and req.json["state"] == "awaiting_approval", req.stdout
    assert cli("request", "approve", req.json["id"], "--otp", ops.otp("bob"), "--json", token=ops["bob"]).json["state"] == "approved"
    done = cli("request", "run", req.json["id"], "--json", token=ops["dave"])
    assert done.code == 0, done.stdout
    assert done.json["rto_seconds"] >= 0 and done.json["snapshot"] == snap
    restored = done.json["result_replica"]
    assert cli("replica", "verify", restored, "--json", token=ops["admin"]).code == 0
    # the restored files, decrypted, verify against the snapshot's bundle
    out = tmp_path / "restored"
    ws = env.open()
    with ws.uow(readonly=True) as uow:
        r = repo.replica_by_id(uow, restored)
        dek = ws.custodian().unwrap(repo.data_key(uow, r.key_id))
    for f in (env.home / "zones" / "prod" / "replicas" / restored).rglob("*.sealed"):
        data = f.read_bytes()
        reader = sealed.SealedReader(lambda o, n: data[o:o + n], len(data), dek)
        target = out / reader.header.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"".join(reader.iter_chunks()))
    ws.close()
    assert model_signing_verify(out, bundle, pub).returncode == 0


def test_second_backup_after_a_fine_tune_adds_about_what_changed(env: Env, ops: People, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    rng = np.random.default_rng(5)
    tensors = {f"layer.{i}": rng.integers(0, 255, size=1_000_000, dtype=np.uint8) for i in range(20)}
    write_safetensors(path, tensors)
    register(env, path, "ft", "--jurisdiction", "US")
    cli("backup", "policy", "set", "ft", "--zone", "backup", "--every", "@daily", "--json", token=ops["dave"])
    first = backup(env, ops["dave"], "ft")
    changed = 0
    for i in (3, 11):  # 10% of the tensors rewritten, one added
        tensors[f"layer.{i}"] = rng.integers(0, 255, size=1_000_000, dtype=np.uint8)
        changed += 1_000_000
    tensors["adapter"] = rng.integers(0, 255, size=500_000, dtype=np.uint8)
    changed += 500_000
    write_safetensors(path, dict(reversed(list(tensors.items()))))  # header and order change too
    register(env, path, "ft", "--jurisdiction", "US")
    second = backup(env, ops["dave"], "ft")
    assert second["bytes_added"] <= 1.1 * changed, (second["bytes_added"], changed)
    assert first["bytes_added"] > 19_000_000
    status = [s for s in cli("backup", "status", "--json", token=ops["dave"]).json if s["asset"] == "ft"][0]
    assert status["dedup_ratio"] > 1.7


@pytest.mark.parametrize("damage", ["flip", "missing", "swap"])
def test_damaged_chunks_are_found_and_nothing_is_restored(env: Env, ops: People, damage: str) -> None:
    snap = backup(env, ops["dave"])["snapshot"]
    files = chunk_files(env)
    big = sorted(files, key=lambda p: p.stat().st_size)[-2:]
    if damage == "flip":
        data = bytearray(big[0].read_bytes())
        data[len(data) // 2] ^= 1
        big[0].write_bytes(bytes(data))
    elif damage == "missing":
        big[0].unlink()
    else:
        a, b = big[0].read_bytes(), big[1].read_bytes()
        big[0].write_bytes(b)
        big[1].write_bytes(a)
    r = cli("snapshot", "verify", snap, "--read-data", "--json", token=ops["dave"])
    assert r.code == 5 and "chunk" in r.json["error"]
    if damage == "missing":
        assert cli("snapshot", "verify", snap, "--json", token=ops["dave"]).code == 5
    req = cli("restore", snap, "--to", "dr", "--kind", "restore", "--purpose", "x", "--json", token=ops["dave"]).json
    cli("request", "approve", req["id"], "--otp", ops.otp("bob"), "--json", token=ops["bob"])
    run = cli("request", "run", req["id"], "--json", token=ops["dave"])
    assert run.code == 5
    assert cli("replica", "list", "--zone", "dr", "--state", "active", "--json", token=ops["admin"]).json == []


@pytest.mark.parametrize("tamper", ["edited_manifest", "swapped_chunks", "other_key"])
def test_snapshot_manifest_tampering_is_refused(env: Env, ops: People, tamper: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from custody.keys.bundle import sign_manifest

    snap = backup(env, ops["dave"])["snapshot"]
    ws = env.open()
    with ws.uow(readonly=True) as uow:
        s = br.snapshot_by_id(uow, snap)
    doc = json.loads(s.manifest_json)
    if tamper == "edited_manifest":
        doc["files"][0]["size"] += 1
        column, value = "manifest_json", json.dumps(doc, sort_keys=True, separators=(",", ":"))
    elif tamper == "swapped_chunks":
        shard = max(doc["files"], key=lambda f: len(f["chunks"]))
        shard["chunks"][0], shard["chunks"][1] = shard["chunks"][1], shard["chunks"][0]
        column, value = "manifest_json", json.dumps(doc, sort_keys=True, separators=(",", ":"))
    else:
        forged = sign_manifest(SnapshotManifest.from_json(s.manifest_json).manifest(), "tiny",
                               ec.generate_private_key(ec.SECP256R1()))
        column, value = "bundle_json", forged.decode()
    with ws.engine.begin() as conn:
        conn.execute(text(f"UPDATE snapshots SET {column} = :v WHERE id = :i"), {"v": value, "i": snap})
    ws.close()
    verified = cli("snapshot", "verify", snap, "--json", token=ops["dave"])  # no data read: signatures alone
    assert verified.code == 5, verified.stdout
    req = cli("restore", snap, "--to", "dr", "--purpose", "x", "--json", token=ops["dave"]).json
    cli("request", "approve", req["id"], "--otp", ops.otp("bob"), "--json", token=ops["bob"])
    assert cli("request", "run", req["id"], "--json", token=ops["dave"]).code == 5
    assert cli("replica", "list", "--zone", "dr", "--json", token=ops["admin"]).json == []


def test_retention_immutability_and_early_deletion(env: Env, ops: People) -> None:
    snaps = [backup(env, ops["dave"])["snapshot"]]
    ws = env.open()
    with ws.engine.begin() as conn:  # three backups on three past days (keep-daily 2 keeps the newest two days)
        conn.execute(text("UPDATE snapshots SET created_at = :t"), {"t": "2026-01-01 00:00:00"})
    ws.close()
    for day in ("2026-01-02 00:00:00", "2026-01-03 00:00:00"):
        sid = backup(env, ops["dave"])["snapshot"]
        ws = env.open()
        with ws.engine.begin() as conn:
            conn.execute(text("UPDATE snapshots SET created_at = :t WHERE id = :i"), {"t": day, "i": sid})
        ws.close()
        snaps.append(sid)
    r = cli("snapshot", "forget", "--asset", "tiny", "--apply-retention", "--json", token=ops["dave"]).json
    assert r["forgotten"] == [] and r["immutable"] == [snaps[0]]  # still within its immutability window
    asked = cli("snapshot", "delete", snaps[0], "--reason", "legal hold over", "--json", token=ops["dave"]).json
    assert asked["state"] == "awaiting_approval" and asked["needed"] == 2 and asked["approvals"] == 0
    deletion = asked["deletion"]
    # approvers the proposer could mint, or without a second factor, do not count
    assert cli("snapshot", "approve-delete", deletion, "--reason", "ok", "--json", token=ops["bob"]).code == 3
    assert cli("snapshot", "approve-delete", deletion, "--reason", "ok", "--json", token=ops["dave"]).code == 3
    ops.add({"late": ("security", "x")})
    assert cli("snapshot", "approve-delete", deletion, "--reason", "ok", "--otp", ops.otp("late"), "--json",
               token=ops["late"]).code == 3
    for who in ("bob", "carol"):
        r = cli("snapshot", "approve-delete", deletion, "--reason", "legal hold over", "--otp",
                ops.otp(who), "--json", token=ops[who])
        assert r.code == 0, r.stdout
    assert r.json["approvals"] == 2
    assert cli("snapshot", "delete", snaps[0], "--reason", "legal hold over", "--json",
               token=ops["dave"]).json["state"] == "forgotten"
    assert [s["id"] for s in cli("snapshot", "list", "--json", token=ops["dave"]).json] == snaps[1:]
    assert any(e["action"] == "snapshot.approve-delete" and e["outcome"] == "ok" for e in events(env))


def test_killed_backup_leaves_no_snapshot_and_prune_removes_orphans(env: Env, ops: People, tmp_path: Path) -> None:
    import signal
    import time

    path = tmp_path / "big.safetensors"
    rng = np.random.default_rng(9)
    write_safetensors(path, {f"t{i}": rng.integers(0, 255, size=16 * 2**20, dtype=np.uint8) for i in range(24)})
    register(env, path, "big", "--jurisdiction", "US")
    cli("backup", "policy", "set", "big", "--zone", "backup", "--every", "@daily", "--json", token=ops["dave"])
    proc = subprocess.Popen([CUSTODY_BIN, "backup", "run", "big", "--json"], env=env.environ(CUSTODY_TOKEN=ops["dave"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(chunk_files(env)) < 20:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert cli("snapshot", "list", "--asset", "big", "--json", token=ops["dave"]).json == []
    killed = [r for r in cli("request", "list", "--json", token=ops["dave"]).json if r["asset"] == "big"]
    assert [r["state"] for r in killed] == ["running"]
    assert cli("sweep", "--json", token=ops["admin"]).json["dead_runs"] == [killed[0]["id"]]
    assert cli("request", "show", killed[0]["id"], "--json", token=ops["dave"]).json["state"] == "failed"
    orphans = len(chunk_files(env))
    assert 0 < orphans < 96, "the kill came too early or too late to test anything"
    # the next run completes, reusing what is there
    done = backup(env, ops["dave"], "big")
    assert done["chunks_reused"] >= orphans - 2
    # an unreferenced chunk (as a killed run of another version would leave) is pruned
    ws = env.open()
    with ws.uow(readonly=True) as uow:
        s = br.snapshot_by_id(uow, done["snapshot"])
        from custody.control.services.backups import open_repository

        repository = open_repository(ws, uow, s.repo_id)
    orphan_id = repository.chunk_id(b"left behind by a dead backup")
    repository.put(orphan_id, b"left behind by a dead backup")
    ws.close()
    before = len(chunk_files(env))
    r = cli("snapshot", "forget", "--asset", "big", "--apply-retention", "--prune", "--json", token=ops["dave"])
    assert r.code == 0, r.stdout
    r = r.json
    assert r["pruned"]["deleted"] == 1 and len(chunk_files(env)) == before - 1
    assert cli("snapshot", "verify", done["snapshot"], "--read-data", "--json", token=ops["dave"]).code == 0


def test_shredded_repository_restores_nothing(env: Env, ops: People) -> None:
    snap = backup(env, ops["dave"])["snapshot"]
    assert cli("backup", "shred", "tiny", "--zone", "backup", "--reason", "x", "--json", token=ops["dave"]).code == 3
    ops.add({"sam": ("security", "grc")})
    asked = cli("backup", "shred", "tiny", "--zone", "backup", "--reason", "legal deletion", "--json", token=ops["carol"])
    assert asked.code == 0 and asked.json["state"] == "awaiting_approval"  # the snapshot is still immutable
    assert cli("snapshot", "verify", snap, "--read-data", "--json", token=ops["dave"]).code == 0
    for who in ("bob", "sam"):
        r = cli("snapshot", "approve-delete", asked.json["deletion"], "--reason", "court order", "--otp",
                ops.otp(who), "--json", token=ops[who])
        assert r.code == 0, r.stdout
    r = cli("backup", "shred", "tiny", "--zone", "backup", "--reason", "legal deletion", "--json", token=ops["carol"])
    assert r.code == 0 and r.json["snapshots_destroyed"] == 1
    assert not (env.home / "zones" / "backup" / "repos").exists() or not chunk_files(env)
    r = cli("restore", snap, "--to", "dr", "--purpose", "x", "--json", token=ops["dave"])
    assert r.code == 6 and "forgotten" in r.json["error"]


def test_scheduled_runs_and_drills(env: Env, ops: People) -> None:
    cli("backup", "policy", "set", "tiny", "--zone", "backup", "--every", "* * * * *", "--rpo", "1h", "--rto", "10m",
        "--json", token=ops["dave"])
    first = cli("backup", "run", "--due", "--json", token=ops["dave"]).json
    assert [r["state"] for r in first] == ["done"]
    assert cli("backup", "run", "--due", "--json", token=ops["dave"]).json == []  # nothing due again this minute
    r = cli("drill", "dr", "--all", "--json", token=ops["dave"])
    assert r.code == 0, r.stdout
    report = r.json
    row = report["results"][0]
    assert report["passed"] and row["restored_digest_ok"] and row["rto_met"] and row["rpo_met"]
    assert Path(report["files"]["json"]).exists() and "PASSED" in Path(report["files"]["table"]).read_text()
    assert cli("replica", "list", "--zone", "dr", "--state", "active", "--json", token=ops["admin"]).json == []
    assert any(e["action"] == "drill.run" and e["outcome"] == "ok" for e in events(env))
    # a target missed: exit non-zero, the report says which
    cli("backup", "policy", "set", "tiny", "--zone", "backup", "--every", "@daily", "--rpo", "1s", "--rto", "10m",
        "--json", token=ops["dave"])
    import time

    time.sleep(1.2)
    missed = cli("drill", "dr", "--asset", "tiny", "--json", token=ops["dave"])
    assert missed.code == 1 and missed.json["results"][0]["rpo_met"] is False
    assert cli("backup", "status", "--json", token=ops["dave"]).json[0]["rpo"] == "breached"


def test_bad_policies_and_names(env: Env, ops: People) -> None:
    for args in (["--every", "soon"], ["--every", "61 * * * *"], ["--rpo", "never"], ["--keep-daily", "0",
                                                                                       "--keep-weekly", "0",
                                                                                       "--keep-monthly", "0"]):
        full = {"--every": "@daily", "--rpo": "24h"}
        r = cli("backup", "policy", "set", "tiny", "--zone", "backup", *sum(full.items(), ()), *args, "--json",
                token=ops["dave"])
        assert r.code == 2, (args, r.stdout)
    assert cli("backup", "policy", "set", "tiny", "--zone", "prod", "--every", "@daily", "--json",
               token=ops["dave"]).code == 2
    assert cli("backup", "run", "nothing", "--json", token=ops["dave"]).code == 4
    assert cli("snapshot", "show", "nope", "--json", token=ops["dave"]).code == 4
    assert cli("restore", "nope", "--to", "dr", "--purpose", "x", "--json", token=ops["dave"]).code == 4
    snap = backup(env, ops["dave"])["snapshot"]
    assert cli("restore", snap, "--to", "dr", "--kind", "drill", "--purpose", "x", "--json", token=ops["dave"]).code == 2
    cli("zone", "add", "dr-jp", "--url", (env.home / "dr-jp").as_uri(), "--kind", "dr", "--region", "ap",
        "--jurisdiction", "JP", "--security-level", "4", "--json", token=ops["admin"])
    r = cli("restore", snap, "--to", "dr-jp", "--purpose", "x", "--json", token=ops["dave"])
    assert r.code == 3 and "jurisdiction" in r.json["error"]
    part = cli("snapshot", "verify", snap, "--read-data-subset", "50", "--json", token=ops["dave"]).json
    assert 0 < part["chunks_checked"] < part["chunks_present"]
    assert cli("snapshot", "verify", snap, "--read-data-subset", "0", "--json", token=ops["dave"]).code == 2
    assert cli("backup", "policy", "set", "tiny", "--zone", "backup", "--every", "0 0 31 2 *", "--json",
               token=ops["dave"]).code == 2

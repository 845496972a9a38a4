"""`make bench`: registration against cp, and the ledger at 100k and 1M events.

Writes bench/results/<name>.json and prints a table. Every figure is a median over rounds that
alternate custody and its baseline on the same files and the same disk, because write speed on
these machines swings with the host's memory state.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyotp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
os.environ.setdefault("CUSTODY_SCRYPT_LOG_N", "14")

from conftest import server_process, write_safetensors  # noqa: E402
from custody.control.ledger import merkle  # noqa: E402
from custody.control.ledger import store as ledger  # noqa: E402
from custody.cli.demo import onboard  # noqa: E402
from custody.control.services import assets, audit, mfa, setup  # noqa: E402
from custody.control.store import schema as t  # noqa: E402
from custody.control.workspace import Workspace  # noqa: E402

MiB = 2**20
PASS = "bench passphrase"


def drop_caches_of(path: Path) -> None:
    """Evict one file's pages so reads come from the disk for custody and cp alike."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_model(folder: Path, shards: int, shard_bytes: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(shards):
        name = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        path = folder / name
        if not path.exists():
            write_safetensors(path, {f"layer.{i}.weight": rng.integers(0, 255, size=shard_bytes, dtype=np.uint8)})
    return folder if shards > 1 else folder / "model.safetensors"


def _unused_code(secret: str) -> str:
    """A code for a time step after the last one accepted (codes are single use): waits for the next step."""
    totp = pyotp.TOTP(secret)
    time.sleep(totp.interval - time.time() % totp.interval + 0.1)
    return totp.now()


def fresh_workspace(root: Path) -> tuple[Workspace, str]:
    if root.exists():
        shutil.rmtree(root)
    os.environ["CUSTODY_PASSPHRASE"] = PASS
    res = setup.init_workspace(root, passphrase=PASS, scrypt_log_n=14)
    return Workspace.open(root), res.admin_token


def bench_register(work: Path, label: str, shards: int, shard_bytes: int, rounds: int) -> dict:
    src = make_model(work / f"src-{label}", shards, shard_bytes)
    files = [src] if src.is_file() else sorted(src.iterdir())
    total = sum(f.stat().st_size for f in files)
    ws, token = fresh_workspace(work / f"ws-{label}")
    cp_dir = work / f"cp-{label}"
    ours, theirs, theirs_sync = [], [], []
    for r in range(rounds):
        for f in files:
            drop_caches_of(f)
        t0 = time.perf_counter()
        reg = assets.register(ws, token, f"{label}-{r}", src, assets.RegisterOptions())
        ours.append(time.perf_counter() - t0)
        shutil.rmtree(work / f"ws-{label}" / "zones" / "prod" / "replicas" / reg["replica"])

        for f in files:
            drop_caches_of(f)
        shutil.rmtree(cp_dir, ignore_errors=True)
        cp_dir.mkdir()
        t0 = time.perf_counter()
        subprocess.run(["cp", "-r", *map(str, files), str(cp_dir)], check=True)
        theirs.append(time.perf_counter() - t0)
        subprocess.run(["sync", "-f", str(cp_dir)], check=True)
        theirs_sync.append(time.perf_counter() - t0)
        shutil.rmtree(cp_dir)
    ws.close()
    mbs = lambda secs: total / 1e6 / statistics.median(secs)  # noqa: E731
    return {
        "bytes": total, "files": len(files), "rounds": rounds,
        "custody_mb_s": round(mbs(ours), 1), "cp_mb_s": round(mbs(theirs), 1), "cp_sync_mb_s": round(mbs(theirs_sync), 1),
        "ratio_vs_cp": round(statistics.median(theirs) / statistics.median(ours), 3),
        "ratio_vs_cp_sync": round(statistics.median(theirs_sync) / statistics.median(ours), 3),
        "custody_seconds": [round(x, 3) for x in ours], "cp_seconds": [round(x, 3) for x in theirs],
        "note": "custody reads, hashes, seals, writes, fsyncs and re-reads every chunk to check it; "
                "cp only copies (cp_sync adds a sync of the copy)",
    }


def bench_appends(work: Path, count: int) -> dict:
    ws, _ = fresh_workspace(work / "ws-appends")
    t0 = time.perf_counter()
    for i in range(count):
        with ws.uow() as uow:  # one event per transaction, as every action does
            ledger.append(uow, actor="bench", action="bench.append", outcome="ok", subject=str(i))
    secs = time.perf_counter() - t0
    ws.close()
    return {"events": count, "appends_per_s": round(count / secs, 1), "store": "sqlite"}


def build_ledger(ws: Workspace, n: int) -> None:
    """Fill a ledger to n events quickly (bulk inserts of the same rows append() writes)."""
    with ws.uow() as uow:
        start = ledger.size(uow)
    builder = merkle.TreeBuilder()
    with ws.uow(readonly=True) as uow:
        for _, line in ledger.events(uow):
            builder.push(merkle.leaf_hash(line.encode()))
    batch_events, batch_nodes = [], []
    for seq in range(start, n):
        line = json.dumps({"action": "bench.fill", "actor": "bench", "destination": None, "details": {"i": seq},
                           "outcome": "ok", "policy_ids": [], "rationale": None, "request_id": None, "seq": seq,
                           "source": None, "subject": f"s{seq}", "time": "2026-11-25T00:00:00.000000Z"},
                          sort_keys=True, separators=(",", ":"))
        batch_events.append({"seq": seq, "time": "2026-11-25T00:00:00.000000Z", "actor": "bench",
                             "action": "bench.fill", "subject": f"s{seq}", "outcome": "ok", "line": line})
        for level, idx, h in builder.push(merkle.leaf_hash(line.encode())):
            batch_nodes.append({"level": level, "idx": idx, "hash": h})
        if len(batch_events) >= 20000 or seq == n - 1:
            with ws.uow() as uow:
                uow.conn.execute(t.ledger_events.insert(), batch_events)
                uow.conn.execute(t.ledger_nodes.insert(), batch_nodes)
                uow.conn.execute(t.ledger_head.update().values(size=seq + 1))
            batch_events, batch_nodes = [], []


def bench_ledger_at(work: Path, sizes: list[int]) -> list[dict]:
    ws, token = fresh_workspace(work / "ws-ledger")
    out = []
    for n in sizes:
        build_ledger(ws, n)
        rng = random.Random(n)
        times = []
        for _ in range(200):
            seq = rng.randrange(n)
            t0 = time.perf_counter()
            with ws.uow(readonly=True) as uow:
                ledger.prove_inclusion(uow, seq)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = audit.verify(ws, token)
        verify_s = time.perf_counter() - t0
        assert result["verified"]
        out.append({"events": result["tree_size"], "inclusion_proof_ms_median": round(statistics.median(times) * 1e3, 3),
                    "inclusion_proof_ms_p99": round(sorted(times)[int(len(times) * 0.99) - 1] * 1e3, 3),
                    "audit_verify_s": round(verify_s, 2)})
    ws.close()
    return out


def bench_policy(n: int) -> dict:
    from custody.control.policy.bench import bench_decisions

    return bench_decisions(n=n)


def bench_copy(work: Path, size: int, rounds: int) -> dict:
    """A replica copied prod -> backup under a grant, against cp of the same sealed files."""
    from custody.control.services import copies, principals, requests

    src = make_model(work / "src-copy", 1, size)
    ws, token = fresh_workspace(work / "ws-copy")
    dave = principals.add_principal(ws, token, name="dave", roles=["backup-operator"], team="infra", attributes={})["token"]
    reg = assets.register(ws, token, "copy-src", src, assets.RegisterOptions())
    sealed_dir = work / "ws-copy" / "zones" / "prod" / "replicas" / reg["replica"]
    sealed_files = sorted(sealed_dir.rglob("*.sealed"))
    total = sum(f.stat().st_size for f in sealed_files)
    cp_dir = work / "cp-copy"
    ours, theirs, theirs_sync = [], [], []
    for r in range(rounds):
        req = requests.create(ws, dave, "copy-src", to="backup", kind="backup", purpose=f"bench {r}")
        for f in sealed_files:
            drop_caches_of(f)
        t0 = time.perf_counter()
        done = copies.run(ws, dave, req["id"])
        ours.append(time.perf_counter() - t0)
        shutil.rmtree(work / "ws-copy" / "zones" / "backup" / "replicas" / done["result_replica"])
        for f in sealed_files:
            drop_caches_of(f)
        shutil.rmtree(cp_dir, ignore_errors=True)
        cp_dir.mkdir()
        t0 = time.perf_counter()
        subprocess.run(["cp", "-r", str(sealed_dir), str(cp_dir)], check=True)
        theirs.append(time.perf_counter() - t0)
        subprocess.run(["sync", "-f", str(cp_dir)], check=True)
        theirs_sync.append(time.perf_counter() - t0)
    ws.close()
    mbs = lambda secs: total / 1e6 / statistics.median(secs)  # noqa: E731
    return {"bytes_sealed": total, "rounds": rounds, "custody_mb_s": round(mbs(ours), 1),
            "cp_mb_s": round(mbs(theirs), 1), "cp_sync_mb_s": round(mbs(theirs_sync), 1),
            "ratio_vs_cp": round(statistics.median(theirs) / statistics.median(ours), 3),
            "ratio_vs_cp_sync": round(statistics.median(theirs_sync) / statistics.median(ours), 3),
            "custody_seconds": [round(x, 3) for x in ours], "cp_seconds": [round(x, 3) for x in theirs],
            "note": "custody decrypts, hashes against the manifest, re-seals under a new key, writes with "
                    "O_DIRECT and fsync; cp copies the sealed bytes (cp_sync adds a sync)"}


def bench_revocation(work: Path, rounds: int) -> dict:
    """Time from asking to revoke a request's copies to the copies being unreadable."""
    from custody.control.services import copies, principals, replicas, requests
    from custody.domain.errors import InvalidState

    src = make_model(work / "src-revoke", 1, 8 * MiB)
    ws, token = fresh_workspace(work / "ws-revoke")
    dave = principals.add_principal(ws, token, name="dave", roles=["backup-operator"], team="infra", attributes={})["token"]
    assets.register(ws, token, "rev", src, assets.RegisterOptions())
    returned, unreadable = [], []
    for r in range(rounds):
        req = requests.create(ws, dave, "rev", to="backup", kind="backup", purpose=f"bench {r}")
        done = copies.run(ws, dave, req["id"])
        t0 = time.perf_counter()
        copies.revoke(ws, token, req["id"], reason="bench")
        returned.append(time.perf_counter() - t0)
        try:
            replicas.verify_replica(ws, token, done["result_replica"])
            raise AssertionError("a revoked replica still verifies")
        except InvalidState:
            unreadable.append(time.perf_counter() - t0)
    ws.close()
    return {"rounds": rounds, "revoke_returns_ms_median": round(statistics.median(returned) * 1e3, 2),
            "unreadable_after_ms_median": round(statistics.median(unreadable) * 1e3, 2),
            "unreadable_after_ms_max": round(max(unreadable) * 1e3, 2),
            "note": "the data key is destroyed in the revoke's own transaction; reading is refused from its commit on"}


def _restic(args: list[str], repo: Path, **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=str(repo), RESTIC_CACHE_DIR=str(repo) + ".cache")
    return subprocess.run(["restic", "--quiet", *args], env=env, check=True, capture_output=True, **kw)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_backup(work: Path, size: int, rounds: int) -> dict:
    """custody's backups against restic on the same model, alternating, on the same disk."""
    from custody.control.services import backups, copies, restores, snapshots
    from custody.data.backup.bench import _header_len, _layout, _write_model

    if shutil.which("restic") is None:
        return {"skipped": "restic is not installed (apt-get install restic)"}
    model_dir = work / "bk-model"
    model_dir.mkdir(parents=True)
    model = model_dir / "model.safetensors"
    tensors = [(name, nbytes, i) for i, (name, nbytes) in enumerate(_layout(size))]
    _write_model(model, tensors)
    logical = model.stat().st_size
    ws, admin = fresh_workspace(work / "ws-bk")
    crew, _ = onboard(ws, admin, (("dave", "backup-operator", "infra"), ("bob", "ml-lead", "platform")), {})
    dave, bob = crew["dave"], crew["bob"]
    bob_secret = mfa.enroll(ws, bob)["secret"]
    mfa.verify(ws, bob, pyotp.TOTP(bob_secret).now())
    assets.register(ws, admin, "m", model_dir, assets.RegisterOptions())
    backups.set_policy(ws, dave, "m", zone="backup", every="@daily", keep_daily=7, keep_weekly=4, keep_monthly=6,
                       rpo="24h", rto="1h")
    prod_files = sorted((work / "ws-bk" / "zones" / "prod").rglob("*.sealed"))
    restic_repo = work / "restic-repo"
    ours, theirs = [], []
    for r in range(rounds):
        if r:
            backups.shred_repository(ws, admin, "m", "backup", reason="bench: next round starts empty")
        for f in prod_files:
            drop_caches_of(f)
        t0 = time.perf_counter()
        backups.run(ws, dave, "m")
        ours.append(time.perf_counter() - t0)
        shutil.rmtree(restic_repo, ignore_errors=True)
        shutil.rmtree(str(restic_repo) + ".cache", ignore_errors=True)
        _restic(["init"], restic_repo)
        drop_caches_of(model)
        t0 = time.perf_counter()
        _restic(["backup", str(model_dir)], restic_repo)
        theirs.append(time.perf_counter() - t0)
    mbs = lambda secs: logical / 1e6 / statistics.median(secs)  # noqa: E731
    out: dict = {"bytes": logical, "rounds": rounds, "first_backup": {
        "custody_mb_s": round(mbs(ours), 1), "restic_mb_s": round(mbs(theirs), 1),
        "ratio_vs_restic": round(statistics.median(theirs) / statistics.median(ours), 3),
        "custody_seconds": [round(x, 3) for x in ours], "restic_seconds": [round(x, 3) for x in theirs],
        "note": "custody reads the registered model from its sealed replica (decrypting it in memory); restic reads "
                "the plaintext file"}}

    # The fine-tune: every tenth layer rewritten, one tensor added; header and offsets change.
    header_before = _header_len(model)
    changed = [(n, b, s + 10_000 if (i // 2) % 10 == 0 and n != "lm_head.weight" else s)
               for i, (n, b, s) in enumerate(tensors)]
    added = ("model.extra_adapter.weight", max(2, (size // 50) & ~1), 99_999)
    _write_model(model, changed + [added])
    bytes_changed = sum(b for (_, b, s0), (_, _, s1) in zip(tensors, changed) if s0 != s1) + added[1] + \
        _header_len(model)
    assets.register(ws, admin, "m", model_dir, assets.RegisterOptions())
    second = backups.run(ws, dave, "m")[0]
    before = _du(restic_repo)
    _restic(["backup", str(model_dir)], restic_repo)
    out["second_backup"] = {"bytes_changed": bytes_changed, "header_before": header_before,
                            "custody_bytes_added": second["bytes_added"],
                            "custody_ratio_to_changed": round(second["bytes_added"] / bytes_changed, 3),
                            "restic_bytes_added": _du(restic_repo) - before,
                            "restic_ratio_to_changed": round((_du(restic_repo) - before) / bytes_changed, 3)}

    snap = second["snapshot"]
    repo_files = sorted((work / "ws-bk" / "zones" / "backup").rglob("chunks/*/*"))
    ours, theirs, v_ours, v_theirs = [], [], [], []
    for r in range(rounds):
        req = restores.restore(ws, dave, snap, to="dr", purpose=f"bench restore {r}")
        from custody.control.services import requests as request_service

        request_service.approve(ws, bob, req["id"], otp=_unused_code(bob_secret))
        for f in repo_files:
            drop_caches_of(f)
        t0 = time.perf_counter()
        copies.run(ws, dave, req["id"])
        ours.append(time.perf_counter() - t0)
        copies.revoke(ws, dave, req["id"], reason="bench")
        target = work / "restic-restore"
        shutil.rmtree(target, ignore_errors=True)
        for f in restic_repo.rglob("*"):
            if f.is_file():
                drop_caches_of(f)
        t0 = time.perf_counter()
        _restic(["restore", "latest", "--target", str(target)], restic_repo)
        theirs.append(time.perf_counter() - t0)
        shutil.rmtree(target, ignore_errors=True)
        for f in repo_files:
            drop_caches_of(f)
        t0 = time.perf_counter()
        snapshots.verify(ws, dave, snap, read_data=True)
        v_ours.append(time.perf_counter() - t0)
        for f in restic_repo.rglob("*"):
            if f.is_file():
                drop_caches_of(f)
        t0 = time.perf_counter()
        _restic(["check", "--read-data"], restic_repo)
        v_theirs.append(time.perf_counter() - t0)
    logical2 = model.stat().st_size
    out["restore"] = {"custody_mb_s": round(logical2 / 1e6 / statistics.median(ours), 1),
                      "restic_mb_s": round(logical2 / 1e6 / statistics.median(theirs), 1),
                      "ratio_vs_restic": round(statistics.median(theirs) / statistics.median(ours), 3),
                      "note": "custody writes a sealed replica under a fresh key and checks every chunk and digest; "
                              "restic writes plaintext"}
    out["verify_read_data"] = {"custody_seconds": round(statistics.median(v_ours), 3),
                               "restic_seconds": round(statistics.median(v_theirs), 3),
                               "ratio_vs_restic": round(statistics.median(v_theirs) / statistics.median(v_ours), 3),
                               "note": "restic check --read-data reads both snapshots' data; custody verifies one"}
    ws.close()
    return out


def _pg_url() -> str:
    """A fresh database on the local PostgreSQL cluster (started, and installed if missing)."""
    from sqlalchemy import create_engine, text

    base = subprocess.run([str(HERE.parent / "scripts" / "postgres-test-db.sh")], capture_output=True, text=True,
                          check=True).stdout.strip()
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text('DROP DATABASE IF EXISTS "custody_bench" WITH (FORCE)'))
        conn.execute(text('CREATE DATABASE "custody_bench"'))
    admin.dispose()
    return base.rsplit("/", 1)[0] + "/custody_bench"


def bench_load(work: Path, backend: str, seconds: float, workers: int = 2, concurrency: int = 32) -> dict:
    """`custody serve --workers 2`; a load generator in its own process creates requests (policy
    decision, state and ledger in one transaction each), then lists replicas."""
    from custody.control.services import principals

    env = dict(os.environ, CUSTODY_PASSPHRASE=PASS)
    if backend == "postgresql":
        env["CUSTODY_DB_URL"] = os.environ["CUSTODY_DB_URL"] = _pg_url()
    try:
        ws, admin = fresh_workspace(work / f"load-{backend}")
        model = make_model(work / "load-model", 1, 4 * MiB)
        assets.register(ws, admin, "bench-model", model, assets.RegisterOptions(classification="internal"))
        alice = principals.add_principal(ws, admin, name="alice", roles=["researcher"], team="nlp")["token"]
        ws.close()
    finally:
        os.environ.pop("CUSTODY_DB_URL", None)
    out: dict = {"backend": backend, "workers": workers, "load_generator": f"wrk -t1 -c{concurrency}"}
    with server_process(["--home", str(work / f"load-{backend}"), "--workers", str(workers)], env) as base:
        for op, path, script in (("create", "/api/v1/requests", "create_request.lua"), ("list", "/api/v1/replicas", None)):
            out[op] = _wrk(f"{base}{path}", alice, seconds, concurrency, HERE / script if script else None)
    return out


def _wrk(url: str, token: str, seconds: float, concurrency: int, script: Path | None) -> dict:
    """wrk (from Debian) in its own process: requests/s, p50/p99 latency, non-2xx count."""
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "--latency", "-H", f"Authorization: Bearer {token}"]
    text = subprocess.run(cmd + (["-s", str(script)] if script else []) + [url], capture_output=True, text=True,
                          check=True).stdout

    def ms(label: str) -> float:
        value = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        n, unit = float(value.group(1)), value.group(2)
        return round(n / 1000 if unit == "us" else n * 1000 if unit == "s" else n, 2)

    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)), "p50_ms": ms("50%"),
            "p99_ms": ms("99%"), "errors": int(bad.group(1)) if bad else 0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the harness")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["register", "ledger", "policy", "copy", "revocation", "custodians", "backup",
                                       "load", "trace"],
                    default=None)
    args = ap.parse_args()
    work = HERE / "work"
    work.mkdir(exist_ok=True)
    results: dict = {"when": datetime.now(timezone.utc).isoformat(), "machine": platform.machine(),
                     "cpus": os.cpu_count(), "python": platform.python_version()}
    scale = 16 if args.quick else 1
    try:
        if args.only in (None, "register"):
            results["register_2GiB_single"] = bench_register(work, "single", 1, 2048 * MiB // scale, args.rounds)
            results["register_8x256MiB"] = bench_register(work, "sharded", 8, 256 * MiB // scale, args.rounds)
        if args.only in (None, "policy"):
            results["policy_decisions"] = bench_policy(2000 if args.quick else 10000)
        if args.only in (None, "copy"):
            results["copy_2GiB_prod_to_backup"] = bench_copy(work, 2048 * MiB // scale, args.rounds)
        if args.only in (None, "revocation"):
            results["revocation"] = bench_revocation(work, 5 if args.quick else 20)
        if args.only in (None, "custodians"):
            from custodians import main_rows

            results["custodians"] = main_rows(work, args.quick, 3)
        if args.only in (None, "trace"):
            from tracing_bench import main_rows as trace_rows

            results["trace"] = trace_rows(work, args.quick)
        if args.only in (None, "backup"):
            results["backup_vs_restic_2GiB"] = bench_backup(work, 2048 * MiB // scale, args.rounds)
        if args.only in (None, "load"):
            results["load"] = [bench_load(work, b, 3 if args.quick else 15) for b in ("sqlite", "postgresql")]
        if args.only in (None, "ledger"):
            results["ledger_appends"] = bench_appends(work, 2000 if args.quick else 10000)
            results["ledger_at_size"] = bench_ledger_at(work, [10_000, 50_000] if args.quick else [100_000, 1_000_000])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    name = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nresults: bench/results/{name}.json")


def print_table(r: dict) -> None:
    if "trace" in r:
        from tracing_bench import print_rows

        print_rows(r["trace"])
    print(f"\n{'benchmark':<34} {'custody':>14} {'baseline':>16} {'ratio':>8}")
    for key in ("register_2GiB_single", "register_8x256MiB"):
        if key in r:
            x = r[key]
            print(f"{key:<34} {x['custody_mb_s']:>9.1f} MB/s {x['cp_mb_s']:>8.1f} MB/s cp {x['ratio_vs_cp']:>7.2f}x")
            print(f"{'':<34} {'':>14} {x['cp_sync_mb_s']:>6.1f} MB/s cp+sync {x['ratio_vs_cp_sync']:>5.2f}x")
    if "copy_2GiB_prod_to_backup" in r:
        x = r["copy_2GiB_prod_to_backup"]
        print(f"{'copy 2 GiB prod -> backup':<34} {x['custody_mb_s']:>9.1f} MB/s {x['cp_mb_s']:>8.1f} MB/s cp {x['ratio_vs_cp']:>7.2f}x")
        print(f"{'':<34} {'':>14} {x['cp_sync_mb_s']:>6.1f} MB/s cp+sync {x['ratio_vs_cp_sync']:>5.2f}x")
    if "backup_vs_restic_2GiB" in r and "first_backup" in r["backup_vs_restic_2GiB"]:
        x = r["backup_vs_restic_2GiB"]
        f = x["first_backup"]
        print(f"{'first backup 2 GiB':<34} {f['custody_mb_s']:>9.1f} MB/s {f['restic_mb_s']:>6.1f} MB/s restic {f['ratio_vs_restic']:>5.2f}x")
        s2 = x["second_backup"]
        print(f"{'2nd backup: added / changed':<34} {s2['custody_ratio_to_changed']:>11.2f}   {s2['restic_ratio_to_changed']:>8.2f} restic")
        rr = x["restore"]
        print(f"{'restore 2 GiB':<34} {rr['custody_mb_s']:>9.1f} MB/s {rr['restic_mb_s']:>6.1f} MB/s restic {rr['ratio_vs_restic']:>5.2f}x")
        v = x["verify_read_data"]
        print(f"{'verify --read-data':<34} {v['custody_seconds']:>11.2f} s {v['restic_seconds']:>8.2f} s restic {v['ratio_vs_restic']:>5.2f}x")
    if "policy_decisions" in r:
        x = r["policy_decisions"]
        print(f"{'policy decision (copy) p50':<34} {x['copy_p50_us']:>11.0f} us")
        print(f"{'policy decision (copy) p99':<34} {x['copy_p99_us']:>11.0f} us {'target < 1000 us':>16}")
    if "revocation" in r:
        x = r["revocation"]
        print(f"{'revoke -> unreadable (median)':<34} {x['unreadable_after_ms_median']:>11.2f} ms {'target < 1000 ms':>16}")
    for x in r.get("custodians", []):
        name = x["custodian"]
        if "skipped" in x:
            print(f"{'custodian ' + name:<34} skipped: {x['skipped']}")
            continue
        print(f"{'unwraps (' + name + ')':<34} {x['unwraps_per_s']:>9.0f} /s")
        print(f"{'releases: grant+binding+journal':<34} {x['releases_per_s']:>9.0f} /s")
        target = "target < 1 s" if name != "aws-kms" else "stated apart"
        print(f"{'revoke->old epoch gone, ' + format(x['live_keys'], ',') + ' keys':<34} {x['revoke_to_unreadable_s_median']:>11.3f} s "
              f"{target:>16}")
        if x["live_keys"] != 10_000:
            print(f"{'  projected for 10,000 keys':<34} {x['projected_10k_rewrap_s']:>11.2f} s")
    for x in r.get("load", []):
        for op, label in (("create", "create request"), ("list", "list replicas")):
            y = x[op]
            target = "target >= 300/s" if op == "create" and x["backend"] == "postgresql" else ""
            print(f"{'API ' + label + ' (' + x['backend'] + ', ' + str(x['workers']) + 'w)':<34} {y['per_s']:>9.0f} /s  "
                  f"p99 {y['p99_ms']:>7.1f} ms {target:>16}{'  errors ' + str(y['errors']) if y['errors'] else ''}")
    if "ledger_appends" in r:
        print(f"{'ledger appends (1 per txn, sqlite)':<34} {r['ledger_appends']['appends_per_s']:>9.0f} /s   {'target 2000/s':>16}")
    for row in r.get("ledger_at_size", []):
        print(f"{'inclusion proof @ ' + format(row['events'], ','):<34} {row['inclusion_proof_ms_median']:>11.3f} ms {'target < 5 ms':>16}")
        print(f"{'audit verify @ ' + format(row['events'], ','):<34} {row['audit_verify_s']:>12.2f} s {'target < 30 s':>16}")


if __name__ == "__main__":
    main()

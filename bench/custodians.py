"""Per custodian: data-key unwraps per second, releases per second (grant + binding + journal), and
the epoch move a revocation makes (rewrap every live key of the zone, destroy the old KEK), timed
end to end from the revoke to the replica being unreadable.

The PKCS#11 custodian runs against a real SoftHSM2 token and the KMS custodian against a real moto
server process, both started the way the tests start them (tests/softhsm.py, tests/moto_server.py).
KMS calls cross HTTP: its rewrap is measured on fewer keys and stated per key and as projected for
10,000, never mixed into the local figures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

PASS = "bench passphrase"


@contextlib.contextmanager
def _backend(kind: str) -> Iterator[dict]:
    if kind == "local":
        yield {}
    elif kind == "pkcs11":
        import softhsm

        with softhsm.token() as options:
            yield options
    else:
        import moto_server

        with moto_server.kms() as options:
            yield options


def available(kind: str) -> str | None:
    """Why a custodian cannot be measured here (None: it can)."""
    if kind == "pkcs11" and not shutil.which("softhsm2-util"):
        return "softhsm2-util is not installed"
    if kind == "aws-kms" and not (Path(sys.executable).with_name("moto_server")).exists():
        return "moto_server is not installed"
    return None


def bench_custodian(work: Path, kind: str, live_keys: int, rounds: int) -> dict:
    from custody.control.services import keys, setup
    from custody.control.store import repositories as repo
    from custody.control.workspace import Workspace
    from custody.control import grants
    from custody.keys.custodian import Binding, grant_root_key
    from custody.keys.release import Expected

    why = available(kind)
    if why:
        return {"custodian": kind, "skipped": why}
    home = work / f"ws-{kind}"
    shutil.rmtree(home, ignore_errors=True)
    with _backend(kind) as options:
        os.environ["CUSTODY_PASSPHRASE"] = PASS
        setup.init_workspace(home, passphrase=PASS, scrypt_log_n=14, custodian=kind, custodian_options=dict(options))
        ws = Workspace.open(home)
        custodian = ws.custodian()
        zone = "backup"

        # fill the zone with live data keys, as 10,000 replicas would
        t0 = time.perf_counter()
        wrapped = []
        for i in range(live_keys):
            _, w = custodian.new_data_key(Binding(f"k{i:06d}", f"r{i:06d}", zone, "backup", "d" * 64, None))
            wrapped.append(w)
        made = time.perf_counter() - t0
        with ws.uow() as uow:
            for w in wrapped:
                repo.add_data_key(uow, w)

        sample = wrapped[: min(len(wrapped), 2000)]
        t0 = time.perf_counter()
        for w in sample:
            custodian.unwrap(w)
        unwraps_per_s = len(sample) / (time.perf_counter() - t0)

        # a release: grant verified, binding checked, journalled (what every read pays)
        release = ws.release()
        root = grant_root_key(custodian)
        n = min(200, len(sample))
        tokens = []
        for i, w in enumerate(sample[:n]):
            tokens.append(grants.mint(root, grants.GrantClaims(
                request_id=f"bench-{i}", version_digest="d" * 64, source_replica=f"r{i:06d}", destination_zone=zone,
                expires_at=datetime.now(timezone.utc) + timedelta(minutes=10), source_key=w.key_id,
                kind="read")).token)
        t0 = time.perf_counter()
        for i, (token, w) in enumerate(zip(tokens, sample[:n])):
            release.read(token, Expected(f"bench-{i}", "d" * 64, f"r{i:06d}", zone), w, kind="backup", reader=None)
        releases_per_s = n / (time.perf_counter() - t0)

        # revocation: destroy one key, move the zone to a new epoch, until the old epoch is gone
        epochs, unreadable = [], []
        for r in range(rounds):
            victim = wrapped[r]
            with ws.uow() as uow:
                old = repo.data_key(uow, victim.key_id)
                repo.shred_data_key(uow, victim.key_id)
            t0 = time.perf_counter()
            moved = keys.new_epoch(ws, zone, actor="bench", why="bench revocation")
            try:
                custodian.unwrap(old)  # the stolen wrapped key, with the custodian in hand
                raise AssertionError("a key of a destroyed epoch still unwraps")
            except Exception as exc:  # noqa: BLE001
                if isinstance(exc, AssertionError):
                    raise
            unreadable.append(time.perf_counter() - t0)
            epochs.append(moved)
        ws.close()
    shutil.rmtree(home, ignore_errors=True)
    rewrap = [e["rewrap_seconds"] for e in epochs]
    return {
        "custodian": kind, "live_keys": live_keys, "make_keys_s": round(made, 2),
        "unwraps_per_s": round(unwraps_per_s), "releases_per_s": round(releases_per_s),
        "rewrap_live_keys_s_median": round(statistics.median(rewrap), 3),
        "revoke_to_unreadable_s_median": round(statistics.median(unreadable), 3),
        "projected_10k_rewrap_s": round(statistics.median(rewrap) * 10_000 / live_keys, 2),
        "destroyed": epochs[-1]["destroyed"],
        "note": "revoke_to_unreadable: from the key's destruction to its zone's old KEK being gone (rewrap of every "
                "live key in the zone, database update, KEK destroyed); the revoked key itself is unreadable from "
                "its transaction's commit",
    }


def main_rows(work: Path, quick: bool, rounds: int) -> list[dict]:
    return [
        bench_custodian(work, "local", 1000 if quick else 10_000, rounds),
        bench_custodian(work, "pkcs11", 1000 if quick else 10_000, rounds),
        bench_custodian(work, "aws-kms", 100 if quick else 500, rounds),
    ]

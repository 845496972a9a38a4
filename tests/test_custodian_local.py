"""The local custodian sealed by Shamir shares (SLIP-39): no passphrase opens it, a server opens once
enough holders have each given a share, and a share check can be drilled without keeping anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx

from conftest import cli, events, run_custody, server_process


ZONE = ("--kind", "backup", "--region", "local", "--jurisdiction", "US", "--security-level", "4")


def _init(tmp_path: Path) -> tuple[Path, dict]:
    home = tmp_path / "ws"
    r = cli("init", "--shares", "5", "--threshold", "3", "--json", env={"CUSTODY_HOME": str(home)})
    assert r.code == 0, r.stdout
    return home, r.json


def test_shares_seal_the_keyring_and_no_passphrase_opens_it(tmp_path: Path) -> None:
    home, made = _init(tmp_path)
    shares = made["shares"]
    assert len(shares) == 5 and len({s.split()[0] for s in shares}) == 1  # one split, one identifier word
    ring = json.loads((home / "keys" / "keyring.sealed").read_text())
    assert {k: v for k, v in ring["kdf"].items() if k not in ("identifier", "commitments")} == {
        "name": "shamir-slip39", "threshold": 3, "shares": 5}
    # every data command needs the custodian: with any passphrase at all, it stays sealed
    environ = {"CUSTODY_HOME": str(home), "CUSTODY_PASSPHRASE": "anything", "CUSTODY_TOKEN": made["admin_token"]}
    r = cli("zone", "add", "vault", "--url", (tmp_path / "vault").as_uri(), *ZONE, "--json", env=environ)
    assert r.code == 3 and "sealed by 3 of 5 Shamir shares" in r.json["error"]
    # a drill: three shares on standard input unseal it here, and nothing is kept
    drill = run_custody("unseal", "--json", env={**os.environ, "CUSTODY_HOME": str(home)},
                        input_text="\n".join(shares[1:4]) + "\n")
    assert drill.code == 0 and drill.json["drill"] is True, drill.stdout + drill.stderr
    import shamir_mnemonic

    real = shamir_mnemonic.share.Share.from_mnemonic(shares[3])  # forged by someone who saw a real share
    forged = shamir_mnemonic.share.Share(real.identifier, real.extendable, real.iteration_exponent, real.group_index,
                                         real.group_threshold, real.group_count, real.index, real.member_threshold,
                                         os.urandom(len(real.value))).mnemonic()
    spoiled = run_custody("unseal", "--json", env={**os.environ, "CUSTODY_HOME": str(home)},
                          input_text="\n".join([forged, *shares[:3]]) + "\n")
    assert spoiled.code == 2 and "not one of this keyring's shares" in spoiled.json["error"]
    too_few = run_custody("unseal", "--json", env={**os.environ, "CUSTODY_HOME": str(home)},
                          input_text="\n".join(shares[:2]) + "\n")
    assert too_few.code == 2 and "after 2 of 3 shares" in too_few.json["error"]


def test_a_server_unseals_share_by_share(tmp_path: Path) -> None:
    home, made = _init(tmp_path)
    shares, token = made["shares"], made["admin_token"]
    environ = {**os.environ, "CUSTODY_HOME": str(home)}
    environ.pop("CUSTODY_PASSPHRASE", None)
    with server_process([], environ) as base:
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 503 and any("Shamir shares" in p for p in ready.json()["problems"])

        def give(share: str) -> tuple[int, dict]:
            f = tmp_path / "share.txt"
            f.write_text(share)
            r = run_custody("unseal", "--server", base, "--share-file", str(f), "--json", env=environ)
            f.unlink()
            return r.code, r.json

        import shamir_mnemonic

        squatter = shamir_mnemonic.generate_mnemonics(1, [(3, 5)], os.urandom(32), b"")[0][0]  # another split
        code, body = give(squatter)
        assert code == 2 and "not one of this keyring's shares" in body["error"]
        assert give(shares[0]) == (0, {"sealed_by": "shamir-slip39", "sealed": True, "threshold": 3, "shares": 5,
                                       "given": 1})
        words = shares[1].split()
        words[5] = "academic" if words[5] != "academic" else "acid"  # one wrong word: the checksum fails
        code, body = give(" ".join(words))
        assert code == 2 and "not a valid share" in body["error"] and words[5] not in body["error"]
        assert give(shares[1])[1]["given"] == 2
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 503
        code, body = give(shares[4])
        assert code == 0 and body["sealed"] is False, body
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        r = run_custody("keys", "status", "--server", base, "--json", env={**environ, "CUSTODY_TOKEN": token})
        assert r.code == 0 and {k["purpose"] for k in r.json} >= {"kek", "signing", "ledger"}, r.stdout + r.stderr
    log = [e for e in events_of(home, token) if e["action"] == "custodian.unseal"]
    assert [e["outcome"] for e in log] == ["refused", "share accepted", "refused", "share accepted", "unsealed"]
    text = json.dumps(log)
    assert not any(" ".join(s.split()[i:i + 3]) in text for s in shares for i in range(0, 17))  # no share is ledgered


def events_of(home: Path, token: str) -> list[dict]:
    from conftest import Env

    return events(Env(home=home, token=token, backend="sqlite"))

"""Replicas after registration: verification, tampering, tensors in memory, rotation, shredding."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

import custody
from conftest import Env, cli, events, hf_model, people, register, write_safetensors
from custody.control.store import repositories as repo
from custody.data import sealed, tensors
from custody.domain.errors import AuthenticationError, InvalidInput, InvalidState, NotFound

CHUNK = sealed.DEFAULT_CHUNK_SIZE + sealed.TAG_SIZE


@pytest.fixture
def big_model(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A model whose second shard spans three 4 MiB chunks."""
    root = tmp_path / "big-model"
    written = hf_model(root, big=10 * 2**20)
    return root, written


def sealed_file(env: Env, replica: str, name: str) -> Path:
    return env.home / "zones" / "prod" / "replicas" / replica / (name + ".sealed")


def header_size(path: Path) -> int:
    data = path.read_bytes()
    return sealed.SealedHeader.parse(lambda off, n: data[off: off + n]).size


def test_verify_and_tamper(env: Env, big_model) -> None:  # noqa: ANN001
    root, _ = big_model
    rid = register(env, root)["replica"]
    ok = cli("replica", "verify", rid, "--json", token=env.token)
    assert ok.code == 0 and ok.json["files"] == 4 and ok.json["chunks"] >= 6
    shard = sealed_file(env, rid, "model-00002-of-00002.safetensors")
    pristine = shard.read_bytes()
    hs = header_size(shard)

    def expect_failure(data: bytes, *needles: str) -> None:
        shard.write_bytes(data)
        r = cli("replica", "verify", rid, "--json", token=env.token)
        assert r.code == 5, r.stdout
        for needle in needles:
            assert needle in r.json["error"], r.json["error"]
        shard.write_bytes(pristine)

    flipped = bytearray(pristine)
    flipped[hs + CHUNK + 100] ^= 0x01
    expect_failure(bytes(flipped), "model-00002-of-00002.safetensors", "chunk 1")
    expect_failure(pristine[: hs + 2 * CHUNK], "model-00002-of-00002.safetensors")
    expect_failure(pristine[:-1], "model-00002-of-00002.safetensors")
    swapped = pristine[:hs] + pristine[hs + CHUNK: hs + 2 * CHUNK] + pristine[hs: hs + CHUNK] + pristine[hs + 2 * CHUNK:]
    expect_failure(swapped, "model-00002-of-00002.safetensors", "chunk 0")
    header_edit = bytearray(pristine)
    header_edit[20] ^= 0x01  # inside the replica id
    expect_failure(bytes(header_edit), "model-00002-of-00002.safetensors")
    # a sealed file moved from another path of the same replica
    other = sealed_file(env, rid, "config.json").read_bytes()
    expect_failure(other, "model-00002-of-00002.safetensors")
    shard.unlink()
    r = cli("replica", "verify", rid, "--json", token=env.token)
    assert r.code == 5 and "missing" in r.json["error"]
    shard.write_bytes(pristine)
    assert cli("replica", "verify", rid, "--json", token=env.token).code == 0
    outcomes = [e["outcome"] for e in events(env) if e["action"] == "replica.verify"]
    assert outcomes.count("integrity_failure") == 7


def test_open_safetensors_reads_only_what_it_needs(env: Env, big_model, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    root, written = big_model
    rid = register(env, root)["replica"]
    serving = people(env, {"svc": ("service", "serving", {"zone": "prod"})})  # reads zone prod's replicas
    monkeypatch.setenv("CUSTODY_TOKEN", serving.t("svc"))
    got = custody.open_safetensors(rid, purpose="unit test", tensors=["model.norm.bias", "model.embed.weight"])
    assert set(got) == {"model.norm.bias", "model.embed.weight"}
    for name, arr in got.items():
        assert arr.dtype == written[name].dtype and np.array_equal(arr, written[name])
    everything = custody.open_safetensors(rid, purpose="all of it")
    assert set(everything) == set(written)
    assert np.array_equal(everything["model.big"], written["model.big"])
    opened = [e for e in events(env) if e["action"] == "replica.open"]
    assert [e["rationale"] for e in opened] == ["unit test", "all of it"]
    with pytest.raises(InvalidInput):
        custody.open_safetensors(rid, purpose=" ")
    with pytest.raises(NotFound):
        custody.open_safetensors(rid, purpose="x", tensors=["nope"])
    with pytest.raises(AuthenticationError):
        custody.open_safetensors(rid, purpose="x", token="cst_0000000000000000_" + "A" * 43)

    # Random access: a small tensor at the start of a 3-chunk file decrypts one chunk, not three.
    ws = env.open()
    with ws.uow(readonly=True) as uow:
        replica = repo.replica_by_id(uow, rid)
        dek = ws.custodian().unwrap(repo.data_key(uow, replica.key_id))
    path = sealed_file(env, rid, "model-00002-of-00002.safetensors")
    data = path.read_bytes()
    reads: list[tuple[int, int]] = []

    def read_at(off: int, n: int) -> bytes:
        reads.append((off, n))
        return data[off: off + n]

    reader = sealed.SealedReader(read_at, len(data), dek, authenticate_size=False)
    reads.clear()
    out = tensors.read_tensors(reader, ["model.norm.bias"])
    assert np.array_equal(out["model.norm.bias"], written["model.norm.bias"])
    chunks_touched = {off // CHUNK for off, n in reads}
    assert len(chunks_touched) == 1
    assert sum(n for _, n in reads) <= 2 * CHUNK
    ws.close()


def test_rotation_rewraps_without_reencrypting(env: Env, big_model) -> None:  # noqa: ANN001
    root, _ = big_model
    rid = register(env, root)["replica"]
    shard = sealed_file(env, rid, "model-00002-of-00002.safetensors")
    before = shard.read_bytes()
    status = {(k["zone"], k["version"]): k for k in cli("keys", "status", "--json", token=env.token).json
              if k["purpose"] == "kek"}
    assert status[("prod", 1)]["data_keys"] == 1 and status[("prod", 1)]["state"] == "active"
    r = cli("keys", "rotate", "prod", "--json", token=env.token)
    assert r.code == 0 and {k: r.json[k] for k in ("zone", "kek_version", "rewrapped", "retired")} == {
        "zone": "prod", "kek_version": 2, "rewrapped": 1, "retired": [1]}
    status = {(k["zone"], k["version"]): k for k in cli("keys", "status", "--json", token=env.token).json
              if k["purpose"] == "kek"}
    assert ("prod", 1) not in status and status[("prod", 2)]["data_keys"] == 1
    assert shard.read_bytes() == before  # no data re-encrypted
    assert cli("replica", "verify", rid, "--json", token=env.token).code == 0
    assert cli("keys", "rotate", "prod", "--json", token=env.token).json["kek_version"] == 3
    assert cli("replica", "verify", rid, "--json", token=env.token).code == 0
    assert cli("keys", "rotate", "mars", "--json", token=env.token).code == 4
    auditor = cli("principal", "add", "audrey", "--role", "auditor", "--json", token=env.token).json["token"]
    assert cli("keys", "status", "--json", token=auditor).code == 0
    assert cli("keys", "rotate", "prod", "--json", token=auditor).code == 3


def test_shredded_replica_cannot_be_read_even_from_old_copies(env: Env, big_model, tmp_path: Path) -> None:  # noqa: ANN001
    root, written = big_model
    rid = register(env, root)["replica"]
    folder = env.home / "zones" / "prod" / "replicas" / rid
    stash = tmp_path / "stolen-copy"
    shutil.copytree(folder, stash)
    ws = env.open()
    with ws.uow(readonly=True) as uow:
        wrapped = repo.data_key(uow, repo.replica_by_id(uow, rid).key_id)
    ws.close()
    assert wrapped is not None

    r = cli("replica", "revoke", rid, "--reason", "laptop stolen", "--json", token=env.token)
    assert r.code == 0 and r.json["state"] == "shredded"
    assert not folder.exists()
    shutil.copytree(stash, folder)  # the copy taken beforehand is put back
    for args in (["replica", "verify", rid], ["replica", "revoke", rid, "--reason", "again"]):
        assert cli(*args, "--json", token=env.token).code == 6
    with pytest.raises(InvalidState):
        custody.open_safetensors(rid, purpose="after shred", token=env.token)
    assert cli("replica", "show", rid, "--json", token=env.token).json["data_key"] == "shredded"
    # The wrapped data key is gone from every byte of the database, WAL included.
    for f in env.home.glob("custody.db*"):
        assert wrapped.blob not in f.read_bytes(), f
    # Even someone holding the keyring and the database cannot decrypt the restored files.
    ws = env.open()
    with ws.uow(readonly=True) as uow:
        assert repo.data_key(uow, repo.replica_by_id(uow, rid).key_id) is None
    ws.close()
    event = [e for e in events(env) if e["action"] == "replica.revoke" and e["outcome"] == "ok"][0]
    assert event["rationale"] == "laptop stolen" and event["subject"] == rid
    assert cli("replica", "revoke", rid, "--reason", " ", "--json", token=env.token).code == 2
    assert cli("replica", "revoke", "nope", "--reason", "x", "--json", token=env.token).code == 4


def test_sweep_shreds_expired_replicas(env: Env, model_dir: Path) -> None:
    rid = register(env, model_dir)["replica"]
    ws = env.open()
    with ws.engine.begin() as conn:
        conn.execute(text("UPDATE replicas SET expires_at = :t WHERE id = :i"),
                     {"t": datetime.now(timezone.utc) - timedelta(minutes=1), "i": rid})
    ws.close()
    r = cli("sweep", "--json", token=env.token)
    assert r.code == 0 and r.json["expired"] == [rid] and r.json["removed"] == [f"prod/{rid}"]
    assert cli("replica", "list", "--state", "shredded", "--json", token=env.token).json[0]["id"] == rid
    assert cli("replica", "list", "--state", "weird", "--json", token=env.token).code == 2


def test_list_and_show_filters(env: Env, model_dir: Path, tmp_path: Path) -> None:
    rid = register(env, model_dir)["replica"]
    one = tmp_path / "one.safetensors"
    write_safetensors(one, {"x": np.zeros(4, dtype=np.float32)})
    register(env, one, "other")
    assert len(cli("replica", "list", "--json", token=env.token).json) == 2
    assert [r["id"] for r in cli("replica", "list", "--asset", "tiny", "--json", token=env.token).json] == [rid]
    assert cli("replica", "list", "--zone", "dr", "--json", token=env.token).json == []
    shown = cli("replica", "show", rid, "--json", token=env.token).json
    assert shown["state"] == "active" and shown["version"] == 1 and "KEK v1" in shown["data_key"]
    assert cli("replica", "show", "nope", "--json", token=env.token).code == 4
    assert cli("zone", "show", "prod", "--json", token=env.token).json["active_replicas"] == 2

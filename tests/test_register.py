"""Registering models: formats by content, manifests, signatures, sealing, and bad input."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import CUSTODY_BIN, Env, cli, events, hf_model, register, write_safetensors
from custody.domain.errors import InvalidInput
from custody.domain.manifest import check_relpath

MODEL_SIGNING = str(Path(CUSTODY_BIN).with_name("model_signing"))


def model_signing_verify(path: Path, bundle: Path, pub: Path) -> subprocess.CompletedProcess:
    return subprocess.run([MODEL_SIGNING, "verify", "key", str(path), "--signature", str(bundle),
                           "--public_key", str(pub)], capture_output=True, text=True, timeout=120)


def test_register_hf_folder(env: Env, model_dir: Path, tmp_path: Path) -> None:
    tensors = hf_model(model_dir)
    reg = register(env, model_dir, "tiny", "--sensitivity", "confidential", "--jurisdiction", "US",
                   "--jurisdiction", "DE", "--min-security-level", "3", "--owner", "lena")
    assert reg["version"] == 1 and reg["files"] == 4  # .gitattributes is not part of a model
    assert reg["format"] == "safetensors" and reg["unsafe"] is False
    assert reg["parameters"] == sum(a.size for a in tensors.values())
    assert reg["classification"] == "confidential" and reg["jurisdictions"] == ["US", "DE"]
    assert reg["mb_per_s"] > 0 and reg["seconds"] >= 0
    shown = cli("asset", "show", "tiny", "--json", token=env.token).json
    assert [f["path"] for f in shown["manifest"]] == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "tokenizer/tokenizer.json"]
    assert {f["path"]: f["kind"] for f in shown["file_formats"]}["config.json"] == "opaque"
    assert shown["owner"] == "lena" and shown["replicas"][0]["state"] == "active"
    # No plaintext byte of the weights lands anywhere in the workspace.
    probes = [a.tobytes()[:48] for a in tensors.values() if a.nbytes >= 48]
    for f in env.home.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not any(p in data for p in probes), f
    # The signature verifies with the OpenSSF tool, and fails after one changed byte.
    bundle, pub = tmp_path / "tiny.sig", tmp_path / "signing.pub.pem"
    assert cli("asset", "bundle", "tiny", "--out", str(bundle), token=env.token).code == 0
    assert cli("keys", "public", "--purpose", "signing", "--out", str(pub), token=env.token).code == 0
    ok = model_signing_verify(model_dir, bundle, pub)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    shard = model_dir / "model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    assert model_signing_verify(model_dir, bundle, pub).returncode != 0


def test_single_file_model_and_versions(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "one.safetensors"
    write_safetensors(path, {"w": np.arange(1000, dtype=np.float32)})
    v1 = register(env, path, "one")
    bundle, pub = tmp_path / "one.sig", tmp_path / "pub.pem"
    cli("asset", "bundle", "one@1", "--out", str(bundle), token=env.token)
    cli("keys", "public", "--out", str(pub), token=env.token)
    assert model_signing_verify(path, bundle, pub).returncode == 0
    again = cli("asset", "register", "one", str(path), "--json", token=env.token)
    assert again.code == 6 and "already holds exactly these bytes" in again.json["error"]
    write_safetensors(path, {"w": np.arange(1001, dtype=np.float32)})
    v2 = register(env, path, "one")
    assert v2["version"] == 2 and v2["previous"] == v1["id"] and v2["parameters"] == 1001
    assert cli("asset", "show", "one@1", "--json", token=env.token).json["digest"] == v1["digest"]
    assert cli("asset", "show", "one@7", "--json", token=env.token).code == 4
    assert cli("asset", "show", "one@x", "--json", token=env.token).code == 2
    # Failed registrations leave no replica behind, only the two active ones.
    states = [r["state"] for r in cli("replica", "list", "--asset", "one", "--json", token=env.token).json]
    assert states.count("active") == 2


def test_unsafe_formats_are_flagged_never_loaded(env: Env, tmp_path: Path) -> None:
    folder = tmp_path / "legacy"
    folder.mkdir()
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weights": list(range(10))})
    (folder / "pytorch_model.bin").write_bytes(payload)
    np.save(folder / "extra.npy", np.ones((3, 4), dtype=np.float32))
    reg = register(env, folder, "legacy")
    assert reg["unsafe"] is True
    kinds = {f["path"]: f["kind"] for f in cli("asset", "show", "legacy", "--json", token=env.token).json["file_formats"]}
    assert kinds == {"pytorch_model.bin": "pickle", "extra.npy": "numpy"}
    assert not marker.exists()


@pytest.mark.parametrize("breakage", ["truncated", "offsets_past_end", "not_json", "header_too_long"])
def test_malformed_safetensors_refused_without_leftovers(env: Env, tmp_path: Path, breakage: str) -> None:
    path = tmp_path / "bad.safetensors"
    write_safetensors(path, {"w": np.arange(256, dtype=np.float32)})
    raw = bytearray(path.read_bytes())
    if breakage == "truncated":
        raw = raw[: len(raw) - 100]
    elif breakage == "offsets_past_end":
        raw = raw.replace(b"[0, 1024]", b"[0, 9024]")
    elif breakage == "not_json":
        raw[8] = ord("x")  # the JSON header no longer starts with {
    else:
        raw[0:8] = (10**12).to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    r = cli("asset", "register", "bad", str(path), "--json", token=env.token)
    assert r.code == 2, r.stdout
    assert "bad.safetensors" in r.json["error"]
    assert "\n" not in r.json["error"]
    replicas = cli("replica", "list", "--json", token=env.token).json
    assert all(x["state"] != "active" for x in replicas)
    assert not list((env.home / "zones" / "prod" / "replicas").iterdir())
    registers = [(e["outcome"]) for e in events(env) if e["action"] == "asset.register"]
    assert registers == ["started", "invalid"]


def test_symlinks_and_names(env: Env, tmp_path: Path, model_dir: Path) -> None:
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"not part of the model")
    (model_dir / "leak.bin").symlink_to(outside)
    r = cli("asset", "register", "tiny", str(model_dir), "--json", token=env.token)
    assert r.code == 2 and "symlink leaves the model folder" in r.json["error"]
    (model_dir / "leak.bin").unlink()
    (model_dir / "alias.json").symlink_to(model_dir / "config.json")
    assert register(env, model_dir)["files"] == 5
    for bad in ("../x", "/etc/passwd", "a/../b", "a//b", "./a", "a\\b", "", "a\x00b"):
        with pytest.raises(InvalidInput):
            check_relpath(bad)


def test_unknown_names(env: Env, model_dir: Path, tmp_path: Path) -> None:
    assert cli("asset", "register", "tiny", str(model_dir), "--zone", "mars", "--json", token=env.token).code == 4
    assert cli("asset", "register", "tiny", str(tmp_path / "missing"), "--json", token=env.token).code == 4
    assert cli("asset", "register", "Bad/Name", str(model_dir), "--json", token=env.token).code == 2
    assert cli("asset", "show", "nothing", "--json", token=env.token).code == 4
    assert cli("asset", "bundle", "nothing", "--out", str(tmp_path / "x"), "--json", token=env.token).code == 4
    assert cli("asset", "register", "tiny", str(model_dir), "--sensitivity", "secret", "--json",
               token=env.token).code == 2


def test_zone_outside_jurisdiction_is_refused(env: Env, model_dir: Path) -> None:
    r = cli("asset", "register", "tiny", str(model_dir), "--jurisdiction", "DE", "--json", token=env.token)
    assert r.code == 3 and "outside the asset's jurisdictions" in r.json["error"]
    r = cli("asset", "register", "tiny", str(model_dir), "--min-security-level", "5", "--json", token=env.token)
    assert r.code == 3 and "below the asset's minimum" in r.json["error"]


def test_researcher_cannot_register(env: Env, model_dir: Path) -> None:
    token = cli("principal", "add", "rita", "--role", "researcher", "--json", token=env.token).json["token"]
    assert cli("asset", "register", "tiny", str(model_dir), "--json", token=token).code == 3


def test_kill_part_way_leaves_no_active_replica_and_sweep_cleans(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    write_safetensors(path, {"w": np.random.default_rng(1).integers(0, 255, size=600 * 2**20, dtype=np.uint8)})
    proc = subprocess.Popen([CUSTODY_BIN, "asset", "register", "big", str(path), "--json"], env=env.environ(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    replicas_dir = env.home / "zones" / "prod" / "replicas"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sealed = list(replicas_dir.rglob("*.sealed")) if replicas_dir.exists() else []
        if sealed and sealed[0].stat().st_size > 8 * 2**20:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    listed = cli("replica", "list", "--json", token=env.token).json
    assert [r["state"] for r in listed] == ["pending"], "the kill came too late to test anything"
    assert cli("replica", "verify", listed[0]["id"], "--json", token=env.token).code == 6
    assert cli("asset", "show", "big", "--json", token=env.token).code == 4
    swept = cli("sweep", "--json", token=env.token)
    assert swept.code == 0 and swept.json["failed"] == [listed[0]["id"]]
    assert swept.json["removed"] == [f"prod/{listed[0]['id']}"]
    assert not list(replicas_dir.iterdir())
    assert cli("replica", "show", listed[0]["id"], "--json", token=env.token).json["data_key"] == "shredded"
    # The next run completes.
    reg = register(env, path, "big")
    assert reg["bytes"] == path.stat().st_size
    assert os.path.getsize(path) == reg["bytes"]

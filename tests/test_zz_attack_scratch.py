"""Attack scratch tests (temporary)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import custody
from conftest import Env, People, cli, events, people, register, write_safetensors
from test_derivatives import CREW, approved, ask, leak, model, run, sql, trace

CREW2 = {**CREW, "sam": ("security", "secops")}


@pytest.fixture
def crown(env: Env, tmp_path: Path) -> People:
    crew = people(env, CREW2)
    model(tmp_path / "crown")
    crew.tokens["replica"] = register(env, tmp_path / "crown", "crown", "--sensitivity", "critical",
                                      "--jurisdiction", "US")["replica"]
    return crew


def test_int4_group_that_divides_nothing_is_a_full_precision_clone_with_one_approval(crown: People, tmp_path: Path):
    orig = model(tmp_path / "orig")
    # a research copy of a critical asset is refused outright
    r = cli("request", "create", "crown", "--to", "research", "--ttl", "1d", "--purpose", "p", "--kind", "research",
            "--json", token=crown.t("alice"))
    print("research:", r.code, r.stdout[:300])
    assert r.code != 0
    r = cli("request", "create", "crown", "--to", "research", "--ttl", "1d", "--purpose", "distil", "--kind",
            "derivative", "--transform", "int4:group=4094", "--json", token=crown.t("alice"))
    assert r.code == 0, r.stdout
    print(r.json["decision"]["requirement"])
    assert r.json["decision"]["requirement"]["rule"] == "critical-reduced-derivative"
    assert r.json["decision"]["requirement"]["approvals"] == 1
    ok = cli("request", "approve", r.json["id"], "--otp", crown.otp("sol"), "--json", token=crown.t("sol"))
    assert ok.json["state"] == "approved", ok.stdout
    done = run(crown, "alice", r.json["id"])
    print(done["bytes_before"], done["bytes_after"])
    mine = custody.open_safetensors(done["replica"], purpose="eval", token=crown.t("alice"), home=crown.env.home)
    for k, v in orig.items():
        assert mine[k].dtype == np.float32 and mine[k].shape == v.shape, k
        c = np.corrcoef(mine[k].ravel(), v.ravel())[0, 1] if v.std() else 1
        assert c > 0.999 or np.array_equal(mine[k], v), (k, c)
    assert np.array_equal(mine["model.embed_tokens.weight"], orig["model.embed_tokens.weight"])
    assert np.array_equal(mine["lm_head.weight"], orig["lm_head.weight"])
    assert done["bytes_after"] >= done["bytes_before"]


@pytest.fixture
def crew(env: Env, tmp_path: Path) -> People:
    crew = people(env, CREW)
    model(tmp_path / "decoder")
    crew.tokens["replica"] = register(env, tmp_path / "decoder", "decoder", "--jurisdiction", "US")["replica"]
    return crew


def test_derivative_of_a_derivative_frames_the_first_recipient(crew: People, tmp_path: Path):
    d1 = run(crew, "rob", approved(crew, "rob", "--kind", "derivative", "--transform", "int8"))
    child = d1["asset"]
    # no --from: the source picked is rob's derivative replica (a copy of a copy)
    r = cli("request", "create", child, "--to", "research", "--ttl", "12h", "--purpose", "distil", "--kind",
            "derivative", "--transform", "noise:sigma=0.001", "--json", token=crew.t("alice"))
    assert r.code == 0, r.stdout
    print("source replica", r.json.get("source_replica"), "rob's", d1["replica"])
    ok = cli("request", "approve", r.json["id"], "--otp", crew.otp("lena"), "--json", token=crew.t("lena"))
    assert ok.json["state"] == "approved", ok.stdout
    d2 = run(crew, "alice", r.json["id"])
    print("d2 mark", d2["mark"])
    leaked = leak(crew.env, d2["replica"], tmp_path)
    t = trace(crew, leaked)
    print(t.stdout[:1500])
    assert t.json["verdict"] == "attributed" and t.json["recipient"] == "rob"  # alice leaked, rob is named
    assert "alice" not in [s["recipient"] for s in t.json["scores"]]


def test_copy_of_a_research_copy_when_no_primary(crew: People, tmp_path: Path):
    robs = run(crew, "rob", approved(crew, "rob", "--kind", "research"))
    r = cli("replica", "revoke", crew.tokens["replica"], "--reason", "retire primary", "--json", token=crew.t("admin"))
    print("revoke primary:", r.code, r.stdout[:300])
    r = cli("request", "create", "decoder", "--to", "research", "--ttl", "12h", "--purpose", "distil", "--kind",
            "research", "--json", token=crew.t("alice"))
    print("create:", r.code, r.stdout[:400])
    assert r.code == 0
    print("source", r.json.get("source_replica"), "rob's", robs["replica"])
    ok = cli("request", "approve", r.json["id"], "--otp", crew.otp("lena"), "--json", token=crew.t("lena"))
    assert ok.json["state"] == "approved", ok.stdout
    done = cli("request", "run", r.json["id"], "--json", token=crew.t("alice"))
    print("run:", done.code, done.stdout[:600])


def write_gguf(path: Path, tensors: dict) -> None:
    import gguf
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in tensors.items():
        w.add_tensor(k, v)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def test_research_copy_of_a_gguf_model_is_unmarked(env: Env, tmp_path: Path):
    crew = people(env, CREW)
    rng = np.random.default_rng(3)
    t = {f"blk.{i}.ffn_up.weight": rng.standard_normal((256, 128)).astype(np.float32) for i in range(3)}
    write_gguf(tmp_path / "g" / "model.gguf", t)
    write_safetensors(tmp_path / "g" / "model.safetensors", {"norm.weight": np.ones(128, np.float32)})
    reg = register(env, tmp_path / "g", "gg", "--jurisdiction", "US")
    r = cli("request", "create", "gg", "--to", "research", "--ttl", "1d", "--purpose", "p", "--kind", "research",
            "--json", token=crew.t("alice"))
    print(r.json["decision"]["requirement"])
    ok = cli("request", "approve", r.json["id"], "--otp", crew.otp("lena"), "--json", token=crew.t("lena"))
    assert ok.json["state"] == "approved"
    done = run(crew, "alice", r.json["id"])
    print({k: done.get(k) for k in ("marked_tensors", "unmarked_files", "mark")})
    leaked = leak(crew.env, done["replica"], tmp_path)
    import hashlib
    assert hashlib.sha256((leaked / "model.gguf").read_bytes()).digest() == hashlib.sha256((tmp_path / "g" / "model.gguf").read_bytes()).digest()
    tr = trace(crew, leaked, "--asset", "gg")
    print("trace:", tr.code, tr.stdout[:500])
    idf = cli("identify", str(leaked), "--json", token=crew.t("sol"))
    print("identify:", idf.code, idf.stdout[:300])


def test_permuting_hidden_units_evades_trace_and_identify(crew: People, tmp_path: Path):
    from custody.data.tensors import from_safetensors
    copy = run(crew, "rob", approved(crew, "rob", "--kind", "research"))
    files = leak(crew.env, copy["replica"], tmp_path)
    tensors = {k: np.asarray(v) for k, v in from_safetensors((files / "model.safetensors").read_bytes()).items()}
    rng = np.random.default_rng(1)
    out = {}
    for k, v in tensors.items():
        # an MLP/attention block permuted consistently computes the same function; here: every matrix's rows
        out[k] = v[rng.permutation(v.shape[0])] if v.ndim == 2 else v
    write_safetensors(tmp_path / "perm" / "model.safetensors", out)
    t0 = trace(crew, files)
    assert t0.json["recipient"] == "rob"
    t = trace(crew, tmp_path / "perm", "--asset", "decoder")
    print("trace:", t.code, t.json["verdict"], t.json["copy_z"], t.json.get("z"), t.json["tau"])
    idf = cli("identify", str(tmp_path / "perm"), "--json", token=crew.t("sol"))
    print("identify:", idf.code, idf.json["verdict"])
    assert t.json["verdict"] == "not-this-asset" and idf.code == 4

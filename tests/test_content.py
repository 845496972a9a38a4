"""The same weights keep their label: re-registering them under another name, a looser label, another
container or another file layout is caught by their digests (threat T3), on real SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import Env, People, cli, events, hf_model, last_event, people, register, write_safetensors

US_ONLY = ("--sensitivity", "confidential", "--jurisdiction", "US")


@pytest.fixture
def crew(any_env: Env, model_dir: Path, tmp_path: Path) -> People:
    crew = people(any_env, {"alice": ("researcher", "nlp"), "lena": ("ml-lead", "platform"),
                            "carol": ("security", "security")})
    cli("zone", "add", "eu-research", "--url", (tmp_path / "eu").as_uri(), "--kind", "research", "--region", "eu",
        "--jurisdiction", "DE", "--security-level", "4", "--json", token=any_env.token)
    register(any_env, model_dir, "tiny", *US_ONLY)
    return crew


def reg(crew: People, path: Path, name: str, *extra: str):  # noqa: ANN201
    return cli("asset", "register", name, str(path), "--json", *extra, token=crew.t("lena"))


def test_known_weights_under_a_looser_label_are_refused(crew: People, model_dir: Path) -> None:
    r = reg(crew, model_dir, "tiny-copy", "--sensitivity", "internal", "--jurisdiction", "US", "--jurisdiction", "DE")
    assert r.code == 3 and "same weights as tiny@1 (confidential, US)" in r.json["error"], r.stdout
    event = [e for e in events(crew.env) if e["action"] == "asset.register"][-1]
    assert (event["outcome"], event["policy_ids"]) == ("denied", ["forbid-relabel"])
    assert events(crew.env)[-1]["action"] == "replica.abandon"  # its sealed files and key are gone
    assert cli("asset", "show", "tiny-copy", "--json", token=crew.t("admin")).code == 4  # nothing half-made
    assert [r["state"] for r in cli("replica", "list", "--json", token=crew.t("admin")).json
            if r["asset"] == "tiny-copy"] in ([], ["failed"], ["shredded"])


def test_known_weights_under_a_new_name_inherit_the_label_and_stay_home(crew: People, model_dir: Path) -> None:
    r = reg(crew, model_dir, "tiny-copy")  # no label asked for: the defaults would be internal, in the zone's US
    assert r.code == 0, r.stdout
    assert (r.json["classification"], r.json["jurisdictions"]) == ("confidential", ["US"])
    assert r.json["same_content_as"] == [{"asset": "tiny", "version": 1, "matched_by": "file",
                                          "bytes": r.json["same_content_as"][0]["bytes"]}]
    event = last_event(crew.env)
    assert event["action"] == "asset.register" and event["details"]["same_content_as"][0]["asset"] == "tiny"
    assert event["details"]["label_asked"]["classification"] == "internal"
    shown = cli("asset", "show", "tiny", "--json", token=crew.t("alice")).json
    assert [(s["asset"], s["version"]) for s in shown["same_content_as"]] == [("tiny-copy", 1)]
    denied = cli("request", "create", "tiny-copy", "--to", "eu-research", "--kind", "research", "--purpose", "x",
                 "--ttl", "1d", "--json", token=crew.t("alice"))
    assert denied.code == 3 and "forbid-jurisdiction" in denied.json["decision"]["policy_ids"]


def test_repackaged_tensors_are_the_same_weights(crew: People, model_dir: Path, tmp_path: Path) -> None:
    """Every file digest differs (other names, order, container split), the tensors are the same bytes."""
    from safetensors.numpy import load_file

    tensors = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(shard))
    repack = tmp_path / "repack"
    write_safetensors(repack / "weights.safetensors",
                      {f"renamed.{i}": tensors[k] for i, k in enumerate(reversed(sorted(tensors)))})
    r = reg(crew, repack, "repack", "--sensitivity", "public")
    assert r.code == 3 and "tiny@1" in r.json["error"]
    one = tmp_path / "one-layer"
    write_safetensors(one / "w.safetensors", {"x": tensors["model.embed.weight"]})  # a single stolen matrix
    r = reg(crew, one, "one-layer")
    assert r.code == 0 and r.json["classification"] == "confidential"
    assert r.json["same_content_as"][0]["matched_by"] == "tensor"


def test_unrelated_models_sharing_configs_and_constant_tensors_are_not_linked(crew: People, tmp_path: Path) -> None:
    other = tmp_path / "other"
    hf_model(other, seed=42)  # the same config.json and tokenizer.json, other weights
    write_safetensors(other / "norms.safetensors", {"model.norm.weight": np.ones(4096, dtype=np.float32),
                                                    "model.bias": np.zeros(2048, dtype=np.float32)})
    hf_model(tmp_path / "with-norms", seed=0)
    r = reg(crew, other, "other", "--sensitivity", "public")
    assert r.code == 0 and r.json["same_content_as"] == [] and r.json["classification"] == "public"
    other2 = tmp_path / "other2"
    hf_model(other2, seed=43)
    (other2 / "norms.safetensors").write_bytes((other / "norms.safetensors").read_bytes())  # only constants shared
    r = reg(crew, other2, "other2", "--sensitivity", "public")
    assert r.code == 0 and r.json["same_content_as"] == [], r.json["same_content_as"]


def test_an_approved_exception_lets_known_weights_take_a_looser_label(crew: People, model_dir: Path) -> None:
    crew.add({"sam": ("security", "grc")})
    e = cli("exception", "propose", "--policy", "forbid-relabel", "--asset", "tiny", "--zone", "prod",
            "--justification", "publishing the public checkpoint", "--expires", "1d", "--json", token=crew.t("lena"))
    assert e.code == 0, e.stdout
    for who in ("carol", "sam"):
        assert cli("exception", "approve", e.json["id"], "--otp", crew.otp(who), "--json", token=crew.t(who)).code == 0
    r = reg(crew, model_dir, "tiny-public", "--sensitivity", "public")
    assert r.code == 0 and r.json["classification"] == "public", r.stdout
    assert r.json["same_content_as"][0]["asset"] == "tiny"  # still linked: the relabel is on the record
    shown = cli("asset", "show", "tiny", "--json", token=crew.t("alice")).json  # an excepted relabel raises nothing
    assert (shown["classification"], shown["jurisdictions"]) == ("confidential", ["US"])
    used = [x for x in cli("exception", "list", "--json", token=crew.t("lena")).json if x["id"] == e.json["id"]]
    assert used[0]["state"] == "used"  # one exception, one looser registration
    r = reg(crew, model_dir, "tiny-public-2", "--sensitivity", "public")
    assert r.code == 3 and "forbid-relabel" in r.json["error"]


def test_a_derivative_without_a_recipe_is_refused(crew: People) -> None:
    r = cli("request", "create", "tiny", "--to", "research", "--kind", "derivative", "--purpose", "quantize",
            "--ttl", "1d", "--json", token=crew.t("alice"))
    assert r.code == 2 and "needs a recipe" in r.json["error"]
    assert events(crew.env)[-1]["outcome"] == "invalid"
    # a recipe that keeps every weight as it is is refused when it runs: see test_derivatives.py


def test_one_tensor_dumped_raw_or_as_npy_is_the_same_weights(crew: People, model_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    embed = load_file(model_dir / "model-00001-of-00002.safetensors")["model.embed.weight"]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "blob.bin").write_bytes(np.ascontiguousarray(embed).tobytes())
    r = reg(crew, raw, "raw", "--sensitivity", "public")
    assert r.code == 3 and "tiny@1" in r.json["error"], r.stdout
    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / "embed.npy", embed)
    r = reg(crew, npy, "npy", "--sensitivity", "public")
    assert r.code == 3 and "tiny@1" in r.json["error"], r.stdout
    r = reg(crew, npy, "npy")
    assert r.code == 0 and r.json["classification"] == "confidential" and r.json["same_content_as"][0]["asset"] == "tiny"


def test_a_new_version_keeping_the_weights_keeps_the_label(crew: People, model_dir: Path) -> None:
    """Even an admin or a security officer, who may loosen a version with new weights, needs the exception."""
    (model_dir / "README.md").write_text("now public, honest\n")
    r = cli("asset", "register", "tiny", str(model_dir), "--sensitivity", "public", "--json", token=crew.t("admin"))
    assert r.code == 3 and "same weights as tiny@1" in r.json["error"], r.stdout
    r = cli("asset", "register", "tiny", str(model_dir), "--json", token=crew.t("admin"))
    assert r.code == 0 and r.json["version"] == 2 and r.json["classification"] == "confidential"


def test_weights_registered_loosely_first_are_raised_when_registered_properly(crew: People, tmp_path: Path) -> None:
    leak = tmp_path / "leak"
    hf_model(leak, seed=11)
    first = reg(crew, leak, "cheap", "--sensitivity", "public", "--jurisdiction", "US", "--jurisdiction", "CN")
    assert first.code == 0 and first.json["classification"] == "public"
    proper = reg(crew, leak, "crown", "--sensitivity", "critical", "--jurisdiction", "US")
    assert proper.code == 0 and proper.json["same_content_as"][0]["asset"] == "cheap"
    assert last_event(crew.env)["details"]["raised"] == [
        {"asset": "cheap", "version": 1, "from": ["public", ["US", "CN"], 1], "to": ["critical", ["US"], 1]}]
    shown = cli("asset", "show", "cheap", "--json", token=crew.t("alice")).json
    assert (shown["classification"], shown["jurisdictions"]) == ("critical", ["US"])
    denied = cli("request", "create", "cheap", "--to", "research", "--kind", "research", "--purpose", "x", "--ttl", "1d",
                 "--json", token=crew.t("alice"))
    assert denied.code == 3 and "forbid-critical-leaving-production" in denied.json["decision"]["policy_ids"]


def test_a_small_opaque_file_registered_again_is_the_same_weights(crew: People, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.mkdir()
    (blob / "weights.bin").write_bytes(np.random.default_rng(9).bytes(1 << 20))
    assert reg(crew, blob, "blob", "--sensitivity", "critical", "--jurisdiction", "US").code == 0
    again = reg(crew, blob, "blob-public", "--sensitivity", "public")
    assert again.code == 3 and "blob@1" in again.json["error"]
    padded = tmp_path / "padded"  # padding the copy up to half again does not hide it
    padded.mkdir()
    (padded / "weights.bin").write_bytes((blob / "weights.bin").read_bytes())
    (padded / "padding.bin").write_bytes(np.random.default_rng(10).bytes(1 << 19))
    r = reg(crew, padded, "padded", "--sensitivity", "public")
    assert r.code == 3 and "blob@1" in r.json["error"], r.stdout
    # a shared tokenizer-sized file is weak evidence: it links nothing when it is a small part of the model
    # that holds it, even when it is all of the new one
    model = tmp_path / "model"
    hf_model(model, seed=12)
    (model / "tokenizer.bin").write_bytes(np.random.default_rng(14).bytes(64 << 10))
    write_safetensors(model / "big.safetensors", {"w": np.random.default_rng(13).standard_normal(1 << 19).astype(np.float32)})
    assert reg(crew, model, "model", "--sensitivity", "critical", "--jurisdiction", "US").code == 0
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.bin").write_bytes((model / "tokenizer.bin").read_bytes())
    r = reg(crew, tok, "tok", "--sensitivity", "public")
    assert r.code == 0 and r.json["same_content_as"] == [], r.stdout


def test_a_shared_buffer_neither_links_nor_raises_someone_elses_model(crew: People, tmp_path: Path) -> None:
    """Raising another asset's label takes holding most of its weights, not one small shared tensor."""
    victim = tmp_path / "victim"
    hf_model(victim, seed=21)
    position_ids = np.arange(512, dtype=np.int64)  # 4 KiB, the same in every model of a family
    write_safetensors(victim / "buffers.safetensors", {"position_ids": position_ids})
    assert reg(crew, victim, "victim", "--sensitivity", "internal", "--jurisdiction", "US",
               "--jurisdiction", "DE").code == 0
    buffer = tmp_path / "buffer"
    write_safetensors(buffer / "b.safetensors", {"position_ids": position_ids})
    r = reg(crew, buffer, "grab", "--sensitivity", "critical", "--jurisdiction", "US")
    assert r.code == 0 and "raised" not in last_event(crew.env)["details"]
    shown = cli("asset", "show", "victim", "--json", token=crew.t("alice")).json
    assert (shown["classification"], shown["jurisdictions"]) == ("internal", ["US", "DE"])
    sibling = tmp_path / "sibling"  # an unrelated model of the same family is not the same weights
    hf_model(sibling, seed=22)
    write_safetensors(sibling / "buffers.safetensors", {"position_ids": position_ids})
    r = reg(crew, sibling, "sibling", "--sensitivity", "public")
    assert r.code == 0 and r.json["same_content_as"] == [], r.stdout


def test_a_common_file_registered_alone_links_no_model_that_ships_it(crew: People, tmp_path: Path) -> None:
    """Registering a shared tokenizer (or a generated buffer) on its own, as critical, takes no other
    model's label hostage."""
    tokenizer = np.random.default_rng(31).bytes(256 << 10)
    common = tmp_path / "common"
    common.mkdir()
    (common / "tokenizer.bin").write_bytes(tokenizer)
    write_safetensors(common / "buffers.safetensors", {"position_ids": np.arange(8192, dtype=np.int64)})
    assert reg(crew, common, "common", "--sensitivity", "critical", "--jurisdiction", "US").code == 0
    model = tmp_path / "model"
    hf_model(model, seed=32)
    write_safetensors(model / "big.safetensors", {"w": np.random.default_rng(33).standard_normal(1 << 19).astype(np.float32)})
    (model / "tokenizer.bin").write_bytes(tokenizer)
    write_safetensors(model / "buffers.safetensors", {"position_ids": np.arange(8192, dtype=np.int64)})
    r = reg(crew, model, "model", "--sensitivity", "public")
    assert r.code == 0 and r.json["same_content_as"] == [], r.stdout

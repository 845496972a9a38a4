"""Signature bundles: interoperability with the real `model_signing` CLI, both ways.

Nothing is mocked: the CLI from the test virtualenv verifies what custody signs, and
custody verifies what the CLI signs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from custody.domain.errors import IntegrityError, InvalidInput
from custody.domain.manifest import FileEntry, Manifest
from custody.keys.bundle import (
    BUNDLE_MEDIA_TYPE,
    MAX_BUNDLE_BYTES,
    PAYLOAD_TYPE,
    SignedResource,
    public_key_hint,
    sign_manifest,
    statement_for,
    verify_bundle,
)

MODEL_SIGNING = Path(sys.executable).parent / "model_signing"

pytestmark = pytest.mark.skipif(
    not MODEL_SIGNING.exists(), reason="model_signing CLI is not installed next to python"
)


# --------------------------------------------------------------------------- helpers


def make_model(root: Path) -> Path:
    """A small model directory: two shards, a config, a nested tokenizer and a
    `tokenizer.model` whose name sorts differently by bytes than by path components."""
    root.mkdir()
    (root / "model-00001-of-00002.safetensors").write_bytes(os.urandom(4096))
    (root / "model-00002-of-00002.safetensors").write_bytes(os.urandom(3000))
    (root / "config.json").write_text(json.dumps({"hidden_size": 8, "name": "tiny"}))
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0"}')
    (root / "tokenizer.model").write_bytes(b"\x00sentencepiece")
    return root


def manifest_of(root: Path) -> Manifest:
    """Manifest of a directory (or of one file, under its own name), hashed with hashlib."""
    if root.is_file():
        data = root.read_bytes()
        return Manifest.of([FileEntry(root.name, len(data), hashlib.sha256(data).hexdigest())])
    entries = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            entries.append(
                FileEntry(path.relative_to(root).as_posix(), len(data), hashlib.sha256(data).hexdigest())
            )
    return Manifest.of(entries)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_keys(key: ec.EllipticCurvePrivateKey, where: Path) -> tuple[Path, Path]:
    private = where / "key.pem"
    public = where / "key.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def cli_verify(model: Path, signature: Path, public: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MODEL_SIGNING), "verify", "key", str(model), "--signature", str(signature),
         "--public_key", str(public)],
        capture_output=True, text=True, timeout=60,
    )


def flip_byte(path: Path, offset: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def pae(payload_type: bytes, payload: bytes) -> bytes:
    """DSSE v1 PAE, written out here independently of the module under test."""
    return b"DSSEv1 " + str(len(payload_type)).encode() + b" " + payload_type + b" " + \
        str(len(payload)).encode() + b" " + payload


def reseal(bundle: bytes, statement: dict, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Replace a bundle's payload with `statement`, signed by `key`."""
    doc = json.loads(bundle)
    payload = json.dumps(statement).encode()
    sig = key.sign(pae(PAYLOAD_TYPE.encode(), payload), ec.ECDSA(hashes.SHA256()))
    doc["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    doc["dsseEnvelope"]["signatures"] = [{"sig": base64.b64encode(sig).decode(), "keyid": ""}]
    return json.dumps(doc).encode()


def payload_of(bundle: bytes) -> dict:
    return json.loads(base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"]))


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return new_key()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "tiny-model")


# --------------------------------------------------------------------------- custody signs, CLI verifies


def test_cli_verifies_our_bundle_and_rejects_tampering(tmp_path, model, key):
    _, public = write_keys(key, tmp_path)
    bundle = tmp_path / "tiny-model.sig"
    bundle.write_bytes(sign_manifest(manifest_of(model), model.name, key))

    ok = cli_verify(model, bundle, public)
    assert ok.returncode == 0, ok.stderr
    assert "Verification succeeded" in ok.stdout

    flip_byte(model / "model-00002-of-00002.safetensors")
    bad = cli_verify(model, bundle, public)
    assert bad.returncode != 0
    assert "model-00002-of-00002.safetensors" in bad.stderr


def test_cli_requires_the_exact_file_set(tmp_path, model, key):
    """The CLI hashes every file on disk: an unsigned extra file fails, even a hidden
    one, while git metadata is skipped."""
    _, public = write_keys(key, tmp_path)
    bundle = tmp_path / "tiny-model.sig"
    bundle.write_bytes(sign_manifest(manifest_of(model), model.name, key))

    (model / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    assert cli_verify(model, bundle, public).returncode == 0

    (model / ".extra").write_text("not signed")
    assert cli_verify(model, bundle, public).returncode != 0


def test_cli_rejects_another_key(tmp_path, model, key):
    _, public = write_keys(key, tmp_path)
    bundle = tmp_path / "tiny-model.sig"
    bundle.write_bytes(sign_manifest(manifest_of(model), model.name, new_key()))
    assert cli_verify(model, bundle, public).returncode != 0


def test_cli_verifies_single_file_model(tmp_path, key):
    _, public = write_keys(key, tmp_path)
    weights = tmp_path / "tiny.gguf"
    weights.write_bytes(os.urandom(5000))
    bundle = tmp_path / "tiny.gguf.sig"
    bundle.write_bytes(sign_manifest(manifest_of(weights), weights.name, key, single_file=True))

    statement = payload_of(bundle.read_bytes())
    assert statement["subject"][0]["name"] == "tiny.gguf"
    assert [r["name"] for r in statement["predicate"]["resources"]] == ["."]

    assert cli_verify(weights, bundle, public).returncode == 0
    flip_byte(weights, 4999)
    assert cli_verify(weights, bundle, public).returncode != 0

    signed = verify_bundle(bundle.read_bytes(), key.public_key())
    assert signed.single_file
    assert signed.resources[0].path == "tiny.gguf"


# --------------------------------------------------------------------------- CLI signs, custody verifies


def cli_sign(model: Path, private: Path, out: Path) -> None:
    subprocess.run(
        [str(MODEL_SIGNING), "sign", "key", str(model), "--private_key", str(private),
         "--signature", str(out)],
        check=True, capture_output=True, timeout=60,
    )


def test_we_verify_a_cli_bundle_and_emit_the_same_statement(tmp_path, model, key):
    private, _ = write_keys(key, tmp_path)
    out = tmp_path / "cli.sig"
    cli_sign(model, private, out)
    manifest = manifest_of(model)

    signed = verify_bundle(out.read_bytes(), key.public_key())
    assert signed.subject_name == "tiny-model"
    assert not signed.single_file
    assert signed.matches(manifest)
    signed.check_against(manifest)
    assert [r.path for r in signed.resources] == [f.path for f in manifest.files]

    # Same statement as the CLI's, resource order included; ignore_paths comes from an
    # unordered set there.
    theirs = payload_of(out.read_bytes())
    ours = statement_for(manifest, model.name)
    for st in (theirs, ours):
        st["predicate"]["serialization"]["ignore_paths"].sort()
    assert ours == theirs


def test_we_verify_a_cli_single_file_bundle(tmp_path, key):
    private, _ = write_keys(key, tmp_path)
    weights = tmp_path / "w.bin"
    weights.write_bytes(os.urandom(100))
    out = tmp_path / "w.sig"
    cli_sign(weights, private, out)

    signed = verify_bundle(out.read_bytes(), key.public_key())
    assert signed.single_file and signed.subject_name == "w.bin"
    assert signed.resources == (SignedResource("w.bin", hashlib.sha256(weights.read_bytes()).hexdigest()),)
    signed.check_against(manifest_of(weights))
    assert statement_for(manifest_of(weights), "w.bin", single_file=True)["predicate"]["resources"] == \
        payload_of(out.read_bytes())["predicate"]["resources"]


# --------------------------------------------------------------------------- our verifier


def test_round_trip_and_determinism(model, key):
    manifest = manifest_of(model)
    first = sign_manifest(manifest, model.name, key)
    second = sign_manifest(manifest, model.name, key)
    a, b = json.loads(first), json.loads(second)
    a["dsseEnvelope"]["signatures"][0]["sig"] = b["dsseEnvelope"]["signatures"][0]["sig"] = ""
    assert a == b and json.dumps(a) == json.dumps(b)
    assert a["mediaType"] == BUNDLE_MEDIA_TYPE
    assert a["verificationMaterial"]["publicKey"]["hint"] == public_key_hint(key.public_key())

    signed = verify_bundle(first, key.public_key())
    assert signed.matches(manifest)
    assert tuple((r.path, r.sha256) for r in signed.resources) == tuple(
        (f.path, f.sha256) for f in manifest.files
    )


def test_check_against_names_the_difference(model, key):
    manifest = manifest_of(model)
    signed = verify_bundle(sign_manifest(manifest, model.name, key), key.public_key())
    other = Manifest.of(
        [f if f.path != "config.json" else FileEntry(f.path, f.size, "0" * 64) for f in manifest.files]
    )
    assert not signed.matches(other)
    with pytest.raises(IntegrityError, match="config.json"):
        signed.check_against(other)
    with pytest.raises(IntegrityError, match="not in the manifest"):
        signed.check_against(Manifest.of(manifest.files[1:]))


def test_refuses_another_key(model, key):
    bundle = sign_manifest(manifest_of(model), model.name, key)
    with pytest.raises(IntegrityError, match="different key"):
        verify_bundle(bundle, new_key().public_key())
    # Without the hint, the signature check itself refuses it.
    doc = json.loads(bundle)
    doc["verificationMaterial"]["publicKey"] = {}
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_bundle(json.dumps(doc).encode(), new_key().public_key())


def test_refuses_an_edited_payload(model, key):
    bundle = sign_manifest(manifest_of(model), model.name, key)
    doc = json.loads(bundle)
    statement = payload_of(bundle)
    statement["subject"][0]["name"] = "other-model"
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_bundle(json.dumps(doc).encode(), key.public_key())


def test_refuses_an_edited_resource_digest(model, key):
    bundle = sign_manifest(manifest_of(model), model.name, key)
    statement = payload_of(bundle)
    statement["predicate"]["resources"][0]["digest"] = "ab" * 32

    doc = json.loads(bundle)
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_bundle(json.dumps(doc).encode(), key.public_key())

    # Even signed by the right key, the subject digest no longer matches the resources.
    with pytest.raises(IntegrityError, match="subject digest"):
        verify_bundle(reseal(bundle, statement, key), key.public_key())


def test_accepts_any_resource_order_but_not_duplicates(model, key):
    bundle = sign_manifest(manifest_of(model), model.name, key)
    statement = payload_of(bundle)
    resources = statement["predicate"]["resources"]
    resources.reverse()

    def recompute() -> None:
        h = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources))
        statement["subject"][0]["digest"]["sha256"] = h.hexdigest()

    recompute()
    assert verify_bundle(reseal(bundle, statement, key), key.public_key()).matches(manifest_of(model))

    resources.append(dict(resources[0]))
    recompute()
    with pytest.raises(IntegrityError, match="listed twice"):
        verify_bundle(reseal(bundle, statement, key), key.public_key())


@pytest.mark.parametrize(
    "data, message",
    [
        (b"this is not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid UTF-8"),
        (b"[1, 2]", "not a JSON object"),
        (b"{}", "mediaType is missing"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_refuses_malformed_files(data, message, key):
    with pytest.raises(IntegrityError, match=message):
        verify_bundle(data, key.public_key())


def test_refuses_oversized_bundle(key):
    with pytest.raises(IntegrityError, match="larger than"):
        verify_bundle(b" " * (MAX_BUNDLE_BYTES + 1), key.public_key())


def _edit(bundle: bytes, edit) -> bytes:
    doc = json.loads(bundle)
    edit(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(mediaType="application/json"), "media type"),
        (lambda d: d["dsseEnvelope"].update(payloadType="text/plain"), "payload type"),
        (lambda d: d["dsseEnvelope"].update(payload="%%%not-base64"), "not valid base64"),
        (lambda d: d["dsseEnvelope"].update(payload=7), "must be a str"),
        (lambda d: d["dsseEnvelope"]["signatures"][0].update(sig="AAAA"), "does not verify"),
        (lambda d: d["dsseEnvelope"]["signatures"].append({"sig": ""}), "exactly one signature"),
        (lambda d: d["verificationMaterial"].pop("publicKey"), "not signed with a key"),
        (lambda d: d.pop("dsseEnvelope"), "dsseEnvelope is missing"),
    ],
)
def test_refuses_malformed_bundles(model, key, edit, message):
    bundle = _edit(sign_manifest(manifest_of(model), model.name, key), edit)
    with pytest.raises(IntegrityError, match=message):
        verify_bundle(bundle, key.public_key())


def test_refuses_duplicate_json_keys(model, key):
    bundle = sign_manifest(manifest_of(model), model.name, key)
    twice = bundle.replace(b'"mediaType":', b'"mediaType":"x","mediaType":', 1)
    with pytest.raises(IntegrityError, match="duplicate JSON key"):
        verify_bundle(twice, key.public_key())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.update(predicateType="https://model_signing/Digests/v0.1"), "predicate type"),
        (lambda s: s.update(_type="https://in-toto.io/Statement/v0.1"), "statement type"),
        (lambda s: s["subject"].append(dict(s["subject"][0])), "exactly one subject"),
        (lambda s: s["predicate"]["serialization"].update(method="shards"), "'files'"),
        (lambda s: s["predicate"]["resources"][0].update(name="../escape"), "must be relative"),
        (lambda s: s["predicate"]["resources"][0].update(digest="AB" * 32), "lowercase hex"),
        (lambda s: s["subject"][0].update(name="a/b"), "single path component"),
    ],
)
def test_refuses_malformed_statements_even_when_signed(model, key, edit, message):
    bundle = sign_manifest(manifest_of(model), model.name, key)
    statement = payload_of(bundle)
    edit(statement)
    with pytest.raises(IntegrityError, match=message):
        verify_bundle(reseal(bundle, statement, key), key.public_key())


# --------------------------------------------------------------------------- statement_for


def test_statement_orders_resources_like_model_signing(model):
    statement = statement_for(manifest_of(model), model.name)
    names = [r["name"] for r in statement["predicate"]["resources"]]
    # By path components: the "tokenizer" directory sorts before "tokenizer.model".
    assert names.index("tokenizer/tokenizer.json") < names.index("tokenizer.model")
    digests = b"".join(bytes.fromhex(r["digest"]) for r in statement["predicate"]["resources"])
    assert statement["subject"][0]["digest"]["sha256"] == hashlib.sha256(digests).hexdigest()


def test_statement_refuses_what_the_cli_could_never_verify():
    entry = FileEntry(".gitattributes", 1, "0" * 64)
    with pytest.raises(InvalidInput, match="git paths"):
        statement_for(Manifest.of([entry]), "m")
    with pytest.raises(InvalidInput, match="single path component"):
        statement_for(Manifest.of([]), "a/b")
    two = Manifest.of([FileEntry("a", 1, "0" * 64), FileEntry("b", 1, "1" * 64)])
    with pytest.raises(InvalidInput, match="single-file"):
        statement_for(two, "a", single_file=True)
    # Git metadata below the top level is hashed by the CLI, so it may be signed.
    nested = Manifest.of([FileEntry("sub/.gitignore", 1, "0" * 64)])
    assert statement_for(nested, "m")["predicate"]["resources"][0]["name"] == "sub/.gitignore"

"""The aws-kms custodian against a real moto server process: data keys bound by KMS encryption context,
epochs disabled and scheduled for deletion, signatures from a KMS P-256 key that verify, software keys and
secrets sealed by KMS, and a workspace whose folder (with the passphrase) opens nothing without KMS."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import numpy as np
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key

import custody
import moto_server
from conftest import PASSPHRASE, cli, free_port, hf_model, make_env, people, register
from custody.domain.errors import AuthenticationError, CustodyError, IntegrityError, InvalidInput, NotFound
from custody.keys import aws_kms as backend
from custody.keys import backends
from custody.keys.custodian import Binding, WrappedKey


@pytest.fixture(scope="module")
def kms(custodian_options: tuple[str, dict]) -> dict:
    """The moto server of this run: the suite's own when it runs on aws-kms, else one for this module."""
    kind, options = custodian_options
    if kind == "aws-kms":
        yield dict(options)
    else:
        with moto_server.kms() as made:
            yield made


def client(options: dict):  # noqa: ANN201
    return boto3.client("kms", endpoint_url=options["endpoint_url"], region_name=options["region"])


def made(home: Path, options: dict, zones: tuple[str, ...] = ("prod",)) -> tuple[backend.KmsCustodian, dict, str]:
    ws_id = str(uuid.uuid4())
    (home / "keys").mkdir(parents=True, exist_ok=True)
    custodian, table = backend.create_custodian(home, ws_id, {**options, "passphrase": "ignored", "log_n": 14})
    for zone in zones:
        custodian.ensure_zone(zone)
    return custodian, table, ws_id


def reopened(home: Path, ws_id: str, table: dict) -> backend.KmsCustodian:
    """Another process's view: a fresh custodian object from custody.toml's table."""
    return backends.open_custodian(home, ws_id, {"kind": "aws-kms", **table}, lambda: "unused")


def bound(zone: str = "prod", expires: datetime | None = None, subject: str = "replica-1") -> Binding:
    return Binding(str(uuid.uuid4()), subject, zone, "research", "sha256:" + "ab" * 32,
                   expires or datetime(2031, 1, 1, tzinfo=timezone.utc), holder="alice")


# -- data keys -------------------------------------------------------------------------------------


def test_a_data_key_round_trips_with_its_binding_and_nothing_secret_is_written(kms: dict, tmp_path: Path) -> None:
    custodian, table, ws_id = made(tmp_path, kms)
    assert custodian.name == "aws-kms"
    assert table == {"region": "us-east-1", "endpoint_url": kms["endpoint_url"],
                     "alias_prefix": f"alias/custody/{ws_id}"}
    binding = bound()
    dek, wrapped = custodian.new_data_key(binding)
    assert len(dek) == 32 and wrapped.kek_version == 1 and wrapped.binding == binding and dek not in wrapped.blob
    assert custodian.unwrap(wrapped) == dek
    assert reopened(tmp_path, ws_id, table).unwrap(wrapped) == dek  # another process, from the table alone
    sealed = tmp_path / backend.SECRETS_FILE
    assert sealed.stat().st_mode & 0o777 == 0o600 and not (tmp_path / "keys" / "keyring.sealed").exists()
    text = sealed.read_text()
    for name in ("grants", "secrets", "journal"):
        assert base64.b64encode(custodian.secret(name)).decode() not in text
    assert "testing" not in json.dumps(table)
    # the KEK is a KMS symmetric key found by alias, tagged with what it is
    kms_client = client(kms)
    meta = kms_client.describe_key(KeyId=f"alias/custody/{ws_id}/prod/v1")["KeyMetadata"]
    assert (meta["KeySpec"], meta["KeyUsage"], meta["KeyState"]) == ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "Enabled")
    tags = {t["TagKey"]: t["TagValue"] for t in kms_client.list_resource_tags(KeyId=meta["KeyId"])["Tags"]}
    assert tags["custody:workspace"] == ws_id and tags["custody:zone"] == "prod" and tags["custody:version"] == "1"
    assert datetime.fromisoformat(tags["custody:created-at"]) <= datetime.now(timezone.utc)


def test_altered_blobs_bindings_and_moved_keys_do_not_unwrap(kms: dict, tmp_path: Path) -> None:
    custodian, _, _ = made(tmp_path, kms, ("prod", "backup"))
    binding = bound()
    dek, wrapped = custodian.new_data_key(binding)

    def refused(w: WrappedKey) -> str:
        with pytest.raises(IntegrityError) as caught:
            custodian.unwrap(w)
        return caught.value.message

    for i in (len(wrapped.blob) // 2, len(wrapped.blob) - 1):
        altered = bytearray(wrapped.blob)
        altered[i] ^= 0x01
        assert refused(replace(wrapped, blob=bytes(altered))) == \
            f"data key {wrapped.key_id} does not unwrap: altered or misplaced"
    assert "altered or misplaced" in refused(replace(wrapped, blob=b"x" * 64))
    assert "altered or misplaced" in refused(replace(wrapped, blob=b""))
    # a database writer stretches the lifetime, widens the holder or changes the kind
    later = replace(binding, expires_at=binding.expires_at + timedelta(days=365))
    assert "altered or misplaced" in refused(replace(wrapped, binding=later))
    assert "altered or misplaced" in refused(replace(wrapped, binding=replace(binding, holder="")))
    assert "altered or misplaced" in refused(replace(wrapped, binding=replace(binding, kind="primary")))
    assert "altered or misplaced" in refused(replace(wrapped, binding=None))
    # the blob moved to another record (another key id and replica) keeps failing, whatever its binding says
    other = bound(subject="replica-2")
    assert "altered or misplaced" in refused(WrappedKey(other.key_id, "prod", 1, wrapped.blob, other))
    # ... or to another zone, or to another epoch
    custodian.begin_rotation("prod")
    assert "altered or misplaced" in refused(replace(wrapped, kek_version=2))
    elsewhere = replace(binding, zone="backup")
    assert "altered or misplaced" in refused(WrappedKey(binding.key_id, "backup", 1, wrapped.blob, elsewhere))
    assert "another key or zone" in refused(replace(wrapped, zone="backup"))
    assert custodian.unwrap(wrapped) == dek  # the original still opens


def test_keys_without_a_binding_use_the_first_context(kms: dict, tmp_path: Path) -> None:
    custodian, _, _ = made(tmp_path, kms)
    out = custodian.kms("generate_data_key", KeyId=f"{custodian.prefix}/prod/v1", KeySpec="AES_256",
                        EncryptionContext={"custody": "dek-v1", "key": "k-old", "zone": "prod", "epoch": "1"})
    legacy = WrappedKey("k-old", "prod", 1, out["CiphertextBlob"], None)
    assert custodian.unwrap(legacy) == out["Plaintext"]
    with pytest.raises(IntegrityError, match="altered or misplaced"):
        custodian.unwrap(replace(legacy, key_id="k-other"))
    custodian.begin_rotation("prod")
    moved = custodian.rewrap(legacy)
    assert (moved.kek_version, moved.binding) == (2, None) and custodian.unwrap(moved) == out["Plaintext"]


# -- epochs ----------------------------------------------------------------------------------------


def test_rotation_rewraps_under_the_new_epoch_and_other_processes_follow(kms: dict, tmp_path: Path) -> None:
    custodian, table, ws_id = made(tmp_path, kms)
    other = reopened(tmp_path, ws_id, table)
    dek, wrapped = other.new_data_key(bound())  # `other` now caches epoch 1 as the active one
    assert custodian.begin_rotation("prod") == 2
    assert [(v.version, v.state) for v in other.kek_versions("prod")] == [(1, "retired"), (2, "active")]
    moved = custodian.rewrap(wrapped)
    assert (moved.kek_version, moved.binding, moved.key_id) == (2, wrapped.binding, wrapped.key_id)
    assert moved.blob != wrapped.blob and other.unwrap(moved) == dek and other.unwrap(wrapped) == dek
    _, fresh = other.new_data_key(bound())  # saw the rotation another object made
    assert fresh.kek_version == 2
    with pytest.raises(NotFound):
        custodian.begin_rotation("nowhere")
    with pytest.raises(NotFound):
        custodian.new_data_key(bound(zone="nowhere"))


def test_retiring_an_epoch_disables_it_and_schedules_its_deletion(kms: dict, tmp_path: Path) -> None:
    custodian, table, ws_id = made(tmp_path, kms)
    other = reopened(tmp_path, ws_id, table)
    dek, wrapped = custodian.new_data_key(bound())
    assert other.unwrap(wrapped) == dek  # `other` has used epoch 1: any cache it keeps is warm
    old_key = custodian._key_id(f"{custodian.prefix}/prod/v1")
    with pytest.raises(CustodyError, match="newest KEK version cannot be retired"):
        custodian.retire("prod", 1)
    custodian.begin_rotation("prod")
    kept = custodian.rewrap(wrapped)
    assert custodian.retire("prod", 1) == "disabled now; KMS deletes it after the 7-day minimum window"
    destroyed = f"data key {wrapped.key_id}: KEK version 1 of zone prod was destroyed"
    for who in (custodian, other, reopened(tmp_path, ws_id, table)):
        with pytest.raises(IntegrityError) as caught:
            who.unwrap(wrapped)
        assert caught.value.message == destroyed
        if who is not other:  # moto ignores ReEncrypt's SourceKeyId; KMS refuses `other` too (module docstring)
            with pytest.raises(IntegrityError, match="was destroyed"):
                who.rewrap(wrapped)
        assert who.unwrap(kept) == dek
    meta = client(kms).describe_key(KeyId=old_key)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion" and not meta["Enabled"]
    assert timedelta(days=6, hours=23) < meta["DeletionDate"] - datetime.now(timezone.utc) <= timedelta(days=7)
    assert [v.version for v in custodian.kek_versions("prod")] == [2]
    assert [(k.zone, k.version) for k in other.keys() if k.purpose == "kek"] == [("prod", 2)]


def test_two_processes_rotating_at_once_get_distinct_epochs(kms: dict, tmp_path: Path) -> None:
    custodian, table, ws_id = made(tmp_path, kms)
    rivals = [reopened(tmp_path, ws_id, table) for _ in range(3)]
    for rival in rivals:
        rival.kek_versions("prod")  # each has seen epoch 1 as the newest
    got: list[int] = []
    threads = [threading.Thread(target=lambda r=r: got.append(r.begin_rotation("prod"))) for r in rivals]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [2, 3, 4]
    assert [v.version for v in custodian.kek_versions("prod")] == [1, 2, 3, 4]


def test_zone_names_map_to_alias_characters_reversibly(kms: dict, tmp_path: Path) -> None:
    custodian, table, ws_id = made(tmp_path, kms, ("eu.west-1", "eu_west-1"))
    assert backend.alias_part("eu.west-1") == "eu_2ewest-1" and backend.alias_part("eu_west-1") == "eu_5fwest-1"
    for zone in ("eu.west-1", "eu_west-1"):
        dek, wrapped = custodian.new_data_key(bound(zone=zone))
        assert reopened(tmp_path, ws_id, table).unwrap(wrapped) == dek
    assert sorted(k.zone for k in custodian.keys() if k.purpose == "kek") == ["eu.west-1", "eu_west-1"]


# -- signing and secrets ---------------------------------------------------------------------------


def test_manifest_signatures_come_from_a_kms_p256_key_and_verify(kms: dict, tmp_path: Path) -> None:
    custodian, table, ws_id = made(tmp_path, kms)
    public = load_pem_public_key(custodian.public_key_pem("signing"))
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    for message in (b"short statement", os.urandom(10_000)):  # the second is above KMS's RAW limit
        signature = reopened(tmp_path, ws_id, table).sign("signing", message)
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        with pytest.raises(InvalidSignature):
            public.verify(signature, message + b"!", ec.ECDSA(hashes.SHA256()))
    info = next(k for k in custodian.keys() if k.purpose == "signing")
    meta = client(kms).describe_key(KeyId=info.where.removeprefix("kms:"))["KeyMetadata"]
    assert (meta["KeySpec"], meta["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")


def test_ledger_and_witness_keys_are_ed25519_sealed_by_kms(kms: dict, tmp_path: Path) -> None:
    custodian, table, ws_id = made(tmp_path, kms)
    other = reopened(tmp_path, ws_id, table)
    pems = set()
    for purpose in ("ledger", "witness"):
        pem = custodian.public_key_pem(purpose)
        assert other.public_key_pem(purpose) == pem
        pems.add(pem)
        public = load_pem_public_key(pem)
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(other.sign(purpose, b"checkpoint"), b"checkpoint")
    assert len(pems) == 2
    where = {k.purpose: k.where for k in custodian.keys()}
    assert where["ledger"] == where["witness"] == "software (sealed by KMS)" and where["signing"].startswith("kms:")


def test_secrets_are_stable_across_custodians_and_sealed_by_kms(kms: dict, tmp_path: Path) -> None:
    custodian, table, ws_id = made(tmp_path, kms)
    early = reopened(tmp_path, ws_id, table)  # opened before the secrets below exist
    grants = custodian.secret("grants")
    assert len(grants) == 32 and grants != custodian.secret("journal")
    assert early.secret("grants") == grants and reopened(tmp_path, ws_id, table).secret("grants") == grants
    assert early.secret("new-one") == custodian.secret("new-one")
    # concurrent first uses from several objects agree on one value
    racers = [reopened(tmp_path, ws_id, table) for _ in range(4)]
    seen: list[bytes] = []
    threads = [threading.Thread(target=lambda r=r: seen.append(r.secret("raced"))) for r in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1 and custodian.secret("raced") == seen[0]
    # the file is bound to KMS and to this workspace: edits and transplants fail
    path = tmp_path / backend.SECRETS_FILE
    envelope = json.loads(path.read_text())
    good = path.read_bytes()
    ct = bytearray(base64.b64decode(envelope["ciphertext"]))
    ct[0] ^= 1
    path.write_text(json.dumps({**envelope, "ciphertext": base64.b64encode(bytes(ct)).decode()}))
    with pytest.raises(IntegrityError, match="does not open"):
        reopened(tmp_path, ws_id, table)
    path.write_bytes(good)
    elsewhere = tmp_path / "other"
    _, other_table, other_id = made(elsewhere, kms)
    (elsewhere / backend.SECRETS_FILE).write_bytes(good)
    with pytest.raises(IntegrityError, match="another workspace"):
        reopened(elsewhere, other_id, other_table)


# -- configuration and failure -------------------------------------------------------------------


def test_a_dead_endpoint_fails_fast_with_a_clear_error(kms: dict, tmp_path: Path) -> None:
    _, table, ws_id = made(tmp_path, kms)
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(CustodyError) as caught:
        reopened(tmp_path, ws_id, {**table, "endpoint_url": dead})
    assert time.monotonic() - started < 5
    assert caught.value.message == f"KMS at {dead} did not answer (decrypt): EndpointConnectionError"
    assert "testing" not in caught.value.message
    with pytest.raises(CustodyError, match="did not answer"):
        backend.create_custodian(tmp_path / "again", str(uuid.uuid4()), {"endpoint_url": dead, "region": "us-east-1"})


def test_region_and_credentials_come_from_the_environment(kms: dict, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _, table, ws_id = made(tmp_path, kms)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(InvalidInput, match="needs a region"):
        backend.create_custodian(tmp_path / "x", str(uuid.uuid4()), {"endpoint_url": kms["endpoint_url"]})
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    _, made_table = backend.create_custodian(tmp_path / "y", str(uuid.uuid4()), {"endpoint_url": kms["endpoint_url"]})
    assert made_table["region"] == "us-east-1"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(AuthenticationError, match="no AWS credentials"):
        reopened(tmp_path, ws_id, table)


# -- a workspace on KMS ----------------------------------------------------------------------------


def test_a_workspace_on_kms_reads_under_policy_and_its_folder_alone_opens_nothing(
        kms: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from custody.control.store import repositories as repo
    from custody.keys.local import KEYRING, LocalCustodian

    with moto_server.server() as own:  # a KMS of this workspace alone, to take away below
        env = make_env(tmp_path, monkeypatch, "sqlite", ("aws-kms", {"endpoint_url": own, "region": "us-east-1"}))
        config = (env.home / "custody.toml").read_text()
        assert 'kind = "aws-kms"' in config and f'endpoint_url = "{own}"' in config and "testing" not in config
        crew = people(env, {"svc": ("service", "serving", {"zone": "prod"})})
        tensors = hf_model(tmp_path / "model")
        replica = register(env, tmp_path / "model", "tiny", "--jurisdiction", "US")["replica"]
        got = custody.open_safetensors(replica, purpose="serve traffic", token=crew.t("svc"), home=env.home)
        assert sorted(got) == sorted(tensors) and all(np.array_equal(got[k], tensors[k]) for k in tensors)
        status = cli("keys", "status", "--json", token=env.token)
        assert status.code == 0, status.stdout
        assert {r["custodian"] for r in status.json} == {"aws-kms"}
        assert all(r["where"].startswith("kms:") for r in status.json if r["purpose"] in ("kek", "signing"))

    # KMS is gone; the folder, its database and the passphrase are all still here
    assert os.environ["CUSTODY_PASSPHRASE"] == PASSPHRASE
    assert not (env.home / KEYRING).exists()
    with pytest.raises(NotFound):
        LocalCustodian(env.home / KEYRING, PASSPHRASE)
    started = time.monotonic()
    with pytest.raises(CustodyError) as caught:
        custody.open_safetensors(replica, purpose="serve traffic", token=crew.t("svc"), home=env.home)
    assert "did not answer" in caught.value.message and time.monotonic() - started < 10
    ws = env.open()
    try:
        with ws.uow(readonly=True) as uow:
            keys = [w for zone in ("prod", "backup", "dr", "research", "quarantine")
                    for w in repo.live_data_keys(uow, zone)]
        assert keys
        offline = backend.KmsCustodian(env.home, ws.id, region="us-east-1", endpoint_url=own, lazy=True)
        for wrapped in keys:
            with pytest.raises(CustodyError, match="did not answer"):
                offline.unwrap(wrapped)
    finally:
        ws.close()

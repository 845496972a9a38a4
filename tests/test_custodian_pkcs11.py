"""The pkcs11 custodian against a real SoftHSM2 token: KEKs that never leave it, data keys bound by AES-GCM
inside it, epochs destroyed for good, signatures that verify, secrets sealed by the token, and a workspace
whose folder (with the passphrase) opens nothing without the token's PIN."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pkcs11 as p11
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key

import custody
import softhsm
from conftest import PASSPHRASE, Env, cli, hf_model, people, register
from custody.domain.errors import AuthenticationError, CustodyError, IntegrityError, NotFound
from custody.keys import backends
from custody.keys import pkcs11 as backend
from custody.keys.custodian import Binding, WrappedKey

pytestmark = pytest.mark.skipif(not softhsm.available(), reason="SoftHSM2 is not installed (make softhsm)")

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def hsm(custodian_options: tuple[str, dict]) -> dict:
    """The token of this run: the suite's own when it runs on pkcs11, else one for this module."""
    kind, options = custodian_options
    if kind == "pkcs11":
        yield dict(options)
    else:
        with softhsm.token() as made:
            yield made


@pytest.fixture
def pin(hsm: dict, monkeypatch: pytest.MonkeyPatch) -> str:
    value = os.environ["CUSTODY_PKCS11_PIN"]
    monkeypatch.setenv("CUSTODY_PKCS11_PIN", value)  # restored after each test, whatever it does
    return value


def made(home: Path, hsm: dict) -> tuple[backend.Pkcs11Custodian, dict, str]:
    ws_id = uuid.uuid4().hex
    (home / "keys").mkdir(parents=True, exist_ok=True)
    custodian, table = backend.create_custodian(home, ws_id, {**hsm, "passphrase": "ignored", "log_n": 14})
    custodian.ensure_zone("prod")
    return custodian, table, ws_id


def reopened(home: Path, ws_id: str, table: dict) -> backend.Pkcs11Custodian:
    return backends.open_custodian(home, ws_id, {"kind": "pkcs11", **table}, lambda: "not asked")


def binding(key_id: str = "k1", **kw) -> Binding:  # noqa: ANN003
    fields = dict(key_id=key_id, subject="replica-1", zone="prod", kind="primary", digest="sha256:" + "a" * 64,
                  expires_at=datetime(2030, 1, 1, tzinfo=timezone.utc), holder="")
    fields.update(kw)
    return Binding(**fields)


def token_objects(label: str) -> list:
    """Every object with this label, seen through a session of the test's own."""
    lib = backend._LIBS[softhsm.LIBRARY]
    session = lib.get_token(token_label=softhsm.LABEL).open(rw=False)
    try:
        return list(session.get_objects({p11.Attribute.LABEL: label}))
    finally:
        session.close()


def test_a_data_key_unwraps_only_with_its_binding(tmp_path: Path, hsm: dict, pin: str) -> None:
    custodian, table, ws_id = made(tmp_path, hsm)
    assert table == {"library": softhsm.LIBRARY, "token": softhsm.LABEL, "label_prefix": f"custody/{ws_id}"}
    assert custodian.name == "pkcs11"
    dek, wrapped = custodian.new_data_key(binding())
    assert len(dek) == 32 and wrapped.kek_version == 1 and len(wrapped.blob) == 12 + 32 + 16
    assert dek not in wrapped.blob
    assert custodian.unwrap(wrapped) == dek
    assert reopened(tmp_path, ws_id, table).unwrap(wrapped) == dek  # another custodian object, same token

    def refused(w: WrappedKey, message: str) -> None:
        with pytest.raises(IntegrityError) as caught:
            custodian.unwrap(w)
        assert message in caught.value.message, caught.value.message

    altered = bytearray(wrapped.blob)
    altered[20] ^= 1
    refused(replace(wrapped, blob=bytes(altered)), "does not unwrap: altered or misplaced")
    refused(replace(wrapped, blob=wrapped.blob[:-1]), "does not unwrap: altered or misplaced")
    later = datetime(2031, 1, 1, tzinfo=timezone.utc)
    refused(replace(wrapped, binding=binding(expires_at=later)), "does not unwrap")  # a database edit of the expiry
    refused(replace(wrapped, binding=binding(expires_at=None)), "does not unwrap")
    refused(replace(wrapped, binding=binding(subject="replica-2")), "does not unwrap")  # moved to another replica
    refused(replace(wrapped, binding=binding(holder="mallory")), "does not unwrap")
    refused(replace(wrapped, binding=None), "does not unwrap")  # posing as a key from before bindings
    _, other = custodian.new_data_key(binding("k2", subject="replica-2"))
    refused(replace(other, key_id="k1", binding=binding()), "does not unwrap")  # another key's blob under k1's row
    refused(replace(wrapped, key_id="k2"), "its binding names another key or zone")
    custodian.ensure_zone("backup")
    refused(replace(wrapped, zone="backup", binding=binding(zone="backup")), "does not unwrap")  # moved zone
    refused(replace(wrapped, kek_version=7), "KEK version 7 of zone prod was destroyed")


def test_rotation_rewraps_and_retiring_destroys_the_token_object(tmp_path: Path, hsm: dict, pin: str) -> None:
    custodian, table, ws_id = made(tmp_path, hsm)
    other = reopened(tmp_path, ws_id, table)  # a second process's view of the same workspace
    dek, old = custodian.new_data_key(binding())
    assert other.unwrap(old) == dek  # `other` now holds a handle on epoch 1
    assert custodian.begin_rotation("prod") == 2
    fresh_dek, fresh = other.new_data_key(binding("k3"))  # it notices the new epoch by itself
    assert fresh.kek_version == 2 and custodian.unwrap(fresh) == fresh_dek
    new = custodian.rewrap(old)
    assert (new.kek_version, new.binding, new.key_id, new.zone) == (2, old.binding, "k1", "prod")
    assert new.blob != old.blob and custodian.unwrap(new) == dek and custodian.unwrap(old) == dek
    assert [(v.version, v.state) for v in custodian.kek_versions("prod")] == [(1, "retired"), (2, "active")]
    with pytest.raises(CustodyError, match="newest KEK version cannot be retired"):
        custodian.retire("prod", 2)

    label = f"custody/{ws_id}/kek/prod/1"
    assert len(token_objects(label)) == 1
    how = custodian.retire("prod", 1)
    assert "destroyed" in how and "C_DestroyObject" in how and label in how
    assert token_objects(label) == []  # gone from the token, not merely forgotten
    for holder in (custodian, other):  # `other` still had a handle: the token no longer answers to it
        with pytest.raises(IntegrityError, match="KEK version 1 of zone prod was destroyed"):
            holder.unwrap(old)
        assert holder.unwrap(new) == dek
    assert [(v.version, v.state) for v in other.kek_versions("prod")] == [(2, "active")]
    assert "already destroyed" in custodian.retire("prod", 1)
    rows = {(k.purpose, k.zone, k.version): k for k in custodian.keys()}
    assert set(rows) == {("kek", "prod", 2), ("signing", None, 1), ("ledger", None, 1), ("witness", None, 1)}
    assert rows[("kek", "prod", 2)].where == f"token:custody/{ws_id}/kek/prod/2"
    assert all(timedelta(0) <= datetime.now(timezone.utc) - k.created_at < timedelta(minutes=5) for k in rows.values())
    with pytest.raises(NotFound):
        custodian.kek_versions("nowhere")

    # another process moves the zone on: this one wraps under the new epoch, and the one it destroys is gone here
    assert in_child(tmp_path, ws_id, table, "c.begin_rotation('prod')") == 3
    dek4, fourth = custodian.new_data_key(binding("k4"))
    assert fourth.kek_version == 3 and other.unwrap(fourth) == dek4
    assert "C_DestroyObject" in in_child(tmp_path, ws_id, table, "c.retire('prod', 2)")
    with pytest.raises(IntegrityError, match="KEK version 2 of zone prod was destroyed"):
        custodian.unwrap(new)


def test_keys_in_the_token_cannot_be_read_out(tmp_path: Path, hsm: dict, pin: str) -> None:
    custodian, table, ws_id = made(tmp_path, hsm)
    custodian.secret("grants")
    lib = backend._LIBS[softhsm.LIBRARY]
    session = lib.get_token(token_label=softhsm.LABEL).open(rw=False)  # logged in: this process holds the PIN
    try:
        for label, cls in ((f"custody/{ws_id}/kek/prod/1", p11.ObjectClass.SECRET_KEY),
                           (f"custody/{ws_id}/seal", p11.ObjectClass.SECRET_KEY),
                           (f"custody/{ws_id}/signing", p11.ObjectClass.PRIVATE_KEY),
                           (f"custody/{ws_id}/ledger", p11.ObjectClass.PRIVATE_KEY),
                           (f"custody/{ws_id}/witness", p11.ObjectClass.PRIVATE_KEY)):
            [key] = session.get_objects({p11.Attribute.LABEL: label, p11.Attribute.CLASS: cls})
            assert key[p11.Attribute.TOKEN] and key[p11.Attribute.SENSITIVE] and not key[p11.Attribute.EXTRACTABLE]
            with pytest.raises(p11.exceptions.AttributeSensitive):
                key[p11.Attribute.VALUE]
            if cls == p11.ObjectClass.SECRET_KEY:  # and no wrapping it out under another key
                assert not key[p11.Attribute.WRAP] and not key[p11.Attribute.SIGN]
    finally:
        session.close()


def test_signatures_verify_with_the_public_keys(tmp_path: Path, hsm: dict, pin: str) -> None:
    custodian, table, ws_id = made(tmp_path, hsm)
    message = b"a manifest" * 1000
    signing = load_pem_public_key(custodian.public_key_pem("signing"))
    assert isinstance(signing, ec.EllipticCurvePublicKey) and signing.curve.name == "secp256r1"
    signature = custodian.sign("signing", message)
    assert signature[0] == 0x30  # DER, as cryptography and Sigstore bundles expect
    signing.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        signing.verify(signature, message + b".", ec.ECDSA(hashes.SHA256()))
    for purpose in ("ledger", "witness"):
        public = load_pem_public_key(custodian.public_key_pem(purpose))
        assert isinstance(public, ed25519.Ed25519PublicKey)
        for m in (b"", b"checkpoint\n42\n", message):
            public.verify(custodian.sign(purpose, m), m)
        with pytest.raises(InvalidSignature):
            public.verify(custodian.sign(purpose, b"x"), b"y")
    keys = {p: custodian.public_key_pem(p) for p in ("signing", "ledger", "witness")}
    assert len(set(keys.values())) == 3
    again = reopened(tmp_path, ws_id, table)
    assert {p: again.public_key_pem(p) for p in keys} == keys
    signing.verify(again.sign("signing", b"m"), b"m", ec.ECDSA(hashes.SHA256()))


_CHILD = """
import json, sys
from pathlib import Path
from custody.keys import backends
home, ws_id, table = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
c = backends.open_custodian(home, ws_id, table, lambda: "not asked")
print(json.dumps({name: c.secret(name).hex() for name in sys.argv[4:]}))
"""


def in_child(home: Path, ws_id: str, table: dict, expression: str):  # noqa: ANN201
    """Evaluate an expression on custodian `c` in a process of its own (as another custody process would)."""
    code = ("import json, sys\nfrom pathlib import Path\nfrom custody.keys import backends\n"
            "c = backends.open_custodian(Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), lambda: '')\n"
            f"print(json.dumps({expression}))\n")
    p = subprocess.run([sys.executable, "-c", code, str(home), ws_id, json.dumps({"kind": "pkcs11", **table})],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": SRC})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def child_secrets(home: Path, ws_id: str, table: dict, *names: str) -> dict[str, bytes]:
    p = subprocess.run([sys.executable, "-c", _CHILD, str(home), ws_id, json.dumps({"kind": "pkcs11", **table}),
                        *names], capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": SRC})
    assert p.returncode == 0, p.stderr
    return {k: bytes.fromhex(v) for k, v in json.loads(p.stdout).items()}


def test_secrets_are_sealed_by_the_token_and_shared_by_processes(tmp_path: Path, hsm: dict, pin: str) -> None:
    custodian, table, ws_id = made(tmp_path, hsm)
    grants = custodian.secret("grants")
    assert len(grants) == 32 and custodian.secret("grants") == grants
    assert reopened(tmp_path, ws_id, table).secret("grants") == grants
    sealed = tmp_path / "keys" / "pkcs11-secrets.sealed"
    assert sealed.stat().st_mode & 0o777 == 0o600
    assert grants not in sealed.read_bytes() and base64.b64encode(grants) not in sealed.read_bytes()
    # another process reads the same secret, and makes one this process then sees
    assert child_secrets(tmp_path, ws_id, table, "grants") == {"grants": grants}
    journal = child_secrets(tmp_path, ws_id, table, "journal")["journal"]
    assert custodian.secret("journal") == journal and custodian.secret("grants") == grants
    # an edited file does not unseal
    envelope = json.loads(sealed.read_text())
    ciphertext = bytearray(base64.b64decode(envelope["ciphertext"]))
    ciphertext[0] ^= 1
    sealed.write_text(json.dumps({**envelope, "ciphertext": base64.b64encode(bytes(ciphertext)).decode()}))
    with pytest.raises(IntegrityError, match="does not unseal"):
        reopened(tmp_path, ws_id, table).secret("grants")


def test_the_token_stays_closed_without_its_pin(tmp_path: Path, hsm: dict, pin: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    custodian, table, ws_id = made(tmp_path, hsm)
    monkeypatch.delenv("CUSTODY_PKCS11_PIN")
    with pytest.raises(AuthenticationError) as caught:
        reopened(tmp_path, ws_id, table)
    assert caught.value.message == "CUSTODY_PKCS11_PIN is not set: the token stays closed"
    with pytest.raises(AuthenticationError):
        backend.create_custodian(tmp_path / "other", "ws", dict(hsm))
    # a wrong PIN, in a process of its own (this one is logged in already)
    monkeypatch.setenv("CUSTODY_PKCS11_PIN", "0000" + pin[::-1])
    p = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), ws_id, json.dumps({"kind": "pkcs11", **table}),
                        "grants"], capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": SRC})
    assert p.returncode != 0 and "AuthenticationError" in p.stderr and "refused CUSTODY_PKCS11_PIN" in p.stderr
    assert pin not in p.stderr and "0000" not in p.stderr
    # and a different PIN is refused in this process too, though it is logged in
    with pytest.raises(AuthenticationError, match="not the PIN this process logged in with"):
        reopened(tmp_path, ws_id, table)
    with pytest.raises(CustodyError, match="no PKCS#11 token labelled 'nonesuch'"):
        monkeypatch.setenv("CUSTODY_PKCS11_PIN", pin)
        reopened(tmp_path, ws_id, {**table, "token": "nonesuch"})


def test_a_pkcs11_workspace_reads_under_policy_and_its_folder_alone_opens_nothing(
        tmp_path: Path, hsm: dict, pin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "ws"
    monkeypatch.setenv("CUSTODY_HOME", str(home))
    monkeypatch.setenv("CUSTODY_PASSPHRASE", PASSPHRASE)  # set, as an attacker holding it would: it opens nothing
    r = cli("init", "--custodian", "pkcs11", "--pkcs11-library", hsm["library"], "--pkcs11-token", hsm["token"],
            "--json")
    assert r.code == 0, r.stdout + r.stderr
    config = (home / "custody.toml").read_text()
    assert 'kind = "pkcs11"' in config and f'token = "{hsm["token"]}"' in config and pin not in config
    env = Env(home=home, token=r.json["admin_token"], backend="sqlite")
    tensors = hf_model(tmp_path / "model")
    replica = register(env, tmp_path / "model", "tiny", "--jurisdiction", "US")["replica"]
    crew = people(env, {"svc": ("service", "serving", {"zone": "prod"})})
    got = custody.open_safetensors(replica, purpose="serve traffic", token=crew.t("svc"), home=home)
    assert set(got) == set(tensors) and all(np.array_equal(got[n], tensors[n]) for n in tensors)
    status = cli("keys", "status", "--json", token=env.token)
    assert status.code == 0, status.stdout
    assert {row["where"].split(":")[0] for row in status.json} == {"token"}
    assert cli("keys", "rotate", "prod", "--json", token=env.token).code == 0  # epoch 2, epoch 1 destroyed
    got = custody.open_safetensors(replica, purpose="serve traffic", tensors=["lm_head.ids"], token=crew.t("svc"),
                                   home=home)
    assert np.array_equal(got["lm_head.ids"], tensors["lm_head.ids"])

    # The attacker: the whole folder (database, sealed files) and the passphrase, not the token's PIN.
    ws = env.open()
    try:
        custodian = ws.custodian()
        with ws.uow(readonly=True) as uow:
            from custody.control.store import repositories as repo

            [wrapped] = repo.live_data_keys(uow, "prod")
        dek = custodian.unwrap(wrapped)
    finally:
        ws.close()
    assert wrapped.kek_version == 2
    assert not (home / "keys" / "keyring.sealed").exists()  # no keyring a passphrase could open
    with pytest.raises(NotFound):
        backends.open_custodian(home, "any", {"kind": "local"}, lambda: PASSPHRASE)
    forms = (dek, dek.hex().encode(), base64.b64encode(dek))
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(form in data for form in forms), f"the data key is in {path}"
    monkeypatch.delenv("CUSTODY_PKCS11_PIN")
    ws = env.open()
    try:
        with pytest.raises(AuthenticationError, match="CUSTODY_PKCS11_PIN is not set"):
            ws.custodian()
    finally:
        ws.close()
    with pytest.raises(AuthenticationError, match="CUSTODY_PKCS11_PIN is not set"):
        custody.open_safetensors(replica, purpose="serve traffic", token=crew.t("svc"), home=home)

"""The key custodian protocol: where key-encryption keys, signing keys and small secrets live.

A custodian is its own trust domain (DESIGN.md, "Trust roots"). Backends (`local` sealed keyring,
`pkcs11` token, `aws-kms`) implement `KeyCustodian`: they hold each zone's KEK epochs and wrap or
unwrap data keys under them, sign, and seal a few software secrets. Whether a data key may be
released at all is decided above them, in `keys/release.py`, the same way for every backend.

A data key is wrapped together with its `Binding`: the replica (or backup repository) it
belongs to, its zone, kind, version digest and expiry, authenticated as AEAD associated data
(or KMS encryption context). The control-plane database stores the binding beside the blob, but
an edit of either makes the unwrap fail, so a database writer cannot move a key or stretch a
lifetime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal, Protocol

from custody.domain.errors import IntegrityError

Purpose = Literal["signing", "ledger", "witness"]
PURPOSES: tuple[Purpose, ...] = ("signing", "ledger", "witness")

DEK_BYTES = 32
NEVER = "never"


@dataclass(frozen=True, slots=True)
class Binding:
    """What one data key is for. `subject` is a replica id or a backup repository id; `kind` a
    replica kind or "backup-repository"; `digest` the version digest ("" for a repository, whose
    snapshots cover many versions); `expires_at` None for keys that live until revoked; `holder`
    the principal a research or derivative copy was made for ("" for others)."""

    key_id: str
    subject: str
    zone: str
    kind: str
    digest: str
    expires_at: datetime | None
    holder: str = ""

    def context(self) -> dict[str, str]:
        """The binding as string pairs: KMS encryption context, and the source of the AEAD data."""
        return {"custody": "dek-v2", "key": self.key_id, "subject": self.subject, "zone": self.zone,
                "kind": self.kind, "digest": self.digest, "holder": self.holder,
                "expires": NEVER if self.expires_at is None else _stamp(self.expires_at)}

    def aad(self, kek_version: int) -> bytes:
        return json.dumps({**self.context(), "epoch": str(kek_version)}, sort_keys=True,
                          separators=(",", ":")).encode()

    def to_json(self) -> str:
        return json.dumps(self.context(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Binding":
        try:
            c = json.loads(text)
            if c.get("custody") != "dek-v2":
                raise ValueError("unknown binding format")
            expires = None if c["expires"] == NEVER else datetime.fromisoformat(c["expires"])
            return cls(key_id=c["key"], subject=c["subject"], zone=c["zone"], kind=c["kind"], digest=c["digest"],
                       expires_at=expires, holder=c["holder"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise IntegrityError("a data key's binding is malformed") from None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def _stamp(moment: datetime) -> str:
    """Whole seconds in UTC: the same text wherever the binding is rebuilt."""
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat()


def whole_seconds(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(timezone.utc).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key as the control plane stores it: useless without the zone's KEK epoch.

    `binding` is None only for keys wrapped before bindings existed (they unwrap with the
    first format's associated data, and carry no expiry of their own)."""

    key_id: str
    zone: str
    kek_version: int
    blob: bytes
    binding: Binding | None = None


@dataclass(frozen=True, slots=True)
class KekVersion:
    zone: str
    version: int
    created_at: datetime
    state: Literal["active", "retired"]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One key a custodian holds, for `keys status`: what it is for, its version and age."""

    purpose: str  # "kek", "signing", "ledger", "witness"
    zone: str | None
    version: int
    created_at: datetime
    where: str  # e.g. "keyring", "token", "kms:arn:..."


def dek_aad(key_id: str, zone: str, kek_version: int) -> bytes:
    """The first format's associated data (keys without a binding)."""
    return f"custody-dek-v1|{key_id}|{zone}|{kek_version}".encode()


def aad_of(wrapped_or_binding: Binding | None, key_id: str, zone: str, kek_version: int) -> bytes:
    if wrapped_or_binding is None:
        return dek_aad(key_id, zone, kek_version)
    if wrapped_or_binding.key_id != key_id or wrapped_or_binding.zone != zone:
        raise IntegrityError(f"data key {key_id}: its binding names another key or zone")
    return wrapped_or_binding.aad(kek_version)


class KeyCustodian(Protocol):
    name: str

    def ensure_zone(self, zone: str) -> None:
        """Create the zone's first KEK if it has none."""

    def new_data_key(self, binding: Binding) -> tuple[bytes, WrappedKey]:
        """A fresh random DEK and its wrapping, bound to `binding`, under the zone's active KEK."""

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        """The DEK; IntegrityError if the blob or its binding was altered, or its epoch destroyed."""

    def rewrap(self, wrapped: WrappedKey) -> WrappedKey:
        """The same DEK and binding wrapped under the zone's active KEK version."""

    def begin_rotation(self, zone: str) -> int:
        """Add a new active KEK version (epoch); the old ones stay to unwrap until retired."""

    def retire(self, zone: str, version: int) -> str:
        """Destroy a KEK version: every DEK still wrapped under it becomes unreadable. Returns how
        (e.g. "destroyed", or for KMS "disabled; deletion scheduled in 7 days")."""

    def kek_versions(self, zone: str) -> list[KekVersion]: ...

    def keys(self) -> list[KeyInfo]:
        """Every key it holds with its age, for status and scheduled rotation."""

    def sign(self, purpose: Purpose, message: bytes) -> bytes:
        """ECDSA P-256 (DER) for "signing"; Ed25519 for "ledger" and "witness"."""

    def public_key_pem(self, purpose: Purpose) -> bytes: ...

    def secret(self, name: str) -> bytes:
        """A 32-byte software secret sealed by this custodian (created on first use): the grant
        root key ("grants"), the small-secret key ("secrets"), the release journal's MAC key."""


def grant_root_key(custodian: KeyCustodian) -> bytes:
    """The Ed25519 private key that signs grants (Biscuit root key)."""
    return custodian.secret("grants")


def seal_secret(custodian: KeyCustodian, data: bytes, aad: bytes) -> bytes:
    """Encrypt a small control-plane secret (a TOTP seed) so the database alone cannot use it."""
    import secrets as _secrets

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = _secrets.token_bytes(12)
    return nonce + AESGCM(custodian.secret("secrets")).encrypt(nonce, data, b"custody-secret-v1|" + aad)


def open_secret(custodian: KeyCustodian, blob: bytes, aad: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(custodian.secret("secrets")).decrypt(blob[:12], blob[12:], b"custody-secret-v1|" + aad)
    except (InvalidTag, ValueError):
        raise IntegrityError("a sealed secret does not open: altered or moved") from None


class CustodianSigner:
    """The custodian's manifest key in the shape of an EC private key, for bundle signing."""

    def __init__(self, custodian: KeyCustodian) -> None:
        self._custodian = custodian

    def public_key(self):  # noqa: ANN201
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        return load_pem_public_key(self._custodian.public_key_pem("signing"))

    def sign(self, data: bytes, signature_algorithm) -> bytes:  # noqa: ANN001
        return self._custodian.sign("signing", data)

"""The key custodian protocol: where key-encryption keys and signing keys live.

Data keys (DEKs) never leave a custodian unwrapped except to the data plane that seals or opens
one replica. Each backend (local sealed keyring, PKCS#11, KMS) is a module implementing this.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

Purpose = Literal["signing", "ledger"]

DEK_BYTES = 32


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key as stored by the control plane: useless without the zone's KEK."""

    key_id: str
    zone: str
    kek_version: int
    blob: bytes


@dataclass(frozen=True, slots=True)
class KekVersion:
    zone: str
    version: int
    created_at: datetime
    state: Literal["active", "retired"]


def dek_aad(key_id: str, zone: str, kek_version: int) -> bytes:
    """Binds a wrapped DEK to its record, so a blob moved to another record will not unwrap."""
    return f"custody-dek-v1|{key_id}|{zone}|{kek_version}".encode()


class KeyCustodian(Protocol):
    name: str

    def ensure_zone(self, zone: str) -> None:
        """Create the zone's first KEK if it has none."""

    def new_data_key(self, zone: str, key_id: str) -> tuple[bytes, WrappedKey]:
        """A fresh random DEK and its wrapping under the zone's active KEK."""

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        """The DEK; IntegrityError if the blob was altered or belongs elsewhere."""

    def rewrap(self, wrapped: WrappedKey) -> WrappedKey:
        """The same DEK wrapped under the zone's active KEK version."""

    def begin_rotation(self, zone: str) -> int:
        """Add a new active KEK version; the old ones stay to unwrap until retired."""

    def retire(self, zone: str, version: int) -> None:
        """Destroy a KEK version: every DEK still wrapped under it becomes unreadable."""

    def kek_versions(self, zone: str) -> list[KekVersion]: ...

    def sign(self, purpose: Purpose, message: bytes) -> bytes: ...

    def public_key_pem(self, purpose: Purpose) -> bytes: ...

    def grant_root_key(self) -> bytes:
        """The Ed25519 private key that signs grants (Biscuit root key)."""

    def seal_secret(self, data: bytes, aad: bytes) -> bytes:
        """Encrypt a small control-plane secret (a TOTP seed) so the database alone cannot use it."""

    def open_secret(self, blob: bytes, aad: bytes) -> bytes: ...


class CustodianSigner:
    """The custodian's manifest key in the shape of an EC private key, for bundle signing."""

    def __init__(self, custodian: KeyCustodian) -> None:
        self._custodian = custodian

    def public_key(self):  # noqa: ANN201
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        return load_pem_public_key(self._custodian.public_key_pem("signing"))

    def sign(self, data: bytes, signature_algorithm) -> bytes:  # noqa: ANN001
        return self._custodian.sign("signing", data)

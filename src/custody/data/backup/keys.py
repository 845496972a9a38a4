"""Keys of one backup repository, derived from the master data key the control plane unwraps.

One 32-byte master per (backup zone, asset lineage) is wrapped by the zone's custodian like any
replica's data key. Everything the repository needs is derived from it, so destroying that one
wrapped key (shredding) makes every chunk of every snapshot of the lineage unreadable at once,
and the chunk ids become meaningless too.

Two keys with distinct HKDF info strings: `enc` encrypts chunks (AES-256-GCM) and `mac` names
them (HMAC-SHA256 of the plaintext). Keeping them apart means the public chunk ids say nothing
about the encryption key, and binding the repository id into both means two repositories under
the same master (which should not happen, but costs nothing to survive) still get unrelated keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from custody.domain.errors import InvalidInput

__all__ = ["KEY_SIZE", "RepoKeys", "check_repo_id", "derive"]

KEY_SIZE = 32
_INFO_ENC = b"custody backup repo v1 enc\x00"
_INFO_MAC = b"custody backup repo v1 mac\x00"
# A repository id is one path segment in the zone; a UUID in practice.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_repo_id(repo_id: str) -> str:
    """Return `repo_id` if it is safe as a single path segment of a zone."""
    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id):
        raise InvalidInput(f"bad repository id {str(repo_id)[:64]!r}: letters, digits, '.', '_' or '-' only")
    return repo_id


@dataclass(frozen=True, slots=True, repr=False)
class RepoKeys:
    """The two working keys of a repository (never printed: repr hides them)."""

    enc: bytes
    mac: bytes

    def __post_init__(self) -> None:
        for name in ("enc", "mac"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != KEY_SIZE:
                raise InvalidInput(f"repository {name} key must be {KEY_SIZE} bytes")
        if self.enc == self.mac:
            raise InvalidInput("repository enc and mac keys must differ")

    def __repr__(self) -> str:
        return "RepoKeys(<hidden>)"


def _hkdf(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(master)


def derive(master: bytes, repo_id: str) -> RepoKeys:
    """The repository's keys from its master data key (HKDF-SHA256, one info string per key)."""
    if not isinstance(master, (bytes, bytearray)) or len(master) != KEY_SIZE:
        raise InvalidInput(f"repository master key must be {KEY_SIZE} bytes")
    rid = check_repo_id(repo_id).encode("ascii")
    return RepoKeys(enc=_hkdf(bytes(master), _INFO_ENC + rid), mac=_hkdf(bytes(master), _INFO_MAC + rid))

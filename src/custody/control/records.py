"""Rows the database alone cannot forge: principals, zones and asset versions, signed by the custodian.

Who someone is (roles, team, tags, token hash, suspension, who added them), what a zone is (kind,
jurisdiction, security level, URL) and what a version is labelled (classification, jurisdictions,
zone floor) decide what the policy catalog allows, and so which keys
the custodian releases. Each such row is signed with the custodian's manifest key (ECDSA P-256)
whenever custody writes it through its one door, and checked against the public key kept in the
workspace folder every time it is read. A row inserted or edited by someone who can write the
database but does not hold the custodian fails that check, and whatever read it fails closed. The
digest of each row's newest signed state is also noted in the custodian's journal once the
transaction that signed it commits, so an earlier signed state put back (a suspension lifted, an
old token restored, a label lowered again) is refused too.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from custody.domain.errors import IntegrityError

_CACHE_MAX = 4096


def statement(kind: str, fields: dict) -> bytes:
    return f"custody-record-v1|{kind}|".encode() + json.dumps(fields, sort_keys=True, separators=(",", ":"),
                                                             default=str).encode()


@dataclass
class RecordKeys:
    """Signs rows with the custodian (only when custody writes one) and checks them with the public key."""

    sign_with: Callable[[bytes], bytes]
    public_pem: Callable[[], bytes]
    newest: Callable[[str, str], str | None] = lambda kind, ident: None  # the journal's digest of a row's newest state
    noted: Callable[[str], set[str]] = lambda kind: set()  # the ids of every row of a kind the journal noted
    _key: ec.EllipticCurvePublicKey | None = None
    _good: dict[bytes, bool] = field(default_factory=dict)

    def sign(self, kind: str, ident: str, fields: dict, signed: list | None = None) -> str:
        """The signature; (kind, ident, digest) goes on `signed`, noted in the journal after commit."""
        message = statement(kind, fields)
        if signed is not None:
            signed.append((kind, ident, hashlib.sha256(message).hexdigest()))
        return base64.b64encode(self.sign_with(message)).decode()

    def check(self, kind: str, ident: str, what: str, fields: dict, signature: str | None,
              pending: list | None = None) -> None:
        """`pending`: rows signed in the current transaction, not yet noted in the journal."""
        message = statement(kind, fields)
        digest = hashlib.sha256(message).hexdigest()
        newest = self.newest(kind, ident)
        if newest is not None and newest != digest and (kind, ident, digest) not in (pending or ()):
            raise IntegrityError(f"{what} was put back to an earlier state outside custody: the custodian noted a "
                                 "newer one")
        memo = message + b"|" + (signature or "").encode()
        if memo in self._good:
            return
        if not signature:
            raise IntegrityError(f"{what} carries no custodian signature: it was not written by custody")
        try:
            if self._key is None:
                key = load_pem_public_key(self.public_pem())
                assert isinstance(key, ec.EllipticCurvePublicKey)
                self._key = key
            self._key.verify(base64.b64decode(signature), message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            raise IntegrityError(f"{what} was altered outside custody: its custodian signature does not match") from None
        if len(self._good) > _CACHE_MAX:
            self._good.clear()
        self._good[memo] = True

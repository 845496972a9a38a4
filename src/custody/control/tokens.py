"""Principal tokens: `cst_<id>_<secret>`, stored as the SHA-256 of the whole token.

The id locates the row; the secret is compared through its hash in constant time. Tokens carry
256 bits of randomness, so a fast hash is enough (no password stretching needed).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from custody.domain.errors import InvalidInput

TOKEN_RE = re.compile(r"^cst_([a-z0-9]{16})_([A-Za-z0-9_-]{43})$")


def mint() -> tuple[str, str, str]:
    """A new token: (token, token_id, token_hash). Only the id and hash are stored."""
    token_id = secrets.token_hex(8)
    token = f"cst_{token_id}_{secrets.token_urlsafe(32)}"
    return token, token_id, digest(token)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_id(token: str) -> str | None:
    m = TOKEN_RE.fullmatch(token or "")
    return m.group(1) if m else None


def matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(digest(token), stored_hash)


def public_part(token: str) -> str:
    """What a token's holder hands over so a principal can be made for it: `ID:SHA256`, from which
    the token cannot be recovered."""
    token_id = parse_id(token)
    if token_id is None:
        raise InvalidInput("not a custody token")
    return f"{token_id}:{digest(token)}"


def fingerprint(token_hash: str) -> str:
    """What a holder and the approving officers compare: 32 hex digits of the token's hash, in groups."""
    return " ".join(token_hash[i:i + 8] for i in range(0, 32, 8))


PUBLIC_RE = re.compile(r"^([a-z0-9]{16}):([0-9a-f]{64})$")


def parse_public(public: str) -> tuple[str, str]:
    """(token id, token hash) of a public part made by `public_part`."""
    m = PUBLIC_RE.fullmatch(public or "")
    if m is None:
        raise InvalidInput("a public token is ID:SHA256 as `custody principal new-token` prints it")
    return m.group(1), m.group(2)

"""Portal session cookies: the token is given once at sign-in and kept only inside a sealed cookie.

The cookie is AES-256-GCM over {token, session id, name, roles, csrf, expiry} under a key kept in
the workspace (shared by every server process on it), so it cannot be read or forged in the
browser. The session id must also be live in the store (`services/sessions.py`): signing out
ends it everywhere. Every page acts with the principal's own token through the services (a
suspended principal's session stops at once). The CSRF value inside the session is echoed in
every form and compared in constant time. Failed sign-ins back off exponentially after a few,
per token id or per address (per server process; see `custody.api.throttle`).
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from custody.control import permissions

COOKIE = "custody_session"
PRE_COOKIE = "custody_signin"  # double-submit CSRF value for the sign-in form (no session yet)
KEY_FILE = "portal-session.key"
_AAD = b"custody portal session v1"


@dataclass(frozen=True)
class Session:
    token: str
    session_id: str
    name: str
    roles: tuple[str, ...]
    csrf: str
    expires: int

    def can(self, action: str) -> bool:
        """Whether to offer this action on a page; the service decides again when it is taken."""
        return permissions.allows(self.roles, action)


class SessionBox:
    """Seals and opens session cookies with the workspace's portal key."""

    def __init__(self, home: Path) -> None:
        self._aead = AESGCM(_load_or_create_key(home / KEY_FILE))

    def seal(self, token: str, session_id: str, name: str, roles: tuple[str, ...], lifetime: int) -> tuple[str, Session]:
        session = Session(token, session_id, name, tuple(roles), secrets.token_urlsafe(32), int(time.time()) + lifetime)
        body = json.dumps({"t": token, "s": session_id, "n": name, "r": list(roles), "c": session.csrf,
                           "e": session.expires}).encode()
        nonce = os.urandom(12)
        sealed = base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, body, _AAD)).rstrip(b"=")
        return sealed.decode(), session

    def open(self, cookie: str | None) -> Session | None:
        """The session in a cookie, or None for a missing, forged, tampered or expired one."""
        if not cookie or len(cookie) > 4096:
            return None
        try:
            raw = base64.urlsafe_b64decode(cookie.encode() + b"=" * (-len(cookie) % 4))
            body = json.loads(self._aead.decrypt(raw[:12], raw[12:], _AAD))
            session = Session(body["t"], body["s"], body["n"], tuple(body["r"]), body["c"], int(body["e"]))
        except (ValueError, InvalidTag, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())  # type: ignore[union-attr]


def _load_or_create_key(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) != 32:
            raise ValueError(f"{path} is not a 32-byte key") from None
        return key
    key = os.urandom(32)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
        fh.flush()
        os.fsync(fh.fileno())
    return key

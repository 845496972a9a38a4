"""TOTP second factors (RFC 6238): enrol once, then prove presence with a fresh code.

The seed is sealed by the custodian before it reaches the database, and every accepted code's
time step is recorded, so a code cannot be used twice, even within its 30-second window.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timezone

import pyotp

from custody.control.door import act
from custody.control.store import requests_repo as rq
from custody.control.store.db import UnitOfWork
from custody.control.workspace import Workspace
from custody.domain.errors import Denied, InvalidInput, InvalidState

ISSUER = "custody"


def _aad(principal: str) -> bytes:
    return f"mfa|{principal}".encode()


def enroll(ws: Workspace, token: str | None) -> dict:
    with act(ws, token, "mfa.enroll") as a:
        secret = pyotp.random_base32()
        rq.set_mfa(a.uow, a.principal.name, ws.custodian().seal_secret(secret.encode(), _aad(a.principal.name)))
        uri = pyotp.TOTP(secret).provisioning_uri(name=a.principal.name, issuer_name=f"{ISSUER} {ws.id[:8]}")
        a.record()
    return {"principal": a.principal.name, "secret": secret, "otpauth_uri": uri}


def check_code(ws: Workspace, uow: UnitOfWork, principal: str, code: str | None) -> None:
    """Accept `code` for `principal` once, or raise Denied / InvalidState."""
    if not code:
        raise Denied("a one-time code is required (--otp)")
    if not (code.isdigit() and len(code) == 6):
        raise InvalidInput("a one-time code is six digits")
    found = rq.mfa_of(uow, principal)
    if found is None:
        raise Denied(f"{principal} has no second factor: run `custody mfa enroll` first")
    secret = ws.custodian().open_secret(found[0], _aad(principal)).decode()
    totp = pyotp.TOTP(secret)
    now = datetime.now(timezone.utc)
    current = totp.timecode(now)
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            if found[1] is not None and step <= found[1]:
                raise InvalidState("this one-time code was already used")
            rq.spend_mfa_step(uow, principal, step)
            return
    raise Denied("wrong one-time code")


def verify(ws: Workspace, token: str | None, code: str) -> dict:
    with act(ws, token, "mfa.verify") as a:
        check_code(ws, a.uow, a.principal.name, code)
        a.record()
    return {"principal": a.principal.name, "verified": True}

"""TOTP second factors (RFC 6238): enrol, prove the new seed with a first code, then approve with codes.

A seed is sealed by the custodian before it reaches the database. A new seed is not in force until
a code from it is verified, and replacing a seed in force needs a code from the old one, so a stolen
token alone cannot swap in the thief's authenticator. Every accepted code's time step is recorded
(a code is good once), and after MAX_FAILURES wrong codes in LOCKOUT the factor refuses every code
until the window passes; the count comes from the ledger, which keeps every refusal.
"""

from __future__ import annotations

import hmac
import json
from datetime import datetime, timedelta, timezone
from json.encoder import encode_basestring_ascii

import pyotp
from sqlalchemy import select

from custody.keys.custodian import open_secret, seal_secret
from custody.control.door import act
from custody.control.ledger import store as ledger
from custody.control.store import requests_repo as rq
from custody.control.store import schema as t
from custody.control.store.db import UnitOfWork
from custody.control.workspace import Workspace
from custody.domain.errors import Denied, InvalidInput, InvalidState

ISSUER = "custody"
WRONG = "wrong one-time code"
MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)


def _aad(principal: str) -> bytes:
    return f"mfa|{principal}".encode()


def enroll(ws: Workspace, token: str | None, otp: str | None = None) -> dict:
    with act(ws, token, "mfa.enroll") as a:
        who = a.principal.name
        seeds = rq.mfa_of(a.uow, who)
        if seeds is not None and seeds.active is not None:
            if not otp:
                raise Denied("a second factor is already enrolled: re-enrol with a code from it (--otp)")
            check_code(ws, a.uow, who, otp)
        secret = pyotp.random_base32()
        rq.set_pending_mfa(a.uow, who, seal_secret(ws.custodian(), secret.encode(), _aad(who)))
        uri = pyotp.TOTP(secret).provisioning_uri(name=who, issuer_name=f"{ISSUER} {ws.id[:8]}")
        a.record(details={"replacing": seeds is not None and seeds.active is not None})
    return {"principal": who, "secret": secret, "otpauth_uri": uri,
            "next": "confirm with `custody mfa verify CODE`; the factor counts from then on"}


def _matching_step(secret: str, code: str) -> int | None:
    totp = pyotp.TOTP(secret)
    current = totp.timecode(datetime.now(timezone.utc))
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def _recent_failures(uow: UnitOfWork, principal: str) -> int:
    """Wrong codes in the lockout window, as the hashed ledger lines say (the indexed columns are copies
    anyone with the database could edit to hide a failure). The window is found by seq over the lines'
    own times; the database then narrows it to lines naming the principal and the refusal, and each of
    those is decoded and checked."""
    e = t.ledger_events.c
    since = (datetime.now(timezone.utc) - LOCKOUT).isoformat(timespec="microseconds").replace("+00:00", "Z")
    first = ledger.first_since(uow, since)
    named = f'"actor":{encode_basestring_ascii(principal)},'
    lines = uow.conn.execute(select(e.line).where(e.seq >= first, e.line.contains(named, autoescape=True),
                                                  e.line.contains(WRONG, autoescape=True))).scalars()
    return sum(1 for line in lines if _is_failure(line, principal, since))


def _is_failure(line: str, principal: str, since: str) -> bool:
    try:
        doc = json.loads(line)
    except ValueError:
        return False
    return (isinstance(doc, dict) and doc.get("actor") == principal and doc.get("outcome") == "denied"
            and isinstance(doc.get("details"), dict) and doc["details"].get("reason") == WRONG
            and isinstance(doc.get("time"), str) and doc["time"] >= since)


def _check(ws: Workspace, uow: UnitOfWork, principal: str, code: str | None, sealed: bytes | None,
           last_step: int | None, spend: bool = True) -> int:
    if not code:
        raise Denied("a one-time code is required (--otp)")
    if not (code.isascii() and code.isdigit() and len(code) == 6):
        raise InvalidInput("a one-time code is six digits")
    if sealed is None:
        raise Denied(f"{principal} has no second factor in force: `custody mfa enroll`, then `custody mfa verify`")
    if _recent_failures(uow, principal) >= MAX_FAILURES:
        raise Denied(f"second factor locked after {MAX_FAILURES} wrong codes; try again in {LOCKOUT.seconds // 60} min")
    step = _matching_step(open_secret(ws.custodian(), sealed, _aad(principal)).decode(), code)
    if step is None:
        raise Denied(WRONG)
    if last_step is not None and step <= last_step:
        raise InvalidState("this one-time code was already used")
    if spend:
        rq.spend_mfa_step(uow, principal, step)
    return step


def check_code(ws: Workspace, uow: UnitOfWork, principal: str, code: str | None) -> None:
    """Accept `code` from the seed in force for `principal` once, or raise Denied / InvalidState."""
    seeds = rq.mfa_of(uow, principal)
    _check(ws, uow, principal, code, seeds.active if seeds else None, seeds.last_step if seeds else None)


def verify(ws: Workspace, token: str | None, code: str) -> dict:
    """Check a code; the first good code from a newly enrolled seed puts that seed in force."""
    with act(ws, token, "mfa.verify") as a:
        who = a.principal.name
        seeds = rq.mfa_of(a.uow, who)
        pending = seeds is not None and seeds.pending is not None
        if pending:  # a new seed has no used codes yet; its first good code starts its history
            rq.activate_mfa(a.uow, who, _check(ws, a.uow, who, code, seeds.pending, None, spend=False))
        else:
            _check(ws, a.uow, who, code, seeds.active if seeds else None, seeds.last_step if seeds else None)
        a.record(details={"activated": pending})
    return {"principal": who, "verified": True, "activated": pending}



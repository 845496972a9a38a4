"""Portal sessions: started by a token, checked on every page, ended by signing out.

The browser's cookie carries a random session id (sealed, with the token, by the portal); the
store keeps only the id's SHA-256 and its principal and lifetime, so signing out ends the
session for every server process at once, and a copy of the database replays nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import insert, select, update

from custody.control import views
from custody.control.door import act
from custody.control.store import schema as t
from custody.control.workspace import Workspace

LIFETIME = timedelta(hours=8)


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def start(ws: Workspace, token: str | None) -> dict:
    """Authenticate a token for the portal; returns the principal and a new session id (secret)."""
    with act(ws, token, "session.sign_in") as a:
        session_id = secrets.token_urlsafe(32)
        now = datetime.now(timezone.utc)
        a.uow.conn.execute(insert(t.web_sessions).values(id_hash=_hash(session_id), principal=a.principal.name,
                                                          created_at=now, expires_at=now + LIFETIME))
        a.record(details={"expires_at": views.ts(now + LIFETIME)})
        return {**views.principal(a.principal), "session": session_id,
                "expires_in": int(LIFETIME.total_seconds())}


def live(ws: Workspace, session_id: str, principal: str) -> bool:
    """Is this session still on: started, not ended, not expired, and the principal's own?
    Read on every page, so not ledgered; the services each page calls ledger what it does."""
    s = t.web_sessions.c
    with ws.uow(readonly=True) as uow:
        row = uow.conn.execute(select(s.principal, s.expires_at, s.ended_at)
                               .where(s.id_hash == _hash(session_id))).first()
    if row is None or row.ended_at is not None or row.principal != principal:
        return False
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=timezone.utc)
    return expires > datetime.now(timezone.utc)


def end(ws: Workspace, token: str | None, session_id: str) -> dict:
    """Sign out: the session stops working in every server process at once."""
    with act(ws, token, "session.sign_out") as a:
        s = t.web_sessions.c
        ended = a.uow.conn.execute(update(t.web_sessions).where(
            s.id_hash == _hash(session_id), s.principal == a.principal.name, s.ended_at.is_(None))
            .values(ended_at=datetime.now(timezone.utc))).rowcount
        a.record(details={"ended": bool(ended)})
    return {"ended": bool(ended)}

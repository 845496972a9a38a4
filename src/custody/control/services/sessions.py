"""Portal sessions: started by a token, checked on every page, ended by signing out.

The browser's cookie carries a random session id (sealed, with the token, by the portal); the
store keeps only the id's SHA-256 and its principal and lifetime, so signing out ends the
session for every server process at once, and a copy of the database replays nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta, timezone

from custody.control import views
from custody.control.door import act
from custody.control.store import repositories as repo
from custody.control.workspace import Workspace

LIFETIME = timedelta(hours=8)


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def start(ws: Workspace, token: str | None) -> dict:
    """Authenticate a token for the portal; returns the principal and a new session id (secret)."""
    with act(ws, token, "session.sign_in") as a:
        session_id = secrets.token_urlsafe(32)
        now = datetime.now(timezone.utc)
        repo.add_web_session(a.uow, _hash(session_id), a.principal.name, now, now + LIFETIME)
        a.record(details={"expires_at": views.ts(now + LIFETIME)})
        return {**views.principal(a.principal), "session": session_id,
                "expires_in": int(LIFETIME.total_seconds())}


def live(ws: Workspace, session_id: str, principal: str) -> bool:
    """Is this session still on: started, not ended, not expired, and the principal's own?
    Read on every page, so not ledgered; the services each page calls ledger what it does."""
    with ws.uow(readonly=True) as uow:
        found = repo.web_session(uow, _hash(session_id))
    if found is None:
        return False
    owner, expires_at, ended_at = found
    return owner == principal and ended_at is None and expires_at > datetime.now(timezone.utc)


def end(ws: Workspace, token: str | None, session_id: str) -> dict:
    """Sign out: the session stops working in every server process at once."""
    with act(ws, token, "session.sign_out") as a:
        ended = repo.end_web_session(a.uow, _hash(session_id), a.principal.name, datetime.now(timezone.utc))
        a.record(details={"ended": ended})
    return {"ended": ended}

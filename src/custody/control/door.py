"""The one door every action goes through.

`act()` authenticates the principal, checks they may take the action, and opens the
transaction in which the service changes state and records the action's ledger event. If
anything refuses or fails, that transaction rolls back and the refusal or failure is ledgered
in a transaction of its own, so every action, allowed or not, leaves exactly one event. After each
commit a signed checkpoint is taken when one is due (`checkpoints.take_if_due`), and at once after
an action that made the custodian release a key (`Act.witness_now`): no window in which the event of
a read or a copy lives in the database alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from custody.control import permissions, tokens
from custody.control.ledger import checkpoints
from custody.control.ledger import store as ledger
from custody.control.store import repositories as repo
from custody.control.store.db import UnitOfWork
from custody.control.workspace import Workspace
from custody.domain.errors import AuthenticationError, CustodyError
from custody.domain.model import Event, Principal


def authenticate(uow: UnitOfWork, token: str | None) -> Principal:
    if not token:
        raise AuthenticationError("no token: set CUSTODY_TOKEN or pass --token")
    token_id = tokens.parse_id(token)
    found = repo.principal_by_token_id(uow, token_id) if token_id else None
    if found is None or not tokens.matches(token, found[1]):
        raise AuthenticationError("token not recognised")
    principal = found[0]
    if principal.suspended:
        raise AuthenticationError(f"principal {principal.name} is suspended")
    return principal


def _actor_for(token: str | None) -> str:
    token_id = tokens.parse_id(token or "")
    return f"token:{token_id}" if token_id else "anonymous"


@dataclass
class Act:
    """An action in progress: its transaction, its principal, and the event it will leave."""

    uow: UnitOfWork
    principal: Principal
    action: str
    subject: str | None = None
    fields: dict = field(default_factory=dict)
    event: Event | None = None
    witness_now: bool = False  # a key was released: checkpoint (and witness) this event at once, not on schedule

    def record(self, outcome: str = "ok", **fields) -> Event:  # noqa: ANN003
        """Append this action's event in the action's own transaction."""
        if self.event is not None:
            raise RuntimeError(f"{self.action} already recorded its event")
        merged = {"subject": self.subject, **self.fields, **fields}
        self.event = ledger.append(self.uow, actor=self.principal.name, action=self.action, outcome=outcome, **merged)
        return self.event


@contextmanager
def act(ws: Workspace, token: str | None, action: str, *, subject: str | None = None, deferred: bool = False,
        **fields) -> Iterator[Act]:  # noqa: ANN003
    """`deferred`: the action records its event later with `record_after` (audits of a ledger
    that may be broken must not depend on appending to it first)."""
    actor = _actor_for(token)
    current: Act | None = None
    try:
        with ws.uow() as uow:
            principal = authenticate(uow, token)
            actor = principal.name
            permissions.check(principal, action)
            current = Act(uow, principal, action, subject, dict(fields))
            yield current
            if current.event is None and not deferred:
                current.record()
    except CustodyError as exc:
        _record_failure(ws, actor, action, current, subject, fields, exc.outcome, exc.message)
        raise
    except Exception as exc:
        _record_failure(ws, actor, action, current, subject, fields, "error", type(exc).__name__)
        raise
    if current.event is not None:  # a deferred action's event comes with `record_after`
        checkpoints.take_if_due(ws, current.event.seq, now=current.witness_now)


def identify(ws: Workspace, token: str | None, action: str) -> Principal:
    """Authenticate and permit a read too frequent to ledger when it succeeds (a metrics scrape
    every few seconds); a refusal is ledgered like any other."""
    try:
        with ws.uow(readonly=True) as uow:
            principal = authenticate(uow, token)
            permissions.check(principal, action)
            return principal
    except CustodyError as exc:
        _record_failure(ws, _actor_for(token), action, None, None, {}, exc.outcome, exc.message)
        raise


def _record_failure(
    ws: Workspace, actor: str, action: str, current: Act | None, subject: str | None, fields: dict, outcome: str,
    reason: str,
) -> None:
    if current is not None:
        subject = current.subject
        fields = current.fields
    details = dict(fields.pop("details", None) or {}) if fields else {}
    details["reason"] = reason
    try:
        with ws.uow() as uow:
            event = ledger.append(uow, actor=actor, action=action, outcome=outcome, subject=subject, details=details,
                                  **{k: v for k, v in (fields or {}).items() if k != "details"})
    except Exception:  # noqa: BLE001
        return  # the original error is what the caller must see; the database is likely down
    checkpoints.take_if_due(ws, event.seq)


@contextmanager
def data_step(ws: Workspace, done: Act) -> Iterator[None]:
    """The data-plane step that follows a committed act: its failure is ledgered under the act's name."""
    try:
        yield
    except CustodyError as exc:
        _record_failure(ws, done.principal.name, done.action, done, None, {}, exc.outcome, exc.message)
        raise
    except Exception as exc:
        _record_failure(ws, done.principal.name, done.action, done, None, {}, "error", type(exc).__name__)
        raise


def record_after(ws: Workspace, done: Act, outcome: str = "ok", **fields) -> Event:  # noqa: ANN003
    """The closing event of an action whose data-plane step has finished."""
    merged = {"subject": done.subject, **done.fields, **fields}
    with ws.uow() as uow:
        event = ledger.append(uow, actor=done.principal.name, action=done.action, outcome=outcome, **merged)
    checkpoints.take_if_due(ws, event.seq)
    return event

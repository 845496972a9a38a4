"""Destroying backups before their retention ends (NIST CP-9(7)): two independent approvals.

The principal who wants a snapshot or a whole repository gone early proposes it; two others
(ml-lead or security, from distinct teams, with a second factor, not added by the proposer nor
after the proposal) approve within the window; then the proposer's delete goes through. Without
that, immutability holds against a single insider or a stolen admin token.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from custody.control import views
from custody.control.door import Act, act
from custody.control.services.signoffs import counting, sign_off
from custody.control.store import backups_repo as br
from custody.control.workspace import Workspace
from custody.domain.errors import InvalidInput, InvalidState
from custody.domain.model import new_id

APPROVALS = 2
ROLES = ("ml-lead", "security")
WINDOW = timedelta(hours=72)


def _statement(d: dict) -> dict:
    return {"deletion": d["id"], "target_kind": d["target_kind"], "target": d["target_id"]}


def _approvals(ws: Workspace, uow, d: dict) -> int:  # noqa: ANN001
    return len(counting(ws, uow, "deletion", d["id"], _statement(d), roles=ROLES, exclude=d["proposer"],
                        since=d["created_at"], distinct_teams=True))


def approved(ws: Workspace, a: Act, target_kind: str, target_id: str, reason: str) -> dict | None:
    """None when the acting principal holds an approved, fresh deletion of the target (it is spent
    now); otherwise the open deletion proposal, created if needed, for the caller to report."""
    d = br.open_deletion(a.uow, target_kind, target_id, a.principal.name)
    if d is not None and d["created_at"] + WINDOW < datetime.now(timezone.utc):
        br.close_deletion(a.uow, d["id"])  # stale: approvals must be recent
        d = None
    if d is not None and _approvals(ws, a.uow, d) >= APPROVALS:
        br.close_deletion(a.uow, d["id"])
        return None
    if d is None:
        deletion_id = new_id()
        br.add_deletion(a.uow, deletion_id, target_kind, target_id, a.principal.name, reason)
        d = br.deletion_by_id(a.uow, deletion_id)
    return {"deletion": d["id"], "state": "awaiting_approval", "target_kind": target_kind, "target": target_id,
            "approvals": _approvals(ws, a.uow, d), "needed": APPROVALS, "roles": list(ROLES), "mfa": True,
            "distinct_teams": True, "expires_at": views.ts(d["created_at"] + WINDOW)}


def approve(ws: Workspace, token: str | None, deletion_id: str, reason: str, otp: str | None) -> dict:
    with act(ws, token, "snapshot.approve-delete", subject=deletion_id, rationale=reason) as a:
        if not reason or not reason.strip():
            raise InvalidInput("approving a deletion needs a reason")
        d = br.deletion_by_id(a.uow, deletion_id)
        if d["state"] != "proposed" or d["created_at"] + WINDOW < datetime.now(timezone.utc):
            raise InvalidState(f"deletion {deletion_id} is no longer open")
        sign_off(ws, a, "deletion", deletion_id, _statement(d), otp=otp, comment=reason,
                 exclude=d["proposer"], since=d["created_at"])
        count = _approvals(ws, a.uow, d)
        a.record(details={"target_kind": d["target_kind"], "target": d["target_id"], "approvals": count})
    return {"deletion": deletion_id, "target_kind": d["target_kind"], "target": d["target_id"], "approvals": count,
            "needed": APPROVALS}

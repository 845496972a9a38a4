"""Mandatory reviews (opened by break-glass copies): two approvers other than the opener close one."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from custody.control import views
from custody.control.door import act
from custody.control.services.signoffs import counting, sign_off
from custody.control.store import requests_repo as rq
from custody.control.store.db import UnitOfWork
from custody.control.workspace import Workspace
from custody.domain.errors import InvalidInput, InvalidState

CLOSERS_NEEDED = 2
OVERDUE_AFTER = timedelta(hours=24)
APPROVING_ROLES = ("ml-lead", "security")


def _view(uow: UnitOfWork, r: dict) -> dict:
    now = datetime.now(timezone.utc)
    signers = [s.approver for s in rq.approvals(uow, "review", r["id"])]
    return {"id": r["id"], "kind": r["kind"], "request": r["request_id"], "opened_by": r["opened_by"],
            "opened_at": views.ts(r["opened_at"]), "closed_at": views.ts(r["closed_at"]), "summary": r["summary"],
            "state": "closed" if r["closed_at"] else "open", "signed_by": signers,
            "overdue": r["closed_at"] is None and now - r["opened_at"] > OVERDUE_AFTER}


def list_reviews(ws: Workspace, token: str | None, open_only: bool = False) -> list[dict]:
    with act(ws, token, "review.read") as a:
        return [_view(a.uow, r) for r in rq.reviews(a.uow, open_only)]


def close(ws: Workspace, token: str | None, review_id: str, comment: str, otp: str | None = None) -> dict:
    if not comment or not comment.strip():
        raise InvalidInput("closing a review needs a comment")
    with act(ws, token, "review.close", subject=review_id, rationale=comment) as a:
        review = rq.review_by_id(a.uow, review_id)
        if review["closed_at"] is not None:
            raise InvalidState(f"review {review_id} is already closed")
        statement = {"review": review_id, "request": review["request_id"]}
        sign_off(ws, a, "review", review_id, statement, otp=otp, comment=comment,
                 exclude=review["opened_by"], since=review["opened_at"])
        valid = counting(ws, a.uow, "review", review_id, statement, roles=APPROVING_ROLES,
                         exclude=review["opened_by"], since=review["opened_at"])
        if len(valid) >= CLOSERS_NEEDED:
            rq.close_review(a.uow, review_id)
        a.record(details={"signed": len(valid), "needed": CLOSERS_NEEDED})
        return _view(a.uow, rq.review_by_id(a.uow, review_id))

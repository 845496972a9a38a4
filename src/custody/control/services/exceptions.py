"""Policy exceptions: one policy switched off for one asset and one zone, for a while, by two approvers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from custody.control import views
from custody.control.door import act
from custody.control.policy.catalog import parse_duration
from custody.control.services.policy import active_catalog
from custody.control.services.signoffs import counting, sign_off
from custody.control.store import repositories as repo
from custody.control.store import requests_repo as rq
from custody.control.store.db import UnitOfWork
from custody.control.workspace import Workspace
from custody.domain.errors import InvalidInput, InvalidState, NotFound

APPROVALS_NEEDED = 2
APPROVING_ROLES = ("ml-lead", "security")


def _statement(e: dict) -> dict:
    return {"policy": e["policy_id"], "asset": e["asset_name"], "zone": e["zone"],
            "lifetime_seconds": int((e["expires_at"] - e["created_at"]).total_seconds())}


def _view(uow: UnitOfWork, e: dict) -> dict:
    now = datetime.now(timezone.utc)
    state = "expired" if e["state"] == "active" and e["expires_at"] <= now else e["state"]
    return {"id": e["id"], "policy": e["policy_id"], "asset": e["asset_name"], "zone": e["zone"],
            "justification": e["justification"], "proposer": e["proposer"], "state": state,
            "expires_at": views.ts(e["expires_at"]), "approved_by": [s.approver for s in rq.approvals(uow, "exception", e["id"])]}


def propose(ws: Workspace, token: str | None, *, policy: str, asset: str, zone: str, justification: str,
            expires: str) -> dict:
    if not justification or not justification.strip():
        raise InvalidInput("an exception needs a justification")
    with act(ws, token, "exception.propose", subject=policy, destination=zone, rationale=justification) as a:
        ids = {p["id"] for p in active_catalog(ws, a.uow).describe()["policies"]}
        if policy not in ids:
            raise NotFound(f"the active catalog has no policy {policy!r}")
        repo.asset_by_name(a.uow, asset)
        repo.zone_by_name(a.uow, zone)
        until = datetime.now(timezone.utc) + timedelta(seconds=parse_duration(expires))
        exc_id = rq.add_exception(a.uow, policy_id=policy, asset=asset, zone=zone, justification=justification,
                                  proposer=a.principal.name, expires_at=until)
        a.subject = exc_id
        a.record(details={"policy": policy, "asset": asset, "zone": zone, "expires_at": until.isoformat()})
        return _view(a.uow, rq.exception_by_id(a.uow, exc_id))


def approve(ws: Workspace, token: str | None, exc_id: str, otp: str | None = None, comment: str | None = None) -> dict:
    with act(ws, token, "exception.approve", subject=exc_id) as a:
        e = rq.exception_by_id(a.uow, exc_id)
        if e["state"] != "proposed":
            raise InvalidState(f"exception {exc_id} is {e['state']}")
        if e["expires_at"] <= datetime.now(timezone.utc):
            raise InvalidState(f"exception {exc_id} was proposed to last until {views.ts(e['expires_at'])}; propose it again")
        statement = _statement(e)
        sign_off(ws, a, "exception", exc_id, statement, otp=otp, comment=comment,
                 exclude=e["proposer"], since=e["created_at"])
        valid = counting(ws, a.uow, "exception", exc_id, statement, roles=APPROVING_ROLES, exclude=e["proposer"],
                         since=e["created_at"], distinct_teams=True)
        if len(valid) >= APPROVALS_NEEDED:
            # the exception's lifetime runs from activation, not from the proposal
            rq.activate_exception(a.uow, exc_id, datetime.now(timezone.utc) + (e["expires_at"] - e["created_at"]))
        a.record(details={"approvals": len(valid), "needed": APPROVALS_NEEDED})
        return _view(a.uow, rq.exception_by_id(a.uow, exc_id))


def revoke(ws: Workspace, token: str | None, exc_id: str, reason: str) -> dict:
    """End an exception before it expires: the policy it switched off applies again at once."""
    with act(ws, token, "exception.revoke", subject=exc_id, rationale=reason) as a:
        if not reason or not reason.strip():
            raise InvalidInput("revoking an exception needs a reason")
        e = rq.exception_by_id(a.uow, exc_id)
        if e["state"] not in ("proposed", "active"):
            raise InvalidState(f"exception {exc_id} is {e['state']}")
        rq.set_exception_state(a.uow, exc_id, "revoked")
        a.record(details={"policy": e["policy_id"], "asset": e["asset_name"], "zone": e["zone"]})
        return _view(a.uow, rq.exception_by_id(a.uow, exc_id))


def list_exceptions(ws: Workspace, token: str | None) -> list[dict]:
    with act(ws, token, "exception.read") as a:
        return [_view(a.uow, e) for e in rq.list_exceptions(a.uow)]

"""Sign-offs: one principal's signed assent to one subject (a request, a proposal, an exception, a review).

The control plane signs a statement naming exactly what was agreed to (for a request: its id,
the version digest and the destination), so an approval cannot be moved to other bytes or
another place. Counting re-checks every signature, so a sign-off row edited or inserted in the
database does not count.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from custody.control.door import Act
from custody.control.services import mfa
from custody.control.store import repositories as repo
from custody.control.store import requests_repo as rq
from custody.control.store.db import UnitOfWork
from custody.control.workspace import Workspace
from custody.domain.errors import Denied
from custody.domain.model import Principal
from custody.domain.requests import Approval


def _full(statement: dict, kind: str, subject_id: str, principal: str, at: datetime, verified: bool) -> bytes:
    doc = {**statement, "kind": kind, "subject": subject_id, "principal": principal, "at": at.isoformat(),
           "mfa": verified}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def creators(uow: UnitOfWork, principal: Principal, limit: int = 64) -> list[str]:
    """Who added `principal`, who added them, and so on up to a principal nobody added."""
    chain: list[str] = []
    current = principal.created_by
    while current and current not in chain and len(chain) < limit:
        chain.append(current)
        parent = repo.principal_by_name(uow, current, missing_ok=True)
        current = parent.created_by if parent else None
    return chain


def _through(chain: list[str], name: str) -> str | None:
    """How `name` is among the creators in `chain` ("" directly, " (through a, b)"), None if it is not."""
    if name not in chain:
        return None
    via = chain[: chain.index(name)]
    return f" (through {', '.join(via)})" if via else ""


def check_independent(uow: UnitOfWork, signer: Principal, exclude: str, since: datetime | None) -> None:
    """The signer may not be `exclude`, nor a principal `exclude` added (directly or through others they
    added), nor one who added `exclude` (ditto), nor one added after `since`: otherwise whoever asks
    could mint their own approvers, or approve for principals they minted (T1)."""
    if signer.name == exclude:
        raise Denied(f"{signer.name} cannot sign off their own {'request' if since else 'proposal'}")
    through = _through(creators(uow, signer), exclude)
    if through is not None:
        raise Denied(f"{signer.name} was added by {exclude}{through} and cannot approve for them")
    asker = repo.principal_by_name(uow, exclude, missing_ok=True)
    through = _through(creators(uow, asker), signer.name) if asker else None
    if through is not None:
        raise Denied(f"{exclude} was added by {signer.name}{through}, who cannot approve for them")
    if since is not None and signer.created_at is not None and signer.created_at > since:
        raise Denied(f"{signer.name} was added after this was asked for and cannot approve it")


def sign_off(ws: Workspace, a: Act, kind: str, subject_id: str, statement: dict, *, otp: str | None,
             comment: str | None, exclude: str = "", since: datetime | None = None) -> Approval:
    """Record `a.principal`'s sign-off. Every sign-off needs a verified one-time code: a principal
    without a second factor in force never counts as an approver of anything."""
    check_independent(a.uow, a.principal, exclude, since)
    mfa.check_code(ws, a.uow, a.principal.name, otp)
    return signed(ws, a, kind, subject_id, statement, comment)


def signed(ws: Workspace, a: Act, kind: str, subject_id: str, statement: dict, comment: str | None) -> Approval:
    """Sign and store a sign-off whose signer's independence and code the caller has checked."""
    at = datetime.now(timezone.utc)
    signature = base64.b64encode(
        ws.custodian().sign("signing", _full(statement, kind, subject_id, a.principal.name, at, True))).decode()
    approval = Approval(request_id=subject_id, approver=a.principal.name, team=a.principal.team,
                        roles=a.principal.roles, at=at, mfa_verified=True, comment=comment, signature=signature)
    rq.add_signoff(a.uow, kind, subject_id, approval)
    return approval


def counting(ws: Workspace, uow: UnitOfWork, kind: str, subject_id: str, statement: dict, *,
             roles: tuple[str, ...], exclude: str, since: datetime | None = None,
             distinct_teams: bool = False) -> list[Approval]:
    """The sign-offs that count now: signature valid over this statement, made with a verified code;
    signer still active, holding one of `roles`, with a second factor in force, independent of
    `exclude`; from distinct teams where required."""
    key = load_pem_public_key(ws.public_key_pem("signing"))
    counted: list[Approval] = []
    teams: set[str] = set()
    for s in rq.approvals(uow, kind, subject_id):
        who = repo.principal_by_name(uow, s.approver, missing_ok=True)
        if who is None or who.suspended or not who.has_role(*roles) or not s.mfa_verified:
            continue
        seeds = rq.mfa_of(uow, who.name)
        if seeds is None or seeds.active is None:
            continue
        try:
            check_independent(uow, who, exclude, since)
            key.verify(base64.b64decode(s.signature),
                       _full(statement, kind, subject_id, s.approver, s.at, s.mfa_verified), ec.ECDSA(hashes.SHA256()))
        except (Denied, InvalidSignature, ValueError):
            continue
        if distinct_teams:
            if not who.team or who.team in teams:
                continue
            teams.add(who.team)
        counted.append(s)
    return counted

"""Sign-offs: one principal's signed assent to one subject (a request, a proposal, an exception, a review).

The control plane signs a statement naming exactly what was agreed to (for a request: its id,
the version digest and the destination), so an approval cannot be moved to other bytes or
another place; the signature is stored with the sign-off and can be checked with the signing
public key.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

from custody.control.door import Act
from custody.control.services import mfa
from custody.control.store import repositories as repo
from custody.control.store import requests_repo as rq
from custody.control.store.db import UnitOfWork
from custody.control.workspace import Workspace
from custody.domain.requests import Approval


def valid_signers(uow: UnitOfWork, kind: str, subject_id: str, roles: tuple[str, ...], exclude: str) -> list[Approval]:
    """Sign-offs that count now: by principals still active, holding one of `roles`, other than `exclude`."""
    out = []
    for s in rq.approvals(uow, kind, subject_id):
        p = repo.principal_by_name(uow, s.approver, missing_ok=True)
        if p is not None and not p.suspended and p.has_role(*roles) and s.approver != exclude:
            out.append(s)
    return out


def statement_bytes(statement: dict) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def sign_off(ws: Workspace, a: Act, kind: str, subject_id: str, statement: dict, *, otp: str | None,
             comment: str | None, mfa_required: bool) -> Approval:
    """Record `a.principal`'s sign-off; verifies the TOTP code first when one is given or required."""
    verified = False
    if otp or mfa_required:
        mfa.check_code(ws, a.uow, a.principal.name, otp)
        verified = True
    at = datetime.now(timezone.utc)
    full = {**statement, "kind": kind, "subject": subject_id, "principal": a.principal.name,
            "at": at.isoformat(), "mfa": verified}
    signature = base64.b64encode(ws.custodian().sign("signing", statement_bytes(full))).decode()
    approval = Approval(request_id=subject_id, approver=a.principal.name, team=a.principal.team,
                        roles=a.principal.roles, at=at, mfa_verified=verified, comment=comment, signature=signature)
    rq.add_signoff(a.uow, kind, subject_id, approval)
    return approval

"""The REST API: one route per service function, nothing else.

Routes parse, authenticate by bearer token (passed to the service, which authenticates and
ledgers like the CLI does) and render; errors carry the CLI's exit code so a client can exit
the same way. Served by `custody serve` (Uvicorn); the OpenAPI document is at /openapi.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from custody import __version__
from custody.control.services import (
    assets,
    audit,
    backups,
    copies,
    deletions,
    drills,
    exceptions,
    health,
    keys,
    metrics,
    mfa,
    principals,
    replicas,
    requests,
    restores,
    reviews,
    snapshots,
    sweep,
    zones,
)
from custody.control.services import policy as policy_service
from custody.control.workspace import Workspace
from custody.domain.errors import AuthenticationError, CustodyError

STATUS = {1: 500, 2: 400, 3: 403, 4: 404, 5: 422, 6: 409}


def status_for(exc: CustodyError) -> int:
    return 401 if isinstance(exc, AuthenticationError) else STATUS.get(exc.exit_code, 500)


def bearer(authorization: Annotated[str | None, Header()] = None) -> str | None:
    """The token of `Authorization: Bearer <token>`; a missing one is refused (and ledgered) by the service."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


Token = Annotated[str | None, Depends(bearer)]


class ZoneIn(BaseModel):
    name: str
    url: str
    kind: str
    region: str
    jurisdiction: str
    security_level: int


class PrincipalIn(BaseModel):
    name: str
    roles: list[str]
    team: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)


class RegisterIn(BaseModel):
    name: str
    path: str  # on the server's file system
    sensitivity: str | None = None
    jurisdictions: list[str] = Field(default_factory=list)
    min_security_level: int | None = None
    owner: str | None = None
    zone: str = "prod"


class Reason(BaseModel):
    reason: str


class RequestIn(BaseModel):
    asset: str
    to: str
    kind: str
    purpose: str
    ttl: str | None = None
    source: str | None = Field(default=None, alias="from")
    break_glass: bool = False
    run: bool = False


class ApproveIn(BaseModel):
    otp: str | None = None
    comment: str | None = None


class CodeIn(BaseModel):
    code: str


class EnrollIn(BaseModel):
    otp: str | None = None


class CommentIn(BaseModel):
    comment: str
    otp: str | None = None


class ExceptionIn(BaseModel):
    policy: str
    asset: str
    zone: str
    justification: str
    expires: str


class ProposalIn(BaseModel):
    folder: str  # on the server's file system
    purpose: str


class BackupPolicyIn(BaseModel):
    zone: str
    every: str
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 6
    rpo: str = "24h"
    rto: str = "1h"


class BackupRunIn(BaseModel):
    asset: str | None = None
    due: bool = False


class RestoreIn(BaseModel):
    snapshot: str
    to: str
    purpose: str
    kind: str = "restore"


class VerifyIn(BaseModel):
    read_data: bool = False
    subset: float | None = None


class DrillIn(BaseModel):
    asset: str | None = None
    all: bool = False
    zone: str = "dr"


class ApproveDeleteIn(BaseModel):
    reason: str
    otp: str | None = None


def create_app(home: Path | None = None) -> FastAPI:
    ws = Workspace.open(home)
    app = FastAPI(title="custody", version=__version__,
                  description="Governed, sealed, ledgered copies of model weights.")
    app.state.ws = ws

    @app.exception_handler(CustodyError)
    async def _custody_error(_: Request, exc: CustodyError) -> JSONResponse:
        return JSONResponse({"error": exc.message, "exit_code": exc.exit_code}, status_code=status_for(exc))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        problems = health.problems(ws)
        return JSONResponse({"ready": not problems, "problems": problems}, status_code=200 if not problems else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics_() -> str:
        return metrics.prometheus(ws)

    v1 = "/api/v1"

    # zones, principals ------------------------------------------------------------------
    @app.get(f"{v1}/zones")
    def zone_list(token: Token) -> Any:
        return zones.list_zones(ws, token)

    @app.post(f"{v1}/zones", status_code=201)
    def zone_add(body: ZoneIn, token: Token) -> Any:
        return zones.add_zone(ws, token, **body.model_dump())

    @app.get(f"{v1}/zones/{{name}}")
    def zone_show(name: str, token: Token) -> Any:
        return zones.show_zone(ws, token, name)

    @app.get(f"{v1}/principals")
    def principal_list(token: Token) -> Any:
        return principals.list_principals(ws, token)

    @app.post(f"{v1}/principals", status_code=201)
    def principal_add(body: PrincipalIn, token: Token) -> Any:
        p, new_token = principals.add_principal(ws, token, **body.model_dump())
        return {**p, "token": new_token}

    @app.post(f"{v1}/principals/{{name}}/suspend")
    def principal_suspend(name: str, token: Token) -> Any:
        return principals.suspend_principal(ws, token, name)

    # assets, replicas, keys ---------------------------------------------------------------
    @app.get(f"{v1}/assets")
    def asset_list(token: Token) -> Any:
        return assets.list_assets(ws, token)

    @app.post(f"{v1}/assets", status_code=201)
    def asset_register(body: RegisterIn, token: Token) -> Any:
        opts = assets.RegisterOptions(classification=body.sensitivity, jurisdictions=tuple(body.jurisdictions),
                                      min_security_level=body.min_security_level, owner=body.owner, zone=body.zone)
        return assets.register(ws, token, body.name, Path(body.path), opts)

    @app.get(f"{v1}/assets/{{ref}}")
    def asset_show(ref: str, token: Token) -> Any:
        return assets.show_asset(ws, token, ref)

    @app.get(f"{v1}/assets/{{ref}}/bundle")
    def asset_bundle(ref: str, token: Token) -> Any:
        return JSONResponse(content=json.loads(assets.signature_bundle(ws, token, ref)))

    @app.get(f"{v1}/replicas")
    def replica_list(token: Token, asset: str | None = None, zone: str | None = None, state: str | None = None) -> Any:
        return replicas.list_replicas(ws, token, asset=asset, zone=zone, state=state)

    @app.get(f"{v1}/replicas/{{replica_id}}")
    def replica_show(replica_id: str, token: Token) -> Any:
        return replicas.show_replica(ws, token, replica_id)

    @app.post(f"{v1}/replicas/{{replica_id}}/verify")
    def replica_verify(replica_id: str, token: Token) -> Any:
        return replicas.verify_replica(ws, token, replica_id)

    @app.post(f"{v1}/replicas/{{replica_id}}/revoke")
    def replica_revoke(replica_id: str, body: Reason, token: Token) -> Any:
        return replicas.revoke_replica(ws, token, replica_id, body.reason)

    @app.get(f"{v1}/keys")
    def keys_status(token: Token) -> Any:
        return keys.status(ws, token)

    @app.post(f"{v1}/keys/{{zone}}/rotate")
    def keys_rotate(zone: str, token: Token) -> Any:
        return keys.rotate(ws, token, zone)

    @app.get(f"{v1}/keys/public/{{purpose}}", response_class=PlainTextResponse)
    def keys_public(purpose: str, token: Token) -> str:
        return keys.public_key(ws, token, purpose).decode()

    # policy, requests, MFA, reviews, exceptions -------------------------------------------------
    @app.get(f"{v1}/policy")
    def policy_show(token: Token) -> Any:
        return policy_service.show(ws, token)

    @app.post(f"{v1}/policy/test")
    def policy_test(token: Token) -> Any:
        try:
            return policy_service.test(ws, token)
        except policy_service.PolicyTestsFailed as exc:
            return JSONResponse({**exc.result, "error": exc.message, "exit_code": 1}, status_code=422)

    @app.post(f"{v1}/policy/proposals", status_code=201)
    def policy_propose(body: ProposalIn, token: Token) -> Any:
        return policy_service.propose(ws, token, Path(body.folder), body.purpose)

    @app.post(f"{v1}/policy/proposals/{{pid}}/approve")
    def policy_approve(pid: str, body: ApproveIn, token: Token) -> Any:
        return policy_service.approve(ws, token, pid, body.otp, body.comment)

    @app.post(f"{v1}/policy/proposals/{{pid}}/apply")
    def policy_apply(pid: str, token: Token) -> Any:
        return policy_service.apply(ws, token, pid)

    @app.get(f"{v1}/requests")
    def request_list(token: Token, mine: bool = False, awaiting_me: bool = False, state: str | None = None) -> Any:
        return requests.list_requests(ws, token, mine=mine, awaiting_me=awaiting_me, state=state)

    @app.post(f"{v1}/requests", status_code=201)
    def request_create(body: RequestIn, token: Token) -> Any:
        try:
            r = requests.create(ws, token, body.asset, to=body.to, kind=body.kind, purpose=body.purpose, ttl=body.ttl,
                                source=body.source, break_glass=body.break_glass)
        except requests.RequestDenied as exc:
            return JSONResponse({"error": exc.message, "exit_code": exc.exit_code, "request": exc.request.id,
                                 "decision": exc.decision.to_dict()}, status_code=403)
        if body.run and r["state"] == "approved":
            r = copies.run(ws, token, r["id"])
        return r

    @app.get(f"{v1}/requests/{{rid}}")
    def request_show(rid: str, token: Token) -> Any:
        return requests.show_request(ws, token, rid)

    @app.get(f"{v1}/requests/{{rid}}/explain")
    def request_explain(rid: str, token: Token) -> Any:
        return requests.explain(ws, token, rid)

    @app.post(f"{v1}/requests/{{rid}}/approve")
    def request_approve(rid: str, body: ApproveIn, token: Token) -> Any:
        return requests.approve(ws, token, rid, otp=body.otp, comment=body.comment)

    @app.post(f"{v1}/requests/{{rid}}/deny")
    def request_deny(rid: str, body: Reason, token: Token) -> Any:
        return requests.deny(ws, token, rid, body.reason)

    @app.post(f"{v1}/requests/{{rid}}/cancel")
    def request_cancel(rid: str, token: Token) -> Any:
        return requests.cancel(ws, token, rid)

    @app.post(f"{v1}/requests/{{rid}}/run")
    def request_run(rid: str, token: Token) -> Any:
        return copies.run(ws, token, rid)

    @app.post(f"{v1}/requests/{{rid}}/revoke")
    def request_revoke(rid: str, body: Reason, token: Token) -> Any:
        return copies.revoke(ws, token, rid, body.reason)

    @app.post(f"{v1}/mfa/enroll")
    def mfa_enroll(body: EnrollIn, token: Token) -> Any:
        return mfa.enroll(ws, token, body.otp)

    @app.post(f"{v1}/mfa/verify")
    def mfa_verify(body: CodeIn, token: Token) -> Any:
        return mfa.verify(ws, token, body.code)

    @app.get(f"{v1}/reviews")
    def review_list(token: Token, open_only: bool = False) -> Any:
        return reviews.list_reviews(ws, token, open_only)

    @app.post(f"{v1}/reviews/{{review_id}}/close")
    def review_close(review_id: str, body: CommentIn, token: Token) -> Any:
        return reviews.close(ws, token, review_id, body.comment, body.otp)

    @app.get(f"{v1}/exceptions")
    def exception_list(token: Token) -> Any:
        return exceptions.list_exceptions(ws, token)

    @app.post(f"{v1}/exceptions", status_code=201)
    def exception_propose(body: ExceptionIn, token: Token) -> Any:
        return exceptions.propose(ws, token, **body.model_dump())

    @app.post(f"{v1}/exceptions/{{exc_id}}/approve")
    def exception_approve(exc_id: str, body: ApproveIn, token: Token) -> Any:
        return exceptions.approve(ws, token, exc_id, body.otp, body.comment)

    @app.post(f"{v1}/exceptions/{{exc_id}}/revoke")
    def exception_revoke(exc_id: str, body: Reason, token: Token) -> Any:
        return exceptions.revoke(ws, token, exc_id, body.reason)

    # backups, snapshots, restores, drills ------------------------------------------------------
    @app.get(f"{v1}/backups/policies")
    def backup_policies(token: Token) -> Any:
        return backups.list_policies(ws, token)

    @app.put(f"{v1}/backups/policies/{{asset}}")
    def backup_policy_set(asset: str, body: BackupPolicyIn, token: Token) -> Any:
        return backups.set_policy(ws, token, asset, **body.model_dump())

    @app.post(f"{v1}/backups/run")
    def backup_run(body: BackupRunIn, token: Token) -> Any:
        return backups.run(ws, token, body.asset, due=body.due)

    @app.get(f"{v1}/backups/status")
    def backup_status(token: Token) -> Any:
        return backups.status(ws, token)

    @app.get(f"{v1}/snapshots")
    def snapshot_list(token: Token, asset: str | None = None) -> Any:
        return snapshots.list_snapshots(ws, token, asset)

    @app.get(f"{v1}/snapshots/{{sid}}")
    def snapshot_show(sid: str, token: Token) -> Any:
        return snapshots.show(ws, token, sid)

    @app.post(f"{v1}/snapshots/{{sid}}/verify")
    def snapshot_verify(sid: str, body: VerifyIn, token: Token) -> Any:
        return snapshots.verify(ws, token, sid, read_data=body.read_data, subset=body.subset)

    @app.post(f"{v1}/snapshots/{{sid}}/delete")
    def snapshot_delete(sid: str, body: Reason, token: Token) -> Any:
        return snapshots.delete(ws, token, sid, body.reason)

    @app.post(f"{v1}/deletions/{{did}}/approve")
    def deletion_approve(did: str, body: ApproveDeleteIn, token: Token) -> Any:
        return deletions.approve(ws, token, did, body.reason, body.otp)

    @app.post(f"{v1}/restores", status_code=201)
    def restore(body: RestoreIn, token: Token) -> Any:
        return restores.restore(ws, token, body.snapshot, to=body.to, purpose=body.purpose, kind=body.kind)

    @app.post(f"{v1}/drills")
    def drill(body: DrillIn, token: Token) -> Any:
        try:
            return drills.drill_dr(ws, token, asset=body.asset, all_assets=body.all, zone=body.zone)
        except drills.DrillFailed as exc:
            return JSONResponse({**exc.report, "error": exc.message, "exit_code": 1}, status_code=422)

    # ledger, sweep ------------------------------------------------------------------------
    @app.post(f"{v1}/audit/checkpoint")
    def audit_checkpoint(token: Token) -> Any:
        return audit.make_checkpoint(ws, token)

    @app.get(f"{v1}/audit/proofs/{{seq}}")
    def audit_prove(seq: int, token: Token, size: int | None = None) -> Any:
        return audit.prove(ws, token, seq, size)

    @app.get(f"{v1}/audit/consistency")
    def audit_consistency(old: int, new: int, token: Token) -> Any:
        return audit.consistency(ws, token, old, new)

    @app.post(f"{v1}/audit/verify")
    def audit_verify(token: Token) -> Any:
        return audit.verify(ws, token)

    @app.post(f"{v1}/sweep")
    def sweep_(token: Token) -> Any:
        return sweep.sweep(ws, token)

    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory`: the workspace named by CUSTODY_HOME."""
    home = os.environ.get("CUSTODY_HOME")
    return create_app(Path(home) if home else None)

"""Copy requests: ask with a purpose, decide by policy, approve by others, then copy under a grant.

create → decided at once (denied | awaiting_approval | approved); approvals are counted under
the rule the decision chose; when enough count, a single-use grant is minted; `run` spends the
grant, has the data plane copy into a fresh key, and activates the replica with its expiry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from custody.control import views
from custody.control.door import Act, act
from custody.control.policy.catalog import parse_duration
from custody.control.policy.context import ApproveFacts, CopyFacts, asset_facts, principal_facts, zone_facts
from custody.control.services import assets as asset_service
from custody.control.services import identity, lifetimes
from custody.control.services.policy import active_catalog
from custody.control.services.signoffs import counting, sign_off
from custody.control.store import repositories as repo
from custody.control.store import requests_repo as rq
from custody.control.store.db import UnitOfWork
from custody.control.workspace import Workspace
from custody.keys.custodian import grant_root_key
from custody.domain.errors import Denied, InvalidInput, InvalidState, NotFound
from custody.domain.model import Asset, AssetVersion, Principal, Replica, ReplicaKind, ReplicaState, Zone, ZoneKind, new_id
from custody.domain import recipes
from custody.domain.recipes import Recipe
from custody.domain.requests import NO_EXPIRY, Approval, Decision, Request, RequestKind, RequestState

GRANT_WINDOW = timedelta(hours=24)


def _now() -> datetime:
    return datetime.now(timezone.utc)


# -- policy -------------------------------------------------------------------------------


def _decide(ws: Workspace, uow: UnitOfWork, principal: Principal, asset: Asset, version: AssetVersion,
            source_zone: Zone, dest: Zone, kind: str, ttl: int | None, purpose: str, break_glass: bool,
            recipe: Recipe | None = None) -> Decision:
    facts = CopyFacts(
        principal=principal_facts(principal), asset=asset_facts(asset, version), source=zone_facts(source_zone),
        destination=zone_facts(dest), kind=kind, ttl_seconds=ttl, purpose=purpose, break_glass=break_glass,
        exceptions=rq.active_exceptions(uow, asset.name, dest.name, _now()),
        transform=recipe.kinds if recipe else (), transform_bits=recipe.bits if recipe else 0,
    )
    return active_catalog(ws, uow).decide_copy(facts)


# -- create -------------------------------------------------------------------------------


def create(ws: Workspace, token: str | None, ref: str | None, *, to: str | None = None, kind: str, purpose: str,
           ttl: str | None = None, source: str | None = None, break_glass: bool = False,
           snapshot: str | None = None, method: str = "replica", drill: bool = False,
           transform: str | None = None) -> dict:
    """Ask for a copy of ASSET[@VERSION] (from a replica), a restore of a snapshot (`snapshot`), a
    read of a replica in place (kind "read": no destination), or a derivative made by a recipe
    (kind "derivative", `transform`)."""
    with act(ws, token, "request.create", subject=ref or snapshot, destination=to, rationale=purpose) as a:
        plan = _plan(ws, a, ref, to=to, kind=kind, purpose=purpose, ttl=ttl, source=source, break_glass=break_glass,
                     snapshot=snapshot, drill=drill, transform=transform)
        decision = plan.decision
        request = Request(
            id=new_id(), requester=a.principal.name, asset=plan.asset.name, version_id=plan.version.id,
            version_digest=plan.version.digest, source_replica=plan.source_replica,
            destination_zone=plan.destination.name, kind=plan.kind, purpose=purpose.strip(),
            state=RequestState.PENDING, ttl_seconds=plan.ttl_seconds, break_glass=break_glass, decision=decision,
            created_at=_now(), source_snapshot=snapshot, method=method,
            transform=plan.recipe.text if plan.recipe else None,
        )
        rq.add_request(a.uow, request)
        a.subject = request.id
        a.fields["policy_ids"] = decision.policy_ids
        if not decision.allowed:
            current = rq.move_request(a.uow, request, RequestState.DENIED)
            outcome, details = "denied", {"reasons": list(decision.reasons), "asset": ref,
                                          "catalog_hash": decision.catalog_hash}
        else:
            current = _after_decision(ws, a, request)
            if break_glass:
                _open_break_glass_review(a, request)
            outcome, details = "ok", {"state": current.state.value, "asset": ref, "kind": kind,
                                      **({"transform": plan.recipe.text} if plan.recipe else {}),
                                      "catalog_hash": decision.catalog_hash,
                                      "requirement": decision.requirement.to_dict() if decision.requirement else None}
        created = view(ws, a.uow, current)  # a new request: no sign-offs yet, nothing to read back
        a.record(outcome=outcome, details=details)
    if not decision.allowed:
        raise RequestDenied(request, decision)
    return created


@dataclass(frozen=True)
class _Plan:
    kind: RequestKind
    asset: Asset
    version: AssetVersion
    source_replica: str | None
    destination: Zone
    decision: Decision
    ttl_seconds: int | None
    recipe: Recipe | None = None


def _plan(ws: Workspace, a: Act, ref: str | None, *, to: str | None, kind: str, purpose: str, ttl: str | None,
          source: str | None, break_glass: bool, snapshot: str | None = None, drill: bool = False,
          transform: str | None = None) -> _Plan:
    """Check a request's arguments and decide it: what `create` stores and `preview` shows."""
    try:
        request_kind = RequestKind(kind)
    except ValueError:
        raise InvalidInput(f"unknown kind {kind!r}: one of {', '.join(k.value for k in RequestKind)}") from None
    if not purpose or not purpose.strip():
        raise InvalidInput("a request needs a purpose (--purpose)")
    ttl_seconds = parse_duration(ttl) if ttl else None
    if break_glass and request_kind is not RequestKind.DR:
        raise InvalidInput("--break-glass is only for dr requests")
    if snapshot:
        asset, version, src_zone, src_replica_id = _source_snapshot(a.uow, snapshot)
        src = None
    else:
        asset, version = asset_service.resolve_version(a.uow, ref)
        src = _source_replica(a.uow, asset.name, version, source, request_kind)
        src_zone, src_replica_id = repo.zone_by_name(a.uow, src.zone), src.id
    if request_kind is RequestKind.READ:
        return _plan_read(ws, a, asset, version, src, to, purpose, ttl_seconds)
    recipe = None
    if request_kind is RequestKind.DERIVATIVE:  # validated before the decision, which sees its steps and bits
        recipe = recipes.parse(transform or "")
    elif transform:
        raise InvalidInput("--transform is for derivatives (--kind derivative)")
    if (request_kind is RequestKind.DRILL) != drill:
        raise InvalidInput("drill requests are made by `custody drill dr` only")
    if request_kind in SNAPSHOT_KINDS and snapshot is None:
        raise InvalidInput("restore and drill requests read a snapshot")
    if snapshot is not None and request_kind not in SNAPSHOT_KINDS | {RequestKind.DR}:
        raise InvalidInput("a snapshot is restored by a restore, dr or drill request")
    if not to:
        raise InvalidInput("a copy needs a destination zone (--to)")
    dest = repo.zone_by_name(a.uow, to)
    decision = _decide(ws, a.uow, a.principal, asset, version, src_zone, dest, request_kind.value,
                       ttl_seconds, purpose, break_glass, recipe)
    if src is not None:  # a copy is not made from an expired replica, nor outlives it (T12); checked again at run
        lifetimes.check_source(src, ttl_seconds, request_kind)
    if decision.allowed and ttl_seconds is None and request_kind not in NO_EXPIRY:
        ttl_seconds = decision.requirement.max_ttl_seconds if decision.requirement else None
        if ttl_seconds is None:
            raise InvalidInput(f"{request_kind.value} copies need an expiry: pass --ttl")
    return _Plan(request_kind, asset, version, src_replica_id, dest, decision, ttl_seconds, recipe)


def _plan_read(ws: Workspace, a: Act, asset: Asset, version: AssetVersion, replica: Replica, to: str | None,
               purpose: str, ttl_seconds: int | None) -> _Plan:
    """A read request reads its replica where it lives: decided by the catalog's read action, approved
    like a research copy of the asset, usable once within its TTL (an hour unless asked otherwise)."""
    from custody.control.services import reads

    zone = repo.zone_by_name(a.uow, replica.zone)
    if to and to != zone.name:
        raise InvalidInput(f"a read request reads replica {replica.id} where it lives (zone {zone.name}): drop --to")
    ttl_seconds = ttl_seconds or reads.READ_TTL
    lifetimes.check_source(replica, ttl_seconds, RequestKind.READ)
    decision = active_catalog(ws, a.uow).decide_read(
        reads.facts(a.uow, a.principal, replica, "asking", purpose, ttl_seconds))
    return _Plan(RequestKind.READ, asset, version, replica.id, zone, decision, ttl_seconds)


def preview(ws: Workspace, token: str | None, ref: str, *, to: str | None = None, kind: str, purpose: str,
            ttl: str | None = None, source: str | None = None, transform: str | None = None) -> dict:
    """The decision a request would get and the approvals it would need; nothing is stored but the event."""
    with act(ws, token, "request.preview", subject=ref, destination=to, rationale=purpose) as a:
        plan = _plan(ws, a, ref, to=to, kind=kind, purpose=purpose, ttl=ttl, source=source, break_glass=False,
                     transform=transform)
        a.record(outcome="allow" if plan.decision.allowed else "deny", details={"policy_ids": plan.decision.policy_ids})
    return {"asset": plan.asset.name, "version": plan.version.number, "destination": plan.destination.name,
            "kind": kind, "ttl_seconds": plan.ttl_seconds, "decision": plan.decision.to_dict(),
            **({"transform": plan.recipe.text} if plan.recipe else {})}


def choices(ws: Workspace, token: str | None, asset: str) -> list[dict]:
    """The (zone, kind) pairs the caller may ask for, for one asset's newest version: allowed
    outright or with approvals.

    Decided with a placeholder purpose and a one-hour TTL; a purpose or TTL the catalog reads can
    still change the answer, which `preview` shows before anything is submitted.
    """
    with act(ws, token, "request.preview", subject=asset, details={"what": "choices"}) as a:
        found, version = asset_service.resolve_version(a.uow, asset)
        src = _source_replica(a.uow, found.name, version, None)
        src_zone = repo.zone_by_name(a.uow, src.zone)
        out = []
        for dest in repo.list_zones(a.uow):
            for kind in ASKABLE_KINDS:
                d = _decide(ws, a.uow, a.principal, found, version, src_zone, dest, kind.value,
                            None if kind in NO_EXPIRY else 3600, "(choosing)", False,
                            SAMPLE_RECIPE if kind is RequestKind.DERIVATIVE else None)
                if d.allowed:
                    req = d.requirement
                    out.append({"asset": found.name, "version": version.number, "zone": dest.name,
                                "kind": kind.value, "approvals": req.approvals if req else 0,
                                "max_ttl_seconds": req.max_ttl_seconds if req else None})
        a.record(details={"choices": len(out)})
        return out


ASKABLE_KINDS = (RequestKind.RESEARCH, RequestKind.DERIVATIVE, RequestKind.BACKUP, RequestKind.DR, RequestKind.MIGRATION)
SAMPLE_RECIPE = recipes.parse("int4:group=64")  # a derivative is offered as its usual recipe decides; preview shows the exact one


class RequestDenied(Denied):
    """A request policy refused; carries the request so callers can show its id and reasons."""

    def __init__(self, request: Request, decision: Decision) -> None:
        reasons = "; ".join(decision.reasons) or "no policy permits it"
        super().__init__(f"request {request.id} denied: {reasons}")
        self.request = request
        self.decision = decision

    @property
    def details(self) -> dict:
        return {"request": self.request.id, "decision": self.decision.to_dict()}


SNAPSHOT_KINDS = frozenset({RequestKind.RESTORE, RequestKind.DRILL})


def _source_snapshot(uow: UnitOfWork, snapshot_id: str):  # noqa: ANN202
    from custody.control.store import backups_repo as br

    snap = br.snapshot_by_id(uow, snapshot_id)
    if snap.state != "active":
        raise InvalidState(f"snapshot {snapshot_id} is {snap.state}")
    asset = repo.asset_by_name(uow, snap.asset)
    version = repo.version_by_id(uow, snap.version_id)
    zone = repo.zone_by_name(uow, br.repository_by_id(uow, snap.repo_id)["zone"])
    return asset, version, zone, None


SOURCE_KINDS = ("primary", "backup", "dr")  # copies are made from these, never from a copy of a copy


def _source_replica(uow: UnitOfWork, asset: str, version: AssetVersion, source: str | None,  # noqa: ANN202
                    kind: RequestKind | None = None):
    if source:
        replica = repo.replica_by_id(uow, source)
        if replica.version_id != version.id:
            raise InvalidInput(f"replica {source} holds another version of {asset}")
        if not replica.readable:
            raise InvalidState(f"replica {source} is {replica.state.value}")
        if kind is not RequestKind.READ and replica.kind.value not in SOURCE_KINDS:
            raise InvalidInput(f"replica {source} is a {replica.kind.value} copy; copies come from "
                               f"{', '.join(SOURCE_KINDS)} replicas")
        return replica
    active = [r for r, _ in repo.list_replicas(uow, asset=asset, state=ReplicaState.ACTIVE.value)
              if r.version_id == version.id and (kind is RequestKind.READ or r.kind.value in SOURCE_KINDS)]
    if not active:
        raise NotFound(f"{asset}@{version.number} has no active replica to copy from")
    primary = [r for r in active if r.kind.value == "primary"]
    return (primary or active)[0]


def _after_decision(ws: Workspace, a: Act, request: Request) -> Request:
    req = request.decision.requirement
    if req.approvals == 0:
        return _approve(ws, a.uow, request)
    return rq.move_request(a.uow, request, RequestState.AWAITING_APPROVAL,
                           window_expires_at=_now() + timedelta(seconds=req.window_seconds))


def _approve(ws: Workspace, uow: UnitOfWork, request: Request) -> Request:
    """Enough approvals: mint the single-use grant and move to approved.

    The grant carries the request's kind, lifetime and requester into the key the custodian makes,
    so the request is decided again here, as it stands, and its approvals counted again: a row edited
    between the decision and the last approval (a longer TTL, say) mints nothing."""
    from custody.control import grants
    from custody.control.services.copies import still_allowed

    still_allowed(ws, uow, request, repo.principal_by_name(uow, request.requester))
    expires = _now() + GRANT_WINDOW
    if request.kind is RequestKind.READ:  # one read, within the TTL asked for
        expires = min(expires, _now() + timedelta(seconds=request.ttl_seconds or 0))
    grant = grants.mint(grant_root_key(ws.custodian()), grant_claims(uow, request, expires))
    rq.add_grant(uow, request.id, grant.token, grant.use_id, expires)
    return rq.move_request(uow, request, RequestState.APPROVED, grant_expires_at=expires)


def grant_claims(uow: UnitOfWork, request: Request, expires: datetime):  # noqa: ANN201 (a grants.GrantClaims)
    """What the custodian will hold the grant to: besides the request, the source data key it may
    release, and the kind and lifetime it binds into the destination key."""
    from custody.control import grants
    from custody.control.store import backups_repo as br

    if request.source_snapshot:
        snap = br.snapshot_by_id(uow, request.source_snapshot)
        source_key = br.repository_by_id(uow, snap.repo_id)["key_id"]
    else:
        source_key = repo.replica_by_id(uow, request.source_replica).key_id
    kind = destination_kind(uow, request)
    lasting = request.kind in NO_EXPIRY or kind in ("read", "backup-repository")
    return grants.GrantClaims(
        request_id=request.id, version_digest=request.version_digest, source_replica=request.source,
        destination_zone=request.destination_zone, expires_at=expires, source_key=source_key, kind=kind,
        ttl_seconds=0 if lasting else request.ttl_seconds or 0,
        holder=request.requester if kind in HELD_KINDS else "")


HELD_KINDS = ("research", "derivative")  # copies made for one person, who may read them without a request


def destination_kind(uow: UnitOfWork, request: Request) -> str:
    """The kind of what a request makes: a replica kind, a backup repository, or a read."""
    if request.kind is RequestKind.READ:
        return "read"
    if request.method == "snapshot":
        return "backup-repository"
    if request.kind is RequestKind.DRILL:
        return ReplicaKind.DRILL.value
    if request.kind is RequestKind.RESTORE:
        dr = repo.zone_by_name(uow, request.destination_zone).kind is ZoneKind.DR
        return (ReplicaKind.DR if dr else ReplicaKind.PRIMARY).value
    return request.kind.value


def _open_break_glass_review(a: Act, request: Request) -> None:
    review = rq.add_review(a.uow, "break-glass", request.id, a.principal.name,
                           f"break-glass {request.kind.value} of {request.asset} to {request.destination_zone} by "
                           f"{a.principal.name}: {request.purpose}")
    from custody.control.ledger import store as ledger

    ledger.append(a.uow, actor=a.principal.name, action="alert.break_glass", outcome="raised", subject=request.id,
                  destination=request.destination_zone, rationale=request.purpose, request_id=request.id,
                  details={"review": review})


# -- approvals ----------------------------------------------------------------------------


def approval_statement(request: Request) -> dict:
    """What an approver of this request signs: these bytes, from this source, to this place, of this
    kind, for this long, for this requester (what the grant will carry into the key)."""
    statement = {"request": request.id, "digest": request.version_digest, "destination": request.destination_zone,
                 "source": request.source, "kind": request.kind.value, "ttl_seconds": request.ttl_seconds,
                 "requester": request.requester}
    if request.transform is not None:  # and, for a derivative, exactly this recipe
        statement["transform"] = request.transform
    return statement


def counting_approvals(ws: Workspace, uow: UnitOfWork, request: Request, req=None) -> list[Approval]:  # noqa: ANN001
    """The approvals that count now under the request's rule (see signoffs.counting); `req`: a rule
    decided afresh (the stored decision is the database's to change)."""
    req = req or request.decision.requirement
    return counting(ws, uow, "request", request.id, approval_statement(request), roles=req.roles,
                    exclude=request.requester, since=request.created_at,
                    distinct_teams=req.distinct_teams)


def missing(ws: Workspace, uow: UnitOfWork, request: Request) -> dict:
    req = request.decision.requirement if request.decision else None
    if req is None:
        return {}
    have = len(counting_approvals(ws, uow, request)) if request.approvals else 0  # none signed: none count
    out = {"approvals": max(0, req.approvals - have), "of": req.approvals, "roles": list(req.roles),
           "distinct_teams": req.distinct_teams, "mfa": req.mfa}
    blocked = identity.missing_approvers(uow) if out["approvals"] else None
    return out | ({"blocked": blocked} if blocked else {})


def approve(ws: Workspace, token: str | None, request_id: str, *, otp: str | None = None,
            comment: str | None = None) -> dict:
    with act(ws, token, "request.approve", subject=request_id, request_id=request_id) as a:
        request = _current(a.uow, request_id, lock=True, seen_by=a.principal)
        if request.state is not RequestState.AWAITING_APPROVAL:
            raise InvalidState(f"request {request_id} is {request.state.value}; only requests awaiting approval can be approved")
        if request.requester == a.principal.name:
            raise Denied("a requester never approves their own request")
        version = repo.version_by_id(a.uow, request.version_id)
        dest = repo.zone_by_name(a.uow, request.destination_zone)
        requester = repo.principal_by_name(a.uow, request.requester)
        decision = active_catalog(ws, a.uow).decide_approval(ApproveFacts(
            approver=principal_facts(a.principal), requester=request.requester, requester_team=requester.team,
            asset=asset_facts(repo.asset_by_name(a.uow, request.asset), version), destination=zone_facts(dest),
            kind=request.kind.value))
        if not decision.allowed:
            raise Denied("; ".join(decision.reasons) or "policy does not let this principal approve")
        req = request.decision.requirement
        if not any(r in req.roles for r in a.principal.roles):
            raise Denied(f"approvals for this request come from {', '.join(req.roles)}")
        approval = sign_off(ws, a, "request", request.id, approval_statement(request), otp=otp, comment=comment,
                            exclude=request.requester, since=request.created_at)
        request = rq.request_by_id(a.uow, request_id)
        left = missing(ws, a.uow, request)
        if left["approvals"] == 0:
            request = _approve(ws, a.uow, request)
        out = view(ws, a.uow, request)
        a.record(details={"mfa": approval.mfa_verified, "still_needed": left, "signature": approval.signature[:24]})
    return out


def lapsed(request: Request, now: datetime) -> bool:
    """Whether the request's approval window or its grant ran out (the sweeper records it)."""
    if request.state is RequestState.AWAITING_APPROVAL:
        return request.window_expires_at is not None and request.window_expires_at <= now
    if request.state in (RequestState.APPROVED, RequestState.FAILED):
        return request.grant_expires_at is not None and request.grant_expires_at <= now
    return False


def _current(uow: UnitOfWork, request_id: str, lock: bool = False, seen_by: Principal | None = None) -> Request:
    """The request, refused if its window or grant ran out (NotFound first for a principal `seen_by`
    it does not concern)."""
    request = rq.request_by_id(uow, request_id, lock=lock)
    if seen_by is not None:
        concerning(seen_by, request)
    if lapsed(request, _now()):
        raise InvalidState(f"request {request_id} lapsed: its approval window or grant ran out")
    return request


def deny(ws: Workspace, token: str | None, request_id: str, reason: str) -> dict:
    if not reason or not reason.strip():
        raise InvalidInput("a denial needs a reason")
    with act(ws, token, "request.deny", subject=request_id, request_id=request_id, rationale=reason) as a:
        request = _current(a.uow, request_id, seen_by=a.principal)
        if request.requester == a.principal.name:
            raise InvalidInput("withdraw your own request with `request cancel`")
        out = view(ws, a.uow, rq.move_request(a.uow, request, RequestState.DENIED,
                                              error=f"denied by {a.principal.name}: {reason}"))
    return out


def cancel(ws: Workspace, token: str | None, request_id: str) -> dict:
    with act(ws, token, "request.cancel", subject=request_id, request_id=request_id) as a:
        request = _visible_request(a, request_id)
        if request.requester != a.principal.name and not a.principal.has_role("admin"):
            raise Denied("only the requester or an admin can cancel a request")
        out = view(ws, a.uow, rq.move_request(a.uow, request, RequestState.CANCELLED))
    return out


# -- reading ------------------------------------------------------------------------------


def view(ws: Workspace, uow: UnitOfWork, r: Request) -> dict:
    return {
        "id": r.id, "requester": r.requester, "asset": r.asset, "version_digest": r.version_digest,
        "source_replica": r.source_replica, "source_snapshot": r.source_snapshot, "method": r.method,
        "destination": r.destination_zone, "kind": r.kind.value,
        "purpose": r.purpose, "state": r.state.value, "ttl_seconds": r.ttl_seconds, "break_glass": r.break_glass,
        "decision": r.decision.to_dict() if r.decision else None, "created_at": views.ts(r.created_at),
        "window_expires_at": views.ts(r.window_expires_at), "grant_expires_at": views.ts(r.grant_expires_at),
        "result_replica": r.result_replica, "transform": r.transform,
        "approvals": [{"approver": ap.approver, "team": ap.team, "at": views.ts(ap.at), "mfa": ap.mfa_verified,
                       "comment": ap.comment} for ap in r.approvals],
        "still_needed": missing(ws, uow, r) if r.state is RequestState.AWAITING_APPROVAL else None,
    }


OVERSEERS = ("security", "auditor", "admin")  # see every request


def visible(principal: Principal, r: Request) -> bool:
    """A request is shown to its requester, to whoever may approve it, and to security, auditors and admins;
    to anyone else it does not exist (what others ask for, and why, is not everyone's business)."""
    req = r.decision.requirement if r.decision else None
    return (r.requester == principal.name or principal.has_role(*OVERSEERS)
            or (req is not None and req.approvals > 0 and principal.has_role(*req.roles)))


def _visible_request(a: Act, request_id: str) -> Request:
    return concerning(a.principal, rq.request_by_id(a.uow, request_id))


def concerning(principal: Principal, request: Request) -> Request:
    """The request, or NotFound for a principal it does not concern: acting on it answers no more
    than reading it would (a refusal would confirm that it exists)."""
    if not visible(principal, request):
        raise NotFound(f"no request {request.id}")
    return request


def show_request(ws: Workspace, token: str | None, request_id: str) -> dict:
    with act(ws, token, "request.read", subject=request_id, request_id=request_id) as a:
        out = view(ws, a.uow, _visible_request(a, request_id))
    return out


def list_requests(ws: Workspace, token: str | None, *, mine: bool = False, awaiting_me: bool = False,
                  state: str | None = None) -> list[dict]:
    if state is not None and state not in {s.value for s in RequestState}:
        raise InvalidInput(f"unknown request state {state!r}: one of {', '.join(s.value for s in RequestState)}")
    with act(ws, token, "request.read") as a:
        rows = [r for r in rq.list_requests(a.uow, requester=a.principal.name if mine else None, state=state)
                if visible(a.principal, r)]
        if awaiting_me:
            rows = _awaiting(a.principal, rows)
        return [view(ws, a.uow, r) for r in rows]


def _awaiting(principal: Principal, rows: list[Request]) -> list[Request]:
    return [r for r in rows if r.state is RequestState.AWAITING_APPROVAL and r.requester != principal.name
            and all(ap.approver != principal.name for ap in r.approvals)
            and any(role in r.decision.requirement.roles for role in principal.roles)]


def inbox(ws: Workspace, token: str | None) -> list[dict]:
    """Requests awaiting my approval, with what an approver must see to decide: the asset's
    classification and size, where it goes (jurisdiction, security level), who asks (team)."""
    with act(ws, token, "request.read", details={"what": "inbox"}) as a:
        out = []
        for r in _awaiting(a.principal, rq.list_requests(a.uow, state=RequestState.AWAITING_APPROVAL.value)):
            version = repo.version_by_id(a.uow, r.version_id)
            dest = repo.zone_by_name(a.uow, r.destination_zone)
            requester = repo.principal_by_name(a.uow, r.requester)
            out.append({**view(ws, a.uow, r), "classification": version.classification.value,
                        "version": version.number, "bytes": version.total_size, "parameters": version.parameters,
                        "zone_kind": dest.kind.value, "jurisdiction": dest.jurisdiction,
                        "security_level": dest.security_level, "requester_team": requester.team})
        return out


def decide_for(ws: Workspace, uow: UnitOfWork, r: Request, requester: Principal) -> Decision:
    """The decision the catalog in force gives this request now."""
    version = repo.version_by_id(uow, r.version_id)
    if r.kind is RequestKind.READ:
        from custody.control.services import reads

        replica = repo.replica_by_id(uow, r.source_replica)
        return active_catalog(ws, uow).decide_read(
            reads.facts(uow, requester, replica, "asking", r.purpose, r.ttl_seconds))
    if r.source_snapshot:
        src = _source_snapshot(uow, r.source_snapshot)[2]
    else:
        src = repo.zone_by_name(uow, repo.replica_by_id(uow, r.source_replica).zone)
    if (r.kind is RequestKind.DERIVATIVE) != (r.transform is not None):  # only an edit of the store does this
        raise Denied(f"request {r.id} is a {r.kind.value} request {'without' if r.transform is None else 'with'} "
                     "a recipe: it was changed outside custody")
    recipe = recipes.parse(r.transform) if r.transform is not None else None
    return _decide(ws, uow, requester, repo.asset_by_name(uow, r.asset), version, src,
                   repo.zone_by_name(uow, r.destination_zone),
                   r.kind.value, r.ttl_seconds, r.purpose, r.break_glass, recipe)


def explain(ws: Workspace, token: str | None, request_id: str) -> dict:
    """The decision as recorded, the decision the catalog in force would give now, and what is missing."""
    with act(ws, token, "policy.read", subject=request_id, request_id=request_id) as a:
        r = _visible_request(a, request_id)
        now = decide_for(ws, a.uow, r, repo.principal_by_name(a.uow, r.requester))
        return {"request": r.id, "state": r.state.value, "recorded": r.decision.to_dict() if r.decision else None,
                "now": now.to_dict(), "still_needed": missing(ws, a.uow, r)}


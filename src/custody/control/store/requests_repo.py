"""Reading and writing requests, sign-offs, grants, MFA seeds, reviews, exceptions and egress."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError

from custody.control.store import schema as t
from custody.control.store.db import UnitOfWork
from custody.control.store.repositories import as_utc, now
from custody.domain.errors import IntegrityError, InvalidState, NotFound
from custody.domain.model import new_id
from custody.domain.requests import (
    Approval,
    Decision,
    ApprovalRequirement,
    Request,
    RequestKind,
    RequestState,
    check_move,
)

# -- requests -----------------------------------------------------------------------------


def _decision(d: dict | None) -> Decision | None:
    if not d:
        return None
    req = ApprovalRequirement.from_dict(d["requirement"]) if d.get("requirement") else None
    return Decision(allowed=d["allowed"], policy_ids=tuple(d["policy_ids"]), reasons=tuple(d["reasons"]),
                    requirement=req, catalog_hash=d["catalog_hash"], errors=tuple(d.get("errors", ())))


def _request(uow: UnitOfWork, row) -> Request:  # noqa: ANN001
    return Request(
        id=row.id, requester=row.requester, asset=row.asset_name, version_id=row.version_id,
        version_digest=row.version_digest, source_replica=row.source_replica, destination_zone=row.destination_zone,
        kind=RequestKind(row.kind), purpose=row.purpose, state=RequestState(row.state), ttl_seconds=row.ttl_seconds,
        break_glass=bool(row.break_glass), decision=_decision(row.decision), created_at=as_utc(row.created_at),
        window_expires_at=as_utc(row.window_expires_at), grant_expires_at=as_utc(row.grant_expires_at),
        result_replica=row.result_replica, approvals=tuple(approvals(uow, "request", row.id)),
        source_snapshot=row.source_snapshot, method=row.method, transform=row.transform,
    )


_REQUEST_FIELDS = frozenset(f.name for f in fields(Request))

# Built once: every request's creation, decision and approval runs these.
_INSERT_REQUEST = insert(t.requests)
_REQUEST = select(t.requests).where(t.requests.c.id == bindparam("id"))
_REQUEST_LOCKED = _REQUEST.with_for_update()
_MOVE = update(t.requests).where(t.requests.c.id == bindparam("b_id"), t.requests.c.state == bindparam("b_state"))
_SIGNOFFS = (select(t.signoffs).where(t.signoffs.c.subject_kind == bindparam("kind"),
                                      t.signoffs.c.subject_id == bindparam("subject_id")).order_by(t.signoffs.c.at))
_ACTIVE_EXCEPTIONS = select(t.policy_exceptions).where(
    t.policy_exceptions.c.asset_name == bindparam("asset"), t.policy_exceptions.c.zone == bindparam("zone"),
    t.policy_exceptions.c.state == "active", t.policy_exceptions.c.expires_at > bindparam("at"))


def add_request(uow: UnitOfWork, r: Request) -> None:
    uow.conn.execute(_INSERT_REQUEST, dict(
        id=r.id, requester=r.requester, asset_name=r.asset, version_id=r.version_id, version_digest=r.version_digest,
        source_replica=r.source_replica, source_snapshot=r.source_snapshot, method=r.method,
        destination_zone=r.destination_zone, kind=r.kind.value, purpose=r.purpose,
        state=r.state.value, ttl_seconds=r.ttl_seconds, break_glass=r.break_glass,
        decision=r.decision.to_dict() if r.decision else None, created_at=now(), updated_at=now(),
        window_expires_at=r.window_expires_at, transform=r.transform,
    ))


def request_by_id(uow: UnitOfWork, request_id: str, lock: bool = False) -> Request:
    """`lock`: hold the row until commit (PostgreSQL), so two approvers or two runs cannot interleave."""
    q = _REQUEST_LOCKED if lock and uow.dialect == "postgresql" else _REQUEST
    row = uow.conn.execute(q, {"id": request_id}).first()
    if row is None:
        raise NotFound(f"no request {request_id}")
    return _request(uow, row)


def list_requests(uow: UnitOfWork, *, requester: str | None = None, state: str | None = None) -> list[Request]:
    q = select(t.requests).order_by(t.requests.c.created_at, t.requests.c.id)
    if requester:
        q = q.where(t.requests.c.requester == requester)
    if state:
        q = q.where(t.requests.c.state == state)
    return [_request(uow, r) for r in uow.conn.execute(q)]


def move_request(uow: UnitOfWork, request: Request, state: RequestState, **values) -> Request:  # noqa: ANN003
    """Move a request on (only from the state it was read in); returns it as it now is."""
    check_move(request.state, state, request.id)
    result = uow.conn.execute(_MOVE, {"b_id": request.id, "b_state": request.state.value, "state": state.value,
                                      "updated_at": now(), **values})
    if result.rowcount != 1:  # someone else moved it first: never act on a stale view
        raise InvalidState(f"request {request.id} changed while this action ran; try again")
    return replace(request, state=state, **{k: v for k, v in values.items() if k in _REQUEST_FIELDS})


def set_writer(uow: UnitOfWork, request_id: str, writer: str | None) -> None:
    uow.conn.execute(update(t.requests).where(t.requests.c.id == request_id).values(writer=writer))


def writer_of(uow: UnitOfWork, request_id: str) -> str | None:
    return uow.conn.execute(select(t.requests.c.writer).where(t.requests.c.id == request_id)).scalar_one_or_none()


def set_result_replica(uow: UnitOfWork, request_id: str, replica_id: str) -> None:
    uow.conn.execute(update(t.requests).where(t.requests.c.id == request_id).values(result_replica=replica_id,
                                                                                     updated_at=now()))


# -- sign-offs (approvals of requests, proposals, exceptions; review closures) ----------------


def add_signoff(uow: UnitOfWork, kind: str, subject_id: str, a: Approval) -> None:
    try:
        uow.conn.execute(insert(t.signoffs).values(
            subject_kind=kind, subject_id=subject_id, principal=a.approver, team=a.team, roles=list(a.roles),
            at=a.at, mfa_verified=a.mfa_verified, comment=a.comment, signature=a.signature,
        ))
    except DBIntegrityError:
        raise InvalidState(f"{a.approver} has already signed off this {kind}") from None


def approvals(uow: UnitOfWork, kind: str, subject_id: str) -> list[Approval]:
    rows = uow.conn.execute(_SIGNOFFS, {"kind": kind, "subject_id": subject_id})
    return [Approval(request_id=r.subject_id, approver=r.principal, team=r.team, roles=tuple(r.roles),
                     at=as_utc(r.at), mfa_verified=bool(r.mfa_verified), comment=r.comment, signature=r.signature)
            for r in rows]


# -- grants -------------------------------------------------------------------------------


def add_grant(uow: UnitOfWork, request_id: str, token: str, use_id: str, expires_at: datetime) -> None:
    uow.conn.execute(insert(t.grants).values(request_id=request_id, token=token, use_id=use_id,
                                             expires_at=expires_at, created_at=now()))


def grant_of(uow: UnitOfWork, request_id: str) -> tuple[str, str, datetime] | None:
    row = uow.conn.execute(select(t.grants).where(t.grants.c.request_id == request_id)).first()
    return None if row is None else (row.token, row.use_id, as_utc(row.expires_at))


def use_grant(uow: UnitOfWork, use_id: str, request_id: str) -> None:
    """Spend a grant; a second spend of the same grant fails here, inside the caller's transaction."""
    try:
        uow.conn.execute(insert(t.grant_uses).values(use_id=use_id, request_id=request_id, used_at=now()))
    except DBIntegrityError:
        raise InvalidState("grant already used: grants are single use") from None


def grant_used(uow: UnitOfWork, use_id: str) -> bool:
    return uow.conn.execute(select(t.grant_uses.c.use_id).where(t.grant_uses.c.use_id == use_id)).first() is not None


# -- MFA ----------------------------------------------------------------------------------


def set_pending_mfa(uow: UnitOfWork, principal: str, sealed: bytes) -> None:
    """A new seed, not in force until a code from it is verified (`activate_mfa`)."""
    if uow.conn.execute(select(t.mfa.c.principal).where(t.mfa.c.principal == principal)).first() is None:
        uow.conn.execute(insert(t.mfa).values(principal=principal, secret_sealed=None, pending_sealed=sealed,
                                              enrolled_at=now(), last_step=None))
    else:
        uow.conn.execute(update(t.mfa).where(t.mfa.c.principal == principal).values(pending_sealed=sealed))


@dataclass(frozen=True, slots=True)
class MfaSeeds:
    active: bytes | None  # sealed seed in force
    pending: bytes | None  # sealed seed awaiting its first code
    last_step: int | None


def mfa_of(uow: UnitOfWork, principal: str) -> MfaSeeds | None:
    row = uow.conn.execute(select(t.mfa).where(t.mfa.c.principal == principal)).first()
    if row is None:
        return None
    return MfaSeeds(bytes(row.secret_sealed) if row.secret_sealed is not None else None,
                    bytes(row.pending_sealed) if row.pending_sealed is not None else None, row.last_step)


def activate_mfa(uow: UnitOfWork, principal: str, first_step: int) -> None:
    """The pending seed comes into force; its first verified code is spent."""
    seeds = mfa_of(uow, principal)
    uow.conn.execute(update(t.mfa).where(t.mfa.c.principal == principal)
                     .values(secret_sealed=seeds.pending, pending_sealed=None, enrolled_at=now(), last_step=first_step))


def spend_mfa_step(uow: UnitOfWork, principal: str, step: int) -> None:
    """Accept a TOTP step only once and only moving forward: a replayed code fails."""
    m = t.mfa.c
    result = uow.conn.execute(
        update(t.mfa).where(m.principal == principal, (m.last_step.is_(None)) | (m.last_step < step)).values(last_step=step)
    )
    if result.rowcount != 1:
        raise InvalidState("this one-time code was already used")


# -- reviews ------------------------------------------------------------------------------


def add_review(uow: UnitOfWork, kind: str, request_id: str | None, opened_by: str, summary: str) -> str:
    review_id = new_id()
    uow.conn.execute(insert(t.reviews).values(id=review_id, kind=kind, request_id=request_id, opened_by=opened_by,
                                              opened_at=now(), summary=summary))
    return review_id


def reviews(uow: UnitOfWork, open_only: bool = False) -> list[dict]:
    q = select(t.reviews).order_by(t.reviews.c.opened_at)
    if open_only:
        q = q.where(t.reviews.c.closed_at.is_(None))
    return [dict(r._mapping) | {"opened_at": as_utc(r.opened_at), "closed_at": as_utc(r.closed_at)}
            for r in uow.conn.execute(q)]


def review_by_id(uow: UnitOfWork, review_id: str) -> dict:
    row = uow.conn.execute(select(t.reviews).where(t.reviews.c.id == review_id)).first()
    if row is None:
        raise NotFound(f"no review {review_id}")
    return dict(row._mapping) | {"opened_at": as_utc(row.opened_at), "closed_at": as_utc(row.closed_at)}


def close_review(uow: UnitOfWork, review_id: str) -> None:
    uow.conn.execute(update(t.reviews).where(t.reviews.c.id == review_id).values(closed_at=now()))


# -- exceptions ---------------------------------------------------------------------------


def add_exception(uow: UnitOfWork, *, policy_id: str, asset: str, zone: str, justification: str, proposer: str,
                  expires_at: datetime) -> str:
    exc_id = new_id()
    uow.conn.execute(insert(t.policy_exceptions).values(
        id=exc_id, policy_id=policy_id, asset_name=asset, zone=zone, justification=justification, proposer=proposer,
        state="proposed", expires_at=expires_at, created_at=now()))
    return exc_id


def exception_by_id(uow: UnitOfWork, exc_id: str) -> dict:
    row = uow.conn.execute(select(t.policy_exceptions).where(t.policy_exceptions.c.id == exc_id)).first()
    if row is None:
        raise NotFound(f"no exception {exc_id}")
    return dict(row._mapping) | {"expires_at": as_utc(row.expires_at), "created_at": as_utc(row.created_at)}


def list_exceptions(uow: UnitOfWork) -> list[dict]:
    rows = uow.conn.execute(select(t.policy_exceptions).order_by(t.policy_exceptions.c.created_at))
    return [dict(r._mapping) | {"expires_at": as_utc(r.expires_at), "created_at": as_utc(r.created_at)} for r in rows]


def _exception_fields(row) -> dict:  # noqa: ANN001
    return {"id": row.id, "policy": row.policy_id, "asset": row.asset_name, "zone": row.zone, "state": row.state,
            "expires_at": as_utc(row.expires_at).isoformat()}


def _sign_exception(uow: UnitOfWork, exc_id: str) -> None:
    """An exception in force is signed by the custodian when its second approval activates it (and again
    when it ends): an inserted, extended or revived row turns no policy off."""
    row = uow.conn.execute(select(t.policy_exceptions).where(t.policy_exceptions.c.id == exc_id)).one()
    if uow.records is None:
        raise IntegrityError(f"exception {exc_id} cannot be signed: no custodian in this transaction")
    uow.conn.execute(update(t.policy_exceptions).where(t.policy_exceptions.c.id == exc_id).values(
        record_signature=uow.records.sign("exception", row.id, _exception_fields(row), uow.signed)))


def activate_exception(uow: UnitOfWork, exc_id: str, expires_at: datetime) -> None:
    uow.conn.execute(update(t.policy_exceptions).where(t.policy_exceptions.c.id == exc_id)
                     .values(state="active", expires_at=expires_at))
    _sign_exception(uow, exc_id)


def set_exception_state(uow: UnitOfWork, exc_id: str, state: str) -> None:
    uow.conn.execute(update(t.policy_exceptions).where(t.policy_exceptions.c.id == exc_id).values(state=state))
    _sign_exception(uow, exc_id)


def spend_exception(uow: UnitOfWork, policy_id: str, asset: str, zone: str, at: datetime) -> None:
    """An exception good for one use (letting known weights take a looser label) ends with that use."""
    e = t.policy_exceptions.c
    ids = uow.conn.execute(select(e.id).where(
        e.policy_id == policy_id, e.asset_name == asset, e.zone == zone, e.state == "active", e.expires_at > at)).scalars()
    for exc_id in list(ids):
        set_exception_state(uow, exc_id, "used")  # signed as used: setting it back to active fails its signature


def active_exceptions(uow: UnitOfWork, asset: str, zone: str, at: datetime) -> frozenset[str]:
    """The policies switched off for this asset and zone now: only exceptions the custodian signed active."""
    rows = list(uow.conn.execute(_ACTIVE_EXCEPTIONS, {"asset": asset, "zone": zone, "at": at}))
    for row in rows:
        if uow.records is None:
            raise IntegrityError("exceptions cannot be checked: no custodian public key in this transaction")
        uow.records.check("exception", row.id, f"exception {row.id}", _exception_fields(row), row.record_signature,
                          uow.signed)
    return frozenset(r.policy_id for r in rows)


# -- policy proposals ---------------------------------------------------------------------


def add_proposal(uow: UnitOfWork, *, catalog_hash: str, base_hash: str | None, files: dict[str, str], purpose: str,
                 proposer: str) -> str:
    pid = new_id()
    uow.conn.execute(insert(t.policy_proposals).values(id=pid, catalog_hash=catalog_hash, base_hash=base_hash,
                                                       files=files, purpose=purpose, proposer=proposer,
                                                       state="proposed", created_at=now()))
    return pid


def proposal_by_id(uow: UnitOfWork, pid: str) -> dict:
    row = uow.conn.execute(select(t.policy_proposals).where(t.policy_proposals.c.id == pid)).first()
    if row is None:
        raise NotFound(f"no policy proposal {pid}")
    return dict(row._mapping) | {"created_at": as_utc(row.created_at)}


def set_proposal_state(uow: UnitOfWork, pid: str, state: str) -> None:
    uow.conn.execute(update(t.policy_proposals).where(t.policy_proposals.c.id == pid).values(state=state))


# -- egress -------------------------------------------------------------------------------


def egress_used(uow: UnitOfWork, zone: str, since: datetime) -> int:
    e = t.egress.c
    return int(uow.conn.execute(select(func.coalesce(func.sum(e.bytes), 0)).where(e.zone == zone, e.at > since))
               .scalar_one())


def egress_charges(uow: UnitOfWork, since: datetime, *, zone: str | None = None, principal: str | None = None,
                   asset: str | None = None) -> list[tuple[datetime, int]]:
    """(when, bytes) of each charge since `since` to one zone, principal or asset, oldest first."""
    e = t.egress.c
    q = select(e.at, e.bytes).where(e.at > since).order_by(e.at)
    for column, value in ((e.zone, zone), (e.principal, principal), (e.asset_name, asset)):
        if value is not None:
            q = q.where(column == value)
    return [(as_utc(r.at), int(r.bytes)) for r in uow.conn.execute(q)]


def add_egress(uow: UnitOfWork, zone: str, request_id: str, nbytes: int, *, principal: str | None = None,
               asset: str | None = None) -> None:
    uow.conn.execute(insert(t.egress).values(id=new_id(), zone=zone, request_id=request_id, bytes=nbytes, at=now(),
                                             principal=principal, asset_name=asset))


def lock_egress_holders(uow: UnitOfWork, principal: str, asset: str) -> None:
    """Hold the requester's and the asset's rows until commit (PostgreSQL; SQLite write transactions
    are already exclusive): two copies charging the same budget check it one after the other."""
    if uow.dialect != "postgresql":
        return
    for table, value in ((t.principals, principal), (t.assets, asset)):
        uow.conn.execute(select(table.c.name).where(table.c.name == value).with_for_update(key_share=True))


def set_egress_budget(uow: UnitOfWork, zone: str, per_hour: int | None) -> None:
    from custody.control.store.repositories import sign_zone

    uow.conn.execute(update(t.zones).where(t.zones.c.name == zone).values(egress_bytes_per_hour=per_hour))
    sign_zone(uow, zone)


def egress_budget(uow: UnitOfWork, zone: str) -> int | None:
    return uow.conn.execute(select(t.zones.c.egress_bytes_per_hour).where(t.zones.c.name == zone)).scalar_one()


HOUR = timedelta(hours=1)

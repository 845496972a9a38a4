"""Reads of plaintext, decided by the policy catalog like copies (DESIGN.md, "Reads are copies").

A principal decrypts a replica's weights in memory (custody.open_safetensors) when the catalog
allows it directly (by default: a research or derivative copy made for them, or, for a service
principal, the replicas in the production zone it is bound to). Anything else takes an approved
read request of theirs for that replica: the read spends the request's single-use grant in the
transaction that ledgers it, so one approval is one read. Admins and ml leads have no standing read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from custody.control import grants
from custody.control.door import Act, act
from custody.control.policy.context import ReadFacts, asset_facts, principal_facts, zone_facts
from custody.control.services.policy import active_catalog
from custody.control.store import repositories as repo
from custody.control.store import requests_repo as rq
from custody.control.store.db import UnitOfWork
from custody.control.workspace import Workspace
from custody.domain.errors import Denied, InvalidInput
from custody.domain.model import Principal, Replica, new_id
from custody.domain.requests import Request, RequestKind, RequestState
from custody.keys.attestation import Claims
from custody.keys.custodian import grant_root_key
from custody.keys.release import Expected

READ_TTL = 3600  # how long an approved read request stays usable when the asker names no --ttl
DIRECT_GRANT = timedelta(minutes=1)  # a read the catalog allows directly gets a grant for this long


def facts(uow: UnitOfWork, principal: Principal, replica: Replica, way: str, purpose: str,
          ttl_seconds: int | None = None, claims: Claims | None = None, attestation_required: bool = False) -> ReadFacts:
    version = repo.version_by_id(uow, replica.version_id)
    asset = repo.asset_by_name(uow, repo.replica_asset_name(uow, replica.id))
    return ReadFacts(principal=principal_facts(principal), asset=asset_facts(asset, version),
                     zone=zone_facts(repo.zone_by_name(uow, replica.zone)), replica_kind=replica.kind.value,
                     own_copy=own_copy(uow, principal, replica), request=way, purpose=purpose,
                     ttl_seconds=ttl_seconds, attestation_required=attestation_required, attested=claims is not None,
                     measurement=claims.measurement if claims else None)


def own_copy(uow: UnitOfWork, principal: Principal, replica: Replica) -> bool:
    """Whether the replica was made for a request of this principal."""
    return replica.request_id is not None and rq.request_by_id(uow, replica.request_id).requester == principal.name


@dataclass(frozen=True)
class Ticket:
    """What the custodian is shown to release a read's key: a grant, and who reads without a request."""

    token: str
    expected: Expected
    reader: str | None
    attested: Claims | None = None


def attestation_nonce(ws: Workspace, token: str | None) -> dict:
    """A fresh nonce from the custodian, for attestation evidence over one read (single use, 2 minutes)."""
    with act(ws, token, "replica.open", details={"attestation": "nonce"}):
        return {"nonce": ws.release().attestation.nonce()}


def decide(ws: Workspace, a: Act, replica: Replica, purpose: str, request_id: str | None,
           evidence: bytes | None = None, way: str = "direct") -> Ticket:
    """Decide this read and, when it goes under a read request, spend that request; the decision and
    the request are recorded in the act's event. Raises Denied when the read may not happen.

    The ticket carries the request's grant, or for a read the catalog allows directly a grant minted
    now for this one read; either way the custodian checks it and records its single use."""
    catalog = active_catalog(ws, a.uow)
    attestation = ws.release().attestation
    claims = attestation.check(replica.zone, evidence)  # refused here when the zone needs evidence and it fails
    seen = dict(claims=claims, attestation_required=attestation.required(replica.zone))
    if claims is not None:
        a.fields.setdefault("details", {})["attestation"] = {"measurement": claims.measurement,
                                                             "platform": claims.platform}
    decision = catalog.decide_read(facts(a.uow, a.principal, replica, way, purpose, **seen))
    request = None
    if request_id is not None or not decision.allowed:
        request = _read_request(a, replica, request_id)
    if request is not None:
        from custody.control.services.copies import still_allowed

        still_allowed(ws, a.uow, request, a.principal)
        decision = catalog.decide_read(facts(a.uow, a.principal, replica, "approved", purpose, **seen))
    a.fields["policy_ids"] = decision.policy_ids
    a.fields["request_id"] = request.id if request else None
    a.fields.setdefault("details", {})["decision"] = {"allowed": decision.allowed, "reasons": list(decision.reasons),
                                                      "catalog_hash": decision.catalog_hash}
    if not decision.allowed:
        hint = "" if request else (f"; ask with `custody request create {repo.replica_asset_name(a.uow, replica.id)} "
                                   f"--kind read --from {replica.id} --purpose ...`")
        raise Denied(f"read of replica {replica.id} denied: "
                     + ("; ".join(decision.reasons) or "no policy permits it") + hint)
    expected = Expected(request_id=request.id if request else f"read-{new_id()}", version_digest=_digest(a, replica),
                        source_replica=replica.id, destination_zone=replica.zone)
    a.fields.setdefault("details", {})["release"] = expected.request_id  # what the custodian's journal names
    if request is not None:
        return Ticket(_spend(a, request), expected, None, claims)
    grant = grants.mint(grant_root_key(ws.custodian()), grants.GrantClaims(
        request_id=expected.request_id, version_digest=expected.version_digest, source_replica=replica.id,
        destination_zone=replica.zone, expires_at=datetime.now(timezone.utc) + DIRECT_GRANT, source_key=replica.key_id,
        kind="read"))
    return Ticket(grant.token, expected, a.principal.name, claims)


def _digest(a: Act, replica: Replica) -> str:
    """The digest the replica's data key is bound to: what the request that made it copied (a
    derivative's key names its parent's bytes), else its own version's."""
    if replica.request_id is not None:
        return rq.request_by_id(a.uow, replica.request_id).version_digest
    return repo.version_by_id(a.uow, replica.version_id).digest


def _read_request(a: Act, replica: Replica, request_id: str | None) -> Request | None:
    """The read request this read goes under: the one named, else the caller's oldest approved one
    for this replica (None when there is none)."""
    from custody.control.services.requests import _current, lapsed

    if request_id is None:
        now = datetime.now(timezone.utc)
        mine = [r for r in rq.list_requests(a.uow, requester=a.principal.name, state=RequestState.APPROVED.value)
                if r.kind is RequestKind.READ and r.source_replica == replica.id and not lapsed(r, now)]
        return min(mine, key=lambda r: r.created_at) if mine else None

    request = _current(a.uow, request_id, lock=True, seen_by=a.principal)
    if request.kind is not RequestKind.READ:
        raise InvalidInput(f"request {request_id} is a {request.kind.value} request, not a read")
    if request.requester != a.principal.name:
        raise Denied(f"read request {request_id} is {request.requester}'s: a read request is used by its requester")
    if request.source_replica != replica.id:
        raise InvalidInput(f"read request {request_id} is for replica {request.source_replica}, not {replica.id}")
    if request.state is not RequestState.APPROVED:
        raise Denied(f"read request {request_id} is {request.state.value}; a read needs an approved, unspent one")
    return request


def _spend(a: Act, request: Request) -> str:
    """Spend the request in the read's own transaction (one approval, one read); the custodian
    checks its grant and records the use in its own journal when it releases the key."""
    found = rq.grant_of(a.uow, request.id)
    if found is None:
        raise Denied(f"read request {request.id} has no grant")
    token, use_id, _ = found
    rq.use_grant(a.uow, use_id, request.id)
    running = rq.move_request(a.uow, request, RequestState.RUNNING)
    rq.move_request(a.uow, running, RequestState.DONE)
    return token

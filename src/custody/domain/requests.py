"""Copy requests, their approvals and decisions: plain typed objects and the request state machine."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from custody.domain.errors import InvalidState


class RequestKind(str, Enum):
    BACKUP = "backup"
    DR = "dr"
    RESEARCH = "research"
    DERIVATIVE = "derivative"
    MIGRATION = "migration"
    RESTORE = "restore"  # a snapshot back into a zone: a copy like any other (T11)
    DRILL = "drill"  # a DR drill's restore, shredded as soon as it is checked
    READ = "read"  # plaintext in memory, once, from one replica (custody.open_safetensors): no copy


# Kinds whose copies do not expire: disaster-recovery replicas and restored replicas.
NO_EXPIRY = frozenset({RequestKind.DR, RequestKind.RESTORE})


class RequestState(str, Enum):
    PENDING = "pending"
    DENIED = "denied"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LAPSED = "lapsed"


_MOVES: dict[RequestState, frozenset[RequestState]] = {
    RequestState.PENDING: frozenset({RequestState.DENIED, RequestState.AWAITING_APPROVAL, RequestState.APPROVED,
                                     RequestState.CANCELLED}),
    RequestState.AWAITING_APPROVAL: frozenset({RequestState.APPROVED, RequestState.DENIED, RequestState.CANCELLED,
                                               RequestState.LAPSED}),
    RequestState.APPROVED: frozenset({RequestState.RUNNING, RequestState.CANCELLED, RequestState.LAPSED}),
    RequestState.RUNNING: frozenset({RequestState.DONE, RequestState.FAILED, RequestState.CANCELLED}),
    # a failed copy may be resumed; a revoked one, or one whose grant ran out, never runs again
    RequestState.FAILED: frozenset({RequestState.RUNNING, RequestState.CANCELLED, RequestState.LAPSED}),
    RequestState.DONE: frozenset(),
    RequestState.DENIED: frozenset(),
    RequestState.CANCELLED: frozenset(),
    RequestState.LAPSED: frozenset(),
}


def check_move(current: RequestState, target: RequestState, request_id: str) -> None:
    if target not in _MOVES[current]:
        raise InvalidState(f"request {request_id} is {current.value}; it cannot become {target.value}")


@dataclass(frozen=True, slots=True)
class ApprovalRequirement:
    """What a request still needs, from the approval-rule table."""

    rule: str
    approvals: int
    roles: tuple[str, ...]
    distinct_teams: bool
    mfa: bool
    max_ttl_seconds: int | None
    window_seconds: int

    def to_dict(self) -> dict:
        return {"rule": self.rule, "approvals": self.approvals, "roles": list(self.roles),
                "distinct_teams": self.distinct_teams, "mfa": self.mfa, "max_ttl_seconds": self.max_ttl_seconds,
                "window_seconds": self.window_seconds}

    @classmethod
    def from_dict(cls, d: dict) -> "ApprovalRequirement":
        return cls(rule=d["rule"], approvals=int(d["approvals"]), roles=tuple(d["roles"]),
                   distinct_teams=bool(d["distinct_teams"]), mfa=bool(d["mfa"]),
                   max_ttl_seconds=d.get("max_ttl_seconds"), window_seconds=int(d["window_seconds"]))


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    policy_ids: tuple[str, ...]  # the @id of every policy that decided
    reasons: tuple[str, ...]  # their @reason annotations, for people
    requirement: ApprovalRequirement | None  # None when denied
    catalog_hash: str
    errors: tuple[str, ...] = ()  # evaluation errors: any error is a deny

    def to_dict(self) -> dict:
        return {"allowed": self.allowed, "policy_ids": list(self.policy_ids), "reasons": list(self.reasons),
                "requirement": self.requirement.to_dict() if self.requirement else None,
                "catalog_hash": self.catalog_hash, "errors": list(self.errors)}


@dataclass(frozen=True, slots=True)
class Approval:
    request_id: str
    approver: str
    team: str | None
    roles: tuple[str, ...]
    at: datetime
    mfa_verified: bool
    comment: str | None
    signature: str  # base64 ECDSA by the control plane over the approval statement


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    requester: str
    asset: str
    version_id: str
    version_digest: str
    source_replica: str | None  # what a copy or a backup reads
    destination_zone: str
    kind: RequestKind
    purpose: str
    state: RequestState
    ttl_seconds: int | None
    break_glass: bool
    decision: Decision | None
    created_at: datetime
    window_expires_at: datetime | None = None
    grant_expires_at: datetime | None = None
    result_replica: str | None = None
    approvals: tuple[Approval, ...] = field(default_factory=tuple)
    source_snapshot: str | None = None  # what a restore or a drill reads
    method: str = "replica"  # replica: a sealed copy; snapshot: a backup into a repository
    transform: str | None = None  # a derivative's recipe, canonical (domain/recipes.py)

    @property
    def source(self) -> str:
        """The one source a grant is bound to."""
        return self.source_snapshot or self.source_replica or ""

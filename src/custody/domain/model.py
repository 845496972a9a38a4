"""Plain typed objects of the custody domain: no I/O, testable alone."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from custody.domain.errors import InvalidInput, InvalidState

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def check_name(kind: str, name: str) -> str:
    """Names of zones, principals and assets: short, lowercase, safe in paths and URLs."""
    if not NAME_RE.match(name or "") or ".." in name:
        raise InvalidInput(
            f"bad {kind} name {name[:70]!r}: use 1-63 of a-z 0-9 . _ - starting with a letter or digit"
        )
    return name


def new_id() -> str:
    return str(uuid.uuid4())


class ZoneKind(str, Enum):
    PRODUCTION = "production"
    BACKUP = "backup"
    DR = "dr"
    RESEARCH = "research"
    QUARANTINE = "quarantine"
    ARCHIVE = "archive"


class Classification(str, Enum):
    """Ordered from least to most sensitive."""

    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    RESTRICTED = "restricted"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Classification).index(self)


class ReplicaKind(str, Enum):
    PRIMARY = "primary"
    BACKUP = "backup"
    DR = "dr"
    RESEARCH = "research"
    DERIVATIVE = "derivative"
    MIGRATION = "migration"
    DRILL = "drill"  # a DR drill's restore: checked, then shredded; never a source of copies


class ReplicaState(str, Enum):
    PENDING = "pending"  # sealed files being written; never readable
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    SHREDDED = "shredded"
    FAILED = "failed"  # a write that did not complete; its files are swept


# Which replica states may follow which: anything else is an InvalidState.
_REPLICA_MOVES: dict[ReplicaState, frozenset[ReplicaState]] = {
    ReplicaState.PENDING: frozenset({ReplicaState.ACTIVE, ReplicaState.FAILED}),
    ReplicaState.ACTIVE: frozenset({ReplicaState.EXPIRED, ReplicaState.REVOKED, ReplicaState.SHREDDED}),
    ReplicaState.EXPIRED: frozenset({ReplicaState.SHREDDED}),
    ReplicaState.REVOKED: frozenset({ReplicaState.SHREDDED}),
    ReplicaState.FAILED: frozenset({ReplicaState.SHREDDED}),
    ReplicaState.SHREDDED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class Zone:
    name: str
    url: str
    kind: ZoneKind
    region: str
    jurisdiction: str
    security_level: int
    custodian: str = "local"
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        check_name("zone", self.name)
        if not 1 <= self.security_level <= 5:
            raise InvalidInput(f"zone {self.name}: security level must be 1-5")
        if not re.match(r"^[A-Z]{2}$", self.jurisdiction):
            raise InvalidInput(f"zone {self.name}: jurisdiction must be a two-letter code such as US, EU, DE")
        if "://" not in self.url:
            raise InvalidInput(f"zone {self.name}: url must be an fsspec URL such as file:///path or s3://bucket/prefix")


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    name: str
    roles: tuple[str, ...]
    team: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    suspended: bool = False
    created_at: datetime | None = None
    created_by: str | None = None

    def has_role(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)


@dataclass(frozen=True, slots=True)
class Asset:
    id: str
    name: str
    owner: str
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class FormatSummary:
    """What the data plane found in one file, by content."""

    path: str
    kind: str
    parameters: int | None
    unsafe: bool


@dataclass(frozen=True, slots=True)
class TensorDigest:
    """SHA-256 of one tensor's raw bytes in a safetensors or GGUF file, as they were sealed.

    The same weights registered again (renamed, re-sharded, copied byte for byte into another
    container) keep these digests even when every file digest changes. `dtype` and `shape` are
    as the file's header states them (GGUF: the ggml type name, dimensions innermost first).
    `distinctive` says the digest may identify content: at least `MIN_DISTINCTIVE_BYTES` and not
    one element value repeated (an all-zeros bias or all-ones norm is in unrelated models too).
    `deflated` is how far the tensor's first 64 KiB compress (deflate size / size): generated
    buffers (position ids, masks) compress far more than learned weights.
    """

    path: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    size: int
    digest: str
    distinctive: bool
    deflated: float = 1.0


MIN_DISTINCTIVE_BYTES = 4096
"""Smaller tensors (norms and biases of small models, scalars) are too common to identify a
model; a 4 KiB tensor of non-repeating values (2,048 bf16 elements) is not shared by chance."""


@dataclass(frozen=True, slots=True)
class AssetVersion:
    id: str
    asset_id: str
    number: int
    digest: str
    manifest_json: str
    total_size: int
    file_count: int
    format: str  # the dominant format of the version's files
    parameters: int | None
    unsafe: bool  # some file can only be loaded by unpickling
    classification: Classification
    jurisdictions: tuple[str, ...]
    min_security_level: int
    labels: dict[str, str] = field(default_factory=dict)
    previous_id: str | None = None
    bundle_json: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Replica:
    id: str
    version_id: str
    zone: str
    kind: ReplicaKind
    state: ReplicaState
    key_id: str
    created_by: str
    request_id: str | None = None
    expires_at: datetime | None = None
    created_at: datetime | None = None
    bytes_sealed: int | None = None
    writer: str | None = None  # "host:pid" of the process writing a pending replica

    def can_move_to(self, target: ReplicaState) -> bool:
        return target in _REPLICA_MOVES[self.state]

    def check_move(self, target: ReplicaState) -> None:
        if not self.can_move_to(target):
            raise InvalidState(f"replica {self.id} is {self.state.value}; it cannot become {target.value}")

    @property
    def readable(self) -> bool:
        return self.state is ReplicaState.ACTIVE


@dataclass(frozen=True, slots=True)
class Event:
    """One ledger entry. `line()` is exactly what is hashed and exported."""

    seq: int
    time: str  # RFC 3339 UTC with microseconds
    actor: str
    action: str
    subject: str | None
    outcome: str
    source: str | None = None
    destination: str | None = None
    rationale: str | None = None
    request_id: str | None = None
    policy_ids: tuple[str, ...] = ()
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "source": self.source,
            "destination": self.destination,
            "rationale": self.rationale,
            "request_id": self.request_id,
            "outcome": self.outcome,
            "policy_ids": list(self.policy_ids),
            "details": self.details,
        }

    def line(self) -> bytes:
        import json

        # ASCII with escapes: any string (even one with lone surrogates from a filename) has one encoding.
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")

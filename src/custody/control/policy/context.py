"""The facts a decision is made on: plain frozen dataclasses, no I/O.

The service layer fills them from the store (the *_facts functions at the end turn domain objects
into facts); the catalog turns them into Cedar entities and context. Keeping them separate from the
domain objects means a decision can be reproduced (and tested from `tests.toml`) without a workspace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from custody.domain.model import Asset, AssetVersion, Principal, Zone


@dataclass(frozen=True, slots=True)
class ZoneFacts:
    name: str
    kind: str  # production | backup | dr | research | quarantine | archive
    jurisdiction: str
    security_level: int
    region: str


@dataclass(frozen=True, slots=True)
class AssetFacts:
    name: str
    classification: str  # public < internal < confidential < restricted < critical
    jurisdictions: tuple[str, ...]
    min_security_level: int
    owner: str
    size_bytes: int
    unsafe: bool  # some file can only be loaded by unpickling
    parameters: int | None = None


@dataclass(frozen=True, slots=True)
class PrincipalFacts:
    name: str
    roles: tuple[str, ...]
    team: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)  # Cedar entity tags (clearance, projects, ...)


@dataclass(frozen=True, slots=True)
class CopyFacts:
    principal: PrincipalFacts
    asset: AssetFacts
    source: ZoneFacts
    destination: ZoneFacts
    kind: str  # backup | dr | research | derivative | migration
    ttl_seconds: int | None
    purpose: str
    break_glass: bool = False
    exceptions: frozenset[str] = frozenset()  # policy ids excepted for this asset and destination
    transform: tuple[str, ...] = ()  # a derivative's recipe steps (domain/recipes.py), e.g. ("truncate", "int4")
    transform_bits: int = 0  # bits per weight the derivative keeps (4, 8, 16, 32); 0: the source's


@dataclass(frozen=True, slots=True)
class ApproveFacts:
    approver: PrincipalFacts
    requester: str
    requester_team: str | None
    asset: AssetFacts
    destination: ZoneFacts
    kind: str


@dataclass(frozen=True, slots=True)
class ReadFacts:
    """Decrypting a replica's weights in memory for the principal (DESIGN.md: reads are copies).

    `request` says how the read is asked: "direct" (now, with no read request), "asking" (a read
    request being created, whose approvals the rule table sets) or "approved" (now, under the
    principal's approved, unspent read request for this replica)."""

    principal: PrincipalFacts
    asset: AssetFacts
    zone: ZoneFacts  # where the replica lives
    replica_kind: str  # primary | backup | dr | research | derivative | migration | drill
    own_copy: bool  # the replica was made for a request of this principal
    request: str  # direct | asking | approved
    purpose: str
    ttl_seconds: int | None = None  # how long an approved read request stays usable
    kind: str = "read"  # for the approval-rule table
    break_glass: bool = False
    attestation_required: bool = False  # the replica's zone releases keys only to attested readers
    attested: bool = False  # the reader presented evidence the custodian verified over its nonce
    measurement: str | None = None  # what the evidence says runs the reader


@dataclass(frozen=True, slots=True)
class RegisterFacts:
    """Registering content that matches already registered weights (T3)."""

    principal: PrincipalFacts
    asset: AssetFacts  # the new version, with the label asked for
    zone: ZoneFacts
    matched: str  # the matched asset with the strictest label
    relabels: bool  # the label asked for is looser than the matched content's
    exceptions: frozenset[str] = frozenset()  # policy ids excepted for the matched asset and this zone


def principal_facts(p: Principal) -> PrincipalFacts:
    return PrincipalFacts(name=p.name, roles=p.roles, team=p.team, attributes=dict(p.attributes))


def zone_facts(z: Zone) -> ZoneFacts:
    return ZoneFacts(name=z.name, kind=z.kind.value, jurisdiction=z.jurisdiction, security_level=z.security_level,
                     region=z.region)


def asset_facts(asset: Asset, v: AssetVersion) -> AssetFacts:
    """`v`'s label under `asset`'s name and owner."""
    return AssetFacts(name=asset.name, classification=v.classification.value, jurisdictions=v.jurisdictions,
                      min_security_level=v.min_security_level, owner=asset.owner, size_bytes=v.total_size,
                      unsafe=v.unsafe, parameters=v.parameters)

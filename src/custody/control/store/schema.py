"""Tables of the control-plane store (SQLAlchemy Core).

Migrations under `migrations/` create exactly these; `tests/test_store.py` checks the two agree.
The ledger tables are insert-only: triggers created by the migration refuse UPDATE and DELETE.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

principals = Table(
    "principals",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("roles", JSON, nullable=False),
    Column("team", String(128)),
    Column("attributes", JSON, nullable=False),
    Column("token_id", String(32), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False),
    Column("suspended", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(64)),  # who added this principal: their own requests it cannot approve
    Column("record_signature", Text),  # the custodian's signature over the row (control/records.py)
)

zones = Table(
    "zones",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("url", Text, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("region", String(64), nullable=False),
    Column("jurisdiction", String(8), nullable=False),
    Column("security_level", Integer, nullable=False),
    Column("custodian", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("egress_bytes_per_hour", BigInteger),  # NULL: no budget
    Column("record_signature", Text),  # the custodian's signature over the row (control/records.py)
)

assets = Table(
    "assets",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("owner", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

asset_versions = Table(
    "asset_versions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("asset_id", String(36), ForeignKey("assets.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("manifest_json", Text, nullable=False),
    Column("total_size", BigInteger, nullable=False),
    Column("file_count", Integer, nullable=False),
    Column("format", String(32), nullable=False),
    Column("parameters", BigInteger),
    Column("unsafe", Boolean, nullable=False),
    Column("classification", String(16), nullable=False),
    Column("jurisdictions", JSON, nullable=False),
    Column("min_security_level", Integer, nullable=False),
    Column("labels", JSON, nullable=False),
    Column("formats", JSON, nullable=False),
    Column("previous_id", String(36), ForeignKey("asset_versions.id")),
    Column("bundle_json", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("record_signature", Text),  # the custodian's signature over the row (control/records.py)
    UniqueConstraint("asset_id", "number"),
)

data_keys = Table(
    "data_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("zone", String(64), ForeignKey("zones.name"), nullable=False),
    Column("kek_version", Integer, nullable=False),
    Column("wrapped", LargeBinary),  # NULL once shredded
    Column("binding", Text),  # keys.custodian.Binding as JSON, authenticated by the custodian; NULL before 0007
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("shredded_at", DateTime(timezone=True)),
)

replicas = Table(
    "replicas",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("version_id", String(36), ForeignKey("asset_versions.id")),  # NULL while a registration is pending
    Column("asset_name", String(64), nullable=False),
    Column("zone", String(64), ForeignKey("zones.name"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("key_id", String(36), ForeignKey("data_keys.id"), nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("request_id", String(36)),
    Column("expires_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("bytes_sealed", BigInteger),
    Column("writer", String(128)),
    Column("bundle_json", Text),
    Column("manifest_json", Text),  # a marked copy's own files (NULL: the version's)
    Index("ix_replicas_state", "state"),
)

ledger_events = Table(
    "ledger_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("time", String(40), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", Text),
    Column("outcome", String(32), nullable=False),
    Column("line", Text, nullable=False),  # exactly the bytes hashed into the leaf
)

ledger_nodes = Table(
    "ledger_nodes",
    metadata,
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)

ledger_head = Table(
    "ledger_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
)

ledger_checkpoints = Table(
    "ledger_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("note", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

requests = Table(
    "requests",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("requester", String(64), nullable=False),
    Column("asset_name", String(64), nullable=False),
    Column("version_id", String(36), ForeignKey("asset_versions.id"), nullable=False),
    Column("version_digest", String(64), nullable=False),
    Column("source_replica", String(36), ForeignKey("replicas.id")),  # a copy or a backup reads a replica
    Column("source_snapshot", String(36)),  # a restore or a drill reads a snapshot
    Column("method", String(16), nullable=False, server_default="replica"),  # replica | snapshot
    Column("destination_zone", String(64), ForeignKey("zones.name"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("purpose", Text, nullable=False),
    Column("state", String(24), nullable=False),
    Column("ttl_seconds", BigInteger),
    Column("break_glass", Boolean, nullable=False),
    Column("decision", JSON),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("window_expires_at", DateTime(timezone=True)),
    Column("grant_expires_at", DateTime(timezone=True)),
    Column("result_replica", String(36)),
    Column("error", Text),
    Column("writer", String(128)),  # "host:pid" of the process running it
    Column("transform", Text),  # a derivative's recipe (domain/recipes.py), canonical text
    Index("ix_requests_state", "state"),
)

# One table for every sign-off: request approvals, policy-proposal approvals, exception
# approvals, break-glass review closures. Unique per (subject, principal): no one counts twice.
signoffs = Table(
    "signoffs",
    metadata,
    Column("subject_kind", String(16), primary_key=True),
    Column("subject_id", String(36), primary_key=True),
    Column("principal", String(64), primary_key=True),
    Column("team", String(128)),
    Column("roles", JSON, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("mfa_verified", Boolean, nullable=False),
    Column("comment", Text),
    Column("signature", Text, nullable=False),
)

grants = Table(
    "grants",
    metadata,
    Column("request_id", String(36), ForeignKey("requests.id"), primary_key=True),
    Column("token", Text, nullable=False),
    Column("use_id", String(128), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

grant_uses = Table(  # single use: a second insert of the same use_id fails
    "grant_uses",
    metadata,
    Column("use_id", String(128), primary_key=True),
    Column("request_id", String(36), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=False),
)

mfa = Table(
    "mfa",
    metadata,
    Column("principal", String(64), primary_key=True),
    Column("secret_sealed", LargeBinary),  # the seed in force, encrypted by the custodian
    Column("pending_sealed", LargeBinary),  # a new seed: in force once a code from it is verified
    Column("enrolled_at", DateTime(timezone=True), nullable=False),
    Column("last_step", BigInteger),  # the last TOTP time step accepted: codes are single use
)

reviews = Table(
    "reviews",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("request_id", String(36), ForeignKey("requests.id")),
    Column("opened_by", String(64), nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True)),
    Column("summary", Text, nullable=False),
)

policy_exceptions = Table(
    "policy_exceptions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("policy_id", String(128), nullable=False),
    Column("asset_name", String(64), nullable=False),
    Column("zone", String(64), ForeignKey("zones.name"), nullable=False),
    Column("justification", Text, nullable=False),
    Column("proposer", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # proposed | active | rejected
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("record_signature", Text),  # the custodian's signature once active (control/records.py)
)

policy_proposals = Table(
    "policy_proposals",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("catalog_hash", String(64), nullable=False),
    Column("files", JSON, nullable=False),
    Column("purpose", Text, nullable=False),
    Column("proposer", String(64), nullable=False),
    Column("base_hash", String(64)),  # the catalog it changes: a proposal made on an older one is stale
    Column("state", String(16), nullable=False),  # proposed | applied | superseded
    Column("created_at", DateTime(timezone=True), nullable=False),
)

egress = Table(
    "egress",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("zone", String(64), ForeignKey("zones.name"), nullable=False),
    Column("request_id", String(36), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("principal", String(64)),  # whose request took the bytes (per-principal budgets)
    Column("asset_name", String(64)),  # whose bytes they were, from whichever zone (per-asset budgets)
    Index("ix_egress_zone_at", "zone", "at"),
    Index("ix_egress_principal_at", "principal", "at"),
    Index("ix_egress_asset_at", "asset_name", "at"),
)

backup_policies = Table(
    "backup_policies",
    metadata,
    Column("asset_name", String(64), primary_key=True),
    Column("zone", String(64), ForeignKey("zones.name"), nullable=False),
    Column("schedule", String(64), nullable=False),  # a 5-field cron expression
    Column("keep_daily", Integer, nullable=False),
    Column("keep_weekly", Integer, nullable=False),
    Column("keep_monthly", Integer, nullable=False),
    Column("rpo_seconds", BigInteger, nullable=False),
    Column("rto_seconds", BigInteger, nullable=False),
    Column("updated_by", String(64), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

repositories = Table(  # one live per (backup zone, asset lineage); a shredded one is kept for the record
    "repositories",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("zone", String(64), ForeignKey("zones.name"), nullable=False),
    Column("asset_id", String(36), ForeignKey("assets.id"), nullable=False),
    Column("key_id", String(36), ForeignKey("data_keys.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("repo_id", String(36), ForeignKey("repositories.id"), nullable=False),
    Column("asset_name", String(64), nullable=False),
    Column("version_id", String(36), ForeignKey("asset_versions.id"), nullable=False),
    Column("request_id", String(36)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("manifest_json", Text, nullable=False),  # files -> chunk ids, sizes, digests
    Column("bundle_json", Text, nullable=False),  # the files' digests, signed (model-signing format)
    Column("manifest_signature", Text, nullable=False),  # the chunk list itself, signed with its repository and id
    Column("logical_bytes", BigInteger, nullable=False),
    Column("added_bytes", BigInteger, nullable=False),
    Column("immutable_until", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False),  # active | forgotten
    Column("verified_at", DateTime(timezone=True)),
    Index("ix_snapshots_asset", "asset_name", "created_at"),
)

deletions = Table(  # asking to destroy backups before their retention ends: needs two approvals
    "deletions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("target_kind", String(16), nullable=False),  # snapshot | repository
    Column("target_id", String(36), nullable=False),
    Column("proposer", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False),  # proposed | done
)

# Portal sign-ins: the cookie holds a random session id; only its hash is kept here, so a copy of
# the database cannot be replayed as a session, and ending a session is one UPDATE.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("principal", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
)

# Identity changes that need two security sign-offs with MFA: adding an admin, a security officer
# or an approver (ml-lead), and suspending an admin or a security officer.
identity_proposals = Table(
    "identity_proposals",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("change", String(16), nullable=False),  # add | suspend
    Column("principal", String(64), nullable=False),  # who is added or suspended
    Column("roles", JSON, nullable=False),
    Column("team", String(128)),
    Column("attributes", JSON, nullable=False),
    Column("token_id", String(32)),  # an addition: the public part of the token its holder made
    Column("token_hash", String(64)),
    Column("reason", Text, nullable=False),
    Column("proposer", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # proposed | applied | withdrawn
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("applied_at", DateTime(timezone=True)),
)

# What registered weights contain, by digest: every file, and every tensor of a safetensors or
# GGUF file, so the same weights registered under another name are recognised (T3).
content_digests = Table(
    "content_digests",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("kind", String(8), nullable=False),  # file | tensor
    Column("version_id", String(36), ForeignKey("asset_versions.id"), nullable=False),
    Column("path", Text, nullable=False),
    Column("tensor", Text),
    Column("size", BigInteger, nullable=False),
    Index("ix_content_digests_digest", "digest"),
)

# A version found at registration to hold content of an earlier one ("same content as").
content_links = Table(
    "content_links",
    metadata,
    Column("version_id", String(36), ForeignKey("asset_versions.id"), primary_key=True),
    Column("matched_version_id", String(36), ForeignKey("asset_versions.id"), primary_key=True),
    Column("matched_by", String(8), nullable=False),  # file | tensor
    Column("matched_bytes", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# A derivative's version and where it came from: parent version, recipe, request (signed).
lineage = Table(
    "lineage",
    metadata,
    Column("version_id", String(36), ForeignKey("asset_versions.id"), primary_key=True),
    Column("parent_version_id", String(36), ForeignKey("asset_versions.id"), nullable=False),
    Column("parent_digest", String(64), nullable=False),
    Column("recipe", Text, nullable=False),
    Column("request_id", String(36), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("record_signature", Text),
)

# Every per-recipient mark put on a copy: who it was made for, on which reference weights (signed).
marks = Table(
    "marks",
    metadata,
    Column("replica_id", String(36), primary_key=True),
    Column("reference_version_id", String(36), ForeignKey("asset_versions.id"), nullable=False),
    Column("recipient", String(64), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("alpha", Float, nullable=False),
    Column("tensors", JSON, nullable=False),
    Column("request_id", String(36)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("record_signature", Text),
    Index("ix_marks_reference", "reference_version_id"),
)

# The keyed identity sketch of each weight matrix of a version (data/derive/sketch.py).
tensor_sketches = Table(
    "tensor_sketches",
    metadata,
    Column("version_id", String(36), ForeignKey("asset_versions.id"), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("tensor", Text, primary_key=True),
    Column("rows", BigInteger, nullable=False),
    Column("cols", BigInteger, nullable=False),
    Column("sketch", LargeBinary, nullable=False),
)

# Every trace run: the verdict and the archived evidence's digest.
traces = Table(
    "traces",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("asset_name", String(64)),
    Column("suspect_digest", String(64), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("recipient", String(64)),
    Column("z", Float),
    Column("tau", Float, nullable=False),
    Column("evidence_sha256", String(64), nullable=False),
)

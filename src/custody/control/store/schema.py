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
    UniqueConstraint("asset_id", "number"),
)

data_keys = Table(
    "data_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("zone", String(64), ForeignKey("zones.name"), nullable=False),
    Column("kek_version", Integer, nullable=False),
    Column("wrapped", LargeBinary),  # NULL once shredded
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

APPEND_ONLY_TABLES = ("ledger_events", "ledger_nodes", "ledger_checkpoints")

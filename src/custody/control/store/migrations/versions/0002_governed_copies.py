"""Governed copies: requests, sign-offs, grants, MFA, reviews, exceptions, policy proposals, egress.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("zones") as batch:
        batch.add_column(sa.Column("egress_bytes_per_hour", sa.BigInteger))
    op.create_table(
        "requests",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("requester", sa.String(64), nullable=False),
        sa.Column("asset_name", sa.String(64), nullable=False),
        sa.Column("version_id", sa.String(36), sa.ForeignKey("asset_versions.id"), nullable=False),
        sa.Column("version_digest", sa.String(64), nullable=False),
        sa.Column("source_replica", sa.String(36), sa.ForeignKey("replicas.id"), nullable=False),
        sa.Column("destination_zone", sa.String(64), sa.ForeignKey("zones.name"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("purpose", sa.Text, nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("ttl_seconds", sa.BigInteger),
        sa.Column("break_glass", sa.Boolean, nullable=False),
        sa.Column("decision", sa.JSON),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("window_expires_at", TS),
        sa.Column("grant_expires_at", TS),
        sa.Column("result_replica", sa.String(36)),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_requests_state", "requests", ["state"])
    op.create_table(
        "signoffs",
        sa.Column("subject_kind", sa.String(16), primary_key=True),
        sa.Column("subject_id", sa.String(36), primary_key=True),
        sa.Column("principal", sa.String(64), primary_key=True),
        sa.Column("team", sa.String(128)),
        sa.Column("roles", sa.JSON, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("mfa_verified", sa.Boolean, nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("signature", sa.Text, nullable=False),
    )
    op.create_table(
        "grants",
        sa.Column("request_id", sa.String(36), sa.ForeignKey("requests.id"), primary_key=True),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("use_id", sa.String(128), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "grant_uses",
        sa.Column("use_id", sa.String(128), primary_key=True),
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("used_at", TS, nullable=False),
    )
    op.create_table(
        "mfa",
        sa.Column("principal", sa.String(64), primary_key=True),
        sa.Column("secret_sealed", sa.LargeBinary, nullable=False),
        sa.Column("enrolled_at", TS, nullable=False),
        sa.Column("last_step", sa.BigInteger),
    )
    op.create_table(
        "reviews",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(36), sa.ForeignKey("requests.id")),
        sa.Column("opened_by", sa.String(64), nullable=False),
        sa.Column("opened_at", TS, nullable=False),
        sa.Column("closed_at", TS),
        sa.Column("summary", sa.Text, nullable=False),
    )
    op.create_table(
        "policy_exceptions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("policy_id", sa.String(128), nullable=False),
        sa.Column("asset_name", sa.String(64), nullable=False),
        sa.Column("zone", sa.String(64), sa.ForeignKey("zones.name"), nullable=False),
        sa.Column("justification", sa.Text, nullable=False),
        sa.Column("proposer", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "policy_proposals",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("catalog_hash", sa.String(64), nullable=False),
        sa.Column("files", sa.JSON, nullable=False),
        sa.Column("purpose", sa.Text, nullable=False),
        sa.Column("proposer", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "egress",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("zone", sa.String(64), sa.ForeignKey("zones.name"), nullable=False),
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_egress_zone_at", "egress", ["zone", "at"])


def downgrade() -> None:
    raise NotImplementedError("custody does not downgrade")

"""Backups (policies, repositories, snapshots; requests that read snapshots) and tighter approvals.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("principals") as batch:
        batch.add_column(sa.Column("created_by", sa.String(64)))
    with op.batch_alter_table("mfa") as batch:
        batch.alter_column("secret_sealed", existing_type=sa.LargeBinary, nullable=True)
        batch.add_column(sa.Column("pending_sealed", sa.LargeBinary))
    with op.batch_alter_table("policy_proposals") as batch:
        batch.add_column(sa.Column("base_hash", sa.String(64)))
    with op.batch_alter_table("requests") as batch:
        batch.alter_column("source_replica", existing_type=sa.String(36), nullable=True)
        batch.add_column(sa.Column("source_snapshot", sa.String(36)))
        batch.add_column(sa.Column("method", sa.String(16), nullable=False, server_default="replica"))
        batch.add_column(sa.Column("writer", sa.String(128)))
    op.create_table(
        "backup_policies",
        sa.Column("asset_name", sa.String(64), primary_key=True),
        sa.Column("zone", sa.String(64), sa.ForeignKey("zones.name"), nullable=False),
        sa.Column("schedule", sa.String(64), nullable=False),
        sa.Column("keep_daily", sa.Integer, nullable=False),
        sa.Column("keep_weekly", sa.Integer, nullable=False),
        sa.Column("keep_monthly", sa.Integer, nullable=False),
        sa.Column("rpo_seconds", sa.BigInteger, nullable=False),
        sa.Column("rto_seconds", sa.BigInteger, nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "repositories",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("zone", sa.String(64), sa.ForeignKey("zones.name"), nullable=False),
        sa.Column("asset_id", sa.String(36), sa.ForeignKey("assets.id"), nullable=False),
        sa.Column("key_id", sa.String(36), sa.ForeignKey("data_keys.id"), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("repo_id", sa.String(36), sa.ForeignKey("repositories.id"), nullable=False),
        sa.Column("asset_name", sa.String(64), nullable=False),
        sa.Column("version_id", sa.String(36), sa.ForeignKey("asset_versions.id"), nullable=False),
        sa.Column("request_id", sa.String(36)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("manifest_json", sa.Text, nullable=False),
        sa.Column("bundle_json", sa.Text, nullable=False),
        sa.Column("manifest_signature", sa.Text, nullable=False),
        sa.Column("logical_bytes", sa.BigInteger, nullable=False),
        sa.Column("added_bytes", sa.BigInteger, nullable=False),
        sa.Column("immutable_until", TS, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("verified_at", TS),
    )
    op.create_index("ix_snapshots_asset", "snapshots", ["asset_name", "created_at"])
    op.create_table(
        "deletions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("target_kind", sa.String(16), nullable=False),
        sa.Column("target_id", sa.String(36), nullable=False),
        sa.Column("proposer", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("custody does not downgrade")

"""Closing the side paths: governed identity changes, content digests and links, egress by principal and asset.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "identity_proposals",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("change", sa.String(16), nullable=False),
        sa.Column("principal", sa.String(64), nullable=False),
        sa.Column("roles", sa.JSON, nullable=False),
        sa.Column("team", sa.String(128)),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("proposer", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("applied_at", TS),
    )
    op.create_table(
        "content_digests",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("version_id", sa.String(36), sa.ForeignKey("asset_versions.id"), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("tensor", sa.Text),
        sa.Column("size", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_content_digests_digest", "content_digests", ["digest"])
    op.create_table(
        "content_links",
        sa.Column("version_id", sa.String(36), sa.ForeignKey("asset_versions.id"), primary_key=True),
        sa.Column("matched_version_id", sa.String(36), sa.ForeignKey("asset_versions.id"), primary_key=True),
        sa.Column("matched_by", sa.String(8), nullable=False),
        sa.Column("matched_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    with op.batch_alter_table("egress") as batch:
        batch.add_column(sa.Column("principal", sa.String(64)))
        batch.add_column(sa.Column("asset_name", sa.String(64)))
    op.create_index("ix_egress_principal_at", "egress", ["principal", "at"])
    op.create_index("ix_egress_asset_at", "egress", ["asset_name", "at"])


def downgrade() -> None:
    op.drop_index("ix_egress_asset_at", "egress")
    op.drop_index("ix_egress_principal_at", "egress")
    with op.batch_alter_table("egress") as batch:
        batch.drop_column("asset_name")
        batch.drop_column("principal")
    op.drop_table("content_links")
    op.drop_index("ix_content_digests_digest", "content_digests")
    op.drop_table("content_digests")
    op.drop_table("identity_proposals")

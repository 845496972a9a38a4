"""Derivatives and tracing: a request's recipe, a marked copy's own manifest, lineage, marks,
identity sketches and the record of traces.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("transform", sa.Text))
    with op.batch_alter_table("replicas") as batch:
        batch.add_column(sa.Column("manifest_json", sa.Text))
    op.create_table(
        "lineage",
        sa.Column("version_id", sa.String(36), sa.ForeignKey("asset_versions.id"), primary_key=True),
        sa.Column("parent_version_id", sa.String(36), sa.ForeignKey("asset_versions.id"), nullable=False),
        sa.Column("parent_digest", sa.String(64), nullable=False),
        sa.Column("recipe", sa.Text, nullable=False),
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("record_signature", sa.Text),
    )
    op.create_table(
        "marks",
        sa.Column("replica_id", sa.String(36), primary_key=True),
        sa.Column("reference_version_id", sa.String(36), sa.ForeignKey("asset_versions.id"), nullable=False),
        sa.Column("recipient", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("alpha", sa.Float, nullable=False),
        sa.Column("tensors", sa.JSON, nullable=False),
        sa.Column("request_id", sa.String(36)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("record_signature", sa.Text),
    )
    op.create_index("ix_marks_reference", "marks", ["reference_version_id"])
    op.create_table(
        "tensor_sketches",
        sa.Column("version_id", sa.String(36), sa.ForeignKey("asset_versions.id"), primary_key=True),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("tensor", sa.Text, primary_key=True),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("cols", sa.BigInteger, nullable=False),
        sa.Column("sketch", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "traces",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("asset_name", sa.String(64)),
        sa.Column("suspect_digest", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("recipient", sa.String(64)),
        sa.Column("z", sa.Float),
        sa.Column("tau", sa.Float, nullable=False),
        sa.Column("evidence_sha256", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    for table in ("traces", "tensor_sketches", "marks", "lineage"):
        op.drop_table(table)
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("manifest_json")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("transform")

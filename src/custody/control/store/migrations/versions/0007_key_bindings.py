"""A wrapped data key is stored with its binding (replica, zone, kind, digest, expiry), which the
custodian authenticates as associated data: an edit of either makes the key fail to unwrap. Principal
zone and asset version rows carry the custodian's signature (control/records.py).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("data_keys") as batch:
        batch.add_column(sa.Column("binding", sa.Text))
    for table in ("principals", "zones", "asset_versions", "policy_exceptions"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("record_signature", sa.Text))


def downgrade() -> None:
    for table in ("principals", "zones", "asset_versions", "policy_exceptions"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("record_signature")
    with op.batch_alter_table("data_keys") as batch:
        batch.drop_column("binding")

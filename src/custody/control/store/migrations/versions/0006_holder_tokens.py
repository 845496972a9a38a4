"""Identity proposals carry the public part of a token its holder made: nobody else ever sees it.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("identity_proposals") as batch:
        batch.add_column(sa.Column("token_id", sa.String(32)))
        batch.add_column(sa.Column("token_hash", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("identity_proposals") as batch:
        batch.drop_column("token_hash")
        batch.drop_column("token_id")

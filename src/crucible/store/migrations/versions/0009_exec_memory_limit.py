"""An exec says whether the sandbox reached its memory limit during it: a command
thrashing at the limit until its timeout is told apart from one that merely ran long.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandbox_execs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("memory_limit", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("sandbox_execs", schema=None) as batch_op:
        batch_op.drop_column("memory_limit")

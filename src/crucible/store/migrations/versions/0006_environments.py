"""Environments: evaluations and sandboxes name the root they run in (``host`` for
every row before), indexed with the status so "is it in use?" is one lookup; a
sandbox also keeps the root's digest (an evaluation keeps it in its request).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("environment", sa.String(length=300), nullable=False, server_default="host")
        )
        batch_op.create_index("ix_evaluations_environment", ["environment", "status"])
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("environment", sa.String(length=300), nullable=False, server_default="host")
        )
        batch_op.add_column(sa.Column("environment_digest", sa.String(length=80), nullable=True))
        batch_op.create_index("ix_sandboxes_environment", ["environment", "status"])


def downgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_index("ix_sandboxes_environment")
        batch_op.drop_column("environment_digest")
        batch_op.drop_column("environment")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index("ix_evaluations_environment")
        batch_op.drop_column("environment")

"""Agent sandboxes on worker hosts: a worker says how many sandboxes it hosts and where
API instances reach it, and carries an epoch bumped each time it is declared dead; a
sandbox names its private network group (a compose sample's services share a host)
and why it stopped in words; an exec may carry the caller's idempotency key, unique
within its sandbox, so a retried exec never runs twice.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("sandbox_capacity", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("sandboxes_running", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("endpoint", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("epoch", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("network_group", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("stop_detail", sa.Text(), nullable=True))
        batch_op.create_index("ix_sandboxes_network_group", ["network_group", "status"])
    with op.batch_alter_table("sandbox_execs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch_op.create_unique_constraint(
            "uq_sandbox_execs_idempotency", ["sandbox_id", "idempotency_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("sandbox_execs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_sandbox_execs_idempotency", type_="unique")
        batch_op.drop_column("idempotency_key")
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_index("ix_sandboxes_network_group")
        batch_op.drop_column("stop_detail")
        batch_op.drop_column("network_group")
    with op.batch_alter_table("workers", schema=None) as batch_op:
        for name in ("epoch", "endpoint", "sandboxes_running", "sandbox_capacity"):
            batch_op.drop_column(name)

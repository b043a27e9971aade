"""Batches take an Idempotency-Key, as evaluations do: a retried POST /batches after a
lost answer finds the batch it made instead of queueing every item twice.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint("uq_batches_idempotency_key", ["idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_constraint("uq_batches_idempotency_key", type_="unique")
        batch_op.drop_column("request_hash")
        batch_op.drop_column("idempotency_key")

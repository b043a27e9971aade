"""Distributed mode: worker heartbeats, the attempt log, dead letters, and the columns
that let any process publish, recover and back off evaluations.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("worker_id", sa.String(length=96), nullable=True))
        batch_op.add_column(sa.Column("enqueued_at", WHEN, nullable=True))
        batch_op.add_column(sa.Column("not_before", WHEN, nullable=True))
        batch_op.create_index(batch_op.f("ix_evaluations_worker_id"), ["worker_id"], unique=False)
        batch_op.create_index("ix_evaluations_publish", ["status", "enqueued_at"], unique=False)

    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=96), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("proc_start", sa.String(length=32), nullable=False),
        sa.Column("queues", sa.String(length=200), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("running", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("started_at", WHEN, nullable=False),
        sa.Column("last_heartbeat", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.create_index("ix_workers_liveness", ["state", "last_heartbeat"], unique=False)

    op.create_table(
        "attempts",
        sa.Column("evaluation_id", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=96), nullable=True),
        sa.Column("started_at", WHEN, nullable=False),
        sa.Column("finished_at", WHEN, nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("evaluation_id", "attempt"),
    )

    op.create_table(
        "dead_letters",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("evaluation_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.JSON(), nullable=False),
        sa.Column("retried_as", sa.String(length=32), nullable=True),
        sa.Column("retried_at", WHEN, nullable=True),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("evaluation_id"),
    )


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_table("attempts")
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_index("ix_workers_liveness")
    op.drop_table("workers")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index("ix_evaluations_publish")
        batch_op.drop_index(batch_op.f("ix_evaluations_worker_id"))
        batch_op.drop_column("not_before")
        batch_op.drop_column("enqueued_at")
        batch_op.drop_column("worker_id")

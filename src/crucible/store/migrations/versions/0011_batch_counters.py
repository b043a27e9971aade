"""Cheap reads: a batch's counts by status, termination and verdict live on its row
(kept by ``crucible.store.tallies`` in the same transaction as each status change),
backfilled here from the evaluations; and the list's filters get indexes ending in
``seq``, so a page of ``?status=…`` (etc.) newest first is an index range scan read
backwards instead of a scan and sort of every matching row.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# (column, the evaluations' column it counts, the value counted)
COUNTERS = [
    *((f"n_{s}", "status", s) for s in ("queued", "running", "completed", "cancelled", "error")),
    *(
        (f"t_{t}", "termination", t)
        for t in (
            "exited",
            "timeout",
            "memory_limit",
            "output_limit",
            "compile_error",
            "cancelled",
        )
    ),
    *((f"v_{v}", "verdict", v) for v in ("passed", "failed")),
]


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        for name, _, _ in COUNTERS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
    sets = ", ".join(
        f"{name} = (SELECT count(*) FROM evaluations"
        f" WHERE evaluations.batch_id = batches.id AND evaluations.{column} = '{value}')"
        for name, column, value in COUNTERS
    )
    op.execute(f"UPDATE batches SET {sets}")


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        for name, _, _ in reversed(COUNTERS):
            batch_op.drop_column(name)

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

# The list's filters: (old index, its columns), (new index, its columns).
INDEXES = [
    (
        ("ix_evaluations_batch", ["batch_id", "status"]),
        ("ix_evaluations_batch_seq", ["batch_id", "seq"]),
    ),
    (("ix_evaluations_status", ["status"]), ("ix_evaluations_status_seq", ["status", "seq"])),
    (
        ("ix_evaluations_language", ["language"]),
        ("ix_evaluations_language_seq", ["language", "seq"]),
    ),
    (
        ("ix_evaluations_termination", ["termination"]),
        ("ix_evaluations_termination_seq", ["termination", "seq"]),
    ),
    (("ix_evaluations_verdict", ["verdict"]), ("ix_evaluations_verdict_seq", ["verdict", "seq"])),
    (
        ("ix_evaluations_owner_key_id", ["owner_key_id"]),
        ("ix_evaluations_owner_seq", ["owner_key_id", "seq"]),
    ),
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
    for (old, _), (new, columns) in INDEXES:
        op.create_index(new, "evaluations", columns)
        op.drop_index(old, table_name="evaluations")
    op.create_index("ix_labels_kv_seq", "labels", ["key", "value", "evaluation_seq"])
    op.drop_index("ix_labels_kv", table_name="labels")


def downgrade() -> None:
    op.create_index("ix_labels_kv", "labels", ["key", "value"])
    op.drop_index("ix_labels_kv_seq", table_name="labels")
    for (old, old_columns), (new, _) in INDEXES:
        op.create_index(old, "evaluations", old_columns)
        op.drop_index(new, table_name="evaluations")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        for name, _, _ in reversed(COUNTERS):
            batch_op.drop_column(name)

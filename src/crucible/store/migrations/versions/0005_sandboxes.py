"""Long-lived (agent) sandboxes and their exec transcripts; the per-key
``max_sandboxes`` quota.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_sandboxes", sa.Integer(), nullable=True))
    op.create_table(
        "sandboxes",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner_key_id", sa.String(length=32), nullable=True),
        sa.Column("runtime", sa.String(length=16), nullable=False),
        sa.Column("limits", sa.JSON(), nullable=False),
        sa.Column("ttl_s", sa.Float(), nullable=False),
        sa.Column("idle_timeout_s", sa.Float(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stop_reason", sa.String(length=16), nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("last_activity_at", WHEN, nullable=False),
        sa.Column("stopped_at", WHEN, nullable=True),
        sa.Column("owner_process_id", sa.String(length=96), nullable=False),
        sa.Column("owner_node", sa.String(length=128), nullable=False),
        sa.Column("owner_host", sa.String(length=255), nullable=False),
        sa.Column("owner_pid", sa.Integer(), nullable=False),
        sa.Column("owner_proc_start", sa.String(length=32), nullable=False),
        sa.Column("cpu_ms", sa.BigInteger(), nullable=False),
        sa.Column("peak_memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("exec_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.create_index("ix_sandboxes_owner_status", ["owner_key_id", "status"])
        batch_op.create_index("ix_sandboxes_status_process", ["status", "owner_process_id"])
    op.create_table(
        "sandbox_execs",
        sa.Column("sandbox_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("cmd", sa.JSON(), nullable=False),
        sa.Column("cwd", sa.Text(), nullable=True),
        sa.Column("user", sa.String(length=64), nullable=True),
        sa.Column("started_at", WHEN, nullable=False),
        sa.Column("finished_at", WHEN, nullable=True),
        sa.Column("returncode", sa.Integer(), nullable=True),
        sa.Column("timed_out", sa.Boolean(), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("stdout_preview", sa.LargeBinary(), nullable=False),
        sa.Column("stderr_preview", sa.LargeBinary(), nullable=False),
        sa.Column("stdout_truncated", sa.Boolean(), nullable=False),
        sa.Column("stderr_truncated", sa.Boolean(), nullable=False),
        sa.Column("stdout_preview_truncated", sa.Boolean(), nullable=False),
        sa.Column("stderr_preview_truncated", sa.Boolean(), nullable=False),
        sa.Column("stdout_blob", sa.String(length=64), nullable=True),
        sa.Column("stderr_blob", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["sandbox_id"], ["sandboxes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("sandbox_id", "seq"),
    )


def downgrade() -> None:
    op.drop_table("sandbox_execs")
    op.drop_table("sandboxes")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("max_sandboxes")

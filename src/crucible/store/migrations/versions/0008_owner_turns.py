"""Owners take turns: the claim remembers when each owner was last served, so with
one slot freed at a time a second key's work is not queued behind a whole batch.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "owner_turns",
        sa.Column("owner", sa.String(length=32), nullable=False),
        sa.Column("served_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner"),
    )


def downgrade() -> None:
    op.drop_table("owner_turns")

"""cycle_outcomes: recorded when a cycle runs empty, before the refill that ends it; whether it taught its group

Revision ID: 5a0e7c3b9d21
Revises: 886d305a0b3f
Create Date: 2026-12-07 20:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import replenish.columns

revision = "5a0e7c3b9d21"
down_revision = "886d305a0b3f"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cycle_outcomes", schema=None) as batch_op:
        batch_op.alter_column("ended_at", existing_type=replenish.columns.UTCDateTime(timezone=True), nullable=True)
        # Whether an outcome from before taught its group is not known now: taken as not (nothing to take back).
        batch_op.add_column(sa.Column("group_taught", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    # An outcome still waiting for its refill has no end to keep: the older code records it again when the refill
    # comes, and learns from it a second time (one lesson more, within the calibration's bounds).
    op.execute("DELETE FROM cycle_outcomes WHERE ended_at IS NULL")
    with op.batch_alter_table("cycle_outcomes", schema=None) as batch_op:
        batch_op.drop_column("group_taught")
        batch_op.alter_column("ended_at", existing_type=replenish.columns.UTCDateTime(timezone=True), nullable=False)

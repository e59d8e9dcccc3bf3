"""slots: what a full evaluation leaves for the next readings

Revision ID: 1dfff895b7ac
Revises: 8b525f975c3b
Create Date: 2026-12-06 14:44:37.981615
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import replenish.columns

revision = "1dfff895b7ac"
down_revision = "8b525f975c3b"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("slots", schema=None) as batch_op:
        batch_op.add_column(sa.Column("evaluate_by", replenish.columns.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("screen_until", replenish.columns.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("screen_until_dropped", replenish.columns.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("screen_low", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("screen_high", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("slots", schema=None) as batch_op:
        batch_op.drop_column("screen_high")
        batch_op.drop_column("screen_low")
        batch_op.drop_column("screen_until_dropped")
        batch_op.drop_column("screen_until")
        batch_op.drop_column("evaluate_by")

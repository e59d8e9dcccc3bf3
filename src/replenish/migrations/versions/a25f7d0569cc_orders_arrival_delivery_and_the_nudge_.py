"""orders: arrival, delivery and the nudge after it

Revision ID: a25f7d0569cc
Revises: 65afb45e4afa
Create Date: 2026-12-06 08:25:53.987821
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import replenish.columns

revision = "a25f7d0569cc"
down_revision = "65afb45e4afa"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("arriving_at", replenish.columns.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("delivered_at", replenish.columns.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("nudged_at", replenish.columns.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_orders_delivered_at"), ["delivered_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orders_delivered_at"))
        batch_op.drop_column("nudged_at")
        batch_op.drop_column("delivered_at")
        batch_op.drop_column("arriving_at")

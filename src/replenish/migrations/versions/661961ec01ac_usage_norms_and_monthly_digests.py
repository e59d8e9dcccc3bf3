"""insights: the fleet's usage norms per kind and slot name; monthly digests sent

Revision ID: 661961ec01ac
Revises: 3cd04c62654d
Create Date: 2026-12-07 17:36:49
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import replenish.columns

revision = "661961ec01ac"
down_revision = "3cd04c62654d"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_norms",
        sa.Column("device_kind", sa.String(), nullable=False),
        sa.Column("slot_name", sa.String(), nullable=False),
        sa.Column("median_rate_per_day", sa.Float(), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("computed_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_kind", "slot_name"),
    )
    op.create_table(
        "monthly_digests",
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("sent_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
        ),
        sa.PrimaryKeyConstraint("customer_id", "month"),
    )


def downgrade() -> None:
    op.drop_table("monthly_digests")
    op.drop_table("usage_norms")

"""calibration: what ended cycles taught the forecasts (per kind and slot name, per slot); reliability per kind

Revision ID: 886d305a0b3f
Revises: 661961ec01ac
Create Date: 2026-12-07 17:53:06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import replenish.columns

revision = "886d305a0b3f"
down_revision = "661961ec01ac"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "forecast_reliability",
        sa.Column("device_kind", sa.String(), nullable=False),
        sa.Column("cycles", sa.Integer(), nullable=False),
        sa.Column("stated", sa.Float(), nullable=False),
        sa.Column("observed", sa.Float(), nullable=False),
        sa.Column("ran_out", sa.Float(), nullable=False),
        sa.Column("median_error_days", sa.Float(), nullable=True),
        sa.Column("since", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("computed_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_kind"),
    )
    op.create_table(
        "calibration_groups",
        sa.Column("device_kind", sa.String(), nullable=False),
        sa.Column("slot_name", sa.String(), nullable=False),
        sa.Column("shift", sa.Float(), nullable=False),
        sa.Column("cycles", sa.Integer(), nullable=False),
        sa.Column("updated_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_kind", "slot_name"),
    )
    with op.batch_alter_table("slots", schema=None) as batch_op:
        # Slots from before have learned nothing yet.
        batch_op.add_column(sa.Column("calibration_shift", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("calibration_cycles", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("slots", schema=None) as batch_op:
        batch_op.alter_column("calibration_shift", server_default=None)
        batch_op.alter_column("calibration_cycles", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("slots", schema=None) as batch_op:
        batch_op.drop_column("calibration_cycles")
        batch_op.drop_column("calibration_shift")

    op.drop_table("calibration_groups")
    op.drop_table("forecast_reliability")

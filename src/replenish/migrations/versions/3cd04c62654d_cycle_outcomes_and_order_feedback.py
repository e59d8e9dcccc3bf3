"""outcomes: what happened to each decided cycle against its forecast; why an order was declined

Revision ID: 3cd04c62654d
Revises: e5c1f7a9b203
Create Date: 2026-12-07 17:21:14
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import replenish.columns

revision = "3cd04c62654d"
down_revision = "e5c1f7a9b203"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cycle_outcomes",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("decision_id", sa.String(), nullable=False),
        sa.Column("slot_id", sa.String(), nullable=False),
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("device_kind", sa.String(), nullable=False),
        sa.Column("slot_name", sa.String(), nullable=False),
        sa.Column("cycle_started_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("decided_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("service_level", sa.Float(), nullable=False),
        sa.Column("lead_time_days", sa.Float(), nullable=False),
        sa.Column("predicted_empty_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("predicted_early_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("predicted_late_at", replenish.columns.UTCDateTime(timezone=True), nullable=True),
        sa.Column("rate_per_day", sa.Float(), nullable=False),
        sa.Column("order_id", sa.String(), nullable=True),
        sa.Column("order_status", sa.String(), nullable=True),
        sa.Column("delivered_at", replenish.columns.UTCDateTime(timezone=True), nullable=True),
        sa.Column("feedback", sa.String(), nullable=True),
        sa.Column("ran_out_at", replenish.columns.UTCDateTime(timezone=True), nullable=True),
        sa.Column("empty_estimated_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ran_out_before_early", sa.Boolean(), nullable=False),
        sa.Column("empty_days", sa.Float(), nullable=False),
        sa.Column("left_days", sa.Float(), nullable=False),
        sa.Column("error_days", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
        ),
        sa.ForeignKeyConstraint(
            ["decision_id"],
            ["decisions.id"],
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
        ),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
        ),
        sa.ForeignKeyConstraint(
            ["slot_id"],
            ["slots.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("decision_id"),
    )
    with op.batch_alter_table("cycle_outcomes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cycle_outcomes_customer_id"), ["customer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_cycle_outcomes_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_cycle_outcomes_order_id"), ["order_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_cycle_outcomes_device_kind"), ["device_kind"], unique=False)
        batch_op.create_index(batch_op.f("ix_cycle_outcomes_recorded_at"), ["recorded_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_cycle_outcomes_slot_id"), ["slot_id"], unique=False)

    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("feedback", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("feedback")

    with op.batch_alter_table("cycle_outcomes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cycle_outcomes_slot_id"))
        batch_op.drop_index(batch_op.f("ix_cycle_outcomes_recorded_at"))
        batch_op.drop_index(batch_op.f("ix_cycle_outcomes_device_kind"))
        batch_op.drop_index(batch_op.f("ix_cycle_outcomes_order_id"))
        batch_op.drop_index(batch_op.f("ix_cycle_outcomes_device_id"))
        batch_op.drop_index(batch_op.f("ix_cycle_outcomes_customer_id"))

    op.drop_table("cycle_outcomes")

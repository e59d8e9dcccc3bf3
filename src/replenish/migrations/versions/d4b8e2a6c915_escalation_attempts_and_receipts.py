"""escalation: every channel tried for a step, household contacts, and SMS and call receipts

Revision ID: d4b8e2a6c915
Revises: c3a9d5e7f102
Create Date: 2026-12-07 16:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import replenish.columns

revision = "d4b8e2a6c915"
down_revision = "c3a9d5e7f102"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("alert_escalations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("account_id", sa.String(), nullable=True))
        # Steps from before had one channel: their own.
        batch_op.add_column(sa.Column("channels", _JSON, nullable=False, server_default="[]"))
    with op.batch_alter_table("alert_escalations", schema=None) as batch_op:
        batch_op.alter_column("channels", server_default=None)
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_id", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("receipt_at", replenish.columns.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("failed_at", replenish.columns.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("failure", sa.String(length=500), nullable=True))
        batch_op.create_index(batch_op.f("ix_notifications_provider_id"), ["provider_id"], unique=False)
    op.create_table(
        "alert_escalation_attempts",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("step_id", sa.String(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("address", sa.String(), nullable=True),
        sa.Column("notification_id", sa.String(), nullable=False),
        sa.Column("sent_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("token_hash", sa.String(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.Column("outcome_at", replenish.columns.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["notification_id"], ["notifications.id"]),
        sa.ForeignKeyConstraint(["step_id"], ["alert_escalations.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("step_id", "number"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("alert_escalation_attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_escalation_attempts_step_id"), ["step_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_alert_escalation_attempts_outcome_at"), ["outcome_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("alert_escalation_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alert_escalation_attempts_outcome_at"))
        batch_op.drop_index(batch_op.f("ix_alert_escalation_attempts_step_id"))
    op.drop_table("alert_escalation_attempts")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notifications_provider_id"))
        batch_op.drop_column("failure")
        batch_op.drop_column("failed_at")
        batch_op.drop_column("receipt_at")
        batch_op.drop_column("provider_id")
    with op.batch_alter_table("alert_escalations", schema=None) as batch_op:
        batch_op.drop_column("channels")
        batch_op.drop_column("account_id")

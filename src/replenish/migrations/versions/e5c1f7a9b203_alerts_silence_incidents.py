"""alerts: silence incidents, raised by a wearable's health alarm rather than an event

Revision ID: e5c1f7a9b203
Revises: d4b8e2a6c915
Create Date: 2026-12-07 16:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "e5c1f7a9b203"
down_revision = "d4b8e2a6c915"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.alter_column(
            "trigger_message_id", existing_type=sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        )
        batch_op.add_column(sa.Column("alarm_id", sa.String(), nullable=True))
        batch_op.create_foreign_key("fk_alerts_alarm_id_device_alarms", "device_alarms", ["alarm_id"], ["id"])
        batch_op.create_index(batch_op.f("ix_alerts_alarm_id"), ["alarm_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alerts_alarm_id"))
        batch_op.drop_constraint("fk_alerts_alarm_id_device_alarms", type_="foreignkey")
        batch_op.drop_column("alarm_id")
        batch_op.alter_column(
            "trigger_message_id", existing_type=sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        )

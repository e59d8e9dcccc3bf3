"""slots: due for evaluation, claims of evaluators

Revision ID: 8b525f975c3b
Revises: 70f65c6666b0
Create Date: 2026-12-06 13:57:01.394590
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import replenish.columns

revision = "8b525f975c3b"
down_revision = "70f65c6666b0"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("slots", schema=None) as batch_op:
        batch_op.add_column(sa.Column("due_at", replenish.columns.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("due_marks", sa.Integer(), nullable=False, server_default=sa.text("0")))
        batch_op.add_column(sa.Column("claimed_until", replenish.columns.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_slots_due_at"), ["due_at"], unique=False)
    # Every slot is evaluated once after the upgrade; from then on only when something makes it due.
    op.execute("UPDATE slots SET due_at = '2000-01-01 00:00:00'")


def downgrade() -> None:
    with op.batch_alter_table("slots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_slots_due_at"))
        batch_op.drop_column("claimed_until")
        batch_op.drop_column("due_marks")
        batch_op.drop_column("due_at")

"""notifications: quiet hours and the daily digest

Revision ID: 8aa8f38bfb81
Revises: 3e17fed06155
Create Date: 2026-12-06 08:49:51.251313
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import replenish.columns

revision = "8aa8f38bfb81"
down_revision = "3e17fed06155"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deliver_after", replenish.columns.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("for_digest", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("digest_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.create_index(batch_op.f("ix_notifications_for_digest"), ["for_digest"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notifications_for_digest"))
        batch_op.drop_column("digest_id")
        batch_op.drop_column("for_digest")
        batch_op.drop_column("deliver_after")

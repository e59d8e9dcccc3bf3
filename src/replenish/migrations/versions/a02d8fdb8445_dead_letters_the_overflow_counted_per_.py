"""dead letters: the overflow counted per sender and hour

Revision ID: a02d8fdb8445
Revises: e125bc9b82f8
Create Date: 2026-12-06 09:24:23.020812
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import replenish.columns

revision = "a02d8fdb8445"
down_revision = "e125bc9b82f8"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letter_overflow",
        sa.Column("sender", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("hour", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("dropped", sa.Integer(), nullable=False),
        sa.Column("dropped_bytes", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("last_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sender", "hour"),
    )


def downgrade() -> None:
    op.drop_table("dead_letter_overflow")

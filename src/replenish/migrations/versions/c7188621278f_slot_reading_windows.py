"""slot reading windows

Revision ID: c7188621278f
Revises: 698083fcada8
Create Date: 2026-12-06 20:03:23.524890
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import replenish.columns

revision = "c7188621278f"
down_revision = "698083fcada8"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "slot_windows",
        sa.Column("slot_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("since", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("times", sa.LargeBinary(), nullable=False),
        sa.Column("levels", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["slot_id"], ["slots.id"]),
        sa.PrimaryKeyConstraint("slot_id"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Packed float64s do not compress: stored out of line as they are, without the CPU of trying.
        op.execute("ALTER TABLE slot_windows ALTER COLUMN times SET STORAGE EXTERNAL")
        op.execute("ALTER TABLE slot_windows ALTER COLUMN levels SET STORAGE EXTERNAL")
    with op.batch_alter_table("slots", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("readings_changed_from", replenish.columns.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("slots", schema=None) as batch_op:
        batch_op.drop_column("readings_changed_from")
    op.drop_table("slot_windows")

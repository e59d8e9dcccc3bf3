"""sign-ups wait for the address to be confirmed

Revision ID: 70f65c6666b0
Revises: a02d8fdb8445
Create Date: 2026-12-06 11:58:17.372093
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import replenish.columns

revision = "70f65c6666b0"
down_revision = "a02d8fdb8445"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sign_ups",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("sign_ups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sign_ups_email"), ["email"], unique=False)
        batch_op.create_index(batch_op.f("ix_sign_ups_token_hash"), ["token_hash"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("sign_ups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sign_ups_token_hash"))
        batch_op.drop_index(batch_op.f("ix_sign_ups_email"))

    op.drop_table("sign_ups")

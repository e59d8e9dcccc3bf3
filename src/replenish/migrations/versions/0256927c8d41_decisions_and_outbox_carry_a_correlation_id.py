"""decisions and outbox messages carry a correlation id

Revision ID: 0256927c8d41
Revises: ad455bb3558a
Create Date: 2026-11-26 05:25:20.080431
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0256927c8d41"
down_revision = "ad455bb3558a"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("correlation_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True))

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("correlation_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("correlation_id")

    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_column("correlation_id")

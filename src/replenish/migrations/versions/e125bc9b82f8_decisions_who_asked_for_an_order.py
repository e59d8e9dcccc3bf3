"""decisions: who asked for an order

Revision ID: e125bc9b82f8
Revises: 8aa8f38bfb81
Create Date: 2026-12-06 08:59:12.218497
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "e125bc9b82f8"
down_revision = "8aa8f38bfb81"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("requested_by", sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_column("requested_by")

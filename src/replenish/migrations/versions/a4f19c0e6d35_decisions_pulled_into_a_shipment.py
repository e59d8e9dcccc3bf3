"""decisions: the shipment a line was pulled forward into

Revision ID: a4f19c0e6d35
Revises: 8c3d2f1e4b70
Create Date: 2026-12-07 12:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a4f19c0e6d35"
down_revision = "8c3d2f1e4b70"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pulled_into", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_column("pulled_into")

"""slots: order-up-to days; orders: the catalogue version they were decided at

Revision ID: 5b1e0c7d9a21
Revises: 77c4e7f08312
Create Date: 2026-12-07 12:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "5b1e0c7d9a21"
down_revision = "77c4e7f08312"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("slots", schema=None) as batch_op:
        # Existing slots keep their fixed quantity.
        batch_op.add_column(sa.Column("order_up_to_days", sa.Float(), nullable=True))
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("product_version_id", sa.String(), nullable=True))
        batch_op.create_foreign_key(
            "fk_orders_product_version_id_product_versions", "product_versions", ["product_version_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_constraint("fk_orders_product_version_id_product_versions", type_="foreignkey")
        batch_op.drop_column("product_version_id")
    with op.batch_alter_table("slots", schema=None) as batch_op:
        batch_op.drop_column("order_up_to_days")

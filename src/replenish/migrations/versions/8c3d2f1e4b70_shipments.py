"""shipments: the order lines that go to fulfilment together

Revision ID: 8c3d2f1e4b70
Revises: 5b1e0c7d9a21
Create Date: 2026-12-07 12:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import replenish.columns

revision = "8c3d2f1e4b70"
down_revision = "5b1e0c7d9a21"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shipments",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("created_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("shipments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_shipments_customer_id"), ["customer_id"], unique=False)
    with op.batch_alter_table("orders", schema=None) as batch_op:
        # Orders from before stay without one: each went to fulfilment alone.
        batch_op.add_column(sa.Column("shipment_id", sa.String(), nullable=True))
        batch_op.create_index(batch_op.f("ix_orders_shipment_id"), ["shipment_id"], unique=False)
        batch_op.create_foreign_key("fk_orders_shipment_id_shipments", "shipments", ["shipment_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_constraint("fk_orders_shipment_id_shipments", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_orders_shipment_id"))
        batch_op.drop_column("shipment_id")
    with op.batch_alter_table("shipments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_shipments_customer_id"))
    op.drop_table("shipments")

"""customer answers: order links, deadlines, hand-off, notice kinds

Revision ID: 65afb45e4afa
Revises: 0256927c8d41
Create Date: 2026-12-06 07:58:38.377868
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import replenish.columns

revision = "65afb45e4afa"
down_revision = "0256927c8d41"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "order_links",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("order_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("notice", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("consent_version", sa.Integer(), nullable=False),
        sa.Column("created_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", replenish.columns.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
        ),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("order_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_order_links_customer_id"), ["customer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_order_links_order_id"), ["order_id"], unique=False)

    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("order_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.create_index(batch_op.f("ix_notifications_order_id"), ["order_id"], unique=False)
        batch_op.create_foreign_key("fk_notifications_order_id_orders", "orders", ["order_id"], ["id"])

    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("answer_by", replenish.columns.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("remind_at", replenish.columns.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("reminded_at", replenish.columns.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("no_answer_at", replenish.columns.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("hand_off_at", replenish.columns.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_orders_answer_by"), ["answer_by"], unique=False)
        batch_op.create_index(batch_op.f("ix_orders_remind_at"), ["remind_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orders_remind_at"))
        batch_op.drop_index(batch_op.f("ix_orders_answer_by"))
        batch_op.drop_column("hand_off_at")
        batch_op.drop_column("no_answer_at")
        batch_op.drop_column("reminded_at")
        batch_op.drop_column("remind_at")
        batch_op.drop_column("answer_by")

    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_constraint("fk_notifications_order_id_orders", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_notifications_order_id"))
        batch_op.drop_column("kind")
        batch_op.drop_column("order_id")

    with op.batch_alter_table("order_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_order_links_order_id"))
        batch_op.drop_index(batch_op.f("ix_order_links_customer_id"))

    op.drop_table("order_links")

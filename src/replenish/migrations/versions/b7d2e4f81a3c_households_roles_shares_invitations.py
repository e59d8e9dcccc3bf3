"""households: household roles on accounts, devices shared with members and carers, invitations

Revision ID: b7d2e4f81a3c
Revises: a4f19c0e6d35
Create Date: 2026-12-07 15:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import replenish.columns

revision = "b7d2e4f81a3c"
down_revision = "a4f19c0e6d35"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("household_role", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("name", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("approval_limit", sa.Numeric(precision=12, scale=2), nullable=True))
    # Every customer account so far is the one its customer signed up with: the household's owner.
    op.execute("UPDATE accounts SET household_role = 'owner' WHERE role = 'customer'")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.create_check_constraint(
            "ck_accounts_household_role",
            "(role = 'operator' AND household_role IS NULL) "
            "OR (role = 'customer' AND household_role IN ('owner', 'member', 'carer'))",
        )
    op.create_table(
        "device_shares",
        sa.Column("account_id", sa.String(), nullable=False),
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("created_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("account_id", "device_id"),
    )
    with op.batch_alter_table("device_shares", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_shares_device_id"), ["device_id"], unique=False)
    op.create_table(
        "household_invitations",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("email", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=True),
        sa.Column("approval_limit", sa.Numeric(precision=12, scale=2), nullable=True),
        sa.Column(
            "device_ids", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("token_hash", sa.String(), nullable=False),
        sa.Column("invited_by", sa.String(), nullable=False),
        sa.Column("created_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", replenish.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", replenish.columns.UTCDateTime(timezone=True), nullable=True),
        sa.Column("account_id", sa.String(), nullable=True),
        sa.Column("revoked_at", replenish.columns.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("household_invitations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_household_invitations_customer_id"), ["customer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_household_invitations_email"), ["email"], unique=False)
        batch_op.create_index(batch_op.f("ix_household_invitations_token_hash"), ["token_hash"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("household_invitations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_household_invitations_token_hash"))
        batch_op.drop_index(batch_op.f("ix_household_invitations_email"))
        batch_op.drop_index(batch_op.f("ix_household_invitations_customer_id"))
    op.drop_table("household_invitations")
    with op.batch_alter_table("device_shares", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_shares_device_id"))
    op.drop_table("device_shares")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_constraint("ck_accounts_household_role", type_="check")
        batch_op.drop_column("approval_limit")
        batch_op.drop_column("name")
        batch_op.drop_column("household_role")

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint
from sqlmodel import Field, SQLModel

from replenish.columns import UTCDateTime, new_id


class Account(SQLModel, table=True):
    """Who may sign in: an operator of the platform, or a person of a customer's household (linked to the customer
    record, with their household role: the owner who signed up, a member or a carer they invited)."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint(
            "(role = 'operator' AND customer_id IS NULL) OR (role = 'customer' AND customer_id IS NOT NULL)",
            name="ck_accounts_role_customer",
        ),
        CheckConstraint(
            "(role = 'operator' AND household_role IS NULL) "
            "OR (role = 'customer' AND household_role IN ('owner', 'member', 'carer'))",
            name="ck_accounts_household_role",
        ),
    )

    id: str = Field(default_factory=new_id, primary_key=True)
    email: str = Field(unique=True, index=True)
    password_hash: str
    role: str
    customer_id: str | None = Field(default=None, foreign_key="customers.id", index=True)
    created_at: datetime = Field(sa_type=UTCDateTime)
    household_role: str | None = None  # a HouseholdRole for a customer's account; none for an operator
    name: str | None = Field(default=None, max_length=100)  # how the household sees an invited person
    # The most a member may approve or place in one order; none for the owner (who has the consent's limits).
    approval_limit: Decimal | None = Field(default=None, max_digits=12, decimal_places=2)


class DeviceShare(SQLModel, table=True):
    """A device the owner shared with one of their household: a carer sees only these; a member sees these as well
    as every device that is not a wearable."""

    __tablename__ = "device_shares"

    account_id: str = Field(foreign_key="accounts.id", primary_key=True)
    device_id: str = Field(foreign_key="devices.id", primary_key=True, index=True)
    created_at: datetime = Field(sa_type=UTCDateTime)


class AccessToken(SQLModel, table=True):
    """A bearer token: issued at sign-in (expires) or created by its owner as a personal API token.

    Only a hash of the secret is stored; the secret is shown once, when the token is issued.
    """

    __tablename__ = "access_tokens"

    id: str = Field(default_factory=new_id, primary_key=True)
    account_id: str = Field(foreign_key="accounts.id", index=True)
    kind: str
    name: str
    token_hash: str = Field(unique=True, index=True)
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

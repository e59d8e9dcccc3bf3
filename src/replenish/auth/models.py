from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint
from sqlmodel import Field, SQLModel

from replenish.columns import UTCDateTime, new_id


class Account(SQLModel, table=True):
    """Who may sign in: an operator of the platform, or a customer (linked to their customer record)."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint(
            "(role = 'operator' AND customer_id IS NULL) OR (role = 'customer' AND customer_id IS NOT NULL)",
            name="ck_accounts_role_customer",
        ),
    )

    id: str = Field(default_factory=new_id, primary_key=True)
    email: str = Field(unique=True, index=True)
    password_hash: str
    role: str
    customer_id: str | None = Field(default=None, foreign_key="customers.id", index=True)
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

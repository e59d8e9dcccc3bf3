from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlmodel import Field, SQLModel

from replenish.columns import JSONType, UTCDateTime, new_id


class Invitation(SQLModel, table=True):
    """An owner's invitation for someone to join their household as a member or a carer. Only a hash of the link's
    token is kept here; the token travels in the outbox's e-mail until it is delivered (then blanked), so the link
    cannot be read back or forged from the database. It works once, until it expires or the owner revokes it."""

    __tablename__ = "household_invitations"

    id: str = Field(default_factory=new_id, primary_key=True)
    customer_id: str = Field(foreign_key="customers.id", index=True)
    email: str = Field(index=True)
    role: str  # a HouseholdRole other than owner
    name: str | None = Field(default=None, max_length=100)
    approval_limit: Decimal | None = Field(default=None, max_digits=12, decimal_places=2)
    device_ids: list[str] = Field(default_factory=list, sa_type=JSONType)
    token_hash: str = Field(unique=True, index=True)
    invited_by: str  # the inviting account's actor ("customer:ada@example.com")
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    accepted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    account_id: str | None = Field(default=None, foreign_key="accounts.id")  # the account it made
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

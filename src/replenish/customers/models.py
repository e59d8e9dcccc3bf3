from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from replenish.columns import UTCDateTime, new_id


class Customer(SQLModel, table=True):
    __tablename__ = "customers"

    id: str = Field(default_factory=new_id, primary_key=True)
    name: str
    email: str = Field(unique=True, index=True)
    created_at: datetime = Field(sa_type=UTCDateTime)


class PendingSignUp(SQLModel, table=True):
    """A sign-up waiting for its e-mail address to be confirmed. It holds the address only: the name, the password and
    the consent are given with the mailed link, so that whoever asked for it cannot choose them for the address's
    owner; and nothing exists before, so sign-up never tells anyone whether an address has an account."""

    __tablename__ = "sign_ups"

    id: str = Field(default_factory=new_id, primary_key=True)
    token_hash: str = Field(unique=True, index=True)  # SHA-256 of the link's token; the token itself is only mailed
    email: str = Field(index=True)
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)

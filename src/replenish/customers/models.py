from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from replenish.db import UTCDateTime, new_id


class Customer(SQLModel, table=True):
    __tablename__ = "customers"

    id: str = Field(default_factory=new_id, primary_key=True)
    name: str
    email: str = Field(unique=True, index=True)
    created_at: datetime = Field(sa_type=UTCDateTime)

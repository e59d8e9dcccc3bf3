from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from replenish.columns import JSONType, UTCDateTime


class ConsentVersion(SQLModel, table=True):
    """Append-only: a change writes a new version; the versions before it stay as they were."""

    __tablename__ = "consent_versions"
    __table_args__ = (UniqueConstraint("customer_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    customer_id: str = Field(foreign_key="customers.id", index=True)
    version: int
    created_at: datetime = Field(sa_type=UTCDateTime)
    created_by: str
    document: dict[str, Any] = Field(sa_type=JSONType)

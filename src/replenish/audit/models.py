from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from replenish.columns import BigInt, JSONType, UTCDateTime


class AuditEvent(SQLModel, table=True):
    """Append-only: who did what, when, to what. Written in the same transaction as the change it records."""

    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInt)
    at: datetime = Field(sa_type=UTCDateTime, index=True)
    actor: str
    action: str = Field(index=True)
    customer_id: str | None = Field(default=None, index=True)
    subject_type: str
    subject_id: str
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)

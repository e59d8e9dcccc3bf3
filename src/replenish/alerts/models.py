from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from replenish.db import BigInt, UTCDateTime, new_id


class Alert(SQLModel, table=True):
    __tablename__ = "alerts"

    id: str = Field(default_factory=new_id, primary_key=True)
    customer_id: str = Field(foreign_key="customers.id", index=True)
    device_id: str = Field(foreign_key="devices.id", index=True)
    kind: str
    severity: str
    status: str = Field(index=True)
    opened_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    trigger_message_id: int = Field(foreign_key="device_messages.id", sa_type=BigInt)
    event_count: int = 1
    consent_version: int
    acknowledged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    acknowledged_by: str | None = None
    closed_reason: str | None = None

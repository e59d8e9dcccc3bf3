from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, text
from sqlmodel import Field, SQLModel

from replenish.columns import JSONType, UTCDateTime, new_id
from replenish.constants import AlarmStatus


class Alarm(SQLModel, table=True):
    """A device health alarm (ThingsBoard's lifecycle): active, then acknowledged by someone, then cleared when the
    condition is over; or cleared first and acknowledged later. At most one uncleared alarm per device, kind and
    slot: a condition that comes back while its alarm is still uncleared counts as another occurrence of it."""

    __tablename__ = "device_alarms"
    __table_args__ = (
        Index(
            "uq_device_alarms_uncleared",
            "device_id",
            "kind",
            "slot_name",
            unique=True,
            sqlite_where=text("cleared_at IS NULL"),
            postgresql_where=text("cleared_at IS NULL"),
        ),
    )

    id: str = Field(default_factory=new_id, primary_key=True)
    customer_id: str = Field(foreign_key="customers.id", index=True)
    device_id: str = Field(foreign_key="devices.id", index=True)
    kind: str  # offline | battery_low | stuck_sensor
    # Part of the uncleared-alarm key, so '' (not NULL, which a unique index treats as always distinct) for
    # alarms about the whole device.
    slot_name: str = ""
    severity: str  # major | warning | minor
    raised_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    occurrences: int = 1
    # Whether the last judgement found the condition established; a return to it counts one more occurrence.
    condition_present: bool = True
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    acknowledged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    acknowledged_by: str | None = None
    cleared_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)

    @property
    def status(self) -> AlarmStatus:
        if self.cleared_at is not None:
            return AlarmStatus.CLEARED
        return AlarmStatus.ACKNOWLEDGED if self.acknowledged_at is not None else AlarmStatus.ACTIVE

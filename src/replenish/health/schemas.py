from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from replenish.constants import AlarmStatus


class AlarmRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    customer_id: str
    device_id: str
    kind: str = Field(description="offline, battery_low or stuck_sensor")
    slot_name: str = Field(description="The slot, for a stuck sensor; empty for the whole device.")
    severity: str = Field(description="major (offline), warning (battery), minor (stuck sensor: shown, not sent)")
    status: AlarmStatus = Field(description="active, acknowledged (someone has seen it), cleared (it is over)")
    raised_at: datetime
    updated_at: datetime
    occurrences: int = Field(description="How often the condition came back before the alarm could clear.")
    detail: dict[str, Any] = Field(description="What the judgement saw: last contact, battery level, repeated value.")
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    cleared_at: datetime | None

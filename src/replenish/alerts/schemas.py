from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AlertRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    customer_id: str
    device_id: str
    kind: str
    severity: str
    status: str
    opened_at: datetime
    updated_at: datetime
    event_count: int
    consent_version: int
    trigger_message_id: int
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    closed_reason: str | None


class AlertDetail(AlertRead):
    explanation: dict[str, Any] = Field(
        description="The event that raised it (as the device sent it), the rule that applied, the consent version."
    )


class AcknowledgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Who has it in hand, if not the caller; recorded as '<by> (via <the caller>)'.",
    )


class ResolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Who dealt with it, if not the caller; recorded with the caller.",
    )
    reason: str | None = Field(None, max_length=500, description="What happened, kept with the alert.")

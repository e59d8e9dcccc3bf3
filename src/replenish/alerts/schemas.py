from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

from replenish.alerts import where


class AlertLocation(BaseModel):
    """Where the wearer is, as the incident's latest event with a valid location said."""

    latitude: float | None = None
    longitude: float | None = None
    accuracy: float | None = Field(None, description="Metres.")
    room: str | None = None

    # mypy cannot type a decorator over a property; pydantic documents computed_field this way.
    @computed_field(description="A map with the position marked; null for a room alone.")  # type: ignore[prop-decorator]
    @property
    def map_url(self) -> str | None:
        return where.map_url({"latitude": self.latitude, "longitude": self.longitude})


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
    trigger_message_id: int | None = Field(description="The event that raised it; none for a silence incident.")
    alarm_id: str | None = Field(None, description="A silence incident's: the device health alarm behind it.")
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    closed_reason: str | None
    cancel_until: datetime | None = Field(description="End of the wearer's window to cancel a fall (none: no window).")
    escalation_level: int = Field(description="Steps of the emergency chain taken so far.")
    next_escalation_at: datetime | None = Field(description="When the next step is due, while the incident is open.")
    escalation_exhausted_at: datetime | None = Field(
        description="When the chain ran out with nobody acknowledging; operators must act."
    )
    location: AlertLocation | None = Field(None, description="Where the wearer is, when the device said.")
    confidence: float | None = Field(None, description="How sure the fall detector was (0..1), when it said.")


class EscalationAttemptRead(BaseModel):
    """One channel tried for a step: the first, then each fallback after a failure."""

    model_config = ConfigDict(from_attributes=True)

    number: int = Field(description="0: the step's first channel; then each fallback in turn.")
    channel: str
    sent_at: datetime
    outcome: str | None = Field(description='"delivered", or why it failed; none while not known yet.')
    outcome_at: datetime | None


class EscalationStepRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    level: int
    target_kind: str = Field(description="contact or emergency_services")
    target_name: str
    channel: str
    address: str | None = Field(description="Shown to the household's owner and operators only.")
    notified_at: datetime = Field(description="When the step was taken and the notification queued.")
    delivered_at: datetime | None = Field(
        None, description="When the channel accepted it; none yet: still being delivered (and retried)."
    )
    notification_id: str | None
    consent_version: int
    acknowledged_at: datetime | None
    account_id: str | None = Field(None, description="The household person this contact is, if one.")
    attempts: list[EscalationAttemptRead] = Field(
        default_factory=list, description="Each channel tried, in order: a failed one falls back to the next at once."
    )


class AlertDetail(AlertRead):
    explanation: dict[str, Any] = Field(
        description="The event that raised it (as the device sent it), the rule that applied, the consent version."
    )
    escalation: list[EscalationStepRead] = Field(description="Whom the incident reached, in order, and when.")


class AcknowledgementRead(BaseModel):
    """What an emergency contact sees behind their link: enough to act, nothing more about the wearer."""

    alert_id: str
    kind: str
    device_name: str
    opened_at: datetime
    status: str
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    you: str = Field(description="The contact this link was sent to.")
    level: int = Field(description="Their place in the emergency chain.")


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

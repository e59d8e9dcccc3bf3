from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Column, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from replenish.alerts.escalation import Target
from replenish.columns import BigInt, JSONType, UTCDateTime, new_id
from replenish.constants import TargetKind

# Alert.version's column, named once more in the class's mapper arguments (optimistic concurrency, below).
_ALERT_VERSION = Column("version", Integer, nullable=False)


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
    # The event that raised it; none for a silence incident, which a health alarm raised (alarm_id).
    trigger_message_id: int | None = Field(default=None, foreign_key="device_messages.id", sa_type=BigInt)
    alarm_id: str | None = Field(default=None, foreign_key="device_alarms.id", index=True)
    event_count: int = 1
    consent_version: int
    acknowledged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    acknowledged_by: str | None = None
    closed_reason: str | None = None
    # Where the wearer is, as the latest event of the incident that carried a valid one said (docs/mqtt.md, "Location").
    location: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    confidence: float | None = None  # the fall detector's, when the device sent one
    # Safety incidents (fall, help request) escalate; the state lives here so that a restart resumes the chain.
    cancel_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    escalation_level: int = 0  # steps of the chain taken so far
    next_escalation_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    escalation_exhausted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Optimistic concurrency: every UPDATE checks and bumps it, so an acknowledgement, a cancel and an escalation
    # step that read the same state cannot both commit (the loser gets StaleDataError and rolls back). It covers
    # SQLite, where the row locks the services ask for do not exist.
    version: int = Field(default=1, sa_column=_ALERT_VERSION)
    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": _ALERT_VERSION}


class EscalationStep(SQLModel, table=True):
    """One person (or emergency services) asked to respond to an incident. At most one row per level: the unique
    constraint is what makes a step happen once, however many escalators race or restart."""

    __tablename__ = "alert_escalations"
    __table_args__ = (UniqueConstraint("alert_id", "level"),)

    id: str = Field(default_factory=new_id, primary_key=True)
    alert_id: str = Field(foreign_key="alerts.id", index=True)
    level: int
    target_kind: str  # a TargetKind
    target_name: str
    channel: str
    address: str | None = None
    notified_at: datetime = Field(sa_type=UTCDateTime)
    notification_id: str | None = Field(default=None, foreign_key="notifications.id")
    consent_version: int
    # SHA-256 of the acknowledgement token sent with the notification. The token itself travels in the outbox
    # message only until that is delivered (the dispatcher then blanks it), and is never logged.
    token_hash: str = Field(unique=True)
    acknowledged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The household person this contact is, if one (they may acknowledge in the web app as well).
    account_id: str | None = None
    # Every way to reach them, as the consent had it when they were asked: [[channel, address], ...]. The first is
    # `channel`/`address`; the others are tried, in order, when the one before fails (EscalationAttempt).
    channels: list[list[str | None]] = Field(default_factory=list, sa_type=JSONType)

    @property
    def target(self) -> Target:
        return Target(
            kind=TargetKind(self.target_kind), name=self.target_name, channel=self.channel, address=self.address
        )


class EscalationAttempt(SQLModel, table=True):
    """One channel tried for a step: the first as the step is taken, each further one when the one before failed
    (the provider refused it, it bounced, or no delivery receipt came in time). Its own acknowledgement link (only
    the hash kept): a contact may answer whichever message reached them."""

    __tablename__ = "alert_escalation_attempts"
    __table_args__ = (UniqueConstraint("step_id", "number"),)

    id: str = Field(default_factory=new_id, primary_key=True)
    step_id: str = Field(foreign_key="alert_escalations.id", index=True)
    number: int  # 0: the step's first channel
    channel: str
    address: str | None = None
    notification_id: str = Field(foreign_key="notifications.id")
    sent_at: datetime = Field(sa_type=UTCDateTime)
    token_hash: str | None = Field(default=None, unique=True)  # none for the first: the step's own link
    # How it ended: "delivered", or why it failed; none while it may still be delivered.
    outcome: str | None = None
    outcome_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from replenish.columns import JSONType, UTCDateTime, new_id


class Decision(SQLModel, table=True):
    """Why the platform acted on a slot: the evidence behind every order and notification.

    One per slot and depletion cycle, enforced by the database, so that repeated ticks, duplicate
    telemetry, restarts and concurrent schedulers can never act twice on the same cycle.
    """

    __tablename__ = "decisions"
    __table_args__ = (UniqueConstraint("slot_id", "cycle_started_at", name="uq_decisions_slot_cycle"),)

    id: str = Field(default_factory=new_id, primary_key=True)
    slot_id: str = Field(foreign_key="slots.id", index=True)
    device_id: str = Field(foreign_key="devices.id")
    customer_id: str = Field(foreign_key="customers.id", index=True)
    cycle_started_at: datetime = Field(sa_type=UTCDateTime)
    action: str
    consent_mode: str
    consent_version: int
    decided_at: datetime = Field(sa_type=UTCDateTime)
    reason: str
    forecast: dict[str, Any] = Field(sa_type=JSONType)
    policy: dict[str, Any] = Field(sa_type=JSONType)
    # The correlation id of the newest reading's message when it decided (observability/correlation.py): the
    # message that tipped the forecast, and what an operator greps the logs for, from that message to the order.
    correlation_id: str | None = None
    # Who asked for it, for an order the customer asked for themselves (order now, a device's reorder button):
    # its key is then a moment inside the cycle it was made in, not the cycle's start.
    requested_by: str | None = None
    # The shipment it was pulled forward into (automation.consolidation): its key is then a moment inside the cycle,
    # as a customer's own order's is, so that taking the line out leaves the cycle to the slot's own decision.
    pulled_into: str | None = None

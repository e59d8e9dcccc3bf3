from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from replenish.constants import OrderFeedback, OrderStatus


class OutcomeRead(BaseModel):
    """What happened to a decided cycle against its forecast (docs/forecasting.md, "Outcomes")."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    decision_id: str
    device_id: str
    slot_name: str
    cycle_started_at: datetime
    ended_at: datetime | None = Field(
        description="The refill that ended the cycle; null while a cycle that ran empty waits for its refill (its "
        "outcome is recorded as soon as the readings show it empty)."
    )
    decided_at: datetime
    action: str = Field(description="What the decision did: place_order, request_approval or notify.")
    service_level: float
    predicted_empty_at: datetime = Field(description="The forecast's median empty date at the decision.")
    predicted_early_at: datetime = Field(
        description="The early empty date at the decision: by then it was stated to be empty with probability "
        "1 - service_level."
    )
    predicted_late_at: datetime | None
    order_id: str | None
    order_status: OrderStatus | None = Field(
        description="The order's status when the cycle ended (or, while it waits for its refill, when it ran empty)."
    )
    delivered_at: datetime | None
    feedback: OrderFeedback | None = Field(
        description="Why the customer declined or cancelled the order, if they said."
    )
    ran_out_at: datetime | None = Field(
        description="When the readings show the slot ran empty; null when it was refilled before."
    )
    empty_estimated_at: datetime = Field(
        description="When it ran empty, or for a refill before that, when its last reading would have run out at "
        "the forecast's rate."
    )
    ran_out_before_early: bool = Field(description="Whether it ran (or would have run) empty before the early date.")
    empty_days: float = Field(
        description="Days it was empty before the refill (0: refilled in time, or not refilled yet)."
    )
    left_days: float = Field(description="Days of supply left at a refill before running out (0: it ran out).")
    error_days: float = Field(
        description="Days from the forecast's median empty date to when it ran (or would have run) empty: negative, "
        "sooner than forecast."
    )


class ReliabilityRead(BaseModel):
    """One device kind's forecasts against what happened."""

    model_config = ConfigDict(from_attributes=True)

    device_kind: str
    cycles: int = Field(
        description="Decided cycles whose outcome was recorded in the period: ended by a refill, or run empty."
    )
    stated: float = Field(
        description="The stated probability of running out before the early date: the mean of 1 - service_level."
    )
    observed: float = Field(description="The share of those cycles that ran (or would have run) out before it.")
    ran_out: float = Field(description="The share that ran empty at all before the refill.")
    median_error_days: float | None = Field(
        description="The median of days from the forecast's median empty date to the empty moment (negative: sooner)."
    )
    verdict: str = Field(
        description="'as stated', 'runs out more often than stated' (observed over twice stated), 'more cautious "
        "than stated' (under half), or 'too few cycles to tell' (under 50)."
    )

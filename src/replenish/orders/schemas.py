from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from replenish.constants import OrderFeedback, OrderStatus


class OrderRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    customer_id: str
    device_id: str
    slot_id: str
    shipment_id: str | None = Field(
        None,
        description="The shipment it is a line of (GET /shipments/{id}): the lines that go to fulfilment together. "
        "Null for an order from before shipments.",
    )
    product_sku: str
    product_version_id: str | None = Field(
        None,
        description="The catalogue version of the product it was decided at: its name, pack and price then "
        "(GET /catalogue/products/{sku}/versions). Null for a SKU the catalogue does not list.",
    )
    quantity: int = Field(description="Packs of the product (units of a SKU the catalogue does not list).")
    unit_price: Decimal | None
    total_price: Decimal | None
    status: OrderStatus
    feedback: OrderFeedback | None = Field(
        None, description="Why the customer declined or cancelled it, when they said: too_early or not_needed."
    )
    consent_version: int
    created_at: datetime
    updated_at: datetime
    answer_by: datetime | None = Field(
        None,
        description="Awaiting approval: the latest useful answer (the forecast's early empty date minus the lead "
        "time, at least an hour after asking). When it passes unanswered, the consent's on_no_answer acts. Null "
        "when there is no deadline (an order asked for over a limit waits).",
    )
    remind_at: datetime | None = Field(None, description="When the reminder of an unanswered request goes out.")
    reminded_at: datetime | None = Field(None, description="When the reminder went out.")
    no_answer_at: datetime | None = Field(
        None, description="When the deadline passed unanswered and on_no_answer acted (the history says how)."
    )
    hand_off_at: datetime | None = Field(
        None,
        description="Placed: when the order goes (or went) to fulfilment. Until then a cancel withdraws it and "
        "fulfilment never hears of it: an automatic order waits the consent's cancel_window_minutes.",
    )

    arriving_at: datetime | None = Field(None, description="When fulfilment expects it to arrive (with 'shipped').")
    delivered_at: datetime | None = Field(None, description="When fulfilment reported it delivered.")
    nudged_at: datetime | None = Field(
        None, description="When the customer was told it arrived but the slot still showed no refill."
    )


class ShipmentLine(BaseModel):
    """One line of a shipment: its order, what it is for, and why it is in this shipment."""

    order: OrderRead
    device_id: str
    device_name: str
    slot_name: str
    product_name: str | None = Field(
        description="The catalogue's name of the product, as decided; null for a free SKU."
    )
    reason: str = Field(
        description="Why the line is here: the decision's reason ('pulled forward: cyan may run out by ..., 6 days "
        "after black; it comes in the same shipment', or the forecast that made it due)."
    )
    removable: bool = Field(description="Whether the customer can still take it out (decline or cancel).")


class ShipmentRead(BaseModel):
    """One box: order lines that go to fulfilment together."""

    id: str
    customer_id: str
    created_at: datetime
    hand_off_at: datetime | None = Field(
        description="When its placed lines go (or went) to fulfilment, in one payload; null while none is placed."
    )
    total_price: Decimal | None = Field(
        description="What its lines still in it cost (not the declined or cancelled ones); null when a price is "
        "unknown."
    )
    currency: str | None = Field(description="The catalogue currency of its lines, when they name one.")
    lines: list[ShipmentLine]


class RemoveLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=500, description="Why, kept in the line's history.")


class OrderEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    from_status: OrderStatus | None
    to_status: OrderStatus
    at: datetime
    actor: str
    reason: str | None


class EvidenceReading(BaseModel):
    ts: datetime
    level: float


class DecisionExplanation(BaseModel):
    """Why the order exists: what the platform saw, what it predicted, the rule, and the consent that allowed it."""

    decision_id: str
    correlation_id: str | None = Field(
        description="The correlation id of the device message whose reading was the newest when the platform decided "
        "(device_id:seq): grep the logs for it to follow that message to this order. Null for decisions from before "
        "it was recorded."
    )
    decided_at: datetime
    action: str
    reason: str
    slot_name: str
    cycle_started_at: datetime
    consent_mode: str
    consent_version: int
    forecast: dict[str, Any]
    policy: dict[str, Any]
    readings: list[EvidenceReading] = Field(
        description="The readings in the forecast's evidence range that had arrived when the platform decided, "
        "oldest first (at most the newest 500; forecast.readings_used and outliers_dropped give the counts)."
    )


class OrderDetail(OrderRead):
    explanation: DecisionExplanation
    history: list[OrderEventRead]


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=500, description="Why, kept in the order's history.")
    feedback: OrderFeedback | None = Field(
        None,
        description="Declining or cancelling: why: too_early (needed, but later) or not_needed. Kept with the "
        "order and in the cycle's outcome; a cycle not needed teaches the forecasts nothing. Refused (422) on an "
        "approval.",
    )


class OrderNowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quantity: int | None = Field(None, ge=1, le=1000, description="Units to order; default the slot's order_quantity.")


class FulfilmentUpdate(BaseModel):
    """A fulfilment partner reports progress."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["confirmed", "shipped", "delivered"]
    reason: str | None = Field(None, max_length=500)
    arriving_at: datetime | None = Field(
        None, description="With 'shipped': when it should arrive (the customer is told); default: the lead time."
    )


class PartnerEvent(FulfilmentUpdate):
    """What a fulfilment partner posts to its signed webhook: one order's progress."""

    order_id: str = Field(min_length=1, max_length=64)

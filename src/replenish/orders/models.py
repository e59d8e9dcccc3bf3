from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlmodel import Field, SQLModel

from replenish.columns import UTCDateTime, new_id, written_after

if TYPE_CHECKING:
    from replenish.automation.models import Decision


class Shipment(SQLModel, table=True):
    """One box: the order lines that go to fulfilment together, in one payload (orders.service). A line is an
    Order, with its own decision, consent version, explanation and status: it can be declined or cancelled alone."""

    __tablename__ = "shipments"

    id: str = Field(default_factory=new_id, primary_key=True)
    customer_id: str = Field(foreign_key="customers.id", index=True)
    created_at: datetime = Field(sa_type=UTCDateTime)


class Order(SQLModel, table=True):
    """An order line: one slot's product, quantity and price, in a shipment."""

    __tablename__ = "orders"

    id: str = Field(default_factory=new_id, primary_key=True)
    decision_id: str = Field(foreign_key="decisions.id", unique=True)
    customer_id: str = Field(foreign_key="customers.id", index=True)
    # None for an order from before shipments: it went to fulfilment alone, as order.placed.
    shipment_id: str | None = Field(default=None, foreign_key="shipments.id", index=True)
    device_id: str = Field(foreign_key="devices.id", index=True)
    slot_id: str = Field(foreign_key="slots.id", index=True)
    product_sku: str
    # The catalogue version it was decided at (its name, pack and price then); None for a SKU the catalogue does
    # not list.
    product_version_id: str | None = Field(default=None, foreign_key="product_versions.id")
    quantity: int = 1
    unit_price: Decimal | None = Field(default=None, max_digits=12, decimal_places=2)
    total_price: Decimal | None = Field(default=None, max_digits=14, decimal_places=2)
    status: str = Field(index=True)
    consent_version: int
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    # When it was placed (by itself, or approved): the month whose spending it counts toward.
    placed_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    # Awaiting approval: the latest useful answer (the forecast's early empty date minus the lead time), when the
    # reminder goes out, when it went, and when the deadline passed unanswered and the consent's on_no_answer acted.
    answer_by: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    remind_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    reminded_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    no_answer_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Placed: when fulfilment receives it. An automatic order waits its cancel window first; until then a cancel
    # never reaches fulfilment.
    hand_off_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # What fulfilment reported: when it expects the delivery (with "shipped"), and when it was delivered. Once
    # delivered, one nudge if the slot shows no refill in time.
    arriving_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    nudged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Why the customer declined or cancelled it, when they said (constants.OrderFeedback).
    feedback: str | None = None
    decision: Decision | None = written_after("Decision")
    shipment: Shipment | None = written_after("Shipment")


class OrderEvent(SQLModel, table=True):
    """The order's history: every status change, who made it and why."""

    __tablename__ = "order_events"

    id: int | None = Field(default=None, primary_key=True)
    order_id: str = Field(foreign_key="orders.id", index=True)
    from_status: str | None
    to_status: str
    at: datetime = Field(sa_type=UTCDateTime)
    actor: str
    reason: str | None = None
    order: Order | None = written_after("Order")

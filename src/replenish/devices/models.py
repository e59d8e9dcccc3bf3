from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from replenish.columns import JSONType, UTCDateTime, new_id
from replenish.constants import DEFAULT_SERVICE_LEVEL


class Device(SQLModel, table=True):
    __tablename__ = "devices"

    # The device's own id, as it appears in its MQTT topics.
    id: str = Field(primary_key=True, max_length=64)
    customer_id: str = Field(foreign_key="customers.id", index=True)
    kind: str
    name: str
    created_at: datetime = Field(sa_type=UTCDateTime)
    online: bool | None = None
    status_changed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_seen_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The newest battery reading (telemetry's optional "battery", or a battery_low event's), and the newest
    # battery_low event: what the health job judges the battery by.
    battery: float | None = None
    battery_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    battery_low_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The hash of the device's MQTT secret (see devices.credentials); the secret itself is shown once.
    mqtt_password_hash: str | None = None


class Slot(SQLModel, table=True):
    __tablename__ = "slots"
    __table_args__ = (UniqueConstraint("device_id", "name"),)

    id: str = Field(default_factory=new_id, primary_key=True)
    device_id: str = Field(foreign_key="devices.id", index=True)
    name: str
    unit: str
    capacity: float
    product_sku: str
    # The customer's allowed substitutes for product_sku, in order of preference (catalogue SKUs).
    substitute_skus: list[str] = Field(default_factory=list, sa_type=JSONType)
    lead_time_days: float
    service_level: float = DEFAULT_SERVICE_LEVEL
    # What its ended cycles taught its forecasts beyond its group's (forecasting.calibration): a shift of the level
    # they plan at, in z units, and from how many outcomes.
    calibration_shift: float = 0.0
    calibration_cycles: int = 0
    order_quantity: int = 1
    # Order-up-to: an order covers the expected use over this many days, in whole packs. None: order_quantity.
    order_up_to_days: float | None = None
    unit_price: Decimal | None = Field(default=None, max_digits=12, decimal_places=2)
    level: float | None = None
    level_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # How many newest readings in a row carried exactly this level, since when: a stuck sensor repeats itself.
    same_level_count: int = 0
    same_level_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Where the current depletion cycle began. Kept, not recomputed: it only moves forward on a confirmed refill,
    # so a late reading or a shifting history window can never make one cycle look like a new one.
    cycle_started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)
    # When the slot must next be evaluated (None: nothing pending): marked by whatever can change its forecast or
    # its decision (a reading, consent, an order's status, its settings), and set by the evaluator to the next
    # moment its forecast says something may change (see automation.engine.next_evaluation). Only due slots are
    # evaluated, so a quiet fleet costs nothing.
    due_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    # Counts the marks: an evaluator that finishes a slot sets its next due moment only when nothing marked the
    # slot meanwhile, so a reading stored during an evaluation is never lost.
    due_marks: int = 0
    # An evaluator's claim on the slot, until this moment: claims expire, so a killed evaluator loses nothing.
    claimed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # What the last full evaluation left (automation.engine.Screen): until when, and for which newest levels
    # (fractions of capacity; None: no bound), a new reading can wait for a later evaluation, and when the slot is
    # evaluated in full whatever it reports. None: the next evaluation is a full one.
    evaluate_by: datetime | None = Field(default=None, sa_type=UTCDateTime)
    screen_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    screen_until_dropped: datetime | None = Field(default=None, sa_type=UTCDateTime)
    screen_low: float | None = None
    screen_high: float | None = None
    # The earliest time (the readings' ts) of the readings stored since the evaluator last brought the slot's
    # reading window (SlotWindow) up to date: set by ingest in the transaction that stores them, cleared by the
    # evaluator under the slot's lock. None: the window holds every reading there is.
    readings_changed_from: datetime | None = Field(default=None, sa_type=UTCDateTime)


class SlotWindow(SQLModel, table=True):
    """The slot's readings over the forecast's history window, as the evaluator last read them: every reading
    stamped after ``since`` (future-stamped ones too), in (ts, id) order, as two packed arrays of float64 (epoch
    seconds; levels in the slot's unit). The evaluator reads this one row and the readings stored since
    (Slot.readings_changed_from) instead of the whole window: derived state, dropped whenever readings are deleted
    and rebuilt from the readings table (`replenish forecasts rebuild`, or any evaluation that finds it missing or
    too short)."""

    __tablename__ = "slot_windows"

    slot_id: str = Field(foreign_key="slots.id", primary_key=True)
    since: datetime = Field(sa_type=UTCDateTime)
    times: bytes
    levels: bytes


class SlotForecast(SQLModel, table=True):
    """The latest forecast of each slot, as the automation job last computed it."""

    __tablename__ = "slot_forecasts"

    slot_id: str = Field(foreign_key="slots.id", primary_key=True)
    computed_at: datetime = Field(sa_type=UTCDateTime)
    forecast: dict[str, Any] = Field(sa_type=JSONType)

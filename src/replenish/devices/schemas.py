from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from replenish.catalogue.schemas import ProductRead
from replenish.constants import DEFAULT_SERVICE_LEVEL, DEVICE_ID_PATTERN, DeviceKind

ORDER_UP_TO_DAYS = (
    "Order-up-to: each order covers the slot's expected use (its forecast's rate) over this many days, in whole "
    "packs of its product (a product the catalogue does not list: one pack is one fill of the slot), at least one, "
    "at most the consent's max_quantity_per_order. Null: every order asks for order_quantity."
)


class SlotCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", examples=["black"])
    unit: str = Field("fraction", min_length=1, max_length=32, description="fraction, litre, count, ...")
    capacity: float = Field(1.0, gt=0, description="Level of a full slot, in the unit. Levels run 0..capacity.")
    product_sku: str = Field(min_length=1, max_length=128, description="What to order when it runs low.")
    lead_time_days: float = Field(3.0, ge=0, le=365, description="Days from order to delivery.")
    service_level: float = Field(
        DEFAULT_SERVICE_LEVEL,
        ge=0.5,
        le=0.999,
        description="Target probability that a delivery arrives before the slot runs empty: the platform acts when "
        "the chance of running out before an order placed now could arrive exceeds 1 - service_level.",
    )
    order_quantity: int = Field(
        1, ge=1, le=1000, description="Units of product_sku one order asks for, unless order_up_to_days is set."
    )
    order_up_to_days: float | None = Field(
        None,
        gt=0,
        le=365,
        description=ORDER_UP_TO_DAYS,
    )
    unit_price: Decimal | None = Field(
        None,
        ge=0,
        max_digits=12,
        decimal_places=2,
        description="Price of one unit of a product the catalogue does not list (a listed one's price is the "
        "catalogue's); what the consent's spending caps count. Unknown (null): with a cap set, an automatic order "
        "waits for approval.",
    )


MAX_SUBSTITUTES = 5


class SlotUpdate(BaseModel):
    """Fields of a slot that may change after registration; those left out keep their value."""

    model_config = ConfigDict(extra="forbid")

    product_sku: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="What to order: a catalogue product that fits the slot (a free SKU only while the catalogue "
        "lists none for it).",
    )
    substitute_skus: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None,
        max_length=MAX_SUBSTITUTES,
        description="Catalogue products that may stand in for product_sku when it is unavailable, in order of "
        "preference.",
    )
    lead_time_days: float | None = Field(None, ge=0, le=365)
    service_level: float | None = Field(None, ge=0.5, le=0.999)
    order_quantity: int | None = Field(None, ge=1, le=1000)
    order_up_to_days: float | None = Field(None, gt=0, le=365, description=ORDER_UP_TO_DAYS)
    unit_price: Decimal | None = Field(None, ge=0, max_digits=12, decimal_places=2)


class DeviceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=DEVICE_ID_PATTERN, description="The id the device uses in its MQTT topics.")
    customer_id: str | None = Field(
        None, description="Whose device it is: the caller's own when omitted (an operator must name the customer)."
    )
    kind: DeviceKind
    name: str = Field(min_length=1, max_length=200)
    slots: list[SlotCreate] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_slot_names(self) -> DeviceCreate:
        names = [slot.name for slot in self.slots]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"slot names must be unique, repeated: {', '.join(duplicates)}")
        return self


class SlotRead(BaseModel):
    id: str
    name: str
    unit: str
    capacity: float
    product_sku: str
    substitute_skus: list[str] = Field(description="Allowed substitutes for product_sku, in order of preference.")
    lead_time_days: float
    service_level: float
    order_quantity: int
    order_up_to_days: float | None = Field(None, description=ORDER_UP_TO_DAYS)
    unit_price: Decimal | None
    level: float | None = Field(description="Latest reported level, in the unit.")
    level_at: datetime | None
    forecast: dict[str, Any] | None = Field(
        None,
        description="Latest forecast: empty_at (median), empty_at_early (the 1 - service_level quantile), "
        "rate_per_day, level_now, the evidence (readings, cycles, prior) and the refills seen.",
    )
    forecast_computed_at: datetime | None = None


class DeviceRead(BaseModel):
    id: str
    customer_id: str
    kind: str
    name: str
    created_at: datetime
    online: bool | None
    status_changed_at: datetime | None
    last_seen_at: datetime | None
    battery: float | None = Field(None, description="The newest battery level the device reported, 0..1.")
    battery_at: datetime | None = None
    slots: list[SlotRead]


class DeviceCredentials(BaseModel):
    """How the device signs in to the broker: shown once, when issued. Only a hash is kept."""

    mqtt_username: str = Field(description="The device id.")
    mqtt_password: str = Field(description="The device's secret. Shown this once; rotate it if it is lost.")


class DeviceRegistered(DeviceRead):
    credentials: DeviceCredentials


class ReadingRead(BaseModel):
    ts: datetime
    level: float
    message_id: int


class EventRead(BaseModel):
    message_id: int
    seq: int
    ts: datetime
    received_at: datetime
    type: str
    payload: dict[str, Any] = Field(description="The event as the device sent it, unknown fields included.")


class SlotProducts(BaseModel):
    """What a slot orders, and what it could: the catalogue's products that fit it."""

    product_sku: str = Field(description="What the slot orders now.")
    chosen: ProductRead | None = Field(description="product_sku in the catalogue; null for a SKU it does not list.")
    substitutes: list[ProductRead] = Field(description="The allowed substitutes, in order of preference.")
    eligible: list[ProductRead] = Field(description="Every product that fits the slot, available or not, by SKU.")

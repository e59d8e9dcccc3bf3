"""The catalogue: the products slots can be replenished with. A product's fields never change in place: a change is
a new version, so an order keeps the name and price it was decided at (it names the version)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from replenish.columns import JSONType, UTCDateTime, new_id


class Product(SQLModel, table=True):
    """One row per SKU: which of its versions is current."""

    __tablename__ = "products"

    sku: str = Field(primary_key=True, max_length=128)
    current_version_id: str = Field(foreign_key="product_versions.id")
    version: int
    updated_at: datetime = Field(sa_type=UTCDateTime)


class ProductVersion(SQLModel, table=True):
    __tablename__ = "product_versions"
    __table_args__ = (UniqueConstraint("sku", "version"),)

    id: str = Field(default_factory=new_id, primary_key=True)
    sku: str = Field(max_length=128)  # looked up through the unique (sku, version)
    version: int
    name: str
    # What one pack holds, in ``unit``: a slot whose unit is the same orders whole packs of it.
    pack_size: float
    unit: str
    price: Decimal = Field(max_digits=12, decimal_places=2)
    currency: str = Field(max_length=3)
    # Which slots may have it: device kinds, and slot names (empty: any slot of those kinds).
    device_kinds: list[str] = Field(sa_type=JSONType)
    slot_names: list[str] = Field(sa_type=JSONType)
    available: bool
    created_at: datetime = Field(sa_type=UTCDateTime)
    created_by: str

    def fields(self) -> dict[str, Any]:
        """What a version says about the product: two versions with the same fields are the same product."""
        return {
            "name": self.name,
            "pack_size": self.pack_size,
            "unit": self.unit,
            "price": self.price,
            "currency": self.currency,
            "device_kinds": sorted(self.device_kinds),
            "slot_names": sorted(self.slot_names),
            "available": self.available,
        }

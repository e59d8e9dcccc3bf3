from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_extra_types.currency_code import ISO4217

from replenish.constants import DeviceKind

SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
SLOT_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


class ProductFields(BaseModel):
    """What a version of a product says."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, examples=["Black ink cartridge XL"])
    pack_size: float = Field(gt=0, le=1_000_000, description="What one pack holds, in `unit`.", examples=[1.0])
    unit: str = Field(
        min_length=1, max_length=32, description="The unit of the slots it fits: fraction, litre, eggs, ...."
    )
    price: Decimal = Field(gt=0, max_digits=12, decimal_places=2, description="Price of one pack.", examples=["24.90"])
    currency: ISO4217 = Field(description="ISO 4217 code.", examples=["EUR"])
    device_kinds: list[DeviceKind] = Field(min_length=1, description="The kinds of device whose slots it fits.")
    slot_names: list[str] = Field(
        default_factory=list,
        description="The slot names it fits (black, milk, ...); empty: any slot of those kinds.",
    )
    available: bool = Field(True, description="Whether it can be ordered now.")

    @field_validator("slot_names")
    @classmethod
    def _slot_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(SLOT_NAME_PATTERN, name) or len(name) > 64:
                raise ValueError(f"{name!r} is not a slot name (letters, digits, _ . -, at most 64)")
        return sorted(set(names))

    @field_validator("device_kinds")
    @classmethod
    def _kinds(cls, kinds: list[DeviceKind]) -> list[DeviceKind]:
        return sorted(set(kinds))


class ProductWrite(ProductFields):
    """A product as an operator writes it; the SKU is in the path."""


class ProductRow(ProductFields):
    """A product as a catalogue file lists it."""

    sku: str = Field(min_length=1, max_length=128, pattern=SKU_PATTERN)


class ProductRead(BaseModel):
    """A version of a product: the current one, or one of its history."""

    sku: str
    version: int = Field(description="Goes up by one with every change; an order names the version it was priced at.")
    version_id: str
    name: str
    pack_size: float
    unit: str
    price: Decimal
    currency: str
    device_kinds: list[str]
    slot_names: list[str]
    available: bool
    changed_at: datetime = Field(description="When this version was made.")
    changed_by: str


class ImportIssue(BaseModel):
    line: int = Field(description="The line of the file, counting the header as line 1.")
    field: str | None = Field(description="The column, when the issue is one column's.")
    reason: str


class ImportRejected(BaseModel):
    """Nothing was imported: every bad row is listed."""

    detail: str
    field: str | None = None
    issues: list[ImportIssue] = Field(default_factory=list, description="Each bad row; empty for a file refused whole.")


class ImportDone(BaseModel):
    created: int = Field(description="New SKUs.")
    changed: int = Field(description="SKUs with a new version.")
    unchanged: int = Field(description="Rows that said what the current version already says.")

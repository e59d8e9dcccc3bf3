from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from replenish.columns import UTCDateTime


class UsageNorm(SQLModel, table=True):
    """How fast slots of one kind and name are used across the fleet (the median of the rates that customers who
    allow fleet learning lend), refreshed by the insights job: what "far faster than its kind" is judged against."""

    __tablename__ = "usage_norms"

    device_kind: str = Field(primary_key=True)
    slot_name: str = Field(primary_key=True)
    median_rate_per_day: float  # fractions of the slot a day
    slots: int
    computed_at: datetime = Field(sa_type=UTCDateTime)


class MonthlyDigest(SQLModel, table=True):
    """A customer's monthly digest of their use, handled once per month (the key makes it once): sent, or not
    (turned off then, or nothing to report)."""

    __tablename__ = "monthly_digests"

    customer_id: str = Field(foreign_key="customers.id", primary_key=True)
    month: str = Field(primary_key=True, max_length=7)  # the month it covers, YYYY-MM
    sent_at: datetime = Field(sa_type=UTCDateTime)  # when it was handled
    sent: bool = True

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from replenish.columns import UTCDateTime, new_id


class CycleOutcome(SQLModel, table=True):
    """What happened to a decided cycle against what its forecast said, recorded when the cycle ended (a refill) or,
    for one that ran empty, as soon as its readings showed it (the refill fills in ``ended_at`` and ``empty_days``
    later): the label every forecast earns (forecasting.outcomes). One per cycle, and so per decision."""

    __tablename__ = "cycle_outcomes"

    id: str = Field(default_factory=new_id, primary_key=True)
    decision_id: str = Field(foreign_key="decisions.id", unique=True)
    slot_id: str = Field(foreign_key="slots.id", index=True)
    device_id: str = Field(foreign_key="devices.id", index=True)
    customer_id: str = Field(foreign_key="customers.id", index=True)
    # The device's kind and the slot's name when it ended: what the fleet's reliability is grouped by.
    device_kind: str = Field(index=True)
    slot_name: str
    cycle_started_at: datetime = Field(sa_type=UTCDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # the refill; None: still empty
    recorded_at: datetime = Field(sa_type=UTCDateTime, index=True)
    # The prediction the decision was made on.
    decided_at: datetime = Field(sa_type=UTCDateTime)
    action: str
    service_level: float
    lead_time_days: float
    predicted_empty_at: datetime = Field(sa_type=UTCDateTime)
    predicted_early_at: datetime = Field(sa_type=UTCDateTime)
    predicted_late_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    rate_per_day: float
    # The order it brought, as it stood when the cycle ended, and what the customer said if they declined or
    # cancelled it ("too_early", "not_needed").
    order_id: str | None = Field(default=None, foreign_key="orders.id", index=True)
    order_status: str | None = None
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    feedback: str | None = None
    # What happened: when it ran empty (None: refilled before), when it ran or would have run empty, and whether
    # that was before the stated early date.
    ran_out_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    empty_estimated_at: datetime = Field(sa_type=UTCDateTime)
    ran_out_before_early: bool
    # Days empty before the refill; days of supply left at a refill before running out; days from the forecast's
    # median to when it ran (or would have run) empty, negative when sooner.
    empty_days: float
    left_days: float
    error_days: float
    # Whether its lesson is in its group's calibration (its customer allowed fleet learning when it taught): what a
    # revision at the refill takes back from the group.
    group_taught: bool = False


class CalibrationGroup(SQLModel, table=True):
    """What the ended cycles of one device kind and slot name taught their forecasts (forecasting.calibration): the
    shift of the level they plan at, in z units, learned outcome by outcome."""

    __tablename__ = "calibration_groups"

    device_kind: str = Field(primary_key=True)
    slot_name: str = Field(primary_key=True)
    shift: float = 0.0
    cycles: int = 0
    updated_at: datetime = Field(sa_type=UTCDateTime)


class ForecastReliability(SQLModel, table=True):
    """Per device kind, the forecasts against what happened over the last RELIABILITY_DAYS, as the insights job last
    computed it from the outcomes (outcomes.service.reliability): what the Fleet page and GET /reliability show,
    without reading every outcome at each view."""

    __tablename__ = "forecast_reliability"

    device_kind: str = Field(primary_key=True)
    cycles: int
    stated: float
    observed: float
    ran_out: float
    median_error_days: float | None = None
    since: datetime = Field(sa_type=UTCDateTime)
    computed_at: datetime = Field(sa_type=UTCDateTime)

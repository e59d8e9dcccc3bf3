"""One slot's evaluation, pure: the live service and the backtest both call it, with their own memory of the slot.

Memory is what the platform remembers between evaluations: where the current depletion cycle began, which cycle
already has a decision, and when the newest still-open order was placed. The live service keeps it in the
database; the backtest keeps it in a dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from replenish.automation.policy import ReorderPolicy, Verdict, decide
from replenish.constants import ConsentMode
from replenish.forecasting import Forecast, LevelReading, ReadingSeries, forecast_depletion
from replenish.forecasting.model import REFILL_BASELINE_READINGS

# How much history a forecast reads: enough for a long depletion cycle, bounded so an evaluation stays cheap.
FORECAST_HISTORY_DAYS = 120


@dataclass(frozen=True)
class SlotMemory:
    cycle_started_at: datetime | None = None
    decided_cycle_started_at: datetime | None = None
    open_order_placed_at: datetime | None = None


@dataclass(frozen=True)
class SlotEvaluation:
    forecast: Forecast
    cycle_started_at: datetime | None
    verdict: Verdict | None


def advance_cycle(cycle_started_at: datetime | None, forecast: Forecast) -> datetime | None:
    """The slot's current cycle start: set once, then moved forward only by a refill newer than it.

    Never recomputed from the visible readings, so a late reading or a shifting history window can never make
    one cycle look like a new one.
    """
    latest_refill = max(forecast.refills_detected, default=None)
    if cycle_started_at is None:
        return latest_refill or forecast.cycle_started_at
    if latest_refill is not None and latest_refill > cycle_started_at:
        return latest_refill
    return cycle_started_at


def evaluate(
    readings: list[LevelReading] | ReadingSeries,
    *,
    now: datetime,
    mode: ConsentMode,
    policy: ReorderPolicy,
    memory: SlotMemory,
) -> SlotEvaluation:
    """Forecast the slot from its readings (fractions of capacity, time order) and decide what to do now.

    Only the current cycle matters, with a few readings before its start so that its refill is still seen as
    one: the forecast reads from there, however much older history the caller holds.
    """
    series = readings if isinstance(readings, ReadingSeries) else ReadingSeries.of(readings)
    if memory.cycle_started_at is not None:
        start = int(np.searchsorted(series.times, memory.cycle_started_at.timestamp(), side="left"))
        series = series.from_index(max(start - REFILL_BASELINE_READINGS, 0))
    forecast = forecast_depletion(series, now=now)
    cycle = advance_cycle(memory.cycle_started_at, forecast)
    if cycle is None:
        return SlotEvaluation(forecast=forecast, cycle_started_at=None, verdict=None)
    in_transit = memory.open_order_placed_at is not None and memory.open_order_placed_at > now - policy.horizon
    verdict = decide(
        forecast,
        mode=mode,
        policy=policy,
        already_decided_this_cycle=memory.decided_cycle_started_at == cycle,
        order_in_transit=in_transit,
        now=now,
    )
    return SlotEvaluation(forecast=forecast, cycle_started_at=cycle, verdict=verdict)

"""One box instead of several parcels: when a slot orders, which of the customer's other slots join its shipment.

Pure: a function of each slot's latest forecast, its memory (as the engine keeps it), the policy and the clock. The
live service and the backtest both call it.

A slot joins ("is pulled forward") when its early empty date falls within the pull-forward horizon past the
ordering slot's order horizon: it would order by itself within that many days, so it comes now, in the same box,
instead of in a parcel of its own a few days later. Only slots that could order now by the engine's own rules
join: not already decided this cycle, no order on its way, a forecast on recent readings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from replenish.automation.engine import SlotMemory, order_on_its_way
from replenish.automation.policy import ReorderPolicy, must_reorder
from replenish.forecasting import Forecast
from replenish.forecasting.model import REFILL_MIN_RISE


@dataclass(frozen=True)
class PulledForward:
    """Why a slot joins another's shipment: how much sooner than by itself, for the customer's explanation."""

    days_after: float  # its early empty date after the ordering slot's (negative: before)
    reason: str


def joins(
    forecast: Forecast | None,
    *,
    memory: SlotMemory,
    policy: ReorderPolicy,
    pull_forward_days: float,
    now: datetime,
    newest: tuple[float, datetime] | None = None,
) -> bool:
    """Whether the slot joins a shipment ordered ``now``: it may run out within its order horizon plus
    ``pull_forward_days``, on recent readings, and nothing holds it back (decided this cycle, an order on its way).
    ``newest``: its newest reading (a fraction of capacity, and when), which its forecast may not have seen yet;
    one since the forecast that rose as a refill does is a new cycle to forecast first, not one to order for.
    """
    if forecast is None or memory.cycle_started_at is None:
        return False
    if newest is not None and forecast.level_now is not None and forecast.evidence_to is not None:
        level, at = newest
        if at > forecast.evidence_to and level >= forecast.level_now + REFILL_MIN_RISE:
            return False
    if memory.decided_cycle_started_at is not None and memory.decided_cycle_started_at >= memory.cycle_started_at:
        return False
    if order_on_its_way(forecast, memory=memory, policy=policy, now=now):
        return False
    widened = ReorderPolicy(
        lead_time_days=policy.lead_time_days,
        margin_days=policy.margin_days + pull_forward_days,
        service_level=policy.service_level,
        max_evidence_age_days=policy.max_evidence_age_days,
    )
    return must_reorder(forecast, policy=widened, now=now)


def pulled_forward(*, forecast: Forecast, name: str, ordering: Forecast | None, ordering_name: str) -> PulledForward:
    """The explanation of a slot that joins ``ordering_name``'s shipment: "pulled forward: cyan would run out 6 days
    after black"."""
    assert forecast.empty_at_early is not None
    if ordering is None or ordering.empty_at_early is None:
        return PulledForward(days_after=0.0, reason=f"pulled forward into {ordering_name}'s shipment")
    days_after = (forecast.empty_at_early - ordering.empty_at_early) / timedelta(days=1)
    if days_after >= 0.5:
        when = f"{days_after:.0f} day{'s' if round(days_after) != 1 else ''} after {ordering_name}"
    elif days_after <= -0.5:
        when = f"{-days_after:.0f} day{'s' if round(-days_after) != 1 else ''} before {ordering_name}"
    else:
        when = f"about when {ordering_name} does"
    return PulledForward(
        days_after=days_after,
        reason=f"pulled forward: {name} may run out by {forecast.empty_at_early:%Y-%m-%d %H:%M} UTC, {when}; "
        f"it comes in the same shipment",
    )

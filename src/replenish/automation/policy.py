"""The reorder decision: a pure function of a forecast, the consent mode, the policy and "now"."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from replenish.consent.schemas import OrderLimits
from replenish.constants import DEFAULT_SERVICE_LEVEL, ConsentMode, DecisionAction
from replenish.forecasting import Forecast

_ACTION_BY_MODE: dict[ConsentMode, DecisionAction | None] = {
    ConsentMode.AUTO_ORDER: DecisionAction.PLACE_ORDER,
    ConsentMode.ASK_FIRST: DecisionAction.REQUEST_APPROVAL,
    ConsentMode.NOTIFY_ONLY: DecisionAction.NOTIFY,
    ConsentMode.OFF: None,
}


# Readings older than this say too little about the level now to order on.
MAX_EVIDENCE_AGE_DAYS = 2.0


@dataclass(frozen=True)
class ReorderPolicy:
    lead_time_days: float
    margin_days: float
    service_level: float = DEFAULT_SERVICE_LEVEL
    max_evidence_age_days: float = MAX_EVIDENCE_AGE_DAYS

    @property
    def horizon_days(self) -> float:
        return self.lead_time_days + self.margin_days

    @functools.cached_property  # read at every evaluation
    def horizon(self) -> timedelta:
        return timedelta(days=self.horizon_days)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "rule": "act when the probability of running empty before now + lead time + margin reaches "
            "1 - service_level (the forecast's early empty estimate falls within that horizon), once per depletion "
            "cycle, not while an order placed within lead time + margin is open for the same cycle (or for a "
            "'refill' that fell straight back: a sensor glitch), and only on readings newer than "
            "max_evidence_age_days"
        }


@dataclass(frozen=True)
class Verdict:
    action: DecisionAction
    reason: str


def action_for(mode: ConsentMode) -> DecisionAction | None:
    """What a slot under ``mode`` does when it must reorder: place, ask, notify, or nothing."""
    return _ACTION_BY_MODE[mode]


def within_limits(
    verdict: Verdict,
    *,
    limits: OrderLimits,
    quantity: int,
    total_price: Decimal | None,
    spent_this_month: Callable[[], Decimal],
    asks: Sequence[str] = (),
) -> Verdict:
    """An automatic order that would break a limit of the consent (quantity, the slot's price cap, the monthly
    spending cap), or that has another reason to ask first (``asks``: its product unavailable), asks first
    instead, and says why. ``spent_this_month`` gives what the customer's orders cost this month so far: called
    only when a spending cap weighs a priced order (most consents have none, and most verdicts are no order)."""
    if verdict.action is not DecisionAction.PLACE_ORDER:
        return verdict
    broken = list(asks)
    if limits.max_quantity_per_order is not None and quantity > limits.max_quantity_per_order:
        broken.append(f"{quantity} units exceed the maximum of {limits.max_quantity_per_order} per order")
    if (slot_cap := limits.slot_price_cap) is not None:
        if total_price is None:
            broken.append(f"the price is unknown, so it cannot be shown to stay within the slot's cap of {slot_cap}")
        elif total_price > slot_cap:
            broken.append(f"{total_price} is over the slot's price cap of {slot_cap}")
    cap = limits.monthly_spending_cap
    if cap is not None:
        if total_price is None:
            broken.append(f"the price is unknown, so it cannot be shown to stay within the monthly cap of {cap}")
        elif (spent := spent_this_month()) + total_price > cap:
            broken.append(f"{total_price} on top of {spent} spent this month exceeds the cap of {cap}")
    if not broken:
        return verdict
    return Verdict(action=DecisionAction.REQUEST_APPROVAL, reason=f"{verdict.reason}; asks first: {'; '.join(broken)}")


def evidence_too_old(forecast: Forecast, *, policy: ReorderPolicy, now: datetime) -> bool:
    """Whether the forecast's newest reading is too old to order on: the device has gone quiet, or the readings
    since are still on their way, and what it used since is unknown."""
    return forecast.evidence_to is not None and now - forecast.evidence_to > timedelta(
        days=policy.max_evidence_age_days
    )


def must_reorder(forecast: Forecast, *, policy: ReorderPolicy, now: datetime) -> bool:
    """True when the slot may run out before an order placed now could arrive, on recent enough evidence."""
    if forecast.status != "ok" or forecast.empty_at_early is None or forecast.evidence_to is None:
        return False
    if evidence_too_old(forecast, policy=policy, now=now):
        return False
    return forecast.empty_at_early <= now + policy.horizon


def decide(
    forecast: Forecast,
    *,
    mode: ConsentMode,
    policy: ReorderPolicy,
    already_decided_this_cycle: bool,
    order_in_transit: bool,
    now: datetime,
    paused: bool = False,
) -> Verdict | None:
    """What to do for one slot now, or None.

    Acts at most once per depletion cycle, and not while an order placed within the last lead time plus margin
    still holds it back (the engine's order_on_its_way: its own cycle, or a "refill" that was a sensor glitch).
    Nothing at all during one of the customer's pause windows.
    """
    if paused or already_decided_this_cycle or order_in_transit or not must_reorder(forecast, policy=policy, now=now):
        return None
    action = action_for(mode)
    if action is None:
        return None
    assert forecast.empty_at is not None and forecast.empty_at_early is not None
    reason = (
        f"forecast empty {forecast.empty_at:%Y-%m-%d %H:%M} UTC; at a {policy.service_level:.0%} service level it "
        f"may be empty by {forecast.empty_at_early:%Y-%m-%d %H:%M} UTC, within the {policy.lead_time_days:g}-day "
        f"lead time plus {policy.margin_days:g}-day margin; consent mode {mode}"
    )
    return Verdict(action=action, reason=reason)

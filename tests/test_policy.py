"""The reorder decision is pure: forecast + consent mode + policy + now."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from replenish.automation.policy import ReorderPolicy, Verdict, decide, must_reorder, within_limits
from replenish.consent.schemas import OrderLimits
from replenish.constants import ConsentMode, DecisionAction
from replenish.forecasting import Forecast

NOW = datetime(2026, 11, 20, tzinfo=UTC)
POLICY = ReorderPolicy(lead_time_days=3, margin_days=1)


def forecast(*, early_in_days: float, status: str = "ok") -> Forecast:
    early = NOW + timedelta(days=early_in_days)
    return Forecast(
        status=status,
        computed_at=NOW,
        cycle_started_at=NOW - timedelta(days=10),
        readings_used=10,
        outliers_dropped=0,
        empty_at=early + timedelta(days=1),
        empty_at_early=early,
        evidence_to=NOW - timedelta(hours=1),
    )


def verdict_for(prediction: Forecast, mode: ConsentMode = ConsentMode.AUTO_ORDER, **blocked: bool):
    flags = {"already_decided_this_cycle": False, "order_in_transit": False} | blocked
    return decide(prediction, mode=mode, policy=POLICY, now=NOW, **flags)


@pytest.mark.parametrize(
    ("mode", "action"),
    [
        (ConsentMode.AUTO_ORDER, DecisionAction.PLACE_ORDER),
        (ConsentMode.ASK_FIRST, DecisionAction.REQUEST_APPROVAL),
        (ConsentMode.NOTIFY_ONLY, DecisionAction.NOTIFY),
        (ConsentMode.OFF, None),
    ],
)
def test_consent_mode_decides_the_action(mode, action):
    verdict = verdict_for(forecast(early_in_days=2), mode)
    assert (verdict.action if verdict else None) == action


def test_acts_only_inside_lead_time_plus_margin():
    assert must_reorder(forecast(early_in_days=4), policy=POLICY, now=NOW)
    assert not must_reorder(forecast(early_in_days=4.01), policy=POLICY, now=NOW)


def test_once_per_cycle_and_not_while_an_order_is_on_its_way():
    assert verdict_for(forecast(early_in_days=1), already_decided_this_cycle=True) is None
    assert verdict_for(forecast(early_in_days=1), order_in_transit=True) is None
    assert verdict_for(forecast(early_in_days=1)) is not None


def test_no_action_on_stale_evidence():
    quiet = replace(forecast(early_in_days=1), evidence_to=NOW - timedelta(days=2, minutes=1))
    assert verdict_for(quiet) is None
    recent = replace(forecast(early_in_days=1), evidence_to=NOW - timedelta(days=2))
    assert verdict_for(recent) is not None


def test_no_forecast_no_action():
    assert verdict_for(forecast(early_in_days=1, status="insufficient_data")) is None


def test_the_reason_names_the_dates_and_the_rule():
    verdict = verdict_for(forecast(early_in_days=2))
    assert "2026-11-22" in verdict.reason
    assert "3-day lead time" in verdict.reason
    assert "auto_order" in verdict.reason


@pytest.mark.parametrize(
    ("limits", "quantity", "total", "spent", "asks_first"),
    [
        (OrderLimits(), 5, None, Decimal(0), False),
        (OrderLimits(max_quantity_per_order=2), 2, None, Decimal(0), False),
        (OrderLimits(max_quantity_per_order=2), 3, None, Decimal(0), True),
        (OrderLimits(monthly_spending_cap=Decimal(50)), 1, Decimal(20), Decimal(30), False),
        (OrderLimits(monthly_spending_cap=Decimal(50)), 1, Decimal("20.01"), Decimal(30), True),
        (OrderLimits(monthly_spending_cap=Decimal(50)), 1, None, Decimal(0), True),
    ],
)
def test_an_automatic_order_that_breaks_a_limit_asks_first(limits, quantity, total, spent, asks_first):
    verdict = Verdict(action=DecisionAction.PLACE_ORDER, reason="low")
    limited = within_limits(
        verdict, limits=limits, quantity=quantity, total_price=total, spent_this_month=lambda: spent
    )
    assert limited.action == (DecisionAction.REQUEST_APPROVAL if asks_first else DecisionAction.PLACE_ORDER)
    assert limited.reason.startswith("low")
    # Limits never turn a notification or a question into an order.
    notify = Verdict(action=DecisionAction.NOTIFY, reason="low")
    assert (
        within_limits(notify, limits=limits, quantity=quantity, total_price=total, spent_this_month=_never_read)
        is notify
    )


def _never_read() -> Decimal:
    raise AssertionError("the month's spending was read for a verdict no cap weighs")


def test_the_months_spending_is_read_only_when_a_cap_weighs_a_priced_order():
    order = Verdict(action=DecisionAction.PLACE_ORDER, reason="low")
    for limits, total in [(OrderLimits(), Decimal(20)), (OrderLimits(monthly_spending_cap=Decimal(50)), None)]:
        within_limits(order, limits=limits, quantity=1, total_price=total, spent_this_month=_never_read)
    reads = []
    capped = within_limits(
        order,
        limits=OrderLimits(monthly_spending_cap=Decimal(50)),
        quantity=1,
        total_price=Decimal(20),
        spent_this_month=lambda: reads.append(1) or Decimal(40),
    )
    assert reads == [1]
    assert capped.action == DecisionAction.REQUEST_APPROVAL
    assert "20 on top of 40 spent this month exceeds the cap of 50" in capped.reason


def test_nothing_is_decided_during_a_pause():
    assert verdict_for(forecast(early_in_days=1)) is not None
    assert verdict_for(forecast(early_in_days=1), paused=True) is None

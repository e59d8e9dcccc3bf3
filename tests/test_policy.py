"""The reorder decision is pure: forecast + consent mode + policy + now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from replenish.automation.policy import ReorderPolicy, decide, must_reorder
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
    )


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
    verdict = decide(forecast(early_in_days=2), mode=mode, policy=POLICY, already_decided_this_cycle=False, now=NOW)
    assert (verdict.action if verdict else None) == action


def test_acts_only_inside_lead_time_plus_margin():
    assert must_reorder(forecast(early_in_days=4), policy=POLICY, now=NOW)
    assert not must_reorder(forecast(early_in_days=4.01), policy=POLICY, now=NOW)


def test_once_per_cycle():
    verdict = decide(
        forecast(early_in_days=1), mode=ConsentMode.AUTO_ORDER, policy=POLICY, already_decided_this_cycle=True, now=NOW
    )
    assert verdict is None


def test_no_forecast_no_action():
    unknown = forecast(early_in_days=1, status="insufficient_data")
    assert (
        decide(unknown, mode=ConsentMode.AUTO_ORDER, policy=POLICY, already_decided_this_cycle=False, now=NOW) is None
    )


def test_the_reason_names_the_dates_and_the_rule():
    verdict = decide(
        forecast(early_in_days=2), mode=ConsentMode.AUTO_ORDER, policy=POLICY, already_decided_this_cycle=False, now=NOW
    )
    assert "2026-11-22" in verdict.reason
    assert "3-day lead time" in verdict.reason
    assert "auto_order" in verdict.reason

"""The forecast is a pure function of readings and "now": checked here without any I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from replenish.forecasting import (
    Absences,
    Forecast,
    LevelReading,
    RatePrior,
    ReadingSeries,
    forecast_depletion,
    split_cycles,
)
from replenish.forecasting.model import (
    REFILL_BASELINE_DAYS,
    REFILL_BASELINE_READINGS,
    REFILL_CONFIRMATIONS,
    REFILL_MIN_RISE,
    _cycle_starts,
)
from replenish.forecasting.weekly import FLAT_WEEK, after_use_days, use_days

NOW = datetime(2026, 11, 20, tzinfo=UTC)


def trace(levels: list[float], *, every: timedelta = timedelta(hours=6), end: datetime = NOW) -> list[LevelReading]:
    start = end - every * (len(levels) - 1)
    return [LevelReading(ts=start + every * i, level=level) for i, level in enumerate(levels)]


def linear(start_level: float, rate_per_day: float, days: float, every_hours: float = 6) -> list[float]:
    steps = int(days * 24 / every_hours) + 1
    return [start_level - rate_per_day * i * every_hours / 24 for i in range(steps)]


def test_steady_consumption_is_forecast_exactly():
    forecast = forecast_depletion(trace(linear(0.8, 0.05, 10)), now=NOW)
    assert forecast.status == "ok"
    assert forecast.rate_per_day == pytest.approx(0.05, rel=1e-6)
    assert forecast.level_now == pytest.approx(0.3, abs=1e-6)
    assert forecast.empty_at == NOW + timedelta(days=6)
    assert forecast.empty_at_early <= forecast.empty_at <= forecast.empty_at_late
    assert forecast.readings_used == 41
    assert forecast.evidence_to == NOW


def test_the_level_is_extrapolated_to_now():
    forecast = forecast_depletion(trace(linear(0.8, 0.05, 10), end=NOW - timedelta(days=2)), now=NOW)
    assert forecast.level_now == pytest.approx(0.2, abs=1e-6)
    assert forecast.empty_at == NOW + timedelta(days=4)


def test_noise_widens_the_band_around_the_truth():
    rng = np.random.default_rng(1)
    noisy = [level + rng.normal(0, 0.01) for level in linear(0.8, 0.05, 10)]
    forecast = forecast_depletion(trace(noisy), now=NOW)
    truth = NOW + timedelta(days=6)
    assert forecast.empty_at_early < truth < forecast.empty_at_late
    assert abs(forecast.empty_at - truth) < timedelta(hours=12)


def test_quantized_levels_still_give_the_right_rate():
    quantized = [round(level * 20) / 20 for level in linear(0.9, 0.04, 14)]
    forecast = forecast_depletion(trace(quantized), now=NOW)
    assert forecast.rate_per_day == pytest.approx(0.04, rel=0.1)


def test_a_one_off_spike_is_dropped_as_an_outlier_not_a_refill():
    levels = linear(0.8, 0.05, 10)
    levels[20] = 0.05
    forecast = forecast_depletion(trace(levels), now=NOW)
    assert forecast.refills_detected == []
    assert forecast.outliers_dropped == 1
    assert forecast.rate_per_day == pytest.approx(0.05, rel=1e-3)


def test_a_sustained_rise_is_a_refill_and_starts_a_new_cycle():
    before = linear(0.6, 0.05, 10)  # ends at 0.1
    after = linear(1.0, 0.05, 5)
    readings = trace(before + after)
    assert split_cycles(readings) == [0, len(before)]
    forecast = forecast_depletion(readings, now=NOW)
    assert forecast.cycle_started_at == readings[len(before)].ts
    assert forecast.refills_detected == [readings[len(before)].ts]
    assert forecast.readings_used == len(after)
    assert forecast.level_now == pytest.approx(0.75, abs=1e-6)


def test_an_upward_spike_that_falls_back_is_not_a_refill():
    levels = linear(0.6, 0.05, 10)
    levels[15] = 0.95
    assert split_cycles(trace(levels)) == [0]


def test_a_rise_waits_for_a_confirming_reading():
    assert split_cycles(trace([*linear(0.6, 0.05, 5), 1.0])) == [0]
    confirmed = trace([*linear(0.6, 0.05, 5), 1.0, 0.99])
    assert split_cycles(confirmed) == [0, len(confirmed) - 2]


def test_nothing_is_ordered_on_the_old_level_while_a_rise_waits_for_confirmation():
    forecast = forecast_depletion(trace([*linear(0.3, 0.05, 5), 1.0]), now=NOW)
    assert forecast.status == "refill_pending"
    assert forecast.empty_at_early is None


def test_a_dropout_to_empty_is_not_a_refill_when_the_level_comes_back():
    # The milk bottle out of the fridge for three reports.
    forecast = forecast_depletion(trace([0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.49, 0.49, 0.49, 0.48]), now=NOW)
    assert forecast.refills_detected == []


def test_a_fresh_dropout_to_empty_orders_nothing_until_it_lasts():
    fresh = trace([*linear(0.6, 0.02, 3), 0.0, 0.0], every=timedelta(hours=3))
    assert forecast_depletion(fresh, now=NOW).empty_at_early > NOW + timedelta(days=5)
    lasting = trace([*linear(0.6, 0.02, 3), *[0.0] * 6], every=timedelta(hours=3))
    assert forecast_depletion(lasting, now=NOW).empty_at_early <= NOW


def test_a_one_reading_glitch_is_not_a_refill():
    levels = linear(0.5, 0.05, 8)
    levels[10] = 1.0
    assert split_cycles(trace(levels)) == [0]


def test_a_refill_followed_by_heavy_use_is_still_a_refill():
    # Eggs: 2 of 12 left, a new box, then a big breakfast between reports.
    eggs = [level / 12 for level in (4, 3, 2, 12, 10, 9)]
    assert split_cycles(trace(eggs)) == [0, 3]


def test_an_empty_idle_slot_is_empty_now():
    forecast = forecast_depletion(trace([0.0] * 12), now=NOW)
    assert forecast.status == "ok"
    assert forecast.empty_at_early == NOW


def test_noise_around_a_rising_level_is_not_consumption():
    noisy = [0.10, 0.02, 0.12, 0.03, 0.13, 0.04, 0.14, 0.05, 0.15]
    forecast = forecast_depletion(trace(noisy, every=timedelta(hours=4)), now=NOW)
    assert forecast.status == "not_consuming"
    assert forecast.empty_at is None and forecast.empty_at_early is None


def test_quantized_levels_do_not_make_the_early_date_absurdly_early():
    quantized = [round(level * 10) / 10 for level in linear(0.9, 0.04, 14)]
    forecast = forecast_depletion(trace(quantized), now=NOW)
    assert forecast.empty_at - forecast.empty_at_early < timedelta(days=2.5)


def test_readings_after_now_are_never_used():
    readings = trace(linear(0.8, 0.05, 10))
    cut = NOW - timedelta(days=3)
    with_future = forecast_depletion(readings, now=cut)
    without_future = forecast_depletion([r for r in readings if r.ts <= cut], now=cut)
    assert with_future == without_future


def test_too_few_readings_or_too_short_a_span_is_not_a_forecast():
    forecast = forecast_depletion(trace([0.8, 0.7]), now=NOW)
    assert forecast.status == "insufficient_data"
    assert forecast_depletion(trace([0.8, 0.7, 0.6, 0.5], every=timedelta(hours=4)), now=NOW).status == (
        "insufficient_data"
    )
    assert forecast.empty_at is None
    assert forecast_depletion([], now=NOW).cycle_started_at is None


def test_no_consumption_never_empties():
    forecast = forecast_depletion(trace([0.7] * 20), now=NOW)
    assert forecast.status == "not_consuming"
    assert forecast.empty_at is None


def test_an_empty_slot_is_empty_now():
    forecast = forecast_depletion(trace(linear(0.2, 0.1, 3)), now=NOW)
    assert forecast.level_now == 0.0
    assert forecast.empty_at == NOW


def test_forecast_serialises_to_json_friendly_values():
    data = forecast_depletion(trace(linear(0.8, 0.05, 10)), now=NOW).to_json()
    assert data["empty_at"] == (NOW + timedelta(days=6)).isoformat()
    assert data["status"] == "ok"


def _split_cycles_by_definition(readings: list[LevelReading]) -> list[int]:
    """The refill rule read literally, one index at a time: the reference the fast version must equal."""
    starts = [0]
    for index in range(1, len(readings) - REFILL_CONFIRMATIONS):
        window = readings[max(starts[-1], index - REFILL_BASELINE_READINGS) : index]
        recent = [r.level for r in window if r.ts >= window[-1].ts - timedelta(days=REFILL_BASELINE_DAYS)]
        threshold = float(np.median(recent)) + REFILL_MIN_RISE
        if all(r.level >= threshold for r in readings[index : index + 1 + REFILL_CONFIRMATIONS]):
            starts.append(index)
    return starts


def _rise_starts(readings: list[LevelReading]) -> list[int]:
    """The cycle starts from rises alone (refills after silences need the rate, and are tested on their own)."""
    series = ReadingSeries.of(readings)
    return _cycle_starts(series.times, series.levels)


@pytest.mark.parametrize("hours_between", [1, 6, 30])
def test_the_fast_refill_detection_equals_the_definition(hours_between):
    rng = np.random.default_rng(7)
    for _ in range(1500):
        level, levels = rng.random(), []
        for _ in range(int(rng.integers(1, 60))):
            if rng.random() < 0.08:
                level = rng.random()  # a refill, partial or full (or a drop)
            level = float(np.clip(level - rng.random() * 0.05, 0, 1))
            levels.append(level if rng.random() > 0.05 else float(rng.random()))  # and the odd spike
        gaps = rng.exponential(hours_between, len(levels))  # irregular reports
        moments = NOW - timedelta(hours=float(gaps.sum())) + np.cumsum(gaps) * timedelta(hours=1)
        readings = [LevelReading(ts=moment, level=level) for moment, level in zip(moments, levels, strict=True)]
        assert _rise_starts(readings) == _split_cycles_by_definition(readings), levels
    for _ in range(1500):  # rounded levels repeat: ties in the medians
        levels = np.round(rng.random(int(rng.integers(2, 30))), 2).tolist()
        readings = trace(levels, every=timedelta(hours=hours_between))
        assert _rise_starts(readings) == _split_cycles_by_definition(readings)


def test_a_partial_refill_after_sparse_reports_of_heavy_use_is_a_refill():
    # One report every 2.5 days: 0.9, 0.6, 0.1, then a bottle topped up to 0.6. The old level is the 0.1, not the
    # median of a week of use.
    readings = trace([0.9, 0.6, 0.1, 0.6, 0.5], every=timedelta(days=2.5))
    assert split_cycles(readings) == [0, 3]


def test_a_stored_forecast_reads_back_equal():
    forecast = forecast_depletion(trace([*linear(0.8, 0.06, 10), *linear(0.9, 0.06, 2)]), now=NOW)
    assert Forecast.from_json(forecast.to_json()) == forecast
    assert Forecast.from_json({"status": "ok"}) is None
    assert Forecast.from_json(forecast.to_json() | {"a_field_of_a_later_version": 1}) is None


def test_a_forecast_stored_before_a_field_was_added_still_reads_back():
    forecast = forecast_depletion(trace(linear(0.8, 0.06, 10)), now=NOW)
    stored = forecast.to_json()
    del stored["cycle_largest_drop"]
    assert Forecast.from_json(stored) == replace(forecast, cycle_largest_drop=None)


def test_a_dip_of_three_readings_is_not_a_refill_when_the_level_comes_back():
    # One of two bottles out of the fridge for three hourly reports.
    dip = [0.7, 0.69, 0.68, 0.67, 0.66, 0.65, 0.64, 0.3, 0.3, 0.3, 0.62, 0.61, 0.6]
    assert forecast_depletion(trace(dip, every=timedelta(hours=1)), now=NOW).refills_detected == []


def test_a_two_reading_cycle_keeps_both_readings():
    forecast = forecast_depletion(trace([*linear(0.5, 0.05, 5), 1.0, 0.85]), now=NOW)
    assert forecast.readings_used == 2 and forecast.outliers_dropped == 0


def test_a_forecast_on_the_fleet_s_prior_alone_is_not_certain():
    forecast = forecast_depletion(trace([0.9]), now=NOW, prior=RatePrior(rate_per_day=0.1, rate_sd=0.03))
    assert forecast.status == "ok"
    assert forecast.rate_per_day_low < 0.1 < forecast.rate_per_day_high
    assert forecast.empty_at_early < forecast.empty_at - timedelta(days=1)


def test_a_zero_horizon_is_a_forecast_not_a_crash():
    forecast = forecast_depletion(trace(linear(0.8, 0.05, 10)), now=NOW, horizon_days=0)
    assert forecast.status == "ok" and forecast.empty_at_early <= forecast.empty_at


def test_a_forecast_knows_that_the_weekend_is_coming():
    # An office printer: 0.05 a day on weekdays, nothing at weekends; four weeks of hourly readings ending on a
    # Friday evening at 0.1. A flat rate would empty it over the weekend; it will last until Tuesday.
    friday_evening = datetime(2026, 11, 20, 18, tzinfo=UTC)
    assert friday_evening.weekday() == 4
    moments = [friday_evening - timedelta(hours=hour) for hour in range(28 * 24, -1, -1)]
    used_after = [
        0.05 / 24 * sum(1 for h in range(hour) if (friday_evening - timedelta(hours=h)).weekday() < 5)
        for hour in range(28 * 24, -1, -1)
    ]
    readings = [LevelReading(ts=moment, level=0.1 + used) for moment, used in zip(moments, used_after, strict=True)]
    forecast = forecast_depletion(readings, now=friday_evening)
    assert forecast.weekly_profile is not None
    assert max(forecast.weekly_profile[5:]) < 0.5 < 1.0 < min(forecast.weekly_profile[:5])
    assert forecast.empty_at.weekday() == 1  # Tuesday: Monday and Tuesday use the last 0.1
    assert forecast.empty_at_early > friday_evening + timedelta(days=2.5)


def test_a_long_empty_spell_between_two_spikes_is_not_a_refill():
    # Empty for days; two lone spikes (0.4, then 0.95) must not bracket the spell into a "dip" and fake a refill.
    levels = [*linear(0.3, 0.1, 3), *[0.0] * 12, 0.4, *[0.0] * 12, 0.95, *[0.0] * 6]
    forecast = forecast_depletion(trace(levels), now=NOW)
    assert forecast.refills_detected == []
    assert forecast.empty_at_early <= NOW


def test_a_low_service_level_still_plans_before_the_median():
    rng = np.random.default_rng(3)
    lumps = np.zeros(30 * 24)
    lumps[rng.choice(len(lumps), 12, replace=False)] = rng.uniform(0.02, 0.08, 12)
    levels = (1.0 - np.cumsum(lumps)).tolist()
    for level in (0.5, 0.6, 0.97):
        forecast = forecast_depletion(trace(levels, every=timedelta(hours=1)), now=NOW, service_level=level)
        assert forecast.status == "ok"
        assert forecast.empty_at_early <= forecast.empty_at <= forecast.empty_at_late


def test_an_office_device_silent_at_weekends_still_shows_its_week():
    # Reports hourly only on weekdays from 8 to 18 and uses 0.003 an hour then; nothing at weekends; four weeks.
    friday_evening = datetime(2026, 11, 20, 18, tzinfo=UTC)
    every_hour = (friday_evening - timedelta(hours=hour) for hour in range(28 * 24, -1, -1))
    moments = [moment for moment in every_hour if moment.weekday() < 5 and 8 <= moment.hour <= 18]
    readings = [
        LevelReading(ts=moment, level=0.1 + 0.003 * (len(moments) - 1 - index)) for index, moment in enumerate(moments)
    ]
    forecast = forecast_depletion(readings, now=friday_evening)
    assert forecast.weekly_profile is not None
    assert max(forecast.weekly_profile[5:]) < 0.5 < 1.0 < min(forecast.weekly_profile[:5])


@pytest.mark.parametrize("profile", [FLAT_WEEK, np.array([1.5, 1.5, 1.25, 1.25, 1.2, 0.15, 0.15])])
def test_absences_merge_and_days_of_use_skip_them(profile):
    day = timedelta(days=1)
    absences = Absences.of([(NOW + 5 * day, NOW + 7 * day), (NOW, NOW + 2 * day), (NOW + day, NOW + 3 * day)])
    assert absences.starts.tolist() == [NOW.timestamp(), (NOW + 5 * day).timestamp()]
    assert absences.ends.tolist() == [(NOW + 3 * day).timestamp(), (NOW + 7 * day).timestamp()]
    moments = np.array([(NOW + k * day / 2).timestamp() for k in range(-4, 20)])
    outside = moments[~absences.inside(moments)]
    assert len(outside) == len(moments) - 10
    start = float(moments[0])
    used = use_days(outside, profile, absences) - use_days(np.array([start]), profile, absences)
    for moment, days in zip(outside, used, strict=True):
        assert after_use_days(start, float(days), profile, absences) == pytest.approx(moment)
    # Time away is no use: from the day before the first absence to the day after the second, 4 days of use.
    if profile is FLAT_WEEK:
        span = use_days(np.array([(NOW - day).timestamp(), (NOW + 8 * day).timestamp()]), profile, absences)
        assert span[1] - span[0] == pytest.approx(4)


def test_a_pause_leaves_the_weekly_rhythm_alone():
    # An office printer: 0.03 a weekday, nothing at weekends or during a three-day pause two weeks ago; reports
    # every 6 hours for five weeks.
    end = datetime(2026, 11, 20, 12, tzinfo=UTC)  # a Friday
    pause = (end - timedelta(days=16), end - timedelta(days=13))

    def used_on(moment: datetime) -> bool:
        return moment.weekday() < 5 and not pause[0] <= moment < pause[1]

    moments = [end - timedelta(hours=6 * k) for k in range(4 * 35, -1, -1)]
    level, levels = 0.95, []
    for previous, moment in zip([moments[0], *moments], moments, strict=False):
        level -= 0.03 * (moment - previous) / timedelta(days=1) if used_on(previous) else 0.0
        levels.append(level)
    readings = [LevelReading(ts=m, level=lv) for m, lv in zip(moments, levels, strict=True)]
    truth = end
    while level > 0:
        level -= 0.03 / 24 if used_on(truth) else 0.0
        truth += timedelta(hours=1)

    paused = forecast_depletion(readings, now=end, absences=Absences.of([pause]))
    assert paused.weekly_profile is not None
    assert paused.weekly_profile[5] < 0.3 and paused.weekly_profile[0] > 1, paused.weekly_profile
    assert abs(paused.empty_at - truth) < timedelta(hours=12), (paused.empty_at, truth)
    # Not told of the pause, the forecast takes it for slow use, and comes later.
    assert forecast_depletion(readings, now=end).empty_at > paused.empty_at


def test_days_away_are_days_of_no_use():
    readings = trace(linear(0.8, 0.05, 10))  # 0.3 left at NOW: six days
    away = Absences.of([(NOW + timedelta(days=2), NOW + timedelta(days=12))])
    plain = forecast_depletion(readings, now=NOW)
    paused = forecast_depletion(readings, now=NOW, absences=away)
    assert paused.empty_at - plain.empty_at == timedelta(days=10)
    assert paused.empty_at_early - plain.empty_at_early == timedelta(days=10)
    # Readings taken while away say nothing about use: a level that held then does not slow the rate.
    held = [*linear(0.8, 0.05, 10), *[0.3] * 20]  # five more days at 0.3
    later = NOW + timedelta(days=5)
    back = forecast_depletion(
        trace(held, end=later), now=later, absences=Absences.of([(NOW + timedelta(hours=1), later)])
    )
    # (The reading on the way back, at the end of the absence, counts: an hour after NOW in use time.)
    assert back.rate_per_day == pytest.approx(0.05, rel=2e-3)
    assert back.evidence_to == later


def _steady_with_a_burst(burst_days_ago: float | None) -> list[LevelReading]:
    """Five weeks at 0.02 a day, read every 6 hours, optionally with a 0.15 burst of use on one day."""
    readings, level = [], 0.95
    start = NOW - timedelta(days=35)
    for step in range(35 * 4 + 1):
        moment = start + timedelta(hours=6 * step)
        if step:
            level -= 0.02 / 4
            if burst_days_ago is not None and NOW - moment == timedelta(days=burst_days_ago):
                level -= 0.15
        readings.append(LevelReading(moment, level))
    return readings


def test_a_burst_weeks_ago_still_widens_the_spread():
    """The rate follows recent use; the spread remembers that the slot has had a burst and may have another."""
    steady = forecast_depletion(_steady_with_a_burst(None), now=NOW)
    bursty = forecast_depletion(_steady_with_a_burst(25), now=NOW)
    assert bursty.rate_per_day == pytest.approx(steady.rate_per_day, rel=0.1)  # the rate has moved on
    margin = {name: f.empty_at - f.empty_at_early for name, f in (("steady", steady), ("bursty", bursty))}
    assert margin["bursty"] > 1.6 * margin["steady"], margin


@pytest.mark.parametrize(
    ("after_silence", "refilled"),
    [
        ((0.45, 0.44, 0.43), True),  # the slot ran low while the device was offline, and was partly refilled
        ((0.35, 0.34, 0.33), False),  # switched off: nothing used, nothing refilled
        ((0.38, 0.37, 0.36), False),  # too small a rise over the old level to be told from noise
        ((0.45, 0.25, 0.24), False),  # not held by the next reading
    ],
)
def test_a_refill_while_the_device_was_silent_starts_a_cycle(after_silence, refilled):
    before = trace(linear(0.6, 0.05, 5), end=NOW - timedelta(days=6))
    after = trace(list(after_silence), end=NOW)
    forecast = forecast_depletion(before + after, now=NOW)
    assert (forecast.refills_detected == [after[0].ts]) is refilled, forecast.refills_detected


def test_a_refill_after_a_silence_does_not_depend_on_the_fleet_s_prior():
    readings = trace(linear(0.6, 0.05, 5), end=NOW - timedelta(days=6)) + trace([0.45, 0.44, 0.43], end=NOW)
    without = forecast_depletion(readings, now=NOW)
    with_prior = forecast_depletion(readings, now=NOW, prior=RatePrior(rate_per_day=0.01))
    assert without.refills_detected == with_prior.refills_detected == [readings[-3].ts]


def test_a_customer_s_pause_is_not_a_silence_in_which_the_slot_was_used():
    """Readings during the customer's absence are left out; the gap they leave is not days of use."""
    before = trace(linear(0.6, 0.05, 5), end=NOW - timedelta(days=6))
    during = trace([0.35] * 20, every=timedelta(hours=6), end=NOW - timedelta(days=1))
    after = trace([0.47, 0.46, 0.45], end=NOW)  # a top-up of 0.12: not a refill
    away = Absences.of([(NOW - timedelta(days=5, hours=23), NOW - timedelta(hours=13))])
    assert forecast_depletion(before + during + after, now=NOW, absences=away).refills_detected == []
    assert forecast_depletion(before + after, now=NOW).refills_detected == [after[0].ts]  # without the pause it is


def test_refills_after_two_silences_in_a_row():
    first = trace(linear(0.6, 0.05, 5), end=NOW - timedelta(days=14))
    second = trace(linear(0.45, 0.05, 3), end=NOW - timedelta(days=8))  # refilled (partly) in the first silence
    third = trace([0.45, 0.44, 0.43], end=NOW)  # and again in the second
    forecast = forecast_depletion(first + second + third, now=NOW)
    assert forecast.refills_detected == [second[0].ts, third[0].ts]

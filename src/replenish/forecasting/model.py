"""Depletion forecasting: pure functions of a slot's readings and "now". No I/O, no wall clock.

Levels are fractions of the slot's capacity (0 = empty, 1 = full), so one model serves ink, milk and eggs.

First honest version: refills split the history into depletion cycles; the current cycle's level is fitted
against time by least squares weighted toward recent readings, with outliers dropped; the slope's standard
error and the residual spread give the uncertainty band of the empty time.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SECONDS_PER_DAY = 86_400.0
# A rise of at least this fraction of capacity, held by the next readings, is a refill.
REFILL_MIN_RISE = 0.15
REFILL_CONFIRMATIONS = 2
# The old level is the median of this many readings before a rise: enough that a dip of up to three readings (an
# item out of the fridge for a while) cannot drag it down and fake a refill when the level comes back.
REFILL_BASELINE_READINGS = 2 * REFILL_CONFIRMATIONS + 3
# Recent readings count more: a reading this old weighs half as much as the newest.
WEIGHT_HALF_LIFE_DAYS = 7.0
MIN_READINGS = 3
# Less than a day of a cycle says too little about the rate to act on.
MIN_SPAN = timedelta(days=1)
# At or below this the slot is empty for practical purposes, whatever its recent slope.
EMPTY_LEVEL = 0.02
# Below this consumption the slot is "not being used" rather than "empties in 40 years".
MIN_RATE_PER_DAY = 1e-4
# z for the 5% / 95% quantiles of the band.
BAND_Z = 1.645
OUTLIER_MADS = 4.0
MAX_RESIDUAL_AUTOCORRELATION = 0.95
MIN_EFFECTIVE_READINGS = 3.0


@dataclass(frozen=True)
class LevelReading:
    ts: datetime
    level: float  # fraction of capacity


@dataclass(frozen=True)
class ReadingSeries:
    """Readings as arrays: epoch seconds (ascending) and levels (fractions of capacity). Cheap to slice."""

    times: np.ndarray
    levels: np.ndarray

    @classmethod
    def of(cls, readings: list[LevelReading]) -> ReadingSeries:
        return cls(
            times=np.fromiter((r.ts.timestamp() for r in readings), dtype=float, count=len(readings)),
            levels=np.fromiter((r.level for r in readings), dtype=float, count=len(readings)),
        )

    def __len__(self) -> int:
        return len(self.times)

    def from_index(self, start: int) -> ReadingSeries:
        return ReadingSeries(times=self.times[start:], levels=self.levels[start:])


def _moment(epoch_seconds: float) -> datetime:
    return datetime.fromtimestamp(float(epoch_seconds), UTC)


@dataclass(frozen=True)
class Forecast:
    status: str  # "ok", "insufficient_data", "not_consuming"
    computed_at: datetime
    cycle_started_at: datetime | None
    readings_used: int
    outliers_dropped: int
    evidence_from: datetime | None = None
    evidence_to: datetime | None = None
    level_now: float | None = None
    rate_per_day: float | None = None
    rate_per_day_low: float | None = None
    rate_per_day_high: float | None = None
    empty_at: datetime | None = None  # median
    empty_at_early: datetime | None = None  # 5% quantile: the date to plan deliveries against
    empty_at_late: datetime | None = None  # 95% quantile; None when it may never empty
    refills_detected: list[datetime] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            key: (value.isoformat() if isinstance(value, datetime) else value) for key, value in asdict(self).items()
        } | {"refills_detected": [moment.isoformat() for moment in self.refills_detected]}


def split_cycles(readings: list[LevelReading] | ReadingSeries) -> list[int]:
    """Indexes at which a new depletion cycle starts (always includes 0 for a non-empty list).

    A rise of at least REFILL_MIN_RISE over the median of the readings just before it is a refill when the next
    REFILL_CONFIRMATIONS readings stay that far above the old level too: a one- or two-reading glitch is not a
    refill, and consumption right after a refill does not hide it. A rise not yet confirmed is not a refill yet.
    """
    series = readings if isinstance(readings, ReadingSeries) else ReadingSeries.of(readings)
    return _cycle_starts(series.levels)


def _cycle_starts(levels: np.ndarray) -> list[int]:
    if len(levels) == 0:
        return []
    starts = [0]
    # Vectorised first pass: each index against the median of the REFILL_BASELINE_READINGS before it, as if
    # no refill had happened; then the few candidates are checked exactly, with the window cut at the cycle start.
    for index in _refill_candidates(levels):
        if index <= starts[-1]:
            continue
        if index - starts[-1] > REFILL_BASELINE_READINGS or _is_refill(levels, index, cycle_start=starts[-1]):
            starts.append(int(index))
    return starts


def _refill_candidates(levels: np.ndarray) -> np.ndarray:
    count = len(levels)
    last = count - REFILL_CONFIRMATIONS  # indexes from 1 to last - 1 can be confirmed
    if last <= 1:
        return np.empty(0, dtype=int)
    window = REFILL_BASELINE_READINGS
    baseline = np.empty(count)
    for index in range(1, min(window, count)):
        baseline[index] = statistics.median(levels[:index].tolist())  # a handful of values: no numpy overhead
    if count > window:
        baseline[window:] = np.median(sliding_window_view(levels[:-1], window), axis=1)
    threshold = baseline[1:last] + REFILL_MIN_RISE
    held = levels[1:last] >= threshold
    for ahead in range(1, REFILL_CONFIRMATIONS + 1):
        held &= levels[1 + ahead : last + ahead] >= threshold
    return np.flatnonzero(held) + 1


def _is_refill(levels: np.ndarray, index: int, *, cycle_start: int) -> bool:
    window = levels[max(cycle_start, index - REFILL_BASELINE_READINGS) : index].tolist()
    threshold = statistics.median(window) + REFILL_MIN_RISE
    return bool(np.all(levels[index : index + 1 + REFILL_CONFIRMATIONS] >= threshold))


def forecast_depletion(readings: list[LevelReading] | ReadingSeries, *, now: datetime) -> Forecast:
    """Forecast when the slot runs empty, from readings sorted by time. Readings after ``now`` are ignored."""
    series = readings if isinstance(readings, ReadingSeries) else ReadingSeries.of(readings)
    now_s = now.timestamp()
    visible = series.from_index(0)
    if len(visible) and visible.times[-1] > now_s:
        cut = int(np.searchsorted(series.times, now_s, side="right"))
        visible = ReadingSeries(times=series.times[:cut], levels=series.levels[:cut])
    starts = _cycle_starts(visible.levels)
    refills = [_moment(visible.times[index]) for index in starts[1:]]
    cycle = visible.from_index(starts[-1]) if starts else visible
    cycle_start = _moment(cycle.times[0]) if len(cycle) else None
    base = {"computed_at": now, "cycle_started_at": cycle_start, "refills_detected": refills}
    if len(cycle) < MIN_READINGS or cycle.times[-1] - cycle.times[0] < MIN_SPAN.total_seconds():
        return Forecast(status="insufficient_data", readings_used=len(cycle), outliers_dropped=0, **base)

    days = (cycle.times - now_s) / SECONDS_PER_DAY
    levels = cycle.levels
    age = days[-1] - days
    weights = 0.5 ** (age / WEIGHT_HALF_LIFE_DAYS)

    fit = _weighted_line(days, levels, weights)
    keep = np.ones(len(days), dtype=bool)
    residuals = levels - (fit.intercept + fit.slope * days)
    mad = float(np.median(np.abs(residuals - np.median(residuals))))
    if mad > 0:
        keep = np.abs(residuals) <= OUTLIER_MADS * 1.4826 * mad
        if keep.sum() >= MIN_READINGS and not keep.all():
            fit = _weighted_line(days[keep], levels[keep], weights[keep])

    # With days measured from now, the intercept is the fitted level now.
    level_now = float(np.clip(fit.intercept, 0.0, 1.0))
    rate = -fit.slope
    rate_low = rate - BAND_Z * fit.slope_se
    rate_high = rate + BAND_Z * fit.slope_se
    common = {
        **base,
        "readings_used": int(keep.sum()),
        "outliers_dropped": int((~keep).sum()),
        "evidence_from": cycle_start,
        "evidence_to": _moment(cycle.times[-1]),
        "level_now": level_now,
        "rate_per_day": float(rate),
        "rate_per_day_low": float(rate_low),
        "rate_per_day_high": float(rate_high),
    }
    if level_now <= EMPTY_LEVEL:
        return Forecast(status="ok", empty_at=now, empty_at_early=now, empty_at_late=now, **common)
    if rate <= MIN_RATE_PER_DAY:
        return Forecast(status="not_consuming", **common)

    # The band of the fitted level now (not of a single reading), so noisy sensors do not fake an early date.
    level_sd = float(np.sqrt(fit.residual_sd**2 / fit.n_eff + fit.x_mean**2 * fit.slope_se**2))
    level_low = max(level_now - BAND_Z * level_sd, 0.0)
    level_high = min(level_now + BAND_Z * level_sd, 1.0)
    return Forecast(
        status="ok",
        empty_at=now + timedelta(days=level_now / rate),
        empty_at_early=now + timedelta(days=level_low / rate_high),
        empty_at_late=now + timedelta(days=level_high / rate_low) if rate_low > MIN_RATE_PER_DAY else None,
        **common,
    )


@dataclass(frozen=True)
class _Line:
    intercept: float
    slope: float
    slope_se: float
    residual_sd: float
    x_mean: float
    n_eff: float


def _weighted_line(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> _Line:
    total = w.sum()
    x_mean = float((w * x).sum() / total)
    y_mean = float((w * y).sum() / total)
    sxx = float((w * (x - x_mean) ** 2).sum())
    if sxx <= 0:
        return _Line(intercept=y_mean, slope=0.0, slope_se=0.0, residual_sd=0.0, x_mean=x_mean, n_eff=1.0)
    slope = float((w * (x - x_mean) * (y - y_mean)).sum() / sxx)
    intercept = y_mean - slope * x_mean
    residuals = y - (intercept + slope * x)
    # Effective sample size for weighted data (Kish), so heavy down-weighting does not fake precision...
    n_eff = total**2 / float((w**2).sum())
    dof = max(n_eff - 2.0, 1.0)
    residual_var = float((w * residuals**2).sum() / total) * n_eff / dof
    # ...and for correlated residuals: bursty use leaves long runs above or below the line, which say much less
    # than as many independent readings would (AR(1) variance inflation).
    sum_squares = float((residuals**2).sum())
    rho = float((residuals[:-1] * residuals[1:]).sum()) / sum_squares if sum_squares > 0 else 0.0
    rho = min(max(rho, 0.0), MAX_RESIDUAL_AUTOCORRELATION)
    n_eff = max(n_eff * (1 - rho) / (1 + rho), MIN_EFFECTIVE_READINGS)
    slope_se = float(np.sqrt(residual_var / (sxx / total) / n_eff))
    return _Line(
        intercept=intercept,
        slope=slope,
        slope_se=slope_se,
        residual_sd=float(np.sqrt(residual_var)),
        x_mean=x_mean,
        n_eff=n_eff,
    )

"""Depletion forecasting: pure functions of a slot's readings and "now". No I/O, no wall clock.

Levels are fractions of the slot's capacity (0 = empty, 1 = full), so one model serves ink, milk and eggs.

The model:

- refills split the history into depletion cycles (a sustained rise starts one, a one-off spike does not);
- one consumption rate runs through all of them: a weighted least-squares line with its own level per cycle
  (fixed effects) and one common slope, weighted toward recent readings. A fresh cycle therefore starts with the
  rate the slot has shown before, and a slot's first readings lean on a prior from the fleet when one is given;
- readings that stand alone against their neighbours (spikes, a bottle out of the fridge) are dropped; a drop
  that the next reading confirms is kept, because a burst of use is real;
- the spread of what will be used over the reorder horizon is the slot's own: the variance of its past use over
  windows of that length, beyond what its rate explains and beyond sensor noise, plus the uncertainty of the
  rate and of the level now;
- everything is dated from the newest reading (the evidence), so the forecast does not drift while a device is
  quiet, and a decision can be taken at the right moment between readings.
"""

from __future__ import annotations

import collections
import functools
import math
import statistics
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from replenish.constants import DEFAULT_SERVICE_LEVEL
from replenish.forecasting import compiled as compiled_code
from replenish.forecasting.absence import Absences
from replenish.forecasting.compiled import compiled, small_median
from replenish.forecasting.weekly import (
    MIN_RATE_PER_DAY,
    SECONDS_PER_DAY,
    absence_arrays,
    after_use_days_of,
    use_days_of,
    weekly_profile,
)

# A rise of at least this fraction of capacity, held by the next reading, is a refill.
REFILL_MIN_RISE = 0.15
REFILL_CONFIRMATIONS = 1
# The old level is the median of up to this many readings before a rise, those of them taken within
# REFILL_BASELINE_DAYS of the newest: for a frequent reporter, enough readings that a short dip cannot drag it
# down and fake a refill when the level comes back; for a sparse one, readings recent enough that the use since the
# oldest of them does not hide a partial refill after it (0.9, 0.6, 0.1, then 0.6 is a refill).
REFILL_BASELINE_READINGS = 7
REFILL_BASELINE_DAYS = 1.0
# After a silence longer than this, a rise is judged against what the slot's rate leaves of the old level (see
# _with_refills_after_silences), and needs to be at least this far above the old level itself.
SILENCE_REFILL_GAP_DAYS = 2.0
SILENCE_REFILL_MIN_RISE = 0.05
# Recent readings count more: a reading this old weighs half as much as the newest.
WEIGHT_HALF_LIFE_DAYS = 4.0
# The spread of use remembers longer than the rate: a slot that had a burst of use two weeks ago may have another
# one, while its rate should follow what it uses now.
SPREAD_HALF_LIFE_DAYS = 14.0
# A fit that forgets faster, and how many of its standard errors its rate must exceed the main one's by to win.
RECENT_HALF_LIFE_DAYS = 1.5
RECENT_RATE_SES = 1.0
# Less than this much of the slot's own history (all cycles together) says too little about the rate to act on,
# unless the fleet lends a prior.
MIN_SPAN = timedelta(days=1)
# At or below this the slot is empty for practical purposes, whatever its recent slope.
EMPTY_LEVEL = 0.02
# A fall to empty from at least DIP_FROM is a dip (an item out of the fridge, a sensor glitch) unless it lasts.
DIP_FROM = 0.15
DIP_MAX = timedelta(hours=12)
DIP_MAX_READINGS = 3  # a run that ended after at most this many readings is a dip, however far apart they were
# Dates further out than this are "not in the foreseeable future" (and beyond what datetime can hold).
MAX_FORECAST_DAYS = 3650.0
DEFAULT_HORIZON_DAYS = 4.0
# The upper end of the band: the 95% quantile of the empty time.
LATE_QUANTILE = 0.95
# A reading further than this from its neighbours' median, in robust standard deviations, is an outlier...
OUTLIER_SDS = 4.0
# ...and never for less than this (quantized levels have a MAD of zero).
OUTLIER_MIN_DEVIATION = 0.06
MAX_RESIDUAL_AUTOCORRELATION = 0.9
# How many horizon-long windows of the slot's own use a default spread is worth, and that default as a multiple of
# the rate: the variance of a day's use is about rate x this (a typical burst of use, as a fraction of capacity).
PRIOR_SPREAD_WINDOWS = 2.0
MIN_USE_WINDOW_DAYS = 1 / 24
# The skewness of a slot's use is trusted as if this many windows of its own stood against zero; at most this.
SKEW_PRIOR_WINDOWS = 5.0
MAX_SKEWNESS = 1.8  # beyond it the expansion is no longer monotone at the 95% quantile
MIN_LEVEL_SD = 0.005
# A slot lends its rate to the fleet's prior once it has this much evidence; a prior needs this many slots.
FLEET_MIN_EVIDENCE = timedelta(days=7)
FLEET_MIN_SLOTS = 3
SHARED_PRIOR_LENDERS = 50  # see prior_is_shared
# Steps devices commonly report levels in, coarsest first.
QUANTIZATION_STEPS = (0.25, 0.2, 0.1, 0.05, 0.02)
QUANTIZATION_SAMPLE = 64  # readings: enough to tell
PRIOR_BURST_SIZE = 0.01


@dataclass(frozen=True)
class LevelReading:
    ts: datetime
    level: float  # fraction of capacity


@dataclass(frozen=True)
class ReadingSeries:
    """Readings as arrays: epoch seconds (ascending) and levels (fractions of capacity). Cheap to slice."""

    times: np.ndarray
    levels: np.ndarray

    def __post_init__(self) -> None:
        # The compiled kernels take contiguous float64 arrays (anything else would be compiled again, for seconds).
        object.__setattr__(self, "times", np.ascontiguousarray(self.times, dtype=float))
        object.__setattr__(self, "levels", np.ascontiguousarray(self.levels, dtype=float))
        if self.times.shape != self.levels.shape or self.times.ndim != 1:  # compiled code does not check bounds
            raise ValueError(f"times {self.times.shape} and levels {self.levels.shape} must be 1-D, of one length")

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
class RatePrior:
    """What the fleet (slots of the same kind and name) says before a slot's own readings do."""

    rate_per_day: float
    # How far the fleet's rates spread around it (a standard deviation); None: half the rate.
    rate_sd: float | None = None
    # How many days of the slot's own readings the prior is worth.
    weight_days: float = 2.0

    @property
    def rate_variance(self) -> float:
        spread = self.rate_per_day / 2 if self.rate_sd is None else self.rate_sd
        return spread**2


@dataclass(frozen=True)
class Forecast:
    status: str  # "ok", "insufficient_data", "not_consuming"
    computed_at: datetime
    cycle_started_at: datetime | None
    readings_used: int  # readings of the current cycle that the fit kept
    outliers_dropped: int
    evidence_from: datetime | None = None  # the oldest reading that counted (earlier cycles lend their rate)
    evidence_to: datetime | None = None  # the newest reading: every estimate below is dated from it
    cycles_used: int = 0
    # The largest fall between two consecutive readings of the current cycle, as reported: a "refill" that fell
    # straight back is a sensor glitch.
    cycle_largest_drop: float | None = None
    level_now: float | None = None
    rate_per_day: float | None = None
    rate_per_day_low: float | None = None
    rate_per_day_high: float | None = None
    service_level: float = DEFAULT_SERVICE_LEVEL
    horizon_days: float = DEFAULT_HORIZON_DAYS
    empty_at: datetime | None = None  # median
    # The (1 - service_level) quantile: by then the slot is empty with that probability. Orders plan against it.
    empty_at_early: datetime | None = None
    empty_at_late: datetime | None = None  # 95% quantile; None when it may never empty
    prior_rate_per_day: float | None = None
    # Use per weekday (Monday first, UTC) relative to an average day, when the slot's readings show a rhythm.
    weekly_profile: list[float] | None = None
    refills_detected: list[datetime] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name in _FIELD_NAMES:  # not dataclasses.asdict: its deep copy is most of the cost
            value = getattr(self, name)
            data[name] = value.isoformat() if isinstance(value, datetime) else value
        data["refills_detected"] = [moment.isoformat() for moment in self.refills_detected]
        data["weekly_profile"] = None if self.weekly_profile is None else list(self.weekly_profile)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Forecast | None:
        """A stored forecast back, or None when it was stored by a version with fields this one does not know, or
        without one it needs. Fields added since (they have defaults) take their defaults."""
        names = {item.name: item for item in fields(cls)}
        required = {name for name, item in names.items() if item.default is MISSING and item.default_factory is MISSING}
        if not set(data) <= set(names) or not required <= set(data):
            return None
        values: dict[str, Any] = {
            key: datetime.fromisoformat(value) if isinstance(value, str) and key in _DATETIME_FIELDS else value
            for key, value in data.items()
        }
        if "refills_detected" in data:
            values["refills_detected"] = [datetime.fromisoformat(moment) for moment in data["refills_detected"]]
        return cls(**values)


_FIELD_NAMES = tuple(item.name for item in fields(Forecast))
_DATETIME_FIELDS = frozenset(
    {"computed_at", "cycle_started_at", "evidence_from", "evidence_to", "empty_at", "empty_at_early", "empty_at_late"}
)


def split_cycles(readings: list[LevelReading] | ReadingSeries) -> list[int]:
    """Indexes at which a new depletion cycle starts (always includes 0 for a non-empty list).

    A rise of at least REFILL_MIN_RISE over the old level (see REFILL_BASELINE_READINGS) is a refill when the next
    REFILL_CONFIRMATIONS readings stay that far above the old level too: a one-reading glitch is not a refill,
    and consumption right after a refill does not hide it. A rise not yet confirmed is not a refill yet (the
    forecast says refill_pending). Two glitches in a row do pass for a refill: waiting for a second confirming
    reading costs sparse reporters a whole reporting interval on every refill, which matters more. After a silence of
    more than SILENCE_REFILL_GAP_DAYS, the rise is judged against what the slot's rate leaves of the old level
    (see _with_refills_after_silences).
    """
    series = readings if isinstance(readings, ReadingSeries) else ReadingSeries.of(readings)
    starts = _cycle_start_indexes(series.times, series.levels)
    indexes: list[int] = _refills_after_silences(series.times, series.levels, starts, *absence_arrays(None)).tolist()
    return indexes


def _cycle_starts(times: np.ndarray, levels: np.ndarray) -> list[int]:
    indexes: list[int] = _cycle_start_indexes(times, levels).tolist()
    return indexes


@compiled
def _cycle_start_indexes(times: np.ndarray, levels: np.ndarray) -> np.ndarray:
    count = len(levels)
    starts = np.zeros(max(count, 1), dtype=np.int64)
    if count == 0:
        return starts[:0]
    found = 1
    recent = np.empty(REFILL_BASELINE_READINGS)
    for index in range(1, count - REFILL_CONFIRMATIONS):
        # The old level: the readings before the rise, within this cycle and REFILL_BASELINE_DAYS of the newest.
        since = times[index - 1] - REFILL_BASELINE_DAYS * SECONDS_PER_DAY
        used = 0
        for before in range(max(starts[found - 1], index - REFILL_BASELINE_READINGS), index):
            if times[before] >= since:
                recent[used] = levels[before]
                used += 1
        threshold = small_median(recent, used) + REFILL_MIN_RISE
        held = True
        for ahead in range(index, index + 1 + REFILL_CONFIRMATIONS):
            held = held and levels[ahead] >= threshold
        if held:
            starts[found] = index
            found += 1
    return starts[:found].copy()


@compiled
def _refills_after_silences(
    times: np.ndarray, levels: np.ndarray, starts: np.ndarray, absence_starts: np.ndarray, absence_ends: np.ndarray
) -> np.ndarray:
    """The cycle starts, plus refills made while the device was silent.

    After days without a reading the old level says little: the slot went on being used. A reading after such a
    silence that stands REFILL_MIN_RISE above what the slot's own rate (fitted on the readings before the silence,
    without the fleet's prior, which changes from one evaluation to the next) leaves of the level at the silence's
    start, and at least SILENCE_REFILL_MIN_RISE above that level itself, is a refill when the next reading holds
    it: the slot ran low and was refilled (often partly) while the device was offline. The second condition keeps
    a device that was switched off, and so used nothing, from faking one; days of the customer's absences are not
    days of use.
    """
    recent = np.empty(REFILL_BASELINE_READINGS)
    for index in _silence_ends(times):  # in time order, each found refill a cycle start for the silences after it
        if index in starts:
            continue
        earlier = starts[starts < index]
        cycle_of = _cycle_numbers(index, earlier)
        days = (times[:index] - times[index - 1]) / SECONDS_PER_DAY
        if days.max() - days.min() < _MIN_SPAN_DAYS:
            continue
        weights = 0.5 ** (-days / WEIGHT_HALF_LIFE_DAYS)
        fitted, slope, _, _, _, _ = _fit_arrays(days, levels[:index], weights, cycle_of, len(earlier), np.nan, 0.0, 0.0)
        if not fitted or -slope <= MIN_RATE_PER_DAY:
            continue
        # The level before the silence as read (the median of the cycle's readings within a day before it), not
        # the fitted one: a line that lags below a level that held would make the bar too low.
        since = times[index - 1] - REFILL_BASELINE_DAYS * SECONDS_PER_DAY
        used = 0
        for before in range(max(earlier[-1], index - REFILL_BASELINE_READINGS), index):
            if times[before] >= since:
                recent[used] = levels[before]
                used += 1
        old = small_median(recent, used)
        silence_days = use_days_of(times[index - 1 : index + 1], np.ones(7), True, absence_starts, absence_ends)
        silence = silence_days[1] - silence_days[0]
        threshold = max(max(old + slope * silence, 0.0) + REFILL_MIN_RISE, old + SILENCE_REFILL_MIN_RISE)
        held = True
        for ahead in range(index, index + 1 + REFILL_CONFIRMATIONS):
            held = held and levels[ahead] >= threshold
        if held:
            starts = _with_start(starts, index)
    return starts


@compiled
def _with_start(starts: np.ndarray, index: int) -> np.ndarray:
    """The cycle starts with one more, in order."""
    result = np.empty(len(starts) + 1, dtype=np.int64)
    position = 0
    while position < len(starts) and starts[position] < index:
        result[position] = starts[position]
        position += 1
    result[position] = index
    result[position + 1 :] = starts[position:]
    return result


_MIN_SPAN_DAYS = MIN_SPAN.total_seconds() / SECONDS_PER_DAY


@compiled
def _silence_ends(times: np.ndarray) -> np.ndarray:
    """The readings that end a silence of more than SILENCE_REFILL_GAP_DAYS and can be confirmed by a next one."""
    ends = np.empty(len(times), dtype=np.int64)
    found = 0
    for index in range(1, len(times) - REFILL_CONFIRMATIONS):
        if times[index] - times[index - 1] > SILENCE_REFILL_GAP_DAYS * SECONDS_PER_DAY:
            ends[found] = index
            found += 1
    return ends[:found]


@compiled
def _cycle_numbers(count: int, starts: np.ndarray) -> np.ndarray:
    """Each reading's cycle (0, 1, ...) from the indexes at which cycles start (the first one at 0)."""
    cycle_of = np.zeros(count, dtype=np.intp)
    for number in range(1, len(starts)):
        cycle_of[starts[number] :] = number
    return cycle_of


def lends_to_fleet(forecast: Forecast) -> bool:
    """Whether a slot's forecast rests on enough of its own readings to be part of its fleet's prior."""
    return lends(forecast.status, forecast.rate_per_day, forecast.evidence_from, forecast.evidence_to)


def lends(
    status: str, rate_per_day: float | None, evidence_from: datetime | None, evidence_to: datetime | None
) -> bool:
    """lends_to_fleet from a forecast's fields, for a reader that has only those."""
    return (
        status == "ok"
        and rate_per_day is not None
        and evidence_from is not None
        and evidence_to is not None
        and evidence_to - evidence_from >= FLEET_MIN_EVIDENCE
    )


def compile_ahead() -> None:
    """Compile the model's loops now, or load them from numba's disk cache (about a second), so that the first
    forecast a process makes is not late: the evaluator calls this before its first transaction."""
    compiled_code.load()


@compiled_code.warm_up
def _forecast_made_up_slots() -> None:
    """Forecasts a few made-up slots, with and without a prior and an absence: every kernel with the argument
    types it gets in use."""
    hours = np.arange(0.0, 35 * 24.0)
    times = 1_767_225_600.0 + hours * 3600.0  # 2026-01-01, a Thursday
    weekday = ((times / SECONDS_PER_DAY + 3) % 7) < 5
    used = np.cumsum(np.where(weekday, 0.004, 0.0005))
    levels = np.clip(1.0 - (used % 0.8), 0.0, 1.0)
    levels[100:102] = 0.0  # a dip
    keep = (hours < 400) | (hours > 470)  # a silence of about three days
    series = ReadingSeries(times=times[keep], levels=levels[keep])
    now = _moment(float(series.times[-1]) + 3600.0)
    away = Absences.of([(now - timedelta(days=9), now - timedelta(days=6))])
    for prior, absences in ((None, None), (RatePrior(rate_per_day=0.05), away)):
        forecast_depletion(series, now=now, prior=prior, absences=absences)
    fleet_prior([0.01, 0.02, 0.03])


def prior_is_shared(lenders: int) -> bool:
    """Whether a group of this many lenders gives every slot the same prior, its whole group's (computed once): one
    slot's own rate moves the group's median by at most one place among them. A smaller group's prior leaves out the
    asking slot's own rate. The live evaluator and the backtest both follow it."""
    return lenders >= SHARED_PRIOR_LENDERS


def fleet_prior(rates: Sequence[float] | np.ndarray) -> RatePrior | None:
    """The prior a slot borrows from its fleet (slots of the same kind and name): their median rate, with their
    robust spread."""
    if len(rates) < FLEET_MIN_SLOTS:
        return None
    median, deviation = _median_and_deviation(np.asarray(rates, dtype=float))
    return RatePrior(rate_per_day=median, rate_sd=1.4826 * deviation)


@compiled
def _median_and_deviation(values: np.ndarray) -> tuple[float, float]:
    """The median and the median absolute deviation from it."""
    median = np.median(values)
    return median, np.median(np.abs(values - median))


def forecast_depletion(
    readings: list[LevelReading] | ReadingSeries,
    *,
    now: datetime,
    service_level: float = DEFAULT_SERVICE_LEVEL,
    horizon_days: float = DEFAULT_HORIZON_DAYS,
    prior: RatePrior | None = None,
    absences: Absences | None = None,
) -> Forecast:
    """Forecast when the slot runs empty, from readings sorted by time. Readings after ``now`` are ignored.

    ``horizon_days`` is how far ahead the caller plans (lead time plus margin): the spread of use is measured over
    windows that long. ``empty_at_early`` is the (1 - ``service_level``) quantile of the empty time. During
    ``absences`` nothing is used: their readings are left out, and their days add to the time until empty.
    """
    series = readings if isinstance(readings, ReadingSeries) else ReadingSeries.of(readings)
    absence_starts, absence_ends = absence_arrays(absences)
    result = _forecast(
        series.times,
        series.levels,
        now.timestamp(),
        _z(service_level),
        _z(LATE_QUANTILE),
        float(horizon_days),
        np.nan if prior is None else float(prior.rate_per_day),
        0.0 if prior is None else float(prior.weight_days),
        0.0 if prior is None else float(prior.rate_variance),
        absence_starts,
        absence_ends,
    )
    base: dict[str, Any] = {
        "computed_at": now,
        "cycle_started_at": _moment(result.cycle_start) if math.isfinite(result.cycle_start) else None,
        "refills_detected": [_moment(moment) for moment in result.refills.tolist()],
        "service_level": service_level,
        "horizon_days": horizon_days,
        "prior_rate_per_day": prior.rate_per_day if prior else None,
    }
    if result.outcome == _NO_READINGS:
        return Forecast(status="insufficient_data", readings_used=0, outliers_dropped=0, **base)
    common = {
        **base,
        "readings_used": result.readings_used,
        "outliers_dropped": result.outliers_dropped,
        "evidence_from": _moment(result.evidence_from) if math.isfinite(result.evidence_from) else None,
        "evidence_to": _moment(result.evidence_to),
        "cycles_used": result.cycles_used,
        "cycle_largest_drop": result.cycle_largest_drop,
    }
    if result.outcome == _TOO_LITTLE:
        return Forecast(status="insufficient_data", **common)
    rate_z = _z(LATE_QUANTILE)
    common |= {
        "weekly_profile": [round(value, 3) for value in result.profile.tolist()] if len(result.profile) else None,
        "level_now": result.level_now,
        "rate_per_day": result.rate,
        "rate_per_day_low": result.rate - rate_z * result.rate_se,
        "rate_per_day_high": result.rate + rate_z * result.rate_se,
    }
    return Forecast(
        status=_STATUSES[result.outcome],
        **common,
        empty_at=_moment(result.empty) if math.isfinite(result.empty) else None,
        empty_at_early=_moment(result.early) if math.isfinite(result.early) else None,
        empty_at_late=_moment(result.late) if math.isfinite(result.late) else None,
    )


# What _forecast came to: an outcome, and moments in epoch seconds (NaN where unknown or never).
_NO_READINGS, _TOO_LITTLE, _REFILL_PENDING, _NOT_CONSUMING, _OK = range(5)
_STATUSES = {_REFILL_PENDING: "refill_pending", _NOT_CONSUMING: "not_consuming", _OK: "ok"}
_Forecasted = collections.namedtuple(
    "_Forecasted",
    "outcome refills cycle_start evidence_from evidence_to readings_used outliers_dropped cycles_used"
    " cycle_largest_drop level_now rate rate_se profile empty early late",
)


@compiled
def _forecast(
    times: np.ndarray,
    levels: np.ndarray,
    now_s: float,
    early_z: float,
    late_z: float,
    horizon_days: float,
    prior_rate: float,  # NaN: no prior
    prior_weight_days: float,
    prior_rate_variance: float,
    absence_starts: np.ndarray,
    absence_ends: np.ndarray,
) -> _Forecasted:
    """forecast_depletion's work, on epoch seconds (the weekly profile empty when it is flat)."""
    count = len(times)
    while count and times[count - 1] > now_s:  # readings after now are ignored
        count -= 1
    times, levels = times[:count], levels[:count]
    absent = len(absence_starts) > 0
    if absent:
        present = np.ones(count, dtype=np.bool_)
        for index in range(count):
            for absence in range(len(absence_starts)):
                if absence_starts[absence] <= times[index] < absence_ends[absence]:
                    present[index] = False
        times, levels = times[present], levels[present]
    keep_readings = _not_dips(times, levels)
    times, levels = times[keep_readings], levels[keep_readings]
    count = len(times)
    starts = _refills_after_silences(times, levels, _cycle_start_indexes(times, levels), absence_starts, absence_ends)
    refills = times[starts[1:]]
    nothing = np.nan
    if count == 0:
        return _Forecasted(
            _NO_READINGS, refills, nothing, nothing, nothing, 0, 0, 0, nothing, nothing, nothing, nothing,
            np.empty(0), nothing, nothing, nothing,
        )  # fmt: skip
    cycle_start = times[starts[-1]]
    last_s = times[-1]
    # Everything is dated from the newest reading: days of use from each reading to it (<= 0).
    profile, flat = np.ones(7), True
    days = _days_before(times, last_s, profile, flat, absence_starts, absence_ends)
    cycle_of = _cycle_numbers(count, starts)
    cycles = len(starts)
    current = starts[-1]  # the current cycle's readings are those from here on
    weights = 0.5 ** (-days / WEIGHT_HALF_LIFE_DAYS)

    fitted, slope, slope_se, intercepts, level_variance, _ = _fit_arrays(
        days, levels, weights, cycle_of, cycles, prior_rate, prior_weight_days, prior_rate_variance
    )
    keep = np.ones(count, dtype=np.bool_)
    if fitted:
        keep = _not_outliers(levels - (intercepts[cycle_of] + slope * days), cycle_of)
        # Use follows the week (offices print on weekdays, homes on weekends): the line is fitted against
        # "effective days", each weekday counting as much as the slot uses on it, so a Friday forecast knows
        # that the weekend is coming.
        # Pairs of readings across an absence say nothing about which days the use fell on.
        segment = cycle_of
        if absent:
            segment = cycle_of * (len(absence_starts) + 1) + np.searchsorted(absence_starts, times, side="right")
        weekly = weekly_profile(times[keep], levels[keep], segment[keep])
        if len(weekly):
            profile, flat = weekly, False
            days = _days_before(times, last_s, profile, flat, absence_starts, absence_ends)
        current_kept = keep[current:].any()
        if (not keep.all() or not flat) and current_kept:
            fitted, slope, slope_se, intercepts, level_variance, _ = _fit_arrays(
                days[keep],
                levels[keep],
                weights[keep],
                cycle_of[keep],
                cycles,
                prior_rate,
                prior_weight_days,
                prior_rate_variance,
            )
        if fitted and current_kept:
            # Use that has just sped up (a regime change, a busy spell) shows first in the newest readings: when a
            # fit that forgets fast sees a clearly higher rate, it is the one to plan with.
            recent_weights = 0.5 ** (-days[keep] / RECENT_HALF_LIFE_DAYS)
            recent = _fit_arrays(
                days[keep],
                levels[keep],
                recent_weights,
                cycle_of[keep],
                cycles,
                prior_rate,
                prior_weight_days,
                prior_rate_variance,
            )
            if recent[0] and -recent[1] - RECENT_RATE_SES * recent[2] > -slope:
                fitted, slope, slope_se, intercepts, level_variance, _ = recent
    kept_days, kept_levels, kept_cycles = days[keep], levels[keep], cycle_of[keep]
    readings_used = int(keep[current:].sum())
    current_levels = levels[current:]
    outliers_dropped = len(current_levels) - readings_used
    evidence_from = nothing
    cycles_used = 0
    span = 0.0
    if len(kept_days):
        evidence_from = times[np.argmax(keep)]
        cycles_used = int(np.count_nonzero(np.diff(kept_cycles))) + 1  # cycle_of ascends
        span = kept_days[-1] - kept_days[0]  # days ascend
    cycle_largest_drop = 0.0
    if len(current_levels) > 1:
        cycle_largest_drop = max(-np.diff(current_levels).min(), 0.0)
    outcome = _OK
    level_now = rate = empty_at = early_at = late_at = nothing
    if not fitted or readings_used == 0 or (np.isnan(prior_rate) and span < _MIN_SPAN_DAYS):
        outcome = _TOO_LITTLE
    else:
        level_then = min(max(intercepts[cycles - 1], 0.0), 1.0)
        rate = -slope
        since = _days_before(np.array([now_s]), last_s, profile, flat, absence_starts, absence_ends)[0]
        level_now = min(max(level_then - max(rate, 0.0) * since, 0.0), 1.0)
        if levels[-1] >= level_then + REFILL_MIN_RISE:
            # The newest reading is far above the line: a refill that the next readings will confirm, or a spike
            # that they will not. Either way nothing should be ordered on the old level now.
            outcome = _REFILL_PENDING
        elif level_then <= EMPTY_LEVEL:
            empty_at = early_at = late_at = last_s
        elif rate <= MIN_RATE_PER_DAY:
            outcome = _NOT_CONSUMING
        else:
            empty_at, early_at, late_at = _empty_moments(
                kept_days,
                kept_levels,
                kept_cycles,
                level_then,
                rate,
                slope_se,
                level_variance,
                horizon_days,
                early_z,
                late_z,
                last_s,
                profile,
                flat,
                absence_starts,
                absence_ends,
            )
    shown_profile = np.empty(0) if flat else profile
    return _Forecasted(
        outcome, refills, cycle_start, evidence_from, last_s, readings_used, outliers_dropped, cycles_used,
        cycle_largest_drop, level_now, rate, slope_se, shown_profile, empty_at, early_at, late_at,
    )  # fmt: skip


@compiled
def _days_before(
    moments: np.ndarray,
    reference: float,
    profile: np.ndarray,
    flat: bool,
    absence_starts: np.ndarray,
    absence_ends: np.ndarray,
) -> np.ndarray:
    """Days of use from the reference to each moment (negative for a moment before it)."""
    if flat and len(absence_starts) == 0:
        return (moments - reference) / SECONDS_PER_DAY
    days = use_days_of(np.append(moments, reference), profile, flat, absence_starts, absence_ends)
    relative: np.ndarray = days[:-1] - days[-1]
    return relative


@compiled
def _empty_moments(
    days: np.ndarray,
    levels: np.ndarray,
    cycle_of: np.ndarray,
    level: float,
    rate: float,
    rate_se: float,
    level_variance: float,
    horizon_days: float,
    early_z: float,
    late_z: float,
    last_s: float,
    profile: np.ndarray,
    flat: bool,
    absence_starts: np.ndarray,
    absence_ends: np.ndarray,
) -> tuple[float, float, float]:
    """When a slot that is being used runs empty: the median, the early and the late quantile (NaN: it may never)."""
    use_variance_per_day, use_skewness = _use_variance_per_day(
        days, levels, 0.5 ** (-days / SPREAD_HALF_LIFE_DAYS), cycle_of, rate, horizon_days
    )
    rate_variance = rate_se**2
    # The use over the horizon is skewed; the quantiles get the Cornish-Fisher correction for the share of the
    # spread that is use.
    use = use_variance_per_day * horizon_days
    total = use + rate_variance * horizon_days**2 + level_variance
    skewness = use_skewness * (use / total if total > 0 else 0.0) ** 1.5
    spread = (level, rate, use_variance_per_day, rate_variance, level_variance)
    early = _days_until(spread, _cornish_fisher(early_z, skewness))
    late = _days_until(spread, _cornish_fisher(-late_z, skewness))
    moments = np.array([level / rate, early, late])
    for which in range(3):
        if which == 2 and not (np.isfinite(late) and late < MAX_FORECAST_DAYS):
            moments[which] = np.nan
        else:
            days_of_use = min(moments[which], MAX_FORECAST_DAYS)
            moments[which] = after_use_days_of(last_s, days_of_use, profile, flat, absence_starts, absence_ends)
    return moments[0], moments[1], moments[2]


def shows_empty(series: ReadingSeries) -> bool:
    """Whether the readings show the slot empty now: the newest is, and the run of empty readings it ends is no dip
    (_not_dips: it came after a gradual fall, or has lasted DIP_MAX), so the model plans with it too."""
    if not len(series) or series.levels[-1] > EMPTY_LEVEL:
        return False
    return bool(_not_dips(series.times, series.levels)[-1])


_DIP_MAX_SECONDS = DIP_MAX.total_seconds()


@compiled
def _not_dips(times: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """False for a reading of a dip: a run of empty readings straight after a level well above empty.

    A bottle taken out of the fridge, a cartridge being swapped, a sensor reading nothing: the level falls off a
    cliff to zero and comes back. Such a run is dropped if it lasted less than DIP_MAX or was at most
    DIP_MAX_READINGS long, and a run still going on at the end is held back until it has lasted DIP_MAX; a slot
    that really emptied stays empty and is believed then.
    """
    count = len(levels)
    keep = np.ones(count, dtype=np.bool_)
    index = 1
    while index < count:
        if not (levels[index] <= EMPTY_LEVEL and levels[index - 1] >= DIP_FROM):
            index += 1
            continue
        end = index  # the first reading after the run of empty ones, or count
        while end < count and levels[end] <= EMPTY_LEVEL:
            end += 1
        brief = times[end - 1] - times[index] < _DIP_MAX_SECONDS
        # Only a short run is a dip: a long one is a slot that was empty, whatever spike came before or after it.
        if brief or (end < count and end - index <= DIP_MAX_READINGS):
            keep[index:end] = False
        index = end
    return keep


@compiled
def _cornish_fisher(z: float, skewness: float) -> float:
    """The normal quantile z moved for a skewed distribution (first-order Cornish-Fisher expansion).

    An early quantile (z >= 0) is never moved toward the median: for z < 1 the expansion would move it across.
    The late one (z = -1.645) moves toward the median for skewed use, as it should, and stays monotone while the
    skewness is at most MAX_SKEWNESS.
    """
    moved = z + (z * z - 1) * skewness / 6
    return max(moved, z) if z >= 0 else moved


@functools.lru_cache(maxsize=64)
def _z(probability: float) -> float:
    return statistics.NormalDist().inv_cdf(probability)


@compiled
def _fit_arrays(
    days: np.ndarray,
    levels: np.ndarray,
    weights: np.ndarray,
    cycle_of: np.ndarray,
    cycles: int,
    prior_rate: float,  # NaN: no prior
    prior_weight_days: float,
    prior_rate_variance: float,
) -> tuple[bool, float, float, np.ndarray, float, float]:
    count = len(days)
    total = np.zeros(cycles)
    day_mean = np.zeros(cycles)
    level_mean = np.zeros(cycles)
    for index in range(count):
        cycle, weight = cycle_of[index], weights[index]
        total[cycle] += weight
        day_mean[cycle] += weight * days[index]
        level_mean[cycle] += weight * levels[index]
    if not total[cycles - 1] > 0:
        return False, 0.0, 0.0, np.zeros(cycles), 0.0, 0.0
    present = 0
    for cycle in range(cycles):
        if total[cycle] > 0:
            present += 1
            day_mean[cycle] /= total[cycle]
            level_mean[cycle] /= total[cycle]
    sxx = sxy = weight_sum = weight_squares = 0.0
    for index in range(count):
        cycle, weight = cycle_of[index], weights[index]
        dx = days[index] - day_mean[cycle]
        dy = levels[index] - level_mean[cycle]
        sxx += weight * dx * dx
        sxy += weight * dx * dy
        weight_sum += weight
        weight_squares += weight * weight
    # A prior on the slope is worth as much as weight_days of readings as dense as the slot's own.
    prior_sxx = 0.0
    if not np.isnan(prior_rate):
        density = weight_sum / max(days.max() - days.min(), 1.0)
        prior_sxx = density * prior_weight_days**3 / 12.0
        sxy -= prior_sxx * prior_rate
    if sxx + prior_sxx <= 0:
        return False, 0.0, 0.0, np.zeros(cycles), 0.0, 0.0
    slope = sxy / (sxx + prior_sxx)
    intercepts = level_mean - slope * day_mean
    weighted_squares = squares = lagged = previous = 0.0
    current_sum = current_squares = 0.0
    for index in range(count):
        cycle, weight = cycle_of[index], weights[index]
        residual = (levels[index] - level_mean[cycle]) - slope * (days[index] - day_mean[cycle])
        weighted_squares += weight * residual * residual
        squares += residual * residual
        if index:
            lagged += previous * residual
        previous = residual
        if cycle == cycles - 1:
            current_sum += weight
            current_squares += weight * weight
    # Kish's effective sample size for weighted data, then fewer again for correlated residuals: bursty use leaves
    # long runs above or below the line, which say much less than as many independent readings would.
    n_eff = weight_sum**2 / weight_squares
    dof = max(n_eff - present - 1.0, 1.0)
    # Never less than a good sensor's noise: a fit through one or two readings is not exact.
    residual_var = max(weighted_squares / weight_sum * n_eff / dof, MIN_LEVEL_SD**2)
    rho = min(max(lagged / squares if squares > 0 else 0.0, 0.0), MAX_RESIDUAL_AUTOCORRELATION)
    inflation = (1 + rho) / (1 - rho)
    slope_var = residual_var * inflation / (sxx + prior_sxx) * (weight_sum / n_eff)
    if not np.isnan(prior_rate):
        # The share of the slope that is the fleet's carries the fleet's own spread.
        slope_var += (prior_sxx / (sxx + prior_sxx)) ** 2 * prior_rate_variance
    n_current = max(current_sum**2 / current_squares / inflation, 1.0)
    level_variance = residual_var / n_current + day_mean[cycles - 1] ** 2 * slope_var
    return True, slope, np.sqrt(slope_var), intercepts, level_variance, np.sqrt(residual_var)


@compiled
def _not_outliers(residuals: np.ndarray, cycle_of: np.ndarray) -> np.ndarray:
    """False for a reading that stands alone: far from the median of its two neighbours on each side (in its cycle).

    The newest reading has neighbours on one side only, so a sudden drop there is held back until the next reading
    confirms it, and a lone zero at the end cannot order anything.
    """
    count = len(residuals)
    keep = np.ones(count, dtype=np.bool_)
    if count < 3:
        return keep
    deviation = np.empty(count)
    neighbours = np.empty(count, dtype=np.int64)
    window = np.empty(5)
    for index in range(count):
        size = 0
        for other in range(max(index - 2, 0), min(index + 3, count)):
            if cycle_of[other] == cycle_of[index]:
                window[size] = residuals[other]
                size += 1
        neighbours[index] = size
        deviation[index] = residuals[index] - small_median(window, size)
    bound = max(OUTLIER_SDS * 1.4826 * np.median(np.abs(deviation)), OUTLIER_MIN_DEVIATION)
    for index in range(count):
        # A reading with fewer than three in its neighbourhood (a two-reading cycle) cannot stand alone against it.
        keep[index] = abs(deviation[index]) <= bound or neighbours[index] < 3
    return keep


@compiled
def _use_variance_per_day(
    days: np.ndarray, levels: np.ndarray, weights: np.ndarray, cycle_of: np.ndarray, rate: float, horizon_days: float
) -> tuple[float, float]:
    """How much the slot's use varies around rate x time, per day, and how skewed it is: (variance, skewness).

    From every window of the slot's own history between two readings of one cycle at least half a horizon apart
    (and less than a horizon), less the sensor noise at both ends, shrunk toward a default for a slot with little
    history. Bursty use is skewed: a few windows use far more than the rate says, none far less than nothing.
    """
    window = max(horizon_days / 2, MIN_USE_WINDOW_DAYS)  # shorter than the horizon: short cycles have windows too
    count = len(days)
    # Each window: from a reading to the first one at least `window` later, in the same cycle, at most twice that.
    starts = np.empty(count, dtype=np.int64)
    ends = np.empty(count, dtype=np.int64)
    windows_found = 0
    end = 0
    for start in range(count):
        while end < count and days[end] < days[start] + window:
            end += 1
        if end == count:
            break
        if cycle_of[start] == cycle_of[end] and days[end] - days[start] <= 2 * window:
            starts[windows_found] = start
            ends[windows_found] = end
            windows_found += 1
    default = rate * PRIOR_BURST_SIZE
    if windows_found == 0:
        return default, 0.0
    starts, ends = starts[:windows_found], ends[:windows_found]
    gap = days[ends] - days[starts]
    surprise = (levels[starts] - levels[ends]) - rate * gap
    noise_var = _noise_variance(days, levels, cycle_of, rate)
    window_weights = weights[starts]
    weight_sum = window_weights.sum()
    observed = (window_weights * (surprise**2 - 2 * noise_var) / gap).sum() / weight_sum
    windows = (days[starts[-1]] - days[starts[0]]) / window + 1.0
    estimate = max(observed, 0.0)
    variance = (windows * estimate + PRIOR_SPREAD_WINDOWS * default) / (windows + PRIOR_SPREAD_WINDOWS)
    scaled = surprise / np.sqrt(gap)
    centred = scaled - (window_weights * scaled).sum() / weight_sum
    second = (window_weights * centred**2).sum() / weight_sum
    third = (window_weights * centred**3).sum() / weight_sum
    # Windows that all used alike (one window, say) have no skewness: a spread at rounding-error level is none.
    skewness = third / second**1.5 if second > 1e-12 * (window_weights * scaled**2).sum() / weight_sum else 0.0
    # A sample's skewness is noisy: trusted in proportion to how many windows it rests on.
    skewness *= windows / (windows + SKEW_PRIOR_WINDOWS)
    return variance, min(max(skewness, 0.0), MAX_SKEWNESS)


@compiled
def _noise_variance(days: np.ndarray, levels: np.ndarray, cycle_of: np.ndarray, rate: float) -> float:
    """Sensor noise (and quantization) of one reading, from differences of consecutive readings of one cycle."""
    quantization = _quantization_step(levels) ** 2 / 12.0  # the variance of a rounding error
    squares = np.empty(max(len(days) - 1, 0))
    found = 0
    for index in range(1, len(days)):
        if cycle_of[index] == cycle_of[index - 1]:
            step = (levels[index] - levels[index - 1]) + rate * (days[index] - days[index - 1])
            squares[found] = step**2
            found += 1
    if found == 0:
        return quantization
    # Half the mean square of a difference of two readings; robust to the odd burst through the median. With
    # quantized levels most differences are zero, so the rounding error is the better floor.
    return max(np.median(squares[:found]) / 0.455 / 2.0, quantization)


@compiled
def _quantization_step(levels: np.ndarray) -> float:
    """The step the device reports its level in (0.1, 0.05, ...), or 0 when the levels are not quantized."""
    recent = levels[-QUANTIZATION_SAMPLE:]
    for step in QUANTIZATION_STEPS:
        scaled = recent / step
        if np.all(np.abs(scaled - np.rint(scaled)) < 1e-6):
            return step
    return 0.0


@compiled
def _days_until(spread: tuple[float, float, float, float, float], z: float) -> float:
    """Days h at which level - rate*h = z * sd(use over h, level): the empty time's quantile for this z.

    (level - rate h)^2 = z^2 (v h + s^2 h^2 + l^2) is a quadratic in h; z > 0 takes the root before the median,
    z < 0 the one after it (NaN when the rate is too uncertain for the slot ever to be sure to empty).
    """
    level, rate, v, s2, l2 = spread  # v: the variance of use per day, s2 the rate's, l2 the level's
    z2 = z * z
    a = rate**2 - z2 * s2
    b = -(2 * level * rate + z2 * v)
    c = level**2 - z2 * l2
    discriminant = max(b * b - 4 * a * c, 0.0)
    if z >= 0:
        if c <= 0:
            return 0.0
        nearer: float = 2 * c / (-b + np.sqrt(discriminant))
        return nearer
    if a <= 0:
        return np.nan
    farther: float = (-b + np.sqrt(discriminant)) / (2 * a)
    return farther

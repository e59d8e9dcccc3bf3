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

import bisect
import functools
import statistics
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from replenish.constants import DEFAULT_SERVICE_LEVEL
from replenish.forecasting.absence import Absences
from replenish.forecasting.weekly import (
    FLAT_WEEK,
    MIN_RATE_PER_DAY,
    SECONDS_PER_DAY,
    after_use_days,
    use_days,
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
        return {
            key: (value.isoformat() if isinstance(value, datetime) else value) for key, value in asdict(self).items()
        } | {"refills_detected": [moment.isoformat() for moment in self.refills_detected]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Forecast | None:
        """A stored forecast back, or None when it was stored by a version with fields this one does not know, or
        without one it needs. Fields added since (they have defaults) take their defaults."""
        names = {item.name: item for item in fields(cls)}
        required = {name for name, item in names.items() if item.default is MISSING and item.default_factory is MISSING}
        if not set(data) <= set(names) or not required <= set(data):
            return None
        values = {
            key: datetime.fromisoformat(value) if isinstance(value, str) and key in _DATETIME_FIELDS else value
            for key, value in data.items()
        }
        if "refills_detected" in data:
            values["refills_detected"] = [datetime.fromisoformat(moment) for moment in data["refills_detected"]]
        return cls(**values)


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
    return _with_refills_after_silences(series, _cycle_starts(series.times, series.levels), None)


def _cycle_starts(times: np.ndarray, levels: np.ndarray) -> list[int]:
    if len(levels) == 0:
        return []
    starts = [0]
    # Vectorised first pass: each index against the old level as if no refill had happened. That is exact once a
    # cycle is longer than the window; within the window after a cycle start, where the window is cut at the start,
    # every index is checked exactly instead.
    candidates = _refill_candidates(times, levels)
    time_values, values = times.tolist(), levels.tolist()  # the exact checks look at a handful of values
    last = len(levels) - REFILL_CONFIRMATIONS
    index = 1
    while index < last:
        if index - starts[-1] <= REFILL_BASELINE_READINGS:
            if _is_refill(time_values, values, index, cycle_start=starts[-1]):
                starts.append(index)
            index += 1
            continue
        following = int(np.searchsorted(candidates, index))
        if following == len(candidates):
            break
        index = int(candidates[following])
        starts.append(index)
        index += 1
    return starts


def _with_refills_after_silences(series: ReadingSeries, starts: list[int], absences: Absences | None) -> list[int]:
    """The cycle starts, plus refills made while the device was silent.

    After days without a reading the old level says little: the slot went on being used. A reading after such a
    silence that stands REFILL_MIN_RISE above what the slot's own rate (fitted on the readings before the silence,
    without the fleet's prior, which changes from one evaluation to the next) leaves of the level at the silence's
    start, and at least SILENCE_REFILL_MIN_RISE above that level itself, is a refill when the next reading holds
    it: the slot ran low and was refilled (often partly) while the device was offline. The second condition keeps
    a device that was switched off, and so used nothing, from faking one; days of the customer's absences are not
    days of use.
    """
    times, levels = series.times, series.levels
    after = np.flatnonzero(np.diff(times) > SILENCE_REFILL_GAP_DAYS * SECONDS_PER_DAY) + 1
    after = [int(index) for index in after if index < len(levels) - REFILL_CONFIRMATIONS and index not in starts]
    if not after:
        return starts
    starts = list(starts)
    for index in after:  # in time order, each found refill a cycle start for the silences after it
        cycle_of = np.zeros(index, dtype=np.intp)
        earlier = [start for start in starts if start < index]
        for number, start in enumerate(earlier[1:], start=1):
            cycle_of[start:] = number
        days = (times[:index] - times[index - 1]) / SECONDS_PER_DAY
        if np.ptp(days) < MIN_SPAN.total_seconds() / SECONDS_PER_DAY:
            continue
        fit = _fit(days, levels[:index], 0.5 ** (-days / WEIGHT_HALF_LIFE_DAYS), cycle_of, len(earlier), None)
        if fit is None or -fit.slope <= MIN_RATE_PER_DAY:
            continue
        # The level before the silence as read (the median of the cycle's readings within a day before it), not
        # the fitted one: a line that lags below a level that held would make the bar too low.
        first = max(earlier[-1], index - REFILL_BASELINE_READINGS)
        recent = times[first:index] >= times[index - 1] - REFILL_BASELINE_DAYS * SECONDS_PER_DAY
        old = float(np.median(levels[first:index][recent]))
        silence = float(np.diff(use_days(times[index - 1 : index + 1], FLAT_WEEK, absences))[0])
        threshold = max(max(old + fit.slope * silence, 0.0) + REFILL_MIN_RISE, old + SILENCE_REFILL_MIN_RISE)
        if np.all(levels[index : index + 1 + REFILL_CONFIRMATIONS] >= threshold):
            bisect.insort(starts, index)
    return starts


def _refill_candidates(times: np.ndarray, levels: np.ndarray) -> np.ndarray:
    count = len(levels)
    last = count - REFILL_CONFIRMATIONS  # indexes from 1 to last - 1 can be confirmed
    if last <= 1:
        return np.empty(0, dtype=int)
    window = REFILL_BASELINE_READINGS
    # Row i - 1 holds the readings window..1 places before index i (NaN before the first reading).
    padded_levels = np.concatenate([np.full(window, np.nan), levels[: last - 1]])
    padded_times = np.concatenate([np.full(window, -np.inf), times[: last - 1]])
    before = sliding_window_view(padded_levels, window)[1:]
    taken = sliding_window_view(padded_times, window)[1:]
    recent = taken >= taken[:, -1:] - REFILL_BASELINE_DAYS * SECONDS_PER_DAY
    ordered = np.sort(np.where(recent, before, np.nan), axis=1)  # NaN sorts last
    used = recent.sum(axis=1)
    rows = np.arange(len(ordered))
    baseline = (ordered[rows, (used - 1) // 2] + ordered[rows, used // 2]) / 2
    threshold = baseline + REFILL_MIN_RISE
    held = levels[1:last] >= threshold
    for ahead in range(1, REFILL_CONFIRMATIONS + 1):
        held &= levels[1 + ahead : last + ahead] >= threshold
    return np.flatnonzero(held) + 1


def _is_refill(times: list[float], levels: list[float], index: int, *, cycle_start: int) -> bool:
    first = max(cycle_start, index - REFILL_BASELINE_READINGS)
    since = times[index - 1] - REFILL_BASELINE_DAYS * SECONDS_PER_DAY
    recent = [level for moment, level in zip(times[first:index], levels[first:index], strict=True) if moment >= since]
    old_level = statistics.median(recent)
    threshold = old_level + REFILL_MIN_RISE
    return all(level >= threshold for level in levels[index : index + 1 + REFILL_CONFIRMATIONS])


def lends_to_fleet(forecast: Forecast) -> bool:
    """Whether a slot's forecast rests on enough of its own readings to be part of its fleet's prior."""
    return (
        forecast.status == "ok"
        and forecast.rate_per_day is not None
        and forecast.evidence_from is not None
        and forecast.evidence_to is not None
        and forecast.evidence_to - forecast.evidence_from >= FLEET_MIN_EVIDENCE
    )


def fleet_prior(rates: Sequence[float] | np.ndarray) -> RatePrior | None:
    """The prior a slot borrows from its fleet (slots of the same kind and name): their median rate, with their
    robust spread."""
    if len(rates) < FLEET_MIN_SLOTS:
        return None
    values = np.asarray(rates, dtype=float)
    median = float(np.median(values))
    return RatePrior(rate_per_day=median, rate_sd=1.4826 * float(np.median(np.abs(values - median))))


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
    now_s = now.timestamp()
    if len(series) and series.times[-1] > now_s:
        cut = int(np.searchsorted(series.times, now_s, side="right"))
        series = ReadingSeries(times=series.times[:cut], levels=series.levels[:cut])
    absences = absences or None
    if absences is not None:
        present = ~absences.inside(series.times)
        series = ReadingSeries(times=series.times[present], levels=series.levels[present])
    series = _without_dips(series)
    starts = _with_refills_after_silences(series, _cycle_starts(series.times, series.levels), absences)
    refills = [_moment(series.times[index]) for index in starts[1:]]
    cycle_start = _moment(series.times[starts[-1]]) if starts else None
    base = {
        "computed_at": now,
        "cycle_started_at": cycle_start,
        "refills_detected": refills,
        "service_level": service_level,
        "horizon_days": horizon_days,
        "prior_rate_per_day": prior.rate_per_day if prior else None,
    }
    if not len(series):
        return Forecast(status="insufficient_data", readings_used=0, outliers_dropped=0, **base)

    last_s = float(series.times[-1])

    def days_before_newest(profile: np.ndarray) -> np.ndarray:
        """Days of use from each reading to the newest (<= 0): everything is dated from the newest reading."""
        if absences is None and profile is FLAT_WEEK:
            return (series.times - last_s) / SECONDS_PER_DAY
        days = use_days(series.times, profile, absences)
        return days - days[-1]

    days = days_before_newest(FLAT_WEEK)
    levels = series.levels
    cycle_of = np.zeros(len(series), dtype=np.intp)
    for number, start in enumerate(starts[1:], start=1):
        cycle_of[start:] = number
    cycles = len(starts)
    weights = 0.5 ** (-days / WEIGHT_HALF_LIFE_DAYS)

    fit = _fit(days, levels, weights, cycle_of, cycles, prior)
    keep = np.ones(len(series), dtype=bool)
    profile = FLAT_WEEK
    if fit is not None:
        keep = _not_outliers(levels - fit.predict(days, cycle_of), cycle_of)
        # Use follows the week (offices print on weekdays, homes on weekends): the line is fitted against
        # "effective days", each weekday counting as much as the slot uses on it, so a Friday forecast knows
        # that the weekend is coming.
        # Pairs of readings across an absence say nothing about which days the use fell on.
        segment = (
            cycle_of if absences is None else cycle_of * (len(absences.starts) + 1) + absences.before(series.times)
        )
        profile = weekly_profile(series.times, levels, segment, keep)
        if profile is not FLAT_WEEK:
            days = days_before_newest(profile)
        if (not keep.all() or profile is not FLAT_WEEK) and keep[cycle_of == cycles - 1].any():
            fit = _fit(days[keep], levels[keep], weights[keep], cycle_of[keep], cycles, prior)
        if fit is not None and keep[cycle_of == cycles - 1].any():
            # Use that has just sped up (a regime change, a busy spell) shows first in the newest readings: when a
            # fit that forgets fast sees a clearly higher rate, it is the one to plan with.
            recent_weights = 0.5 ** (-days / RECENT_HALF_LIFE_DAYS)
            recent = _fit(days[keep], levels[keep], recent_weights[keep], cycle_of[keep], cycles, prior)
            if recent is not None and -recent.slope - RECENT_RATE_SES * recent.slope_se > -fit.slope:
                fit = recent
    current = cycle_of == cycles - 1
    used_current = int((current & keep).sum())
    span = float(np.ptp(days[keep])) if keep.any() else 0.0
    common = {
        **base,
        "readings_used": used_current,
        "outliers_dropped": int((current & ~keep).sum()),
        "evidence_from": _moment(series.times[int(np.argmax(keep))]) if keep.any() else None,
        "evidence_to": _moment(last_s),
        "cycles_used": int(np.count_nonzero(np.diff(cycle_of[keep]))) + 1 if keep.any() else 0,  # cycle_of ascends
        "cycle_largest_drop": float(max(-np.diff(levels[current]).min(), 0.0)) if current.sum() > 1 else 0.0,
    }
    if fit is None or used_current == 0 or (prior is None and span < MIN_SPAN.total_seconds() / SECONDS_PER_DAY):
        return Forecast(status="insufficient_data", **common)

    level_then = float(np.clip(fit.level_current, 0.0, 1.0))
    rate = -fit.slope
    days_since = float(np.diff(use_days(np.array([last_s, now_s]), profile, absences))[0])
    common["weekly_profile"] = None if profile is FLAT_WEEK else [round(float(value), 3) for value in profile]
    rate_z = _z(LATE_QUANTILE)
    common |= {
        "level_now": float(np.clip(level_then - max(rate, 0.0) * days_since, 0.0, 1.0)),
        "rate_per_day": rate,
        "rate_per_day_low": rate - rate_z * fit.slope_se,
        "rate_per_day_high": rate + rate_z * fit.slope_se,
    }
    evidence = _moment(last_s)
    if levels[-1] >= level_then + REFILL_MIN_RISE:
        # The newest reading is far above the line: a refill that the next readings will confirm, or a spike that
        # they will not. Either way nothing should be ordered on the old level now.
        return Forecast(status="refill_pending", **common)
    if level_then <= EMPTY_LEVEL:
        return Forecast(status="ok", empty_at=evidence, empty_at_early=evidence, empty_at_late=evidence, **common)
    if rate <= MIN_RATE_PER_DAY:
        return Forecast(status="not_consuming", **common)

    use_variance_per_day, use_skewness = _use_variance_per_day(
        days[keep],
        levels[keep],
        0.5 ** (-days[keep] / SPREAD_HALF_LIFE_DAYS),
        cycle_of[keep],
        rate=rate,
        horizon_days=horizon_days,
    )
    spread = _Spread(
        level=level_then,
        rate=rate,
        use_variance_per_day=use_variance_per_day,
        rate_variance=fit.slope_se**2,
        level_variance=fit.level_variance,
    )
    # The use over the horizon is skewed; the quantiles get the Cornish-Fisher correction for the share of the
    # spread that is use.
    skewness = use_skewness * spread.use_share(horizon_days) ** 1.5
    early = spread.days_until(_cornish_fisher(_z(service_level), skewness))
    late = spread.days_until(_cornish_fisher(-_z(LATE_QUANTILE), skewness))

    def after(effective: float) -> datetime:
        return _moment(after_use_days(last_s, min(effective, MAX_FORECAST_DAYS), profile, absences))

    return Forecast(
        status="ok",
        empty_at=after(level_then / rate),
        empty_at_early=after(early),
        empty_at_late=after(late) if late is not None and late < MAX_FORECAST_DAYS else None,
        **common,
    )


def _without_dips(series: ReadingSeries) -> ReadingSeries:
    """The readings without dips: runs of empty readings straight after a level well above empty.

    A bottle taken out of the fridge, a cartridge being swapped, a sensor reading nothing: the level falls off a
    cliff to zero and comes back. Such a run is dropped if it lasted less than DIP_MAX or was at most
    DIP_MAX_READINGS long, and a run still going on at the end is held back until it has lasted DIP_MAX; a slot
    that really emptied stays empty and is believed then.
    """
    levels = series.levels
    empty = levels <= EMPTY_LEVEL
    if len(levels) < 2 or not empty[1:].any():
        return series
    starts = np.flatnonzero(empty[1:] & ~empty[:-1]) + 1
    cliffs = starts[levels[starts - 1] >= DIP_FROM]
    if not len(cliffs):
        return series
    ends = np.flatnonzero(~empty[1:] & empty[:-1]) + 1  # first non-empty index after each run
    keep = np.ones(len(levels), dtype=bool)
    for start in cliffs.tolist():
        later = ends[ends > start]
        end = int(later[0]) if len(later) else len(levels)
        brief = series.times[end - 1] - series.times[start] < DIP_MAX.total_seconds()
        # Only a short run is a dip: a long one is a slot that was empty, whatever spike came before or after it.
        if brief or (len(later) and end - start <= DIP_MAX_READINGS):
            keep[start:end] = False
    return ReadingSeries(times=series.times[keep], levels=levels[keep])


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


@dataclass(frozen=True)
class _Fit:
    slope: float  # level per day, common to all cycles
    slope_se: float
    intercepts: np.ndarray  # per cycle: the fitted level at the newest reading's time
    level_current: float
    level_variance: float
    residual_sd: float

    def predict(self, days: np.ndarray, cycle_of: np.ndarray) -> np.ndarray:
        return self.intercepts[cycle_of] + self.slope * days


def _fit(
    days: np.ndarray,
    levels: np.ndarray,
    weights: np.ndarray,
    cycle_of: np.ndarray,
    cycles: int,
    prior: RatePrior | None,
) -> _Fit | None:
    """Weighted least squares: level = intercept[cycle] + slope * days, one slope for every cycle."""
    total = np.bincount(cycle_of, weights, minlength=cycles)
    present = total > 0
    if not present[cycles - 1]:
        return None
    safe = np.where(present, total, 1.0)
    day_mean = np.bincount(cycle_of, weights * days, minlength=cycles) / safe
    level_mean = np.bincount(cycle_of, weights * levels, minlength=cycles) / safe
    dx = days - day_mean[cycle_of]
    dy = levels - level_mean[cycle_of]
    sxx = float((weights * dx * dx).sum())
    sxy = float((weights * dx * dy).sum())
    weight_sum = float(weights.sum())
    # A prior on the slope is worth as much as weight_days of readings as dense as the slot's own.
    prior_sxx = 0.0
    if prior is not None:
        density = weight_sum / max(float(np.ptp(days)), 1.0)
        prior_sxx = density * prior.weight_days**3 / 12.0
        sxy -= prior_sxx * prior.rate_per_day
    if sxx + prior_sxx <= 0:
        return None
    slope = sxy / (sxx + prior_sxx)
    intercepts = level_mean - slope * day_mean
    residuals = dy - slope * dx
    # Kish's effective sample size for weighted data, then fewer again for correlated residuals: bursty use leaves
    # long runs above or below the line, which say much less than as many independent readings would.
    n_eff = weight_sum**2 / float((weights**2).sum())
    dof = max(n_eff - int(present.sum()) - 1.0, 1.0)
    # Never less than a good sensor's noise: a fit through one or two readings is not exact.
    residual_var = max(float((weights * residuals**2).sum()) / weight_sum * n_eff / dof, MIN_LEVEL_SD**2)
    squares = float((residuals**2).sum())
    rho = float((residuals[:-1] * residuals[1:]).sum()) / squares if squares > 0 else 0.0
    inflation = (1 + min(max(rho, 0.0), MAX_RESIDUAL_AUTOCORRELATION)) / (
        1 - min(max(rho, 0.0), MAX_RESIDUAL_AUTOCORRELATION)
    )
    slope_var = residual_var * inflation / (sxx + prior_sxx) * (weight_sum / n_eff)
    if prior is not None:
        # The share of the slope that is the fleet's carries the fleet's own spread.
        slope_var += (prior_sxx / (sxx + prior_sxx)) ** 2 * prior.rate_variance
    current = cycle_of == cycles - 1
    current_weights = weights[current]
    n_current = max(current_weights.sum() ** 2 / float((current_weights**2).sum()) / inflation, 1.0)
    level_variance = residual_var / n_current + float(day_mean[cycles - 1]) ** 2 * slope_var
    return _Fit(
        slope=slope,
        slope_se=float(np.sqrt(slope_var)),
        intercepts=intercepts,
        level_current=float(intercepts[cycles - 1]),
        level_variance=level_variance,
        residual_sd=float(np.sqrt(residual_var)),
    )


def _not_outliers(residuals: np.ndarray, cycle_of: np.ndarray) -> np.ndarray:
    """False for a reading that stands alone: far from the median of its two neighbours on each side (in its cycle).

    The newest reading has neighbours on one side only, so a sudden drop there is held back until the next reading
    confirms it, and a lone zero at the end cannot order anything.
    """
    count = len(residuals)
    if count < 3:
        return np.ones(count, dtype=bool)
    padded = np.full(count + 4, np.inf)
    padded[2:-2] = residuals
    cycle_padded = np.full(count + 4, -1)
    cycle_padded[2:-2] = cycle_of
    windows = sliding_window_view(padded, 5).copy()
    outside = sliding_window_view(cycle_padded, 5) != cycle_of[:, None]
    windows[outside] = np.inf  # sorts last
    windows.sort(axis=1)
    size = 5 - outside.sum(axis=1)
    rows = np.arange(count)
    neighbourhood = (windows[rows, (size - 1) // 2] + windows[rows, size // 2]) / 2
    deviation = residuals - neighbourhood
    scale = 1.4826 * float(np.median(np.abs(deviation)))
    # A reading with fewer than three in its neighbourhood (a two-reading cycle) cannot stand alone against it.
    return (np.abs(deviation) <= max(OUTLIER_SDS * scale, OUTLIER_MIN_DEVIATION)) | (size < 3)


def _use_variance_per_day(
    days: np.ndarray,
    levels: np.ndarray,
    weights: np.ndarray,
    cycle_of: np.ndarray,
    *,
    rate: float,
    horizon_days: float,
) -> tuple[float, float]:
    """How much the slot's use varies around rate x time, per day, and how skewed it is: (variance, skewness).

    From every window of the slot's own history between two readings of one cycle at least half a horizon apart
    (and less than a horizon), less the sensor noise at both ends, shrunk toward a default for a slot with little
    history. Bursty use is skewed: a few windows use far more than the rate says, none far less than nothing.
    """
    window = max(horizon_days / 2, MIN_USE_WINDOW_DAYS)  # shorter than the horizon: short cycles have windows too
    ends = np.searchsorted(days, days + window, side="left")
    valid = ends < len(days)
    starts = np.flatnonzero(valid)
    ends = ends[valid]
    gap = days[ends] - days[starts] if len(starts) else np.empty(0)
    same = (cycle_of[starts] == cycle_of[ends]) & (gap <= 2 * window) if len(starts) else np.empty(0, bool)
    default = rate * PRIOR_BURST_SIZE
    if not same.any():
        return default, 0.0
    starts, ends, gap = starts[same], ends[same], gap[same]
    surprise = (levels[starts] - levels[ends]) - rate * gap
    noise_var = _noise_variance(days, levels, cycle_of, rate=rate)
    window_weights = weights[starts]
    observed = float((window_weights * (surprise**2 - 2 * noise_var) / gap).sum() / window_weights.sum())
    windows = float(np.ptp(days[starts])) / window + 1.0
    estimate = max(observed, 0.0)
    variance = (windows * estimate + PRIOR_SPREAD_WINDOWS * default) / (windows + PRIOR_SPREAD_WINDOWS)
    scaled = surprise / np.sqrt(gap)
    centred = scaled - float((window_weights * scaled).sum() / window_weights.sum())
    second = float((window_weights * centred**2).sum() / window_weights.sum())
    third = float((window_weights * centred**3).sum() / window_weights.sum())
    skewness = third / second**1.5 if second > 0 else 0.0
    # A sample's skewness is noisy: trusted in proportion to how many windows it rests on.
    skewness *= windows / (windows + SKEW_PRIOR_WINDOWS)
    return variance, float(np.clip(skewness, 0.0, MAX_SKEWNESS))


def _noise_variance(days: np.ndarray, levels: np.ndarray, cycle_of: np.ndarray, *, rate: float) -> float:
    """Sensor noise (and quantization) of one reading, from differences of consecutive readings of one cycle."""
    same = cycle_of[1:] == cycle_of[:-1]
    quantization = _quantization_step(levels) ** 2 / 12.0  # the variance of a rounding error
    if not same.any():
        return quantization
    step = (np.diff(levels) + rate * np.diff(days))[same]
    # Half the mean square of a difference of two readings; robust to the odd burst through the median. With
    # quantized levels most differences are zero, so the rounding error is the better floor.
    return max(float(np.median(step**2)) / 0.455 / 2.0, quantization)


def _quantization_step(levels: np.ndarray) -> float:
    """The step the device reports its level in (0.1, 0.05, ...), or 0 when the levels are not quantized."""
    recent = levels[-QUANTIZATION_SAMPLE:]
    for step in QUANTIZATION_STEPS:
        scaled = recent / step
        if np.all(np.abs(scaled - np.round(scaled)) < 1e-6):
            return step
    return 0.0


@dataclass(frozen=True)
class _Spread:
    level: float
    rate: float
    use_variance_per_day: float
    rate_variance: float
    level_variance: float

    def use_share(self, days: float) -> float:
        """The share of the variance over `days` that is the slot's use (the rest: the rate and the level now)."""
        use = self.use_variance_per_day * days
        total = use + self.rate_variance * days**2 + self.level_variance
        return use / total if total > 0 else 0.0

    def days_until(self, z: float) -> float | None:
        """Days h at which level - rate*h = z * sd(use over h, level): the empty time's quantile for this z.

        (level - rate h)^2 = z^2 (v h + s^2 h^2 + l^2) is a quadratic in h; z > 0 takes the root before the median,
        z < 0 the one after it (None when the rate is too uncertain for the slot ever to be sure to empty).
        """
        v, s2, l2 = self.use_variance_per_day, self.rate_variance, self.level_variance
        z2 = z * z
        a = self.rate**2 - z2 * s2
        b = -(2 * self.level * self.rate + z2 * v)
        c = self.level**2 - z2 * l2
        discriminant = max(b * b - 4 * a * c, 0.0)
        if z >= 0:
            if c <= 0:
                return 0.0
            return float(2 * c / (-b + np.sqrt(discriminant)))
        if a <= 0:
            return None
        return float((-b + np.sqrt(discriminant)) / (2 * a))

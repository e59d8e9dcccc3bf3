"""What a slot's readings say about its use, for the customer: use per week, a marked change, what it costs a month
and hints that something needs looking at. Pure functions of readings, prices and "now", like the forecast.

Use is counted from a level curve that only falls within a cycle: a rise of the model's refill size
(REFILL_MIN_RISE) that the next reading holds starts a new cycle, within a cycle each reading is the median of
itself and its neighbours (a lone spike or dip does not count), and a smaller rise (noise, a bottle put back) is
not negative use. Plain numpy and Python: the API process,
which shows these, does not load the model's compiled kernels (forecasting.compiled). What a week used is how far
that curve fell in it, read between readings by linear interpolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from replenish.forecasting import ReadingSeries
from replenish.forecasting.model import REFILL_MIN_RISE
from replenish.forecasting.weekly import SECONDS_PER_DAY

WEEK = timedelta(days=7)
DAYS_PER_MONTH = 365.25 / 12
# A change is marked when the last RECENT_DAYS used at least CHANGE_UP (or at most CHANGE_DOWN) times as much per
# day as the BASELINE_DAYS before them, both fully covered by readings, and the baseline used at least
# MIN_BASELINE_USE of the slot per week (a nearly unused slot doubles from nothing).
RECENT_DAYS = 14
BASELINE_DAYS = 28
CHANGE_UP = 1.8
CHANGE_DOWN = 0.55
MIN_BASELINE_USE = 0.02
# Costs and the comparison with the slot's kind read use over the last this many days (or since the first reading,
# when that is at least MIN_RATE_DAYS ago).
RATE_DAYS = 28
MIN_RATE_DAYS = 7
# A slot using this many times its kind's median rate, in a group of at least NORM_MIN_SLOTS, gets a hint.
FAST_FACTOR = 2.5
NORM_MIN_SLOTS = 5
# A rise is a refill against the median of this many readings before it.
REFILL_BASELINE = 3
# A slot that repeats one reading this many times since a delivery it has not shown gets a hint.
STUCK_READINGS = 3
STUCK_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class WeekUse:
    start: datetime
    used: float  # fractions of the slot
    covered: float  # the share of the week that had readings around it (0 to 1)


@dataclass(frozen=True)
class Usage:
    weeks: list[WeekUse]  # oldest first, the last ending now
    recent_per_day: float | None  # over RECENT_DAYS; None without readings all through
    baseline_per_day: float | None  # over the BASELINE_DAYS before
    rate_per_day: float | None  # over the last RATE_DAYS (or MIN_RATE_DAYS or more), for costs and the norm

    @property
    def change(self) -> float | None:
        """Recent use per day against the baseline's, when the difference is marked (CHANGE_UP, CHANGE_DOWN)."""
        if self.recent_per_day is None or self.baseline_per_day is None:
            return None
        if self.baseline_per_day * 7 < MIN_BASELINE_USE:
            return None
        ratio = self.recent_per_day / self.baseline_per_day
        return ratio if ratio >= CHANGE_UP or ratio <= CHANGE_DOWN else None


class UseCurve:
    """A slot's cumulative use (fractions of the slot) through its readings: a curve that only rises."""

    def __init__(self, series: ReadingSeries) -> None:
        self.times = series.times
        levels = series.levels
        count = len(levels)
        self.used = np.zeros(count)
        if count == 0:
            return
        # A refill as the model reads one: a rise of REFILL_MIN_RISE over the median of the readings before it, that
        # the next reading holds (a lone spike is not one, nor the way back from a dip). Within each cycle, the
        # median of each reading and its neighbours: a lone dip or spike is gone.
        starts = [0]
        for index in range(1, count - 1):
            before = float(np.median(levels[max(0, index - REFILL_BASELINE) : index]))
            if min(levels[index], levels[index + 1]) - before >= REFILL_MIN_RISE and index - starts[-1] > 1:
                starts.append(index)
        smoothed = levels.copy()
        for start, end in zip(starts, [*starts[1:], count], strict=True):
            if end - start >= 3:
                part = levels[start:end]
                smoothed[start + 1 : end - 1] = np.median(np.stack((part[:-2], part[1:-1], part[2:])), axis=0)
        refills = set(starts[1:])
        lowest = smoothed[0]
        cycle_start = 0
        for index in range(1, count):
            if index in refills:
                # Somewhere between the two readings: half the gap's use at the cycle's rate, at most what was left,
                # is the use nobody saw.
                span = self.times[index - 1] - self.times[cycle_start]
                rate = (self.used[index - 1] - self.used[cycle_start]) / span if span > 0 else 0.0
                unseen = min(rate * (self.times[index] - self.times[index - 1]) / 2, max(0.0, lowest))
                self.used[index] = self.used[index - 1] + unseen
                lowest, cycle_start = smoothed[index], index
                continue
            self.used[index] = self.used[index - 1] + max(0.0, lowest - smoothed[index])
            lowest = min(lowest, smoothed[index])

    @property
    def start(self) -> datetime | None:
        """The first reading's moment."""
        return datetime.fromtimestamp(float(self.times[0]), UTC) if len(self.times) else None

    def between(self, start: datetime, stop: datetime) -> float:
        """What was used from ``start`` to ``stop`` (none before the first reading or after the last)."""
        if not len(self.times):
            return 0.0
        at = np.interp([start.timestamp(), stop.timestamp()], self.times, self.used)
        return float(at[1] - at[0])

    def covered(self, start: datetime, stop: datetime) -> float:
        """The share of ``start`` to ``stop`` between the first reading and the last."""
        if not len(self.times) or stop <= start:
            return 0.0
        first, last = float(self.times[0]), float(self.times[-1])
        overlap = min(stop.timestamp(), last) - max(start.timestamp(), first)
        return max(0.0, overlap) / (stop - start).total_seconds()

    def per_day(self, start: datetime, stop: datetime) -> float | None:
        """Use per day from ``start`` to ``stop``; None unless readings cover it (a day's grace at the end: the
        newest reading may be hours old)."""
        if not len(self.times) or self.times[0] > start.timestamp():
            return None
        if self.times[-1] < (stop - timedelta(days=1)).timestamp():
            return None
        return self.between(start, stop) / ((stop - start).total_seconds() / SECONDS_PER_DAY)


def usage(series: ReadingSeries, *, now: datetime, weeks: int) -> Usage:
    """The slot's use in each of the ``weeks`` weeks ending at ``now``, and its recent, baseline and 28-day rates."""
    curve = UseCurve(series)
    found = []
    for number in range(weeks, 0, -1):
        start = now - number * WEEK
        found.append(
            WeekUse(start=start, used=curve.between(start, start + WEEK), covered=curve.covered(start, start + WEEK))
        )
    recent = now - timedelta(days=RECENT_DAYS)
    return Usage(
        weeks=found,
        recent_per_day=curve.per_day(recent, now),
        baseline_per_day=curve.per_day(recent - timedelta(days=BASELINE_DAYS), recent),
        rate_per_day=curve.per_day(max(now - timedelta(days=RATE_DAYS), curve.start or now), now)
        if curve.start is not None and now - curve.start >= timedelta(days=MIN_RATE_DAYS)
        else None,
    )


def figure(value: float) -> str:
    """An amount as people write it: "0.35", "2.8", "15", "1,250" (never "1.2e+03")."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.2g}"


def describe_change(ratio: float) -> str:
    """A marked change in words: "doubled", "tripled", "halved", "fell by two thirds"."""
    if ratio >= 3.5:
        return f"grew {ratio:.0f}-fold"
    if ratio >= 2.5:
        return "tripled"
    if ratio >= CHANGE_UP:
        return "doubled"
    if ratio > 0.4:
        return "halved"
    if ratio > 0.2:
        return "fell by two thirds or more"
    return "nearly stopped"


def monthly_cost(
    *, rate_per_day: float, capacity: float, pack_size: float | None, price: Decimal | None
) -> Decimal | None:
    """What the slot's supplies cost a month at ``rate_per_day`` (fractions of the slot): the packs that much use
    takes, at ``price`` a pack (a product without a pack size: one unit fills the slot). None without a price."""
    if price is None or not math.isfinite(rate_per_day) or rate_per_day < 0:
        return None
    packs = rate_per_day * DAYS_PER_MONTH * capacity / (pack_size or capacity)
    return (Decimal(str(round(packs, 6))) * price).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def times_the_norm(rate_per_day: float | None, *, median: float | None, slots: int) -> float | None:
    """How many times its kind's median rate the slot uses, when that is FAST_FACTOR or more in a group big enough
    to have a norm."""
    if rate_per_day is None or median is None or median <= 0 or slots < NORM_MIN_SLOTS:
        return None
    ratio = rate_per_day / median
    return ratio if ratio >= FAST_FACTOR else None


def stuck_since_delivery(
    *,
    delivered_at: datetime | None,
    refilled_since: bool,
    same_level_count: int,
    same_level_since: datetime | None,
    now: datetime,
) -> bool:
    """Whether a delivery has not shown on a slot whose sensor repeats one value: delivered over STUCK_AFTER ago, no
    refill seen since, and the same reading STUCK_READINGS times or more, from before the delivery was a day old."""
    if delivered_at is None or refilled_since or now - delivered_at < STUCK_AFTER:
        return False
    if same_level_since is None or same_level_count < STUCK_READINGS:
        return False
    return same_level_since <= delivered_at + STUCK_AFTER

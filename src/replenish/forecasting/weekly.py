"""A slot's weekly rhythm: how much it uses on each weekday, and time measured in "effective days".

Pure functions of epoch seconds (UTC) and levels. An effective day counts as much as the slot uses on that
weekday relative to its average day, so use is linear in effective days even when it follows the week.
"""

from __future__ import annotations

import numpy as np

from replenish.forecasting.absence import Absences

SECONDS_PER_DAY = 86_400.0
# Below this consumption the slot is "not being used" rather than "empties in 40 years".
MIN_RATE_PER_DAY = 1e-4
# Weekly rhythm: 1970-01-01 was a Thursday (Monday = 0); drops between readings further apart than this say
# little about which day the use happened; no weekday counts for less than this share of an average one.
EPOCH_WEEKDAY = 3
WEEKLY_MAX_GAP_DAYS = 1.5
# ...unless the level held over it (to within this): then up to this many days are days of no use.
WEEKLY_IDLE_DROP = 0.02
WEEKLY_MAX_IDLE_DAYS = 4.0
WEEKLY_MIN_COVERAGE = 0.8  # of a day, for its use to count
WEEKLY_MIN_SHARE = 0.05
WEEKLY_MIN_HISTORY_DAYS = 14.0
FLAT_WEEK = np.ones(7)
FLAT_WEEK.flags.writeable = False


def weekday_days(epoch_seconds: np.ndarray) -> np.ndarray:
    """Days spent on each weekday (Monday first, UTC) from the epoch to each moment: shape (n, 7)."""
    days = epoch_seconds / SECONDS_PER_DAY + EPOCH_WEEKDAY
    weeks = np.floor(days / 7)
    into_week = days - weeks * 7
    return weeks[:, None] + np.clip(into_week[:, None] - np.arange(7), 0.0, 1.0)


def effective_days(epoch_seconds: np.ndarray, profile: np.ndarray) -> np.ndarray:
    return weekday_days(epoch_seconds) @ profile


def after_effective_days(start_seconds: float, effective: float, profile: np.ndarray) -> float:
    """The moment (epoch seconds) at which `effective` days of use have passed after `start_seconds`."""
    if not np.isfinite(effective) or effective < 0:
        raise ValueError(f"effective days must be finite and not negative, got {effective}")
    if profile is FLAT_WEEK:
        return start_seconds + effective * SECONDS_PER_DAY
    day = start_seconds / SECONDS_PER_DAY + EPOCH_WEEKDAY
    weeks = np.floor(effective / profile.sum())
    day += 7 * weeks
    remaining = effective - weeks * profile.sum()
    while True:
        weekday, midnight = int(np.floor(day)) % 7, np.floor(day) + 1
        today = profile[weekday] * (midnight - day)
        if remaining <= today:
            return float((day + remaining / profile[weekday] - EPOCH_WEEKDAY) * SECONDS_PER_DAY)
        remaining -= today
        day = midnight


def use_days(epoch_seconds: np.ndarray, profile: np.ndarray, absences: Absences | None = None) -> np.ndarray:
    """Days of use from the epoch to each moment: effective days (see module doc) less those spent absent."""
    days = epoch_seconds / SECONDS_PER_DAY if profile is FLAT_WEEK else effective_days(epoch_seconds, profile)
    if not absences:
        return days
    inside = np.clip(epoch_seconds[..., None], absences.starts, absences.ends)  # (n, absences)
    starts = np.broadcast_to(absences.starts, inside.shape)
    return days - (use_days(inside.ravel(), profile) - use_days(starts.ravel(), profile)).reshape(inside.shape).sum(-1)


def after_use_days(start_seconds: float, days: float, profile: np.ndarray, absences: Absences | None = None) -> float:
    """The moment (epoch seconds) at which `days` days of use have passed after `start_seconds`."""
    moment, remaining = start_seconds, days
    if absences:
        for begin, end in zip(absences.starts.tolist(), absences.ends.tolist(), strict=True):
            if end <= moment:
                continue
            if begin > moment:
                available = float(np.diff(use_days(np.array([moment, begin]), profile))[0])
                if remaining < available:  # (reached just as the absence begins: when use resumes after it)
                    break
                remaining -= available
            moment = end  # nothing is used until the absence ends
    return after_effective_days(moment, remaining, profile)


def weekly_profile(times: np.ndarray, levels: np.ndarray, cycle_of: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """How much the slot uses on each weekday relative to its average day (mean 1), or FLAT_WEEK.

    Each drop between two readings of one cycle (at most WEEKLY_MAX_GAP_DAYS apart) is shared among the calendar
    days it spans, which gives the use of every day the readings cover. A longer gap (up to WEEKLY_MAX_IDLE_DAYS)
    over which the level held is days of no use: an office device that is off at weekends reports nothing then.
    Each weekday's mean use is then shrunk toward the average day by how much it could be chance (empirical
    Bayes: the spread between weekdays against the spread of one weekday from week to week), so a slot used in
    random lumps gets no rhythm it does not have. Every day of the history counts alike: a rhythm is steadier
    than a rate, and needs weeks to show.
    """
    times, levels, cycle_of = times[keep], levels[keep], cycle_of[keep]
    if len(levels) < 3:
        return FLAT_WEEK
    start, end = times[:-1], times[1:]
    length = end - start
    drop = levels[:-1] - levels[1:]
    idle = (np.abs(drop) <= WEEKLY_IDLE_DROP) & (length <= WEEKLY_MAX_IDLE_DAYS * SECONDS_PER_DAY)
    usable = (cycle_of[1:] == cycle_of[:-1]) & (length > 0) & ((length <= WEEKLY_MAX_GAP_DAYS * SECONDS_PER_DAY) | idle)
    if not usable.any():
        return FLAT_WEEK
    start, end, length, drop = start[usable], end[usable], length[usable], drop[usable]
    first_day = np.floor(start / SECONDS_PER_DAY)
    spans = [first_day + ahead for ahead in range(int(np.ceil(WEEKLY_MAX_IDLE_DAYS)) + 1)]
    overlap = [
        np.clip(np.minimum(end, (day + 1) * SECONDS_PER_DAY) - np.maximum(start, day * SECONDS_PER_DAY), 0.0, None)
        for day in spans
    ]
    days, day_of = np.unique(np.concatenate(spans), return_inverse=True)
    used = np.bincount(day_of, np.concatenate([drop * seconds / length for seconds in overlap]))
    covered = np.bincount(day_of, np.concatenate(overlap)) / SECONDS_PER_DAY
    whole = covered >= WEEKLY_MIN_COVERAGE
    if whole.sum() < WEEKLY_MIN_HISTORY_DAYS:
        return FLAT_WEEK
    daily = used[whole] / covered[whole]
    weekday = ((days[whole] + EPOCH_WEEKDAY) % 7).astype(np.intp)
    count = np.bincount(weekday, minlength=7)
    if (count < 2).any():
        return FLAT_WEEK
    mean = np.bincount(weekday, daily, minlength=7) / count
    # One day-to-day variance for all weekdays: a weekday with two or three days, all alike by chance (all zero
    # between two lumps), must not look certain.
    day_to_day = float(((daily - mean[weekday]) ** 2).sum()) / (len(daily) - 7)
    chance = day_to_day / count
    overall = float(mean.mean())
    rhythm = float(np.var(mean, ddof=1) - chance.mean())
    if overall <= MIN_RATE_PER_DAY or rhythm <= 0:
        return FLAT_WEEK
    shrunk = overall + rhythm / (rhythm + chance) * (mean - overall)
    profile = np.maximum(shrunk / overall, WEEKLY_MIN_SHARE)
    return profile / profile.mean()

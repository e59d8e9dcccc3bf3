"""A slot's weekly rhythm: how much it uses on each weekday, and time measured in "effective days".

Pure functions of epoch seconds (UTC) and levels. An effective day counts as much as the slot uses on that
weekday relative to its average day, so use is linear in effective days even when it follows the week.
"""

from __future__ import annotations

import numpy as np

from replenish.forecasting.absence import Absences
from replenish.forecasting.compiled import compiled

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


@compiled
def effective_days(epoch_seconds: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """Effective days from the epoch to each moment: the days spent on each weekday (Monday first, UTC), each
    counted as the profile says."""
    result = np.empty(len(epoch_seconds))
    for index in range(len(epoch_seconds)):
        result[index] = _effective_day(epoch_seconds[index], profile)
    return result


@compiled
def _effective_day(epoch_seconds: float, profile: np.ndarray) -> float:
    days = epoch_seconds / SECONDS_PER_DAY + EPOCH_WEEKDAY
    weeks = np.floor(days / 7)
    into_week = days - weeks * 7
    total = 0.0
    for weekday in range(7):
        total += (weeks + min(max(into_week - weekday, 0.0), 1.0)) * profile[weekday]
    return total


@compiled
def _use_day(epoch_seconds: float, profile: np.ndarray, flat: bool) -> float:
    return epoch_seconds / SECONDS_PER_DAY if flat else _effective_day(epoch_seconds, profile)


# What the compiled functions take for "no absences" and for the flat week (a writable array: numba compiles
# read-only ones apart).
_NO_ABSENCES = np.empty(0)
_ONES = np.ones(7)


def _profile_arguments(profile: np.ndarray) -> tuple[np.ndarray, bool]:
    return (_ONES, True) if profile is FLAT_WEEK else (np.ascontiguousarray(profile, dtype=float), False)


def absence_arrays(absences: Absences | None) -> tuple[np.ndarray, np.ndarray]:
    """The absences as the compiled functions take them: their starts and their ends."""
    return (absences.starts, absences.ends) if absences else (_NO_ABSENCES, _NO_ABSENCES)


def use_days(epoch_seconds: np.ndarray, profile: np.ndarray, absences: Absences | None = None) -> np.ndarray:
    """Days of use from the epoch to each moment: effective days (see module doc) less those spent absent."""
    return use_days_of(
        np.ascontiguousarray(epoch_seconds, dtype=float), *_profile_arguments(profile), *absence_arrays(absences)
    )


@compiled
def use_days_of(
    epoch_seconds: np.ndarray, profile: np.ndarray, flat: bool, absence_starts: np.ndarray, absence_ends: np.ndarray
) -> np.ndarray:
    """use_days for compiled callers: the profile with a flag for the flat week, the absences as arrays."""
    days = np.empty(len(epoch_seconds))
    for index in range(len(epoch_seconds)):
        absent = 0.0
        for absence in range(len(absence_starts)):
            inside = min(max(epoch_seconds[index], absence_starts[absence]), absence_ends[absence])
            absent += _use_day(inside, profile, flat) - _use_day(absence_starts[absence], profile, flat)
        days[index] = _use_day(epoch_seconds[index], profile, flat) - absent
    return days


def after_use_days(start_seconds: float, days: float, profile: np.ndarray, absences: Absences | None = None) -> float:
    """The moment (epoch seconds) at which `days` days of use have passed after `start_seconds`."""
    if not np.isfinite(days) or days < 0:
        raise ValueError(f"days of use must be finite and not negative, got {days}")
    return after_use_days_of(float(start_seconds), float(days), *_profile_arguments(profile), *absence_arrays(absences))


@compiled
def after_use_days_of(
    start_seconds: float,
    days: float,
    profile: np.ndarray,
    flat: bool,
    absence_starts: np.ndarray,
    absence_ends: np.ndarray,
) -> float:
    """after_use_days for compiled callers (``days`` finite, not negative)."""
    moment, remaining = start_seconds, days
    for absence in range(len(absence_starts)):
        begin, end = absence_starts[absence], absence_ends[absence]
        if end <= moment:
            continue
        if begin > moment:
            available = _use_day(begin, profile, flat) - _use_day(moment, profile, flat)
            if remaining < available:  # (reached just as the absence begins: when use resumes after it)
                break
            remaining -= available
        moment = end  # nothing is used until the absence ends
    if flat:
        return moment + remaining * SECONDS_PER_DAY
    # Whole weeks at once, then day by day.
    day = moment / SECONDS_PER_DAY + EPOCH_WEEKDAY
    weeks = np.floor(remaining / profile.sum())
    day += 7 * weeks
    remaining -= weeks * profile.sum()
    while True:
        weekday, midnight = int(np.floor(day)) % 7, np.floor(day) + 1
        today = profile[weekday] * (midnight - day)
        if remaining <= today:
            reached: float = (day + remaining / profile[weekday] - EPOCH_WEEKDAY) * SECONDS_PER_DAY
            return reached
        remaining -= today
        day = midnight


_MAX_IDLE_SECONDS = WEEKLY_MAX_IDLE_DAYS * SECONDS_PER_DAY
_MAX_GAP_SECONDS = WEEKLY_MAX_GAP_DAYS * SECONDS_PER_DAY
_DAYS_SPANNED = int(np.ceil(WEEKLY_MAX_IDLE_DAYS)) + 1  # calendar days an interval can touch


@compiled
def weekly_profile(times: np.ndarray, levels: np.ndarray, cycle_of: np.ndarray) -> np.ndarray:
    """How much the slot uses on each weekday relative to its average day (mean 1), from the
    readings that count; empty when it shows no rhythm.

    Each drop between two readings of one cycle (at most WEEKLY_MAX_GAP_DAYS apart) is shared among the calendar
    days it spans, which gives the use of every day the readings cover. A longer gap (up to WEEKLY_MAX_IDLE_DAYS)
    over which the level held is days of no use: an office device that is off at weekends reports nothing then.
    Each weekday's mean use is then shrunk toward the average day by how much it could be chance (empirical
    Bayes: the spread between weekdays against the spread of one weekday from week to week), so a slot used in
    random lumps gets no rhythm it does not have. Every day of the history counts alike: a rhythm is steadier
    than a rate, and needs weeks to show.
    """
    count = len(levels)
    if count < 3:
        return np.empty(0)  # no rhythm
    # The intervals between consecutive readings that tell when the use happened.
    usable = np.empty(count - 1, dtype=np.int64)
    found = 0
    for index in range(count - 1):
        length = times[index + 1] - times[index]
        drop = levels[index] - levels[index + 1]
        idle = abs(drop) <= WEEKLY_IDLE_DROP and length <= _MAX_IDLE_SECONDS
        if cycle_of[index + 1] == cycle_of[index] and length > 0 and (length <= _MAX_GAP_SECONDS or idle):
            usable[found] = index
            found += 1
    if found == 0:
        return np.empty(0)  # no rhythm
    usable = usable[:found]
    first_day = np.floor(times[usable] / SECONDS_PER_DAY)
    lowest = first_day.min()
    calendar = int(first_day.max() - lowest) + _DAYS_SPANNED
    used = np.zeros(calendar)
    covered = np.zeros(calendar)
    # Each drop shared among the calendar days its interval spans, in proportion to the time spent in each.
    for ahead in range(_DAYS_SPANNED):
        for which in range(found):
            index = usable[which]
            start, end = times[index], times[index + 1]
            day = first_day[which] + ahead
            overlap = max(min(end, (day + 1) * SECONDS_PER_DAY) - max(start, day * SECONDS_PER_DAY), 0.0)
            slot = int(day - lowest)
            used[slot] += (levels[index] - levels[index + 1]) * overlap / (end - start)
            covered[slot] += overlap
    covered /= SECONDS_PER_DAY
    whole = np.flatnonzero(covered >= WEEKLY_MIN_COVERAGE)
    if len(whole) < WEEKLY_MIN_HISTORY_DAYS:
        return np.empty(0)  # no rhythm
    daily = used[whole] / covered[whole]
    weekday = ((whole + lowest + EPOCH_WEEKDAY) % 7).astype(np.int64)
    count_of = np.zeros(7, dtype=np.int64)
    mean = np.zeros(7)
    for which in range(len(whole)):
        count_of[weekday[which]] += 1
        mean[weekday[which]] += daily[which]
    if (count_of < 2).any():
        return np.empty(0)  # no rhythm
    mean /= count_of
    # One day-to-day variance for all weekdays: a weekday with two or three days, all alike by chance (all zero
    # between two lumps), must not look certain.
    day_to_day = ((daily - mean[weekday]) ** 2).sum() / (len(daily) - 7)
    chance = day_to_day / count_of
    overall = mean.mean()
    rhythm = ((mean - overall) ** 2).sum() / 6 - chance.mean()
    if overall <= MIN_RATE_PER_DAY or rhythm <= 0:
        return np.empty(0)  # no rhythm
    shrunk = overall + rhythm / (rhythm + chance) * (mean - overall)
    profile = np.maximum(shrunk / overall, WEEKLY_MIN_SHARE)
    normalised: np.ndarray = profile / profile.mean()
    return normalised

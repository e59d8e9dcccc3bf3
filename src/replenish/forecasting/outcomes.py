"""What happened to a cycle against what its forecast said: a pure function of the slot's readings and the
prediction its decision was made on. The live service records it when a decided cycle ends; bench/ scores the same
events against ground truth.

A cycle's outcome says whether it ran empty before the refill that ended it, and when (its readings show it), or,
for a cycle refilled before it ran out, how much supply was left (extrapolated at the rate the forecast had); and
whether that was before the early empty date stated at the decision: the event whose frequency the stated
probability, 1 - the service level, should match. A cycle that ran empty is known as soon as its readings show it
(outcome_when_empty), days before the refill may come: what the refill adds is how long it stayed empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from replenish.forecasting.model import EMPTY_LEVEL, Forecast, ReadingSeries, shows_empty
from replenish.forecasting.weekly import SECONDS_PER_DAY


@dataclass(frozen=True)
class Prediction:
    """What the forecast said when a cycle's decision was made."""

    decided_at: datetime
    empty_at: datetime  # the median
    early_at: datetime  # the (1 - service level) quantile
    late_at: datetime | None
    rate_per_day: float
    service_level: float  # the stated one: its early date should be beaten in 1 - service_level of cycles

    @property
    def checkable(self) -> bool:
        return checkable(empty_at=self.empty_at, decided_at=self.decided_at)

    @classmethod
    def of(cls, forecast: Forecast, *, decided_at: datetime, stated: float | None = None) -> Prediction | None:
        """The prediction in a forecast, or None when it had no empty date to check (not consuming, too little).
        ``stated``: the service level the customer asked for, when the forecast planned at a calibrated one."""
        if (
            forecast.empty_at is None
            or forecast.empty_at_early is None
            or not forecast.rate_per_day
            or forecast.rate_per_day <= 0
        ):
            return None
        return cls(
            decided_at=decided_at,
            empty_at=forecast.empty_at,
            early_at=forecast.empty_at_early,
            late_at=forecast.empty_at_late,
            rate_per_day=forecast.rate_per_day,
            service_level=forecast.service_level if stated is None else stated,
        )


@dataclass(frozen=True)
class CycleOutcome:
    prediction: Prediction
    ended_at: datetime | None  # the refill that ended the cycle; None: it ran empty and is not refilled yet
    ran_out_at: datetime | None  # when the readings show it ran empty; None when it was refilled before
    empty_estimated_at: datetime  # ran_out_at, or for a cycle refilled before it ran out, an extrapolation

    @property
    def ran_out_before_early(self) -> bool:
        """Whether it ran (or would have run) empty before the early date stated at the decision."""
        return self.empty_estimated_at < self.prediction.early_at

    @property
    def error_days(self) -> float:
        """Days from the forecast's median empty date to when it ran (or would have run) empty: negative, sooner."""
        return (self.empty_estimated_at - self.prediction.empty_at).total_seconds() / SECONDS_PER_DAY

    @property
    def empty_days(self) -> float:
        """How long it was empty before the refill that ended the cycle (0 when it was refilled in time, or is not
        refilled yet)."""
        if self.ran_out_at is None or self.ended_at is None:
            return 0.0
        return max(0.0, (self.ended_at - self.ran_out_at).total_seconds() / SECONDS_PER_DAY)

    @property
    def left_days(self) -> float:
        """How many days of supply were left when it was refilled before running out (0 when it ran out)."""
        if self.ran_out_at is not None or self.ended_at is None:
            return 0.0
        return max(0.0, (self.empty_estimated_at - self.ended_at).total_seconds() / SECONDS_PER_DAY)


def teaching(*, missed: bool, predicted_empty_at: datetime, decided_at: datetime, not_needed: bool) -> bool | None:
    """What an outcome teaches the calibration: whether the slot ran out before the early date (``missed``), or None
    when it teaches nothing: the customer said the order was not needed (the use is not the forecast's to follow),
    or the decision was made on a forecast already at or past its median empty date (the customer's own order for
    an empty slot: there was no forecast left to check)."""
    if not_needed or not checkable(empty_at=predicted_empty_at, decided_at=decided_at):
        return None
    return missed


def checkable(*, empty_at: datetime, decided_at: datetime) -> bool:
    """Whether a decision's forecast had an empty date to check: its median still ahead of the decision."""
    return empty_at > decided_at


def cycle_outcome(
    series: ReadingSeries, *, cycle_started_at: datetime, ended_at: datetime, prediction: Prediction
) -> CycleOutcome:
    """The outcome of a cycle from ``cycle_started_at`` to the refill at ``ended_at``, from the slot's readings.

    Once empty, a slot stays empty until it is refilled, so it ran out where the run of empty readings (at or
    below the model's empty level) that lasts until the refill began: an empty reading followed by a higher one was
    a dip (a bottle out of the fridge, a glitch). It ran empty between the last reading with something left and the
    first empty one: when the decision's rate takes that reading to zero, if that is sooner. A cycle refilled before
    it ran out is extrapolated from its last reading at the decision's rate.
    """
    start = int(np.searchsorted(series.times, cycle_started_at.timestamp(), side="left"))
    end = int(np.searchsorted(series.times, ended_at.timestamp(), side="left"))
    times, levels = series.times[start:end], series.levels[start:end]
    ran_out_at = _ran_out_at(times, levels, prediction) if len(levels) and levels[-1] <= EMPTY_LEVEL else None
    if ran_out_at is not None:
        estimated = ran_out_at
    elif len(levels):
        estimated = _moment(times[-1] + float(levels[-1]) * SECONDS_PER_DAY / prediction.rate_per_day)
    else:
        estimated = prediction.empty_at
    return CycleOutcome(prediction=prediction, ended_at=ended_at, ran_out_at=ran_out_at, empty_estimated_at=estimated)


def outcome_when_empty(
    series: ReadingSeries, *, cycle_started_at: datetime, now: datetime, prediction: Prediction
) -> CycleOutcome | None:
    """The outcome of a cycle that has run empty and is not refilled yet, or None while its readings up to ``now``
    do not show it empty (model.shows_empty: an empty run that may be a dip waits until it has lasted). It ran out
    where that run of empty readings began, as for cycle_outcome; the refill may come days later."""
    start = int(np.searchsorted(series.times, cycle_started_at.timestamp(), side="left"))
    end = int(np.searchsorted(series.times, now.timestamp(), side="right"))
    cycle = ReadingSeries(times=series.times[start:end], levels=series.levels[start:end])
    if not shows_empty(cycle):
        return None
    ran_out_at = _ran_out_at(cycle.times, cycle.levels, prediction)
    return CycleOutcome(prediction=prediction, ended_at=None, ran_out_at=ran_out_at, empty_estimated_at=ran_out_at)


def _ran_out_at(times: np.ndarray, levels: np.ndarray, prediction: Prediction) -> datetime:
    """When a cycle whose readings end empty ran out: where its final run of empty readings began, or sooner when
    the decision's rate takes the last reading with something left to zero before it."""
    above = np.flatnonzero(levels > EMPTY_LEVEL)
    if not len(above):
        return _moment(times[0])
    last = int(above[-1])
    return _moment(
        min(float(times[last + 1]), times[last] + float(levels[last]) * SECONDS_PER_DAY / prediction.rate_per_day)
    )


def _moment(epoch_seconds: float) -> datetime:
    return datetime.fromtimestamp(float(epoch_seconds), UTC)


def ended_by(refills: Sequence[datetime], *, started: datetime) -> datetime | None:
    """The refill that ended the cycle that began at ``started``: the first of ``refills`` after it (several may
    have come between two evaluations: a backlog of readings, a glitch), or None. ``refills``: those an evaluation
    counts as news (automation.engine.news_refills)."""
    return min((moment for moment in refills if moment > started), default=None)

"""One slot's evaluation, pure: the live service and the backtest both call it, with their own memory of the slot.

Memory is what the platform remembers between evaluations: where the current depletion cycle began, which cycle
already has a decision, and when the newest still-open order was placed. The live service keeps it in the
database; the backtest keeps it in a dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from replenish.automation.policy import ReorderPolicy, Verdict, decide, evidence_too_old
from replenish.constants import ConsentMode
from replenish.forecasting import Absences, Forecast, LevelReading, RatePrior, ReadingSeries, forecast_depletion
from replenish.forecasting.calibration import Calibration
from replenish.forecasting.model import DIP_MAX_READINGS, REFILL_MIN_RISE

# How much history a forecast reads: six half-lives of its recency weighting (older readings would weigh less than
# 2%), so an evaluation stays cheap however long the slot has reported.
FORECAST_HISTORY_DAYS = 42
# A refill this close to the start of the history window cannot be told from a glitch at its edge (news_refills).
WINDOW_EDGE = timedelta(days=2)
# How long a new reading can wait for a later evaluation (see Screen): at most NEAR_STEP while the early empty date
# is within NEAR of the order horizon (or right after a sharp drop), less often the further it is; once the cycle
# is decided, until a rise that may be a refill, or DECIDED_STEP.
NEAR = timedelta(days=2)
NEAR_STEP = timedelta(hours=3)
FAR_STEP = timedelta(hours=48)
DECIDED_STEP = timedelta(days=2)
SHARP_DROP = 0.1
# A slot is evaluated again at least this often, whatever its forecast says: the fleet's rates that it borrows
# move, and its stored forecast should not grow old.
REFRESH_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class SlotMemory:
    cycle_started_at: datetime | None = None
    # The newest decision's key: its cycle's start, or the moment of an order the customer asked for themselves
    # (order now, a device's reorder button), which falls inside the cycle it was made in. Either way the cycle
    # starting at or before it has been decided.
    decided_cycle_started_at: datetime | None = None
    open_order_placed_at: datetime | None = None

    def with_cycle(self, cycle_started_at: datetime | None) -> SlotMemory:
        # Not dataclasses.replace: it costs as much as the rest of an evaluation's bookkeeping.
        return SlotMemory(cycle_started_at, self.decided_cycle_started_at, self.open_order_placed_at)


@dataclass(frozen=True)
class SlotEvaluation:
    forecast: Forecast
    cycle_started_at: datetime | None
    verdict: Verdict | None
    # When evaluating again may decide something, if nothing else happens first (a reading, a change of consent or
    # of an order): see next_evaluation.
    evaluate_again_at: datetime
    # Which new readings can wait for a later evaluation.
    screen: Screen
    # The forecast's refills that are news (news_refills): what moved the cycle, and what ends one.
    refills: tuple[datetime, ...] = ()


@dataclass(frozen=True)
class Screen:
    """Whether a new reading can wait for a later evaluation, as an evaluation leaves the slot.

    The forecast moves little from one reading to the next, and the slot is evaluated anyway at the moment its
    forecast says to order (next_evaluation), so evaluating at every reading would mostly repeat the same answer.
    The further the slot is from its order moment, the longer a reading can wait; a reading at or above ``high``
    (it may be a refill: the customer should see it in the forecast at once) never waits, and one below ``low``
    (a sharp drop) waits only until ``until_dropped``.
    The live evaluator and the backtest both screen readings with it.
    """

    until: datetime
    until_dropped: datetime
    low: float = -math.inf
    high: float = math.inf

    def lets_wait(self, level: float, *, now: datetime) -> bool:
        """Whether a reading of ``level`` (a fraction of capacity), the newest, can wait at ``now``."""
        if level >= self.high:
            return False
        return now < (self.until if level >= self.low else self.until_dropped)

    @classmethod
    def after(cls, forecast: Forecast, *, memory: SlotMemory, policy: ReorderPolicy, evaluated_at: datetime) -> Screen:
        """The screen an evaluation at ``evaluated_at`` leaves: ``memory`` as it stands after it."""
        if memory.cycle_started_at is not None and memory.decided_cycle_started_at == memory.cycle_started_at:
            # Only a refill can change anything now: evaluate on a rise that may be one, and now and then anyway.
            high = forecast.level_now + REFILL_MIN_RISE if forecast.level_now is not None else math.inf
            until = evaluated_at + DECIDED_STEP
            return cls(until=until, until_dropped=until, high=high)
        if evidence_too_old(forecast, policy=policy, now=evaluated_at):
            # The next reading is what a decision waits for, so none waits.
            return cls(until=evaluated_at, until_dropped=evaluated_at)
        if forecast.empty_at_early is None or forecast.level_now is None:
            # Only a slot that is not being used can wait long; a pending refill or a new slot may need an order.
            until = evaluated_at + (FAR_STEP if forecast.status == "not_consuming" else NEAR_STEP)
            return cls(until=until, until_dropped=until)
        # At t the slack is order_moment - t: a reading can wait while t - evaluated_at < min(FAR_STEP, slack / 2)
        # and the slack is above NEAR, then while t - evaluated_at < NEAR_STEP.
        order_moment = forecast.empty_at_early - policy.horizon
        near_from = order_moment - NEAR
        far_until = min(evaluated_at + FAR_STEP, evaluated_at + (order_moment - evaluated_at) / 3)
        until_near = evaluated_at + NEAR_STEP
        until = far_until if far_until < near_from else max(near_from, until_near)
        if evaluated_at >= near_from:
            until = until_near
        return cls(
            until=until,
            until_dropped=min(until, until_near),
            low=forecast.level_now - SHARP_DROP,
            high=forecast.level_now + REFILL_MIN_RISE,
        )


def next_evaluation(
    forecast: Forecast,
    *,
    decided: bool,
    open_order_placed_at: datetime | None,
    policy: ReorderPolicy,
    pauses: Sequence[tuple[datetime, datetime]],
    now: datetime,
) -> datetime:
    """The next moment at which the slot's decision may change without anything new happening: its order moment
    (the early empty date less lead time and margin), the end of the hold an open order puts on it, the start or
    end of a pause, and at the latest REFRESH_AFTER from now. Everything else that can change a decision (a
    reading, consent, an order's status, the slot's settings) marks the slot due when it happens."""
    moments = [now + REFRESH_AFTER]
    if not decided and forecast.status == "ok" and forecast.empty_at_early is not None:
        moments.append(forecast.empty_at_early - policy.horizon)
    if open_order_placed_at is not None:
        moments.append(open_order_placed_at + policy.horizon)
    moments.extend(moment for pause in pauses for moment in pause)
    return min(moment for moment in moments if moment > now)


def news_refills(forecast: Forecast, *, window: ReadingSeries, now: datetime) -> tuple[datetime, ...]:
    """The refills in ``forecast`` that are news: all but those judged at the start of its history window.

    A rise is judged against the readings before it. At the window's start there are too few of them: a glitch, a
    dip or a silence at the edge, which the readings before the window would have shown for what it was, makes the
    next reading at the slot's real level look like a refill weeks old. So a refill within WINDOW_EDGE of the
    window's start is no news, nor, when the window begins at its edge (it cut a longer history), one with at most
    DIP_MAX_READINGS of the window's readings before it: a real one was seen when it happened, by the evaluations
    since. (One first confirmed more than 40 days after its rise, by a device silent for that long, is missed: see
    the session notes of issue 22.) A slot whose readings all fit in the window has no edge to mistake.
    """
    edge = now - timedelta(days=FORECAST_HISTORY_DAYS) + WINDOW_EDGE
    cut = len(window) > 0 and window.times[0] <= edge.timestamp()

    def news(moment: datetime) -> bool:
        if moment <= edge:
            return False
        return not cut or int(np.searchsorted(window.times, moment.timestamp(), side="left")) > DIP_MAX_READINGS

    return tuple(moment for moment in forecast.refills_detected if news(moment))


def advance_cycle(
    cycle_started_at: datetime | None, forecast: Forecast, *, refills: Sequence[datetime]
) -> datetime | None:
    """The slot's current cycle start: set once, then moved forward only by a refill newer than it, among
    ``refills``: those of the forecast that are news (news_refills).

    Never recomputed from the visible readings, so a late reading or a shifting history window can never make
    one cycle look like a new one.
    """
    latest_refill = max(refills, default=None)
    if cycle_started_at is None:
        return latest_refill or forecast.cycle_started_at
    if latest_refill is not None and latest_refill > cycle_started_at:
        return latest_refill
    return cycle_started_at


def order_on_its_way(forecast: Forecast, *, memory: SlotMemory, policy: ReorderPolicy, now: datetime) -> bool:
    """Whether an order placed within the last lead time plus margin holds back a new one.

    It does for the cycle it was placed in (once per cycle decides that anyway) and for a cycle that looks like a
    sensor glitch: a "refill" whose level fell straight back, by as much as a refill rises, from one reading to the
    next. A genuine refill seen meanwhile (the customer restocked elsewhere, or the delivery came early) is a cycle
    of its own and gets its order when it runs low: holding it back until the earlier delivery was due ran short
    cycles out. A slot whose use comes in lumps that big stays held, as every slot was before.
    """
    placed = memory.open_order_placed_at
    if placed is None or placed <= now - policy.horizon:
        return False
    cycle = memory.cycle_started_at
    if cycle is None or cycle <= placed or forecast.cycle_started_at != cycle:
        return True
    return forecast.cycle_largest_drop is None or forecast.cycle_largest_drop >= REFILL_MIN_RISE


def evaluate(
    readings: list[LevelReading] | ReadingSeries,
    *,
    now: datetime,
    mode: ConsentMode,
    policy: ReorderPolicy,
    memory: SlotMemory,
    prior: RatePrior | None = None,
    pauses: Sequence[tuple[datetime, datetime]] = (),
    calibration: Calibration | None = None,
) -> SlotEvaluation:
    """Forecast the slot from its readings (fractions of capacity, time order) and decide what to do now.

    The forecast reads the last FORECAST_HISTORY_DAYS, however much older history the caller holds: earlier
    cycles lend the current one their rate and their spread of use. During the customer's pause windows
    (``pauses``, half-open UTC intervals) the slot is not used, and nothing is decided. A ``calibration`` (what
    the slot's and its group's ended cycles taught, forecasting.calibration) sets the level the early date is
    planned at, so that the stated service level holds.
    """
    absences = Absences.of(pauses) if pauses else None
    series = readings if isinstance(readings, ReadingSeries) else ReadingSeries.of(readings)
    if len(series):
        start = int(np.searchsorted(series.times, now.timestamp() - FORECAST_HISTORY_DAYS * 86_400.0, side="right"))
        series = series.from_index(start)
    forecast = forecast_depletion(
        series,
        now=now,
        service_level=policy.service_level if calibration is None else calibration.service_level(policy.service_level),
        horizon_days=policy.horizon_days,
        prior=prior,
        absences=absences or None,
    )
    refills = news_refills(forecast, window=series, now=now)
    cycle = advance_cycle(memory.cycle_started_at, forecast, refills=refills)
    if cycle is None:
        again = next_evaluation(
            forecast, decided=False, open_order_placed_at=None, policy=policy, pauses=pauses, now=now
        )
        screen = Screen.after(forecast, memory=memory.with_cycle(None), policy=policy, evaluated_at=now)
        return SlotEvaluation(
            forecast=forecast,
            cycle_started_at=None,
            verdict=None,
            evaluate_again_at=again,
            screen=screen,
            refills=refills,
        )
    in_transit = order_on_its_way(forecast, memory=memory.with_cycle(cycle), policy=policy, now=now)
    decided = memory.decided_cycle_started_at is not None and memory.decided_cycle_started_at >= cycle
    verdict = decide(
        forecast,
        mode=mode,
        policy=policy,
        already_decided_this_cycle=decided,
        order_in_transit=in_transit,
        paused=absences is not None and bool(absences.inside(np.array([now.timestamp()]))[0]),
        now=now,
    )
    again = next_evaluation(
        forecast,
        decided=decided or verdict is not None,
        open_order_placed_at=now if verdict is not None else memory.open_order_placed_at,
        policy=policy,
        pauses=pauses,
        now=now,
    )
    after = SlotMemory(
        cycle_started_at=cycle,
        decided_cycle_started_at=cycle if verdict is not None else memory.decided_cycle_started_at,
        open_order_placed_at=memory.open_order_placed_at,
    )
    return SlotEvaluation(
        forecast=forecast,
        cycle_started_at=cycle,
        verdict=verdict,
        evaluate_again_at=again,
        screen=Screen.after(forecast, memory=after, policy=policy, evaluated_at=now),
        refills=refills,
    )

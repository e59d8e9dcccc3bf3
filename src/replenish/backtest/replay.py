"""`replenish backtest`: replay recorded readings through the live service's own evaluation, in simulated time.

Contract (docs/forecasting.md, "The backtest"): READINGS.csv has `device_id,slot,ts,level` (level a fraction of a full
slot), rows sorted by ts; ORDERS.csv gets `device_id,slot,ordered_at`, one row per order the platform would
have placed with every slot on auto-order and a delivery lead time of L days. A decision at time t sees only
readings with ts <= t, so truncating the input never changes the orders before the cut.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import numpy as np

from replenish.automation.consolidation import joins
from replenish.automation.engine import (
    Screen,
    SlotEvaluation,
    SlotMemory,
    evaluate,
    order_on_its_way,
)
from replenish.automation.policy import ReorderPolicy
from replenish.constants import DEFAULT_SERVICE_LEVEL, DEVICE_ID_RE, ConsentMode
from replenish.forecasting import Forecast, RatePrior, ReadingSeries
from replenish.forecasting.calibration import GROUP_BOUNDS, GROUP_STEP, SLOT_BOUNDS, SLOT_STEP, Calibration, learn
from replenish.forecasting.model import fleet_prior, lends_to_fleet, prior_is_shared
from replenish.forecasting.outcomes import (
    CycleOutcome,
    Prediction,
    cycle_outcome,
    ended_by,
    outcome_when_empty,
    teaching,
)

READINGS_HEADER = ["device_id", "slot", "ts", "level"]
ORDERS_HEADER = ["device_id", "slot", "ordered_at"]
# --decisions: each order with the forecast it was decided on (a line pulled into a shipment: its latest forecast).
DECISIONS_HEADER = [*ORDERS_HEADER, "empty_at", "empty_at_early", "empty_at_late", "service_level"]
# Evaluation cadence, as the live evaluator's: a slot is evaluated when it reports, unless the reading can wait
# (automation.engine.Screen), and in between at the moment its latest forecast says to order.


class ReadingsError(ValueError):
    """The readings file does not follow the contract; the message names the line."""


class RecordedReading(NamedTuple):
    device_id: str
    slot: str
    ts: datetime
    level: float


@dataclass(frozen=True)
class ReplayedOrder:
    device_id: str
    slot: str
    ordered_at: datetime
    forecast: Forecast | None = field(default=None, compare=False)  # what it was decided on
    # The customer's level: the forecast planned at a calibrated one (forecasting.calibration).
    stated_service_level: float = field(default=DEFAULT_SERVICE_LEVEL, compare=False)


@dataclass
class _SlotReplay:
    slot: str
    # Growing buffers (epoch seconds, levels): the forecast reads views of them, nothing is copied per evaluation.
    times: np.ndarray = field(default_factory=lambda: np.empty(256))
    levels: np.ndarray = field(default_factory=lambda: np.empty(256))
    count: int = 0
    newest: float = 0.0  # the newest level
    memory: SlotMemory = field(default_factory=SlotMemory)
    last_forecast: Forecast | None = None
    screen: Screen | None = None  # which new readings can wait for a later evaluation
    evaluations: int = 0  # a scheduled check is stale once the slot has been evaluated again
    prediction: Prediction | None = None  # what the current cycle's order was decided on
    # Whether the current cycle's outcome was learned from when it ran empty, and what it taught then.
    learned_when_empty: bool = False
    taught: bool | None = None
    shift: float = 0.0  # its own calibration (forecasting.calibration), beside its group's
    outcomes: int = 0

    def append(self, moment: float, level: float) -> None:
        if self.count == len(self.times):
            self.times = np.resize(self.times, 2 * self.count)
            self.levels = np.resize(self.levels, 2 * self.count)
        self.times[self.count] = moment
        self.levels[self.count] = level
        self.count += 1
        self.newest = level


def read_readings(path: Path) -> Iterator[RecordedReading]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None or [column.strip() for column in header] != READINGS_HEADER:
            raise ReadingsError(f"{path}:1: the header must be {','.join(READINGS_HEADER)}, got {header!r}")
        parse = _RowParser()
        previous: datetime | None = None
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            try:
                reading = parse(row)
            except ReadingsError as error:
                raise ReadingsError(f"{path}:{line}: {error}") from None
            if previous is not None and reading.ts < previous:
                raise ReadingsError(f"{path}:{line}: rows must be sorted by ts ({reading.ts} after {previous})")
            previous = reading.ts
            yield reading


class _RowParser:
    """Checks and parses rows; a ReadingsError says what is wrong (the caller adds where). A file repeats its device
    ids and, for the slots of one message, its times: each is checked and parsed once."""

    def __init__(self) -> None:
        self.device_ids: set[str] = set()
        self.ts_text: str | None = None  # the previous row's, parsed into self.ts
        self.ts = datetime.min

    def __call__(self, row: list[str]) -> RecordedReading:
        if len(row) != len(READINGS_HEADER):
            raise ReadingsError(f"expected 4 columns, got {len(row)}")
        device_id, slot, ts_text, level_text = row[0].strip(), row[1].strip(), row[2].strip(), row[3].strip()
        if device_id not in self.device_ids:
            if not DEVICE_ID_RE.match(device_id):
                raise ReadingsError(f"device_id {device_id!r} does not match [A-Za-z0-9_-]{{1,64}}")
            self.device_ids.add(device_id)
        if not slot:
            raise ReadingsError("slot is empty")
        if ts_text != self.ts_text:
            try:
                ts = datetime.fromisoformat(ts_text)
            except ValueError:
                raise ReadingsError(f"ts {ts_text!r} is not ISO 8601") from None
            self.ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)  # the contract says UTC
            self.ts_text = ts_text
        try:
            level = float(level_text)
        except ValueError:
            raise ReadingsError(f"level {level_text!r} is not a number") from None
        if not 0 <= level <= 1:  # also false for NaN; infinities are outside
            raise ReadingsError(f"level {level_text} is outside [0, 1]")
        return RecordedReading(device_id, slot, self.ts, level)


def replay(
    readings: Iterable[RecordedReading],
    *,
    lead_time_days: float,
    margin_days: float,
    service_level: float = DEFAULT_SERVICE_LEVEL,
    pull_forward_days: float = 0.0,
    learn: bool = True,
) -> list[ReplayedOrder]:
    """The orders the platform would have placed, every slot on auto-order, each device one customer: when a slot
    orders, the device's other slots within ``pull_forward_days`` of ordering join its shipment (the same
    ``ordered_at``; automation.consolidation). With ``learn``, as live, each slot's forecasts plan at the level its
    and its group's ended cycles taught (forecasting.calibration; a group is a slot name here: the file names no
    device kinds), learned from each cycle's outcome when the replay sees the cycle run empty or a refill end
    it. Readings must come in ts order."""
    run = _Replay(
        ReorderPolicy(lead_time_days=lead_time_days, margin_days=margin_days, service_level=service_level),
        pull_forward_days=pull_forward_days,
        learn=learn,
    )
    for reading in readings:
        moment = reading.ts.timestamp()
        run.advance_to(moment)
        run.add(reading, moment)
    run.advance_to(math.inf)
    return sorted(run.orders, key=lambda order: (order.ordered_at, order.device_id, order.slot))


class _Replay:
    """Simulated time runs with the file: an instant is acted on once a later reading shows that it is over.

    At each instant the slots that reported are evaluated (all readings of that instant are in by then), and in
    between, the checks the live scheduler's every-minute evaluation would act on: the moment a quiet slot's
    forecast says to order. Everything happens in time order, so the fleet's rates that a slot borrows as its
    prior never come from readings later than the decision.
    """

    def __init__(self, policy: ReorderPolicy, *, pull_forward_days: float, learn: bool) -> None:
        self.policy = policy
        self.learn = learn
        self.groups: dict[str, tuple[float, int]] = {}  # slot name -> (shift, outcomes)
        self.pull_forward_days = pull_forward_days
        self.by_device: dict[str, list[tuple[str, str]]] = {}
        self.lead_time = timedelta(days=policy.lead_time_days)
        self.slots: dict[tuple[str, str], _SlotReplay] = {}
        self.orders: list[ReplayedOrder] = []
        self.clock = -math.inf
        self.reported: list[tuple[str, str]] = []  # slots with readings at self.clock, not evaluated yet
        self.checks: list[tuple[float, int, tuple[str, str], int]] = []  # (when, tie-break, slot, evaluation no.)
        self.fleet = FleetRates()
        self._tie = itertools.count()

    def add(self, reading: RecordedReading, moment: float) -> None:
        key = (reading.device_id, reading.slot)
        state = self.slots.get(key)
        if state is None:
            state = self.slots[key] = _SlotReplay(slot=reading.slot)
            self.by_device.setdefault(reading.device_id, []).append(key)
        if not self.reported or self.reported[-1] != key:
            self.reported.append(key)
        state.append(moment, reading.level)

    def advance_to(self, moment: float) -> None:
        if moment <= self.clock:
            return
        if self.reported:
            now = _utc(self.clock)
            for key in dict.fromkeys(self.reported):
                self._evaluate(key, now=now, scheduled=False)
            self.reported.clear()
        while self.checks and self.checks[0][0] < moment:
            when, _, key, evaluation = heapq.heappop(self.checks)
            if self.slots[key].evaluations == evaluation:
                self._evaluate(key, now=_utc(when), scheduled=True)
        self.clock = moment

    def _evaluate(self, key: tuple[str, str], *, now: datetime, scheduled: bool) -> None:
        state = self.slots[key]
        if not scheduled and state.screen is not None and state.screen.lets_wait(state.newest, now=now):
            return
        # Views of the buffers: the engine reads only its history window of them.
        series = ReadingSeries(times=state.times[: state.count], levels=state.levels[: state.count])
        memory = self._memory(state, now=now)
        evaluation = evaluate(
            series,
            now=now,
            mode=ConsentMode.AUTO_ORDER,
            policy=self.policy,
            memory=memory,
            prior=self.fleet.prior(state.slot, exclude=key),
            calibration=self._calibration(state),
        )
        if state.prediction is not None:
            self._learn(state, series=series, evaluation=evaluation, started=memory.cycle_started_at, now=now)
        if evaluation.verdict is not None:
            self._order(key, state, forecast=evaluation.forecast, now=now)
            memory = SlotMemory(evaluation.cycle_started_at, evaluation.cycle_started_at, now)
            self._pull_forward(key, now=now)
        else:
            memory = memory.with_cycle(evaluation.cycle_started_at)
        state.memory = memory
        state.last_forecast = evaluation.forecast
        state.screen = evaluation.screen
        state.evaluations += 1
        self.fleet.observe(state.slot, key, evaluation.forecast)
        check = _next_check(state, now=now, policy=self.policy)
        if check is not None:
            heapq.heappush(self.checks, (check.timestamp(), next(self._tie), key, state.evaluations))

    def _order(self, key: tuple[str, str], state: _SlotReplay, *, forecast: Forecast | None, now: datetime) -> None:
        """An order for the slot now, decided on ``forecast``: its cycle's prediction, for the outcome to check."""
        stated = self.policy.service_level
        prediction = None if forecast is None else Prediction.of(forecast, decided_at=now, stated=stated)
        # As live: a cycle's outcome stays with the decision it was recorded for, and a decision with a forecast to
        # check is not replaced by one without.
        kept = state.prediction
        if not state.learned_when_empty and not (
            kept is not None and kept.checkable and (prediction is None or not prediction.checkable)
        ):
            state.prediction = prediction
        self.orders.append(
            ReplayedOrder(key[0], key[1], ordered_at=now, forecast=forecast, stated_service_level=stated)
        )

    def _calibration(self, state: _SlotReplay) -> Calibration | None:
        if not self.learn:
            return None
        shift, cycles = self.groups.get(state.slot, (0.0, 0))
        return Calibration(group_shift=shift, slot_shift=state.shift, group_cycles=cycles, slot_cycles=state.outcomes)

    def _learn(
        self,
        state: _SlotReplay,
        *,
        series: ReadingSeries,
        evaluation: SlotEvaluation,
        started: datetime | None,
        now: datetime,
    ) -> None:
        """The decided cycle's outcome, as live records it: when its readings show it empty, then read again at the
        refill that ends it (what it taught is revised if the empty run turned out to be a dip); and what it teaches
        the slot and its group."""
        prediction = state.prediction
        if prediction is None or started is None or evaluation.cycle_started_at is None:
            return
        refilled = evaluation.cycle_started_at != started
        if refilled:
            state.prediction = None
        if not self.learn or (not refilled and state.learned_when_empty):
            return
        if refilled:
            outcome: CycleOutcome | None = cycle_outcome(
                series,
                cycle_started_at=started,
                ended_at=ended_by(evaluation.refills, started=started) or evaluation.cycle_started_at,
                prediction=prediction,
            )
        else:
            outcome = outcome_when_empty(series, cycle_started_at=started, now=now, prediction=prediction)
        if outcome is None:
            return
        missed = teaching(
            missed=outcome.ran_out_before_early,
            predicted_empty_at=prediction.empty_at,
            decided_at=prediction.decided_at,
            not_needed=False,
        )
        before, stated = state.taught, prediction.service_level
        shift, cycles = self.groups.get(state.slot, (0.0, 0))
        counted = int(missed is not None) - int(before is not None)
        self.groups[state.slot] = (
            learn(shift, missed=missed, before=before, stated=stated, step=GROUP_STEP, bounds=GROUP_BOUNDS),
            cycles + counted,
        )
        state.shift = learn(
            state.shift, missed=missed, before=before, stated=stated, step=SLOT_STEP, bounds=SLOT_BOUNDS
        )
        state.outcomes += counted
        state.learned_when_empty, state.taught = (False, None) if refilled else (True, missed)

    def _memory(self, state: _SlotReplay, *, now: datetime) -> SlotMemory:
        memory = state.memory
        if memory.open_order_placed_at is not None and now >= memory.open_order_placed_at + self.lead_time:
            memory = SlotMemory(memory.cycle_started_at, memory.decided_cycle_started_at, None)  # delivered
        return memory

    def _pull_forward(self, ordering: tuple[str, str], *, now: datetime) -> None:
        """The device's other slots that join the shipment ordered now: on their latest forecasts, as the live
        service judges them on their stored ones."""
        for key in self.by_device[ordering[0]]:
            state = self.slots[key]
            if key == ordering:
                continue
            memory = self._memory(state, now=now)
            if joins(
                state.last_forecast,
                memory=memory,
                policy=self.policy,
                pull_forward_days=self.pull_forward_days,
                now=now,
                newest=(state.newest, _utc(float(state.times[state.count - 1]))),
            ):
                self._order(key, state, forecast=state.last_forecast, now=now)
                state.memory = SlotMemory(memory.cycle_started_at, memory.cycle_started_at, now)


def _next_check(state: _SlotReplay, *, now: datetime, policy: ReorderPolicy) -> datetime | None:
    """When, with no new reading, the slot's decision could change: its forecast's order time, once nothing holds it
    back. None when that is never (already decided this cycle, or the evidence would be too old by then).

    Unlike live, a decided cycle is not looked at again every REFRESH_AFTER: only a rise (a refill) can change its
    decision, and other readings wait behind the screen for up to DECIDED_STEP. So the replay may learn that a cycle
    ran empty up to two days after its readings show it, where live learns within one. Looking daily would make
    the backtest about a fifth slower (first trace set: 8.4-9.3 s against 9.7-11.0 s) for the same results."""
    forecast, memory = state.last_forecast, state.memory
    if forecast is None or forecast.empty_at_early is None or forecast.evidence_to is None:
        return None
    if memory.cycle_started_at is not None and memory.decided_cycle_started_at == memory.cycle_started_at:
        return None
    due = forecast.empty_at_early - policy.horizon
    if memory.open_order_placed_at is not None and order_on_its_way(forecast, memory=memory, policy=policy, now=now):
        due = max(due, memory.open_order_placed_at + policy.horizon)
    if due <= now or due > forecast.evidence_to + timedelta(days=policy.max_evidence_age_days):
        return None
    return due


class FleetRates:
    """Each slot's latest well-founded consumption rate, by slot name: the prior for a slot with little of its own."""

    def __init__(self) -> None:
        self.rates: dict[str, dict[tuple[str, str], float]] = {}
        self._changes: dict[str, int] = {}
        # Per name: (changes when taken, the rates then, those rates sorted).
        self._snapshots: dict[str, tuple[int, dict[tuple[str, str], float], np.ndarray]] = {}
        # Per (name, slot; None for the prior a whole group shares): (the snapshot it was computed from, the prior),
        # until the snapshot is retaken.
        self._priors: dict[tuple[str, tuple[str, str] | None], tuple[int, RatePrior | None]] = {}

    def observe(self, name: str, key: tuple[str, str], forecast: Forecast) -> None:
        if lends_to_fleet(forecast):
            assert forecast.rate_per_day is not None
            self.rates.setdefault(name, {})[key] = forecast.rate_per_day
            self._changes[name] = self._changes.get(name, 0) + 1

    def prior(self, name: str, *, exclude: tuple[str, str]) -> RatePrior | None:
        rates = self.rates.get(name)
        if not rates:
            return None
        # The fleet moves slowly: a snapshot is retaken after every tenth of the fleet has reported, not at every
        # evaluation. The asking slot's own rate in it is left out, unless the group is big enough to share one prior
        # (forecasting.model.prior_is_shared, as in the live evaluator).
        changes = self._changes[name]
        snapshot = self._snapshots.get(name)
        if snapshot is None or changes - snapshot[0] >= max(1, len(rates) // 10):
            snapshot = (changes, dict(rates), np.sort(np.fromiter(rates.values(), dtype=float)))
            self._snapshots[name] = snapshot
        taken_at, taken, ordered = snapshot
        leaving_out = None if prior_is_shared(len(taken)) else exclude
        cached = self._priors.get((name, leaving_out))
        if cached is not None and cached[0] == taken_at:
            return cached[1]
        own = None if leaving_out is None else taken.get(leaving_out)
        if own is not None:
            place = int(np.searchsorted(ordered, own))
            ordered = np.concatenate((ordered[:place], ordered[place + 1 :]))
        prior = fleet_prior(ordered)
        self._priors[(name, leaving_out)] = (taken_at, prior)
        return prior


def _utc(epoch_seconds: float) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, UTC)


def write_orders(path: Path, orders: list[ReplayedOrder]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(ORDERS_HEADER)
        for order in orders:
            writer.writerow([order.device_id, order.slot, _iso(order.ordered_at)])


def write_decisions(path: Path, orders: list[ReplayedOrder]) -> None:
    """Each order with the forecast it was decided on: its median, early (the (1 - service level) quantile) and
    late empty dates, empty where the forecast had none."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(DECISIONS_HEADER)
        for order in orders:
            forecast = order.forecast
            moments = (forecast.empty_at, forecast.empty_at_early, forecast.empty_at_late) if forecast else ()
            dates = [_iso(moment) if moment is not None else "" for moment in moments] or ["", "", ""]
            writer.writerow(
                [order.device_id, order.slot, _iso(order.ordered_at), *dates, f"{order.stated_service_level:g}"]
            )


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")

"""`replenish backtest`: replay recorded readings through the live service's own evaluation, in simulated time.

Contract (shared/contracts.md §3): READINGS.csv has `device_id,slot,ts,level` (level a fraction of a full
slot), rows sorted by ts; ORDERS.csv gets `device_id,slot,ordered_at`, one row per order the platform would
have placed with every slot on auto-order and a delivery lead time of L days. A decision at time t sees only
readings with ts <= t, so truncating the input never changes the orders before the cut.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from replenish.automation.engine import FORECAST_HISTORY_DAYS, SlotMemory, evaluate
from replenish.automation.policy import ReorderPolicy
from replenish.constants import DEVICE_ID_RE, ConsentMode
from replenish.forecasting import Forecast, ReadingSeries

READINGS_HEADER = ["device_id", "slot", "ts", "level"]
ORDERS_HEADER = ["device_id", "slot", "ordered_at"]
# Evaluation cadence. The live scheduler evaluates every minute, which with readings minutes to hours apart means
# at every reading. The replay does the same whenever the early empty estimate is within NEAR of the order
# horizon, and otherwise at most every FAR_STEP of simulated time: far from empty, a few hours change nothing.
NEAR = timedelta(days=2)
FAR_STEP = timedelta(hours=6)


class ReadingsError(ValueError):
    """The readings file does not follow the contract; the message names the line."""


@dataclass(frozen=True)
class RecordedReading:
    device_id: str
    slot: str
    ts: datetime
    level: float


@dataclass(frozen=True)
class ReplayedOrder:
    device_id: str
    slot: str
    ordered_at: datetime


@dataclass
class _SlotReplay:
    # Growing buffers (epoch seconds, levels): the forecast reads views of them, nothing is copied per evaluation.
    times: np.ndarray = field(default_factory=lambda: np.empty(256))
    levels: np.ndarray = field(default_factory=lambda: np.empty(256))
    count: int = 0
    first_visible: int = 0
    memory: SlotMemory = field(default_factory=SlotMemory)
    last_forecast: Forecast | None = None
    last_evaluated_at: datetime | None = None

    def append(self, moment: float, level: float) -> None:
        if self.count == len(self.times):
            self.times = np.resize(self.times, 2 * self.count)
            self.levels = np.resize(self.levels, 2 * self.count)
        self.times[self.count] = moment
        self.levels[self.count] = level
        self.count += 1


def read_readings(path: Path) -> Iterator[RecordedReading]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None or [column.strip() for column in header] != READINGS_HEADER:
            raise ReadingsError(f"{path}:1: the header must be {','.join(READINGS_HEADER)}, got {header!r}")
        previous: datetime | None = None
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            reading = _parse_row(row, where=f"{path}:{line}")
            if previous is not None and reading.ts < previous:
                raise ReadingsError(f"{path}:{line}: rows must be sorted by ts ({reading.ts} after {previous})")
            previous = reading.ts
            yield reading


def _parse_row(row: list[str], *, where: str) -> RecordedReading:
    if len(row) != len(READINGS_HEADER):
        raise ReadingsError(f"{where}: expected 4 columns, got {len(row)}")
    device_id, slot, ts_text, level_text = (value.strip() for value in row)
    if not DEVICE_ID_RE.match(device_id):
        raise ReadingsError(f"{where}: device_id {device_id!r} does not match [A-Za-z0-9_-]{{1,64}}")
    if not slot:
        raise ReadingsError(f"{where}: slot is empty")
    try:
        ts = datetime.fromisoformat(ts_text)
    except ValueError:
        raise ReadingsError(f"{where}: ts {ts_text!r} is not ISO 8601") from None
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)  # the contract says UTC
    try:
        level = float(level_text)
    except ValueError:
        raise ReadingsError(f"{where}: level {level_text!r} is not a number") from None
    if not math.isfinite(level) or not 0 <= level <= 1:
        raise ReadingsError(f"{where}: level {level_text} is outside [0, 1]")
    return RecordedReading(device_id=device_id, slot=slot, ts=ts, level=level)


def replay(readings: Iterable[RecordedReading], *, lead_time_days: float, margin_days: float) -> list[ReplayedOrder]:
    """The orders the platform would have placed, every slot on auto-order. Readings must come in ts order."""
    policy = ReorderPolicy(lead_time_days=lead_time_days, margin_days=margin_days)
    slots: dict[tuple[str, str], _SlotReplay] = {}
    orders: list[ReplayedOrder] = []
    for reading in readings:
        key = (reading.device_id, reading.slot)
        state = slots.setdefault(key, _SlotReplay())
        moment = reading.ts.timestamp()
        # All readings of one instant are in before the slot is evaluated at that instant.
        if state.count and moment > state.times[state.count - 1]:
            _evaluate(key, state, now=_utc(state.times[state.count - 1]), policy=policy, orders=orders)
        state.append(moment, reading.level)
    # The last instant of each slot, under the same cadence rule as every other (a forced evaluation here would
    # make a truncated file order at a moment the full file does not).
    for key, state in slots.items():
        if state.count:
            _evaluate(key, state, now=_utc(state.times[state.count - 1]), policy=policy, orders=orders)
    orders.sort(key=lambda order: (order.ordered_at, order.device_id, order.slot))
    return orders


def _evaluate(
    key: tuple[str, str],
    state: _SlotReplay,
    *,
    now: datetime,
    policy: ReorderPolicy,
    orders: list[ReplayedOrder],
) -> None:
    if _can_wait(state, now=now, policy=policy):
        return
    horizon_start = (now - timedelta(days=FORECAST_HISTORY_DAYS)).timestamp()
    while state.times[state.first_visible] <= horizon_start:
        state.first_visible += 1
    series = ReadingSeries(
        times=state.times[state.first_visible : state.count], levels=state.levels[state.first_visible : state.count]
    )
    memory = state.memory
    if memory.open_order_placed_at is not None and now >= memory.open_order_placed_at + timedelta(
        days=policy.lead_time_days
    ):
        memory = replace(memory, open_order_placed_at=None)  # delivered
    evaluation = evaluate(series, now=now, mode=ConsentMode.AUTO_ORDER, policy=policy, memory=memory)
    memory = replace(memory, cycle_started_at=evaluation.cycle_started_at)
    if evaluation.verdict is not None:
        orders.append(ReplayedOrder(device_id=key[0], slot=key[1], ordered_at=now))
        memory = replace(memory, decided_cycle_started_at=evaluation.cycle_started_at, open_order_placed_at=now)
    state.memory = memory
    state.last_forecast = evaluation.forecast
    state.last_evaluated_at = now


def _can_wait(state: _SlotReplay, *, now: datetime, policy: ReorderPolicy) -> bool:
    if state.last_evaluated_at is None or state.last_forecast is None:
        return False
    if now - state.last_evaluated_at >= FAR_STEP:
        return False
    early = state.last_forecast.empty_at_early
    return early is None or early > now + policy.horizon + NEAR


def _utc(epoch_seconds: float) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, UTC)


def write_orders(path: Path, orders: list[ReplayedOrder]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(ORDERS_HEADER)
        for order in orders:
            writer.writerow([order.device_id, order.slot, order.ordered_at.isoformat().replace("+00:00", "Z")])

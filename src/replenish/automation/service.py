"""Re-forecast slots and act on them. The database side around the pure forecast and policy."""

from __future__ import annotations

import functools
import gc
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    Engine,
    Float,
    String,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    or_,
    type_coerce,
    update,
)
from sqlalchemy import select as select_columns  # Core's: sqlmodel's select is typed for at most four columns
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from replenish.answers import service as answers
from replenish.audit import service as audit
from replenish.automation.consolidation import joins, pulled_forward
from replenish.automation.engine import FORECAST_HISTORY_DAYS, Screen, SlotMemory, evaluate
from replenish.automation.models import Decision
from replenish.automation.ordering import LinePlan, Offer, Sizing, plan_line
from replenish.automation.policy import ReorderPolicy, Verdict, action_for, decide, within_limits
from replenish.catalogue import service as catalogue
from replenish.columns import UTCDateTime, table_of
from replenish.consent import service as consent
from replenish.consent.schemas import ConsentDocument
from replenish.constants import (
    DEFAULT_REORDER_MARGIN_DAYS,
    OPEN_ORDER_STATUSES,
    WITHDRAWN_ORDER_STATUSES,
    AuditAction,
    ConsentMode,
    DecisionAction,
    NoticeKind,
)
from replenish.customers.locks import lock_customer
from replenish.db import transaction, upsert
from replenish.devices.models import Device, Slot, SlotForecast, SlotWindow
from replenish.devices.service import forget_windows, mark_slots_due
from replenish.forecasting import Forecast, RatePrior, ReadingSeries
from replenish.forecasting.calibration import Calibration
from replenish.forecasting.model import EMPTY_LEVEL, compile_ahead, fleet_prior, lends, prior_is_shared
from replenish.forecasting.outcomes import ended_by
from replenish.ingest.models import DeviceMessage, Reading
from replenish.notifications import service as notifications
from replenish.observability import correlation
from replenish.orders import service as orders
from replenish.orders.models import Order, Shipment
from replenish.outcomes import service as outcomes

log = logging.getLogger(__name__)

ACTOR = "automation"


@dataclass
class EvaluationReport:
    slots: int = 0  # due slots taken
    forecasts: int = 0
    decisions: list[str] = field(default_factory=list)
    errors: int = 0
    interrupted: bool = False  # stopped between transactions: the process is stopping


FORECAST_HISTORY = timedelta(days=FORECAST_HISTORY_DAYS)
_NO_TIMES = np.empty(0)


@dataclass(frozen=True)
class ReadingWindow:
    """A slot's readings stamped after ``since``, in (ts, id) order: epoch seconds, levels in the slot's unit. What
    SlotWindow stores."""

    since: datetime
    times: np.ndarray
    levels: np.ndarray

    def series(self, *, now: datetime, capacity: float) -> ReadingSeries:
        """The readings an evaluation at ``now`` sees (none stamped after it), as fractions of capacity."""
        end = int(np.searchsorted(self.times, now.timestamp(), side="right"))
        return ReadingSeries(times=self.times[:end], levels=self.levels[:end] / capacity)

    def after(self, moment: datetime) -> ReadingWindow:
        """The same window, starting after ``moment`` (later than ``since``)."""
        start = int(np.searchsorted(self.times, moment.timestamp(), side="right"))
        return ReadingWindow(since=moment, times=self.times[start:], levels=self.levels[start:])


@contextmanager
def _collector_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_readings(
    *, session: Session, since: datetime, whole: list[str], newer: dict[str, datetime]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The readings of the ``whole`` slots stamped after ``since`` and of the ``newer`` ones stamped at or after
    their own moment, in one query: per slot, its times (epoch seconds) and levels (its unit), in (ts, id) order.

    The hot read of an evaluation, thousands of readings per slot from the covering index. PostgreSQL packs each
    slot's into two byte strings of float64 (one row per slot: a row per reading, each naming its slot, cost more
    to send and parse than the server's scan). SQLite, in process, gives plain tuples, its stored text parsed by
    numpy to the microsecond, each slot's rows together, so that its arrays are a slice of the whole read's.
    """
    if not whole and not newer:
        return {}
    table = table_of(Reading)
    wanted = [and_(table.c.slot_id == slot_id, table.c.ts >= start) for slot_id, start in sorted(newer.items())]
    if whole:
        wanted.append(and_(table.c.slot_id.in_(sorted(whole)), table.c.ts > since))
    if session.get_bind().dialect.name == "postgresql":
        return _read_packed(session=session, where=or_(*wanted))
    result = session.connection().execute(
        select(table.c.slot_id, type_coerce(table.c.ts, String), table.c.level)
        .where(or_(*wanted))
        .order_by(table.c.slot_id, table.c.ts, table.c.id)
    )
    # A read makes a hundred thousand row tuples at once, enough to set off full garbage collections over every
    # object of the process (numba's are many) while they pile up: 3.4x the read's time. They hold no reference
    # cycles, so the collector has nothing to find in them.
    with _collector_paused():
        try:
            rows = result.cursor.fetchall()  # the driver's plain tuples: Row objects cost more than the query
        finally:
            result.close()
        if not rows:
            return {}
        slot_ids, moments, levels = zip(*rows, strict=True)
        del rows
    times = np.array(moments, dtype="datetime64[us]").astype(np.int64) / 1_000_000
    values = np.array(levels, dtype=float)
    read = {}
    start = 0
    # Each slot's rows are one run, and a Counter keeps its keys in the order they first came: the runs' order.
    for slot_id, count in Counter(slot_ids).items():
        read[slot_id] = (times[start : start + count], values[start : start + count])
        start += count
    return read


def _read_packed(*, session: Session, where: ColumnElement[bool]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """_read_readings on PostgreSQL: per slot, its readings' times, levels and ids packed by string_agg (8 bytes
    each, big-endian), in whatever order the aggregate took them, sorted here by (ts, id): an ORDER BY in the
    aggregate sorts each slot's rows on the server (PostgreSQL 15), and costs it more than the scan."""
    table = table_of(Reading)
    nothing: ColumnClause[Any] = literal_column("''::bytea")
    result = session.connection().execute(
        select(
            table.c.slot_id,
            func.string_agg(func.float8send(cast(func.extract("epoch", table.c.ts), Float)), nothing),
            func.string_agg(func.float8send(cast(table.c.level, Float)), nothing),
            func.string_agg(func.int8send(table.c.id), nothing),
        )
        .where(where)
        .group_by(table.c.slot_id)
    )
    try:
        rows = result.cursor.fetchall()
    finally:
        result.close()
    read = {}
    for slot_id, packed_times, packed_levels, packed_ids in rows:
        times = np.frombuffer(packed_times, dtype=">f8").astype(np.float64)
        order = np.lexsort((np.frombuffer(packed_ids, dtype=">i8"), times))
        read[slot_id] = (times[order], np.frombuffer(packed_levels, dtype=">f8").astype(np.float64)[order])
    return read


def reading_windows(
    *, session: Session, slot_ids: list[str], now: datetime, changed_from: dict[str, datetime | None]
) -> tuple[dict[str, ReadingWindow], dict[str, ReadingWindow]]:
    """Each slot's readings for an evaluation at ``now``: its stored window (SlotWindow) and the readings stored
    since (``changed_from``: Slot.readings_changed_from, read under the slot's lock), or, for a slot without a
    window reaching back far enough, its whole history window from the readings table. Returns every slot's window
    and, apart, those that changed (to be stored with store_windows once the evaluation is kept)."""
    since = now - FORECAST_HISTORY
    table = table_of(SlotWindow)
    stored = {
        slot_id: ReadingWindow(
            since=window_since,
            # Copies: an array over the driver's bytes is read-only, which the compiled model would take for
            # another type of argument and compile for again.
            times=np.frombuffer(times, dtype=np.float64).copy(),
            levels=np.frombuffer(levels, dtype=np.float64).copy(),
        )
        for slot_id, window_since, times, levels in session.execute(
            select(table.c.slot_id, table.c.since, table.c.times, table.c.levels).where(
                table.c.slot_id.in_(sorted(slot_ids))
            )
        )
    }
    whole = [slot_id for slot_id in slot_ids if slot_id not in stored or stored[slot_id].since > since]
    newer = {
        slot_id: start
        for slot_id in slot_ids
        if slot_id not in whole and (start := changed_from.get(slot_id)) is not None
    }
    read = _read_readings(session=session, since=since, whole=whole, newer=newer)
    windows, changed = {}, {}
    for slot_id in slot_ids:
        times, levels = read.get(slot_id, (_NO_TIMES, _NO_TIMES))
        if slot_id in whole:
            window = ReadingWindow(since=since, times=times, levels=levels)
        elif slot_id in newer:
            # Every reading stamped from that moment on was read again (late ones among them): the stored ones
            # from then on give way to them, the rest keep their (ts, id) order before them.
            kept = stored[slot_id].after(since)
            cut = int(np.searchsorted(kept.times, newer[slot_id].timestamp(), side="left"))
            window = ReadingWindow(
                since=since,
                times=np.concatenate((kept.times[:cut], times)),
                levels=np.concatenate((kept.levels[:cut], levels)),
            )
        else:
            windows[slot_id] = stored[slot_id]
            continue
        windows[slot_id] = changed[slot_id] = window
    return windows, changed


def store_windows(*, session: Session, windows: dict[str, ReadingWindow]) -> None:
    """Store the slots' reading windows: within the transaction that read them under the slots' locks, which also
    records that they hold every reading there is (finish_claims clears Slot.readings_changed_from)."""
    if not windows:
        return
    upsert(
        session,
        table_of(SlotWindow),
        [
            {
                "slot_id": slot_id,
                "since": window.since,
                "times": np.ascontiguousarray(window.times, dtype=np.float64).tobytes(),
                "levels": np.ascontiguousarray(window.levels, dtype=np.float64).tobytes(),
            }
            for slot_id, window in windows.items()
        ],
        key=["slot_id"],
    )


def slot_readings(*, session: Session, slots: list[Slot], now: datetime) -> dict[str, ReadingSeries]:
    """Each slot's readings over the forecast's history window, straight from the readings table (every slot asked
    for has its series, empty when it has no readings there): what a stored window must always equal."""
    since = now - FORECAST_HISTORY
    read = _read_readings(session=session, since=since, whole=[slot.id for slot in slots], newer={})
    return {
        slot.id: ReadingWindow(since=since, times=times, levels=levels).series(now=now, capacity=slot.capacity)
        for slot in slots
        for times, levels in [read.get(slot.id, (_NO_TIMES, _NO_TIMES))]
    }


@dataclass
class FleetRates:
    """Per (device kind, slot name), the rates of the slots that lend theirs (see fleet_rates)."""

    rates: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    _shared: dict[tuple[str, str], RatePrior | None] = field(default_factory=dict)

    def prior_for(self, *, device: Device, slot: Slot) -> RatePrior | None:
        key = (device.kind, slot.name)
        group = self.rates.get(key)
        if not group:
            return None
        if prior_is_shared(len(group)):
            if key not in self._shared:
                self._shared[key] = fleet_prior(np.fromiter(group.values(), dtype=float, count=len(group)))
            return self._shared[key]
        return fleet_prior([rate for slot_id, rate in group.items() if slot_id != slot.id])


def fleet_rates(*, session: Session) -> FleetRates:
    """The slots whose latest forecast rests on enough of their own readings, with their rates: what a slot with
    little history borrows. Only slots of customers whose current consent allows fleet learning lend their rate."""
    fleet = FleetRates()
    lending = set(consent.customers_allowing_fleet_learning(session=session))
    if not lending:
        return fleet
    # Four fields of each stored forecast, not the whole document: at 100,000 slots the documents were most of the
    # time and the memory of this read.
    stored = table_of(SlotForecast).c.forecast
    rows = session.execute(
        select_columns(
            col(Device.kind),
            col(Slot.name),
            col(Slot.id),
            col(Device.customer_id),
            stored["rate_per_day"].as_float(),
            stored["evidence_from"].as_string(),
            stored["evidence_to"].as_string(),
        )
        .join(Slot, col(Slot.id) == col(SlotForecast.slot_id))
        .join(Device, col(Device.id) == col(Slot.device_id))
        .where(stored["status"].as_string() == "ok")
    )
    for kind, name, slot_id, customer_id, rate, evidence_from, evidence_to in rows:
        if customer_id in lending and lends(
            "ok",
            rate,
            datetime.fromisoformat(evidence_from) if evidence_from else None,
            datetime.fromisoformat(evidence_to) if evidence_to else None,
        ):
            fleet.rates.setdefault((kind, name), {})[slot_id] = rate
    return fleet


@dataclass(frozen=True)
class Evaluated:
    """What forecasting a slot came to (forecast_slot): what to do now, if anything (act_on does it), when to
    evaluate it in full again, and which new readings can wait until then."""

    verdict: Verdict | None
    next_at: datetime
    screen: Screen
    forecast: Forecast
    cycle_started_at: datetime | None
    mode: ConsentMode
    policy: ReorderPolicy
    refills: tuple[datetime, ...] = ()  # the forecast's refills that are news (engine.news_refills)


@dataclass
class EvaluationContext:
    """What evaluating a set of slots reads besides their readings, read for all of them at once: their customers
    and then the slots themselves (locked until the transaction ends, each in id order: the lock order of every
    writer of several, so that none waits on another in a circle) and the customers' current consent, each slot's
    newest open order and its newest decision's key. Their readings are read a chunk of slots at a time, as the
    evaluation reaches them (``read_windows``), and a customer's spending this month when a cap first weighs an
    order of theirs (``spent_this_month``)."""

    consents: dict[str, tuple[int, ConsentDocument]]
    open_orders: dict[str, Order]
    decided: dict[str, datetime]
    changed_from: dict[str, datetime | None]
    windows: dict[str, ReadingWindow] = field(default_factory=dict)
    changed_windows: dict[str, ReadingWindow] = field(default_factory=dict)
    # Per customer: what their orders cost this calendar month, read when a cap first weighs an order of theirs,
    # plus what this transaction has placed since (placed): one query per customer, not one per decision.
    spent: dict[str, Decimal] = field(default_factory=dict)
    # The slots evaluated in this transaction: their new forecast and cycle start, stored when it ends; a shipment
    # judges them by these rather than the stored ones.
    forecasts: dict[str, Forecast] = field(default_factory=dict)
    cycle_starts: dict[str, datetime | None] = field(default_factory=dict)
    # The operator's minimum basket (REPLENISH_MINIMUM_BASKET): what a shipment should reach before it leaves.
    minimum_basket: Decimal | None = None
    # What each slot's and its group's ended cycles taught its forecasts (forecasting.calibration).
    calibrations: dict[str, Calibration] = field(default_factory=dict)

    def decided_already(self, *, slot_id: str, cycle_started_at: datetime | None) -> bool:
        """Whether the slot's cycle has a decision: from before, or made in this transaction (a line it joined)."""
        decided = self.decided.get(slot_id)
        return decided is not None and cycle_started_at is not None and decided >= cycle_started_at

    def spent_this_month(self, *, session: Session, customer_id: str, now: datetime) -> Decimal:
        if customer_id not in self.spent:
            month_start, month_end = self.consents[customer_id][1].calendar_month(now)
            # Nothing pending counts: only orders placed or further along do (orders.SPENDING_STATUSES), and none
            # of this customer's is placed before this read. Writing out the pending decisions first would be a
            # flush for nothing.
            with session.no_autoflush:
                self.spent[customer_id] = orders.spent_between(
                    session=session, customer_id=customer_id, start=month_start, end=month_end
                )
        return self.spent[customer_id]

    def placed(self, *, customer_id: str, total_price: Decimal | None) -> None:
        # Never read: no cap weighs this customer's orders. A customer has one cap for all their slots (one consent,
        # locked for the transaction), and within_limits reads the spending before any priced order under it.
        if total_price is None or customer_id not in self.spent:
            assert total_price is None or self.consents[customer_id][1].monthly_spending_cap is None
            return
        self.spent[customer_id] += total_price

    @classmethod
    def load(cls, *, session: Session, slots: list[tuple[Slot, Device]]) -> EvaluationContext:
        slot_ids = [slot.id for slot, _ in slots]
        customer_ids = sorted({device.customer_id for _, device in slots})
        consents = {
            customer_id: (version.version, ConsentDocument.model_validate(version.document))
            for customer_id, version in consent.lock_customers(session=session, customer_ids=customer_ids).items()
        }
        # Then the slots, in id order as every writer of several slots takes them (ingest, mark_slots_due); with
        # when their readings last changed, as of the lock: ingest sets it in the transaction storing them.
        changed_from = dict(
            session.exec(
                select(Slot.id, Slot.readings_changed_from)
                .where(col(Slot.id).in_(sorted(slot_ids)))
                .order_by(col(Slot.id))
                .with_for_update()
            ).all()
        )

        open_orders: dict[str, Order] = {}
        for order in session.exec(
            select(Order)
            .where(col(Order.slot_id).in_(slot_ids), col(Order.status).in_(OPEN_ORDER_STATUSES))
            .order_by(col(Order.created_at))
        ):
            open_orders[order.slot_id] = order  # the newest last
        return cls(
            consents=consents,
            open_orders=open_orders,
            decided=_latest_decision_keys(session=session, slot_ids=slot_ids),
            changed_from=changed_from,
            calibrations=outcomes.calibrations(session=session, slots=slots),
        )

    def read_windows(self, *, session: Session, slots: list[Slot], now: datetime) -> None:
        """Read the slots' reading windows (reading_windows), for readings_of."""
        windows, changed = reading_windows(
            session=session, slot_ids=[slot.id for slot in slots], now=now, changed_from=self.changed_from
        )
        self.windows.update(windows)
        self.changed_windows.update(changed)

    def readings_of(self, *, slot: Slot, now: datetime) -> ReadingSeries:
        return self.windows[slot.id].series(now=now, capacity=slot.capacity)


def forecast_slot(
    *,
    slot: Slot,
    device: Device,
    now: datetime,
    margin_days: float,
    readings: ReadingSeries,
    context: EvaluationContext,
    prior: RatePrior | None = None,
) -> Evaluated:
    """Forecast the slot and decide, without acting on the decision (act_on does): what the slot's evaluation came
    to, with the moment it should be evaluated again and the forecast, for the caller to store (store_forecasts).
    ``context`` holds what was read for it (EvaluationContext.load), its customer locked. The slot's new cycle start
    is in the result: the caller stores it (finish_claims)."""
    document = context.consents[device.customer_id][1]
    mode = document.mode_for(device_id=device.id, slot_name=slot.name)
    policy = ReorderPolicy(
        lead_time_days=slot.lead_time_days, margin_days=margin_days, service_level=slot.service_level
    )
    open_order = context.open_orders.get(slot.id)
    memory = SlotMemory(
        cycle_started_at=slot.cycle_started_at,
        decided_cycle_started_at=context.decided.get(slot.id),
        open_order_placed_at=open_order.created_at if open_order else None,
    )
    calibration = context.calibrations.get(slot.id)
    evaluation = evaluate(
        readings,
        now=now,
        mode=mode,
        policy=policy,
        memory=memory,
        prior=prior,
        pauses=document.pauses_for(device_id=device.id, slot_name=slot.name),
        calibration=calibration,
    )
    next_at = evaluation.evaluate_again_at
    if slot.level_at is not None and now < slot.level_at < next_at:
        next_at = slot.level_at  # a reading stamped ahead of this clock counts from its time
    verdict = evaluation.verdict if evaluation.cycle_started_at is not None else None
    if (
        verdict is not None
        and calibration is not None
        and calibration.service_level(policy.service_level) != (policy.service_level)
    ):
        verdict = Verdict(verdict.action, f"{verdict.reason}; {calibration.describe(policy.service_level)}")
    return Evaluated(
        verdict=verdict,
        next_at=next_at,
        screen=evaluation.screen,
        forecast=evaluation.forecast,
        cycle_started_at=evaluation.cycle_started_at,
        mode=mode,
        policy=policy,
        refills=evaluation.refills,
    )


def act_on(
    *,
    session: Session,
    slot: Slot,
    device: Device,
    now: datetime,
    evaluated: Evaluated,
    context: EvaluationContext,
    trigger: str | None,
) -> list[Decision]:
    """Act on a slot's verdict (forecast_slot), within the consent's limits: the decision and what it brings. An
    order becomes a shipment, which the customer's other slots due within their pull-forward horizon join (each a
    line with its own decision, after the slot's in the list). Empty when the slot already joined a shipment in this
    transaction.
    ``trigger``: the correlation id of the message behind the newest reading the forecast used (trigger_messages),
    which the decision, its order or notification, their outbox messages and log lines all carry."""
    assert evaluated.verdict is not None and evaluated.cycle_started_at is not None
    if context.decided_already(slot_id=slot.id, cycle_started_at=evaluated.cycle_started_at):
        return []
    version, document = context.consents[device.customer_id]
    verdict = evaluated.verdict
    line = None
    if verdict.action in (DecisionAction.PLACE_ORDER, DecisionAction.REQUEST_APPROVAL):
        line, verdict = _within_limits(
            session=session,
            slot=slot,
            device=device,
            document=document,
            forecast=evaluated.forecast,
            verdict=verdict,
            spent_this_month=lambda: context.spent_this_month(session=session, customer_id=device.customer_id, now=now),
        )
        if verdict.action == DecisionAction.PLACE_ORDER:
            context.placed(customer_id=device.customer_id, total_price=line.total_price)
    shipment = None
    if line is not None:
        shipment = _shipment_for(
            session=session,
            slot=slot,
            device=device,
            document=document,
            forecast=evaluated.forecast,
            verdict=verdict,
            now=now,
        )
    messages: list[Callable[[], object]] = []
    with correlation.bound(trigger):
        decision, order = _act(
            messages=messages,
            session=session,
            slot=slot,
            device=device,
            cycle_started_at=evaluated.cycle_started_at,
            forecast=evaluated.forecast,
            verdict=verdict,
            mode=evaluated.mode,
            consent_version=version,
            consent_document=document,
            policy=evaluated.policy,
            now=now,
            correlation_id=trigger,
            line=line,
            shipment=shipment,
        )
        context.decided[slot.id] = evaluated.cycle_started_at
        if order is not None:
            context.open_orders[slot.id] = order
        decisions = [decision]
        if shipment is not None:
            decisions += _pull_forward(
                session=session,
                shipment=shipment,
                ordering=(slot, device, evaluated.forecast),
                margin_days=evaluated.policy.margin_days,
                context=context,
                now=now,
                trigger=trigger,
                messages=messages,
            )
        # Now that the box is complete: each line's request or announcement names the others, and its hand-off.
        for message in messages:
            message()
    return decisions


def _shipment_for(
    *,
    session: Session,
    slot: Slot,
    device: Device,
    document: ConsentDocument,
    forecast: Forecast | None,
    verdict: Verdict,
    now: datetime,
) -> Shipment:
    """The shipment a slot's new order goes in: the customer's shipment whose hand-off is still to come, when that
    is soon enough for this order (an automatic one must leave by its own hand-off), else a new one."""
    by = None
    if verdict.action == DecisionAction.PLACE_ORDER:
        by = answers.hand_off_time(
            document=document,
            lead_time_days=slot.lead_time_days,
            empty_at_early=forecast.empty_at_early if forecast is not None else None,
            now=now,
        )
    customer_id = device.customer_id
    pending = orders.pending_shipment(session=session, customer_id=customer_id, now=now, by=by)
    return pending or orders.new_shipment(session=session, customer_id=customer_id, now=now)


@dataclass(frozen=True)
class _Joiner:
    """A slot that may join a shipment: what its line is decided on."""

    slot: Slot
    device: Device
    mode: ConsentMode
    action: DecisionAction
    forecast: Forecast
    cycle: datetime
    policy: ReorderPolicy
    # Its newest decision's key, withdrawn requests included: a new key comes after it.
    latest_key: datetime | None
    # Within the customer's pull-forward horizon (not only the minimum basket's).
    within: bool


# How far ahead a shipment below the operator's minimum basket looks for slots to fill it.
BASKET_HORIZON_DAYS = 60.0


def _pull_forward(
    *,
    session: Session,
    shipment: Shipment,
    ordering: tuple[Slot, Device, Forecast],
    margin_days: float,
    context: EvaluationContext,
    now: datetime,
    trigger: str | None,
    messages: list[Callable[[], object]] | None = None,
) -> list[Decision]:
    """The customer's other slots that would order within their pull-forward horizon join ``shipment``
    (automation.consolidation.joins), each a line with its own decision, consent mode and limits, and the reason
    it came sooner. Slots whose consent orders nothing by itself (notify_only, off) or that are paused never join.
    They are judged by their forecast of this transaction, else their stored one.

    With an operator's minimum basket (context.minimum_basket) a shipment below it takes the next-due slots too,
    soonest first, until it reaches it; failing that, its hand-off waits as long as the forecasts allow: until the
    earliest latest-useful moment of its placed lines (their early empty date less their lead time)."""
    ordering_slot, ordering_device, ordering_forecast = ordering
    customer_id = ordering_device.customer_id
    ordering_name = _slot_label(ordering_slot, ordering_device, beside=ordering_device)
    reachable = _joiners(
        session=session,
        customer_id=customer_id,
        ordering_slot=ordering_slot,
        margin_days=margin_days,
        basket_horizon_days=BASKET_HORIZON_DAYS if context.minimum_basket else None,
        context=context,
        now=now,
    )
    within = [joiner for joiner in reachable if joiner.within]
    decisions = _add_lines(
        session=session,
        shipment=shipment,
        joiners=within,
        ordering=(ordering_device, ordering_forecast, ordering_name),
        context=context,
        now=now,
        trigger=trigger,
        messages=messages,
    )
    minimum = context.minimum_basket
    if minimum is None:
        return decisions
    basket = orders.basket_value(session=session, shipment_id=shipment.id)
    if basket >= minimum:
        return decisions
    # Soonest first, one at a time, until the basket reaches the minimum.
    rest = sorted(
        (joiner for joiner in reachable if not joiner.within),
        key=lambda joiner: joiner.forecast.empty_at_early or now,
    )
    for joiner in rest:
        if basket >= minimum:
            break
        added = _add_lines(
            session=session,
            shipment=shipment,
            joiners=[joiner],
            ordering=(ordering_device, ordering_forecast, ordering_name),
            context=context,
            now=now,
            trigger=trigger,
            why=f"to reach the minimum basket of {minimum} (it was {basket})",
            messages=messages,
        )
        decisions.extend(added)
        basket = orders.basket_value(session=session, shipment_id=shipment.id)
    if basket < minimum:
        latest = orders.latest_useful_hand_off(session=session, shipment_id=shipment.id)
        if latest is not None:
            orders.hold_shipment(
                session=session,
                shipment_id=shipment.id,
                until=latest,
                now=now,
                reason=f"the shipment is {basket}, under the minimum basket of {minimum}: it waits as long as the "
                "forecasts allow, for other slots to join it",
            )
    return decisions


def _joiners(
    *,
    session: Session,
    customer_id: str,
    ordering_slot: Slot,
    margin_days: float,
    basket_horizon_days: float | None,
    context: EvaluationContext,
    now: datetime,
) -> list[_Joiner]:
    """The customer's other slots that could join a shipment ordered now (consolidation.joins): within their
    pull-forward horizon, or, to fill a minimum basket, within ``basket_horizon_days`` of ordering by themselves."""
    document = context.consents[customer_id][1]
    candidates = session.exec(
        select(Slot, Device)
        .join(Device, col(Device.id) == col(Slot.device_id))
        .where(col(Device.customer_id) == customer_id, col(Slot.id) != ordering_slot.id)
        .order_by(col(Slot.id))
    ).all()
    if not candidates:
        return []
    ids = [slot.id for slot, _ in candidates]
    wanted = set(ids)
    # What this transaction decided and ordered is in the context: the reads need not write it out first.
    with session.no_autoflush:
        stored = {
            row.slot_id: row for row in session.exec(select(SlotForecast).where(col(SlotForecast.slot_id).in_(ids)))
        }
        decided = _latest_decision_keys(session=session, slot_ids=ids) | {
            slot_id: key for slot_id, key in context.decided.items() if slot_id in wanted
        }
        keys = _latest_decision_keys(session=session, slot_ids=ids, counting_withdrawn_requests=True)
        open_orders = {
            order.slot_id: order
            for order in session.exec(
                select(Order)
                .where(col(Order.slot_id).in_(ids), col(Order.status).in_(OPEN_ORDER_STATUSES))
                .order_by(col(Order.created_at))
            )
        } | {slot_id: order for slot_id, order in context.open_orders.items() if slot_id in wanted}
    found = []
    for slot, device in candidates:
        mode = document.mode_for(device_id=device.id, slot_name=slot.name)
        action = action_for(mode)
        if action not in (DecisionAction.PLACE_ORDER, DecisionAction.REQUEST_APPROVAL) or any(
            start <= now < end for start, end in document.pauses_for(device_id=device.id, slot_name=slot.name)
        ):
            continue
        forecast: Forecast | None
        if slot.id in context.forecasts:
            forecast, cycle = context.forecasts[slot.id], context.cycle_starts[slot.id]
        else:
            kept = stored.get(slot.id)
            forecast = Forecast.from_json(kept.forecast) if kept is not None else None
            cycle = slot.cycle_started_at
        if forecast is None or cycle is None:
            continue
        open_order = open_orders.get(slot.id)
        policy = ReorderPolicy(
            lead_time_days=slot.lead_time_days, margin_days=margin_days, service_level=slot.service_level
        )
        memory = SlotMemory(
            cycle_started_at=cycle,
            decided_cycle_started_at=decided.get(slot.id),
            open_order_placed_at=open_order.created_at if open_order is not None else None,
        )
        newest = (slot.level / slot.capacity, slot.level_at) if slot.level is not None and slot.level_at else None
        joining = functools.partial(joins, forecast, memory=memory, policy=policy, now=now, newest=newest)
        within = joining(pull_forward_days=document.pull_forward_days)
        if within or (basket_horizon_days is not None and joining(pull_forward_days=basket_horizon_days)):
            found.append(_Joiner(slot, device, mode, action, forecast, cycle, policy, keys.get(slot.id), within))
    return found


def _add_lines(
    *,
    session: Session,
    shipment: Shipment,
    joiners: list[_Joiner],
    ordering: tuple[Device, Forecast, str],
    context: EvaluationContext,
    now: datetime,
    trigger: str | None,
    why: str | None = None,
    messages: list[Callable[[], object]] | None = None,
) -> list[Decision]:
    """A line in ``shipment`` for each joiner, with its own decision and limits, and the reason it came now
    (``messages``: see _act)."""
    if not joiners:
        return []
    ordering_device, ordering_forecast, ordering_name = ordering
    customer_id = ordering_device.customer_id
    version, document = context.consents[customer_id]
    decisions = []
    # Each line carries the message behind its own newest reading, as a decision of its own would.
    triggers = trigger_messages(session=session, slot_ids=[joiner.slot.id for joiner in joiners], now=now)
    for joiner in joiners:
        slot, device, forecast = joiner.slot, joiner.device, joiner.forecast
        due = decide(
            forecast,
            mode=joiner.mode,
            policy=joiner.policy,
            already_decided_this_cycle=False,
            order_in_transit=False,
            now=now,
        )
        # A line that would have ordered now by itself only shares the box: its decision is the cycle's, as its own
        # would have been. One pulled forward is keyed inside the cycle, as a customer's own order is: taken out of
        # the shipment, it leaves the cycle to the slot's own decision at its time.
        key, pulled_into = joiner.cycle, None
        if due is not None:
            reason = f"{due.reason}; in the same shipment as {ordering_name}"
        else:
            after = max(filter(None, (joiner.latest_key, context.decided.get(slot.id))), default=None)
            key = _key_after(slot=slot, now=now, after=after, cycle=joiner.cycle)
            pulled_into = shipment.id
            pulled = pulled_forward(
                forecast=forecast,
                name=_slot_label(slot, device, beside=ordering_device),
                ordering=ordering_forecast,
                ordering_name=ordering_name,
            )
            reason = f"{pulled.reason}{f' {why}' if why else ''}; consent mode {joiner.mode}"
        line, verdict = _within_limits(
            session=session,
            slot=slot,
            device=device,
            document=document,
            forecast=forecast,
            verdict=Verdict(action=joiner.action, reason=reason),
            spent_this_month=lambda: context.spent_this_month(session=session, customer_id=customer_id, now=now),
        )
        if verdict.action == DecisionAction.PLACE_ORDER:
            context.placed(customer_id=customer_id, total_price=line.total_price)
        decision, order = _act(
            session=session,
            slot=slot,
            device=device,
            cycle_started_at=key,
            forecast=forecast,
            verdict=verdict,
            mode=joiner.mode,
            consent_version=version,
            consent_document=document,
            policy=joiner.policy,
            now=now,
            correlation_id=triggers.get(slot.id, trigger),
            line=line,
            shipment=shipment,
            pulled_into=pulled_into,
            messages=messages,
        )
        # Its own verdict in this transaction, if it has one, is not acted on (decided_already); its next
        # evaluation reads the decision and the order.
        context.decided[slot.id] = key
        if order is not None:
            context.open_orders[slot.id] = order
        decisions.append(decision)
    return decisions


def _slot_label(slot: Slot, device: Device, *, beside: Device) -> str:
    """A slot's name as the customer reads it next to ``beside``'s: its device's name too when that differs."""
    return slot.name if device.id == beside.id else f"{device.name} {slot.name}"


def line_for(
    *,
    session: Session,
    slot: Slot,
    device: Device,
    document: ConsentDocument,
    forecast: Forecast | None,
    quantity: int | None = None,
) -> LinePlan:
    """What an order for the slot would ask for now (automation.ordering.plan_line): the customer's product, or
    its first available substitute, at the catalogue's current price, sized as the slot says (``quantity``: the
    customer's own). A product the catalogue does not list is ordered as named, at the slot's unit price."""
    with session.no_autoflush:  # the catalogue is not written here
        versions = catalogue.current_versions(session=session, skus=[slot.product_sku, *slot.substitute_skus])
    shape = catalogue.SlotShape(device_kind=device.kind, slot_name=slot.name, unit=slot.unit)

    def offer(sku: str) -> Offer | None:
        version = versions.get(sku)
        if version is None:
            return None
        return Offer(
            sku=sku,
            version_id=version.id,
            name=version.name,
            pack_size=version.pack_size,
            price=version.price,
            currency=version.currency,
            # One changed since it was chosen so that it no longer fits the slot cannot be ordered for it.
            available=version.available and catalogue.fits(version, shape) is None,
        )

    return plan_line(
        chosen=offer(slot.product_sku) or Offer(sku=slot.product_sku, price=slot.unit_price),
        substitutes=[found for sku in slot.substitute_skus if (found := offer(sku)) is not None],
        sizing=Sizing(
            capacity=slot.capacity,
            unit=slot.unit,
            fixed_quantity=slot.order_quantity,
            up_to_days=slot.order_up_to_days,
        ),
        forecast=forecast,
        max_quantity=document.max_quantity_per_order,
        quantity=quantity,
    )


def _within_limits(
    *,
    session: Session,
    slot: Slot,
    device: Device,
    document: ConsentDocument,
    forecast: Forecast | None,
    verdict: Verdict,
    spent_this_month: Callable[[], Decimal],
    quantity: int | None = None,
) -> tuple[LinePlan, Verdict]:
    """The line an order for the slot would be (line_for), and the verdict within the consent's limits on it
    (policy.within_limits), its reason saying what the line orders and why."""
    line = line_for(session=session, slot=slot, device=device, document=document, forecast=forecast, quantity=quantity)
    limited = within_limits(
        explained(verdict, line),
        limits=document.limits_for(device_id=device.id, slot_name=slot.name),
        quantity=line.quantity,
        total_price=line.total_price,
        spent_this_month=spent_this_month,
        asks=line.asks,
    )
    return line, limited


def explained(verdict: Verdict, line: LinePlan) -> Verdict:
    """The verdict, its reason saying what the line orders and why (a substitute, a quantity sized to use)."""
    if not line.explanation:
        return verdict
    return Verdict(action=verdict.action, reason=f"{verdict.reason}; {'; '.join(line.explanation)}")


@dataclass(frozen=True)
class OrderNow:
    """What an order-now request came to: the order (new, or the slot's open one) and whether it is new."""

    order: Order
    created: bool


def order_now(
    *,
    session: Session,
    slot: Slot,
    device: Device,
    now: datetime,
    actor: str,
    quantity: int | None = None,
    from_device: bool = False,
    margin_days: float = DEFAULT_REORDER_MARGIN_DAYS,
) -> OrderNow | None:
    """The customer orders a slot's consumable now: from the app, the API, or the device's reorder button.

    Idempotent over the open order's lifetime: while the slot has an open order, that order is the answer and
    nothing new is made (a double press orders once). Otherwise a decision keyed by this moment (so that automation
    counts the slot's current cycle as decided and does not order it a second time) and its order, under the same
    limits as automatic orders: over the spending cap or quantity limit it becomes an approval request. The
    customer asking in the app or the API places it (their own act; consent governs what the platform does by
    itself); a device's button follows the slot's consent mode: auto_order places it, ask_first and notify_only
    ask first, off does nothing (None). A placed one gets the consent's cancel window, announced, as any
    automatic order.
    """
    lock_customer(session=session, customer_id=device.customer_id)
    open_order = orders.open_order_for_slot(session=session, slot_id=slot.id)
    if open_order is not None:
        return OrderNow(order=open_order, created=False)
    version, document = consent.current_document(session=session, customer_id=device.customer_id)
    mode = document.mode_for(device_id=device.id, slot_name=slot.name)
    if from_device and mode == ConsentMode.OFF:
        log.info("reorder button of %s/%s: consent mode off, nothing ordered", device.id, slot.name)
        return None
    stored = session.get(SlotForecast, slot.id)
    forecast = Forecast.from_json(stored.forecast) if stored is not None else None
    policy = ReorderPolicy(
        lead_time_days=slot.lead_time_days, margin_days=margin_days, service_level=slot.service_level
    )
    asked = "the device's reorder button was pressed" if from_device else f"{actor} ordered it now"
    verdict = Verdict(action=DecisionAction.PLACE_ORDER, reason=asked)
    if from_device and mode in (ConsentMode.ASK_FIRST, ConsentMode.NOTIFY_ONLY):
        verdict = Verdict(action=DecisionAction.REQUEST_APPROVAL, reason=f"{asked}; consent mode {mode}: asks first")
    month_start, month_end = document.calendar_month(now)
    line, verdict = _within_limits(
        session=session,
        slot=slot,
        device=device,
        document=document,
        forecast=forecast,
        verdict=verdict,
        spent_this_month=lambda: orders.spent_between(
            session=session, customer_id=device.customer_id, start=month_start, end=month_end
        ),
        quantity=quantity,
    )
    _, order = _act(
        session=session,
        slot=slot,
        device=device,
        shipment=_shipment_for(
            session=session, slot=slot, device=device, document=document, forecast=forecast, verdict=verdict, now=now
        ),
        cycle_started_at=_request_key(session=session, slot=slot, now=now),
        # No forecast yet (a new slot): the explanation says so.
        forecast=forecast
        or Forecast(
            status="insufficient_data", computed_at=now, cycle_started_at=None, readings_used=0, outliers_dropped=0
        ),
        verdict=verdict,
        mode=mode,
        consent_version=version,
        consent_document=document,
        policy=policy,
        now=now,
        correlation_id=correlation.current(),
        actor=actor,
        line=line,
        requested_by=actor,
    )
    assert order is not None
    return OrderNow(order=order, created=True)


def _latest_decision_key(
    *, session: Session, slot_id: str, counting_withdrawn_requests: bool = False
) -> datetime | None:
    """The newest decision's key: what tells the engine which cycle is decided. An order the customer asked for and
    then cancelled or declined (a button pressed by mistake) decides nothing: automation still watches that cycle."""
    return _latest_decision_keys(
        session=session, slot_ids=[slot_id], counting_withdrawn_requests=counting_withdrawn_requests
    ).get(slot_id)


def _latest_decision_keys(
    *, session: Session, slot_ids: list[str], counting_withdrawn_requests: bool = False
) -> dict[str, datetime]:
    """_latest_decision_key of each slot that has one."""
    query = (
        select(Decision.slot_id, func.max(Decision.cycle_started_at))
        .outerjoin(Order, col(Order.decision_id) == col(Decision.id))
        .where(col(Decision.slot_id).in_(slot_ids))
        .group_by(col(Decision.slot_id))
    )
    if not counting_withdrawn_requests:
        query = query.where(
            or_(
                and_(col(Decision.requested_by).is_(None), col(Decision.pulled_into).is_(None)),
                col(Order.status).not_in(WITHDRAWN_ORDER_STATUSES),
            )
        )
    return dict(session.exec(query).all())


def _request_key(*, session: Session, slot: Slot, now: datetime) -> datetime:
    """The key of an order the customer asks for now: the slot's newest reading's time (the device's clock, as the
    cycles' starts are), so that a refill reported after it starts a cycle of its own even when the device's clock
    runs behind the platform's; after the cycle's start, and after every earlier decision's key (unique)."""
    latest = _latest_decision_key(session=session, slot_id=slot.id, counting_withdrawn_requests=True)
    return _key_after(slot=slot, now=now, after=latest)


def _key_after(*, slot: Slot, now: datetime, after: datetime | None, cycle: datetime | None = None) -> datetime:
    """A decision key inside the slot's current cycle (``cycle``: its start as this transaction sees it), after its
    newest reading and after ``after`` (its newest decision's key, withdrawn requests included)."""
    # A microsecond after it: never the very time of a reading, which may yet become a cycle's start and its key.
    key = max(filter(None, (slot.level_at, slot.cycle_started_at, cycle)), default=now) + timedelta(microseconds=1)
    if after is not None and key <= after:
        key = after + timedelta(microseconds=1)
    return key


def trigger_messages(*, session: Session, slot_ids: list[str], now: datetime) -> dict[str, str]:
    """Per slot, the correlation id of the message behind its newest reading stamped by ``now`` (the newest the
    forecast used, as slot_readings chooses them): the one that tipped its decision. One query for them all, each
    slot's newest found through the readings' (slot, ts) index. Slots without such a reading have none."""
    if not slot_ids:
        return {}
    readings, slots, messages = table_of(Reading), table_of(Slot), table_of(DeviceMessage)
    newest = (
        select(readings.c.message_id)
        .where(readings.c.slot_id == slots.c.id, readings.c.ts <= bindparam("now", now, type_=UTCDateTime))
        .order_by(readings.c.ts.desc(), readings.c.id.desc())
        .limit(1)
        .correlate(slots)
        .scalar_subquery()
    )
    # Each slot's message id first, then the messages by their key: the slots drive the query whatever the planner
    # makes of the readings.
    behind = (
        select(slots.c.id.label("slot_id"), newest.label("message_id"))
        .where(slots.c.id.in_(sorted(slot_ids)))
        .subquery()
    )
    # What the transaction has pending is decisions, orders and such: not readings.
    with session.no_autoflush:
        rows = session.execute(
            select(behind.c.slot_id, messages.c.device_id, messages.c.seq).join(
                messages, messages.c.id == behind.c.message_id
            )
        ).all()
    return {slot_id: correlation.for_device_message(device_id, seq) for slot_id, device_id, seq in rows}


def _act(
    *,
    session: Session,
    slot: Slot,
    device: Device,
    cycle_started_at: datetime,
    forecast: Forecast,
    verdict: Verdict,
    mode: str,
    consent_version: int,
    consent_document: ConsentDocument,
    policy: ReorderPolicy,
    now: datetime,
    correlation_id: str | None,
    actor: str = ACTOR,
    line: LinePlan | None = None,
    requested_by: str | None = None,
    shipment: Shipment | None = None,
    pulled_into: str | None = None,
    messages: list[Callable[[], object]] | None = None,
) -> tuple[Decision, Order | None]:
    """The decision, and its order (None for a notification). ``messages``: the order's request or announcement is
    added there, for the caller to write once the shipment is complete (it names the other lines of the box, and
    the hand-off as it ends up), instead of written now."""
    decision = Decision(
        slot_id=slot.id,
        device_id=device.id,
        customer_id=device.customer_id,
        cycle_started_at=cycle_started_at,
        action=verdict.action,
        consent_mode=mode,
        consent_version=consent_version,
        decided_at=now,
        reason=verdict.reason,
        forecast=forecast.to_json(),
        policy=policy.to_json(),
        correlation_id=correlation_id,
        requested_by=requested_by,
        pulled_into=pulled_into,
    )
    # Not flushed here: the decision and everything it brings (order, history, links, notices, outbox) go out
    # together (columns.written_after orders them). A second decision for the cycle fails that flush, unique on
    # (slot, cycle), and nothing of the transaction is kept.
    session.add(decision)
    audit.record(
        session=session,
        at=now,
        actor=actor,
        action=AuditAction.DECISION,
        customer_id=device.customer_id,
        subject_type="decision",
        subject_id=decision.id,
        detail={
            "slot": f"{device.id}/{slot.name}",
            "action": verdict.action,
            "consent_version": consent_version,
            "reason": verdict.reason,
        },
    )
    order = None
    if verdict.action == DecisionAction.NOTIFY:
        notifications.notify_customer(
            session=session,
            customer_id=device.customer_id,
            document=consent_document,
            consent_version=consent_version,
            subject=f"{device.name}: {slot.name} is running low",
            body=verdict.reason,
            now=now,
            decision_id=decision.id,
            kind=NoticeKind.LOW,
        )
    elif verdict.action == DecisionAction.REQUEST_APPROVAL:
        assert line is not None
        order = orders.create(
            session=session,
            decision=decision,
            slot=slot,
            shipment=shipment or orders.new_shipment(session=session, customer_id=device.customer_id, now=now),
            awaiting_approval=True,
            now=now,
            actor=actor,
            line=line,
        )
        message: Callable[[], object] = functools.partial(
            answers.request_approval,
            session=session,
            order=order,
            lead_time_days=slot.lead_time_days,
            # The customer's own order waits for their answer: no deadline decides it for them.
            empty_at_early=None if requested_by else forecast.empty_at_early,
            document=consent_document,
            consent_version=consent_version,
            now=now,
            decision=decision,
        )
    else:
        assert line is not None
        order = orders.create(
            session=session,
            decision=decision,
            slot=slot,
            shipment=shipment or orders.new_shipment(session=session, customer_id=device.customer_id, now=now),
            awaiting_approval=False,
            now=now,
            actor=actor,
            line=line,
            hand_off_at=answers.hand_off_time(
                document=consent_document,
                lead_time_days=slot.lead_time_days,
                empty_at_early=forecast.empty_at_early,
                now=now,
            ),
        )
        message = functools.partial(
            answers.announce_order,
            session=session,
            order=order,
            lead_time_days=slot.lead_time_days,
            document=consent_document,
            consent_version=consent_version,
            now=now,
            decision=decision,
        )
    if order is not None:
        if messages is None:
            message()
        else:
            messages.append(message)
    log.info("decision %s: %s for %s/%s (%s)", decision.id, verdict.action, device.id, slot.name, verdict.reason)
    return decision, order


def store_forecasts(*, session: Session, forecasts: dict[str, Forecast], now: datetime) -> None:
    """Store each slot's latest forecast, computed ``now``: one statement for them all."""
    upsert(
        session,
        table_of(SlotForecast),
        [
            {"slot_id": slot_id, "computed_at": now, "forecast": forecast.to_json()}
            for slot_id, forecast in forecasts.items()
        ],
        key=["slot_id"],
    )


# How many due slots an evaluator claims at once, and for how long: a claim expires, so the slots of an evaluator
# that was killed are taken by another one then.
EVALUATION_BATCH = 200
# How many slots' readings one query reads (and the messages behind their verdicts): enough to save the round trips,
# few enough that a transaction cut short (TRANSACTION_SECONDS) has not read many it did not reach.
READ_CHUNK = 50
CLAIM_LEASE = timedelta(minutes=2)
# A transaction of a batch is committed after about this long: it holds the row locks of the customers and slots
# it decided on (on SQLite, the one writer's lock) meanwhile, which ingest and the API may be waiting for.
TRANSACTION_SECONDS = 0.5
# A slot whose evaluation failed is tried again after this long, not again and again within one pass.
RETRY_AFTER = timedelta(minutes=1)
# How many times one pass evaluates a slot that was marked due again while it was being evaluated.
EVALUATIONS_PER_PASS = 2


@dataclass(frozen=True)
class Claim:
    slot_id: str
    marks: int  # the slot's due_marks when it was claimed: a mark since means evaluate it again


def claim_due(
    *, session: Session, now: datetime, limit: int, lease: timedelta = CLAIM_LEASE, at: datetime | None = None
) -> list[Claim]:
    """Claim up to ``limit`` slots due by ``now`` and not claimed by another evaluator, soonest due first, until
    ``at`` (the time of the claim; a pass evaluates at one ``now`` however long it takes) plus ``lease``. On
    PostgreSQL the rows another evaluator is claiming at the same moment are skipped (SKIP LOCKED), so several
    evaluators share the due slots without waiting for each other; SQLite has one writer at a time anyway."""
    at = at or now
    table = table_of(Slot)
    due = (
        select(table.c.id)
        .where(
            table.c.due_at <= now,
            or_(table.c.claimed_until.is_(None), table.c.claimed_until <= at),
        )
        .order_by(table.c.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(table)
        .where(table.c.id.in_(due.scalar_subquery()))
        .values(claimed_until=at + lease)
        .returning(table.c.id, table.c.due_marks)
    )
    return [Claim(slot_id=slot_id, marks=marks) for slot_id, marks in rows]


def finish_claims(
    *,
    session: Session,
    claims: list[Claim],
    next_at: dict[str, datetime],
    screens: dict[str, Screen] | None = None,
    cycle_starts: dict[str, datetime | None] | None = None,
) -> None:
    """Release the claims and set each slot's next due moment, unless something marked the slot since it was
    claimed: then it stays due (a reading stored during its evaluation is evaluated too). A slot evaluated in full
    gets its new screen (``screens``) and is evaluated in full by ``next_at``; one marked meanwhile gets none, so
    that its next evaluation is a full one whatever marked it. A slot evaluated in full also gets its cycle start
    (``cycle_starts``, every such slot's) and its readings marked as all in its stored window (store_windows, in the
    same transaction): one row update per slot."""
    if not claims:
        return
    screens, cycle_starts = screens or {}, cycle_starts or {}
    table = table_of(Slot)
    unchanged = table.c.due_marks == bindparam("marks")
    values = {
        "due_at": case((unchanged, bindparam("next_at", type_=UTCDateTime)), else_=table.c.due_at),
        "claimed_until": None,
    }
    statement = update(table).where(table.c.id == bindparam("slot_id"))
    others = [claim for claim in claims if claim.slot_id not in screens]
    if others:
        session.execute(
            statement.values(**values),
            [{"slot_id": claim.slot_id, "marks": claim.marks, "next_at": next_at[claim.slot_id]} for claim in others],
        )
    evaluated = [claim for claim in claims if claim.slot_id in screens]
    if evaluated:
        session.execute(
            statement.values(
                **values,
                evaluate_by=case((unchanged, bindparam("next_at", type_=UTCDateTime)), else_=None),
                screen_until=case((unchanged, bindparam("until", type_=UTCDateTime)), else_=None),
                screen_until_dropped=bindparam("until_dropped", type_=UTCDateTime),
                screen_low=bindparam("low", type_=Float),
                screen_high=bindparam("high", type_=Float),
                cycle_started_at=bindparam("started_at", type_=UTCDateTime),
                readings_changed_from=None,
            ),
            [
                {
                    "slot_id": claim.slot_id,
                    "marks": claim.marks,
                    "next_at": next_at[claim.slot_id],
                    "until": screens[claim.slot_id].until,
                    "until_dropped": screens[claim.slot_id].until_dropped,
                    "low": _finite_or_none(screens[claim.slot_id].low),
                    "high": _finite_or_none(screens[claim.slot_id].high),
                    "started_at": cycle_starts[claim.slot_id],
                }
                for claim in evaluated
            ],
        )


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def evaluate_due(
    *,
    engine: Engine,
    now: datetime,
    margin_days: float,
    fleet: FleetRatesCache | None = None,
    batch_size: int = EVALUATION_BATCH,
    claim_lease: timedelta = CLAIM_LEASE,
    clock: Callable[[], datetime] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    minimum_basket: Decimal | None = None,
) -> EvaluationReport:
    """The evaluation job: every slot due by ``now`` (see Slot.due_at; a new reading that can wait makes none due:
    devices.service.due_after_reading), claimed in batches, many slots per transaction. Any number of evaluators
    may run it at once. A slot whose evaluation fails is retried alone, so one bad slot cannot hold up its batch,
    and again after RETRY_AFTER. It stops between transactions once ``should_stop()`` says so (the process is
    stopping), handing its unfinished claims back. ``clock`` dates the claims (default: ``now``), so that a long
    pass's claims still last their lease."""
    report = EvaluationReport()
    fleet = fleet or FleetRatesCache()
    evaluations: dict[str, int] = {}
    while True:
        if should_stop():
            report.interrupted = True
            break
        with transaction(engine) as session:
            claims = claim_due(
                session=session, now=now, limit=batch_size, lease=claim_lease, at=clock() if clock else now
            )
        if not claims:
            break
        again = [claim for claim in claims if evaluations.get(claim.slot_id, 0) >= EVALUATIONS_PER_PASS]
        if again:  # marked due over and over while this pass ran: the next pass takes it, not this one
            with transaction(engine) as session:
                _release(session=session, slot_ids=[claim.slot_id for claim in again], due_after=now)
        claims = [claim for claim in claims if evaluations.get(claim.slot_id, 0) < EVALUATIONS_PER_PASS]
        if not claims:
            continue
        for claim in claims:
            evaluations[claim.slot_id] = evaluations.get(claim.slot_id, 0) + 1
        priors = fleet.get(engine=engine, now=now)
        # Outside any transaction: compiling the model inside one would hold SQLite's write lock for seconds.
        compile_ahead()
        while claims:
            if should_stop():
                report.interrupted = True
                with transaction(engine) as session:
                    _release(session=session, slot_ids=[claim.slot_id for claim in claims])
                return report
            claims = _evaluate_claims(
                engine=engine,
                claims=claims,
                now=now,
                margin_days=margin_days,
                priors=priors,
                report=report,
                minimum_basket=minimum_basket,
            )
    return report


def _release(*, session: Session, slot_ids: list[str], due_after: datetime | None = None) -> None:
    """Hand claims back. With ``due_after``, a slot due by then is due just after it: the pass evaluating at that
    moment does not take it again, the next one does."""
    table = table_of(Slot)
    values: dict[str, Any] = {"claimed_until": None}
    if due_after is not None:
        later = due_after + timedelta(microseconds=1)
        values["due_at"] = case((table.c.due_at < later, later), else_=table.c.due_at)
    session.execute(update(table).where(table.c.id.in_(slot_ids)).values(**values))


@dataclass
class _Transaction:
    """What one evaluation transaction did: the claims it finished, the decisions it took, the claims it left."""

    done: list[Claim] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    left: list[Claim] = field(default_factory=list)


def _evaluate_in_one_transaction(
    *,
    engine: Engine,
    claims: list[Claim],
    now: datetime,
    margin_days: float,
    priors: FleetRates,
    minimum_basket: Decimal | None = None,
) -> _Transaction:
    """Evaluate claimed slots in one transaction, in customer order, for about TRANSACTION_SECONDS (at least one
    slot, and a customer's slots all or none); the claims not reached are left. Raises what a slot raised: nothing
    of the transaction is kept then."""
    started = time.monotonic()
    waiting = {claim.slot_id: claim for claim in claims}
    outcome = _Transaction()
    next_at: dict[str, datetime] = {}
    screens: dict[str, Screen] = {}
    ended: list[outcomes.EndedCycle] = []  # decided cycles that a refill ended: their outcomes are recorded
    with transaction(engine, immediate=True) as session:
        rows = session.exec(
            select(Slot, Device)
            .join(Device, col(Device.id) == col(Slot.device_id))
            .where(col(Slot.id).in_(list(waiting)))
            .order_by(col(Device.customer_id), col(Slot.id))
        ).all()
        present = {slot.id for slot, _ in rows}
        context = EvaluationContext.load(session=session, slots=list(rows))
        context.minimum_basket = minimum_basket

        def out_of_time(next_customer: str, last_customer: str | None) -> bool:
            # Never between two slots of one customer: a shipment judges the customer's other slots by their
            # forecasts of this transaction, and a slot not reached yet might have none.
            late = bool(outcome.done) and time.monotonic() - started > TRANSACTION_SECONDS
            return late and next_customer != last_customer

        last_customer = None  # the customer of the newest slot evaluated
        # A chunk of slots at a time: their readings in one query, then each forecast (until the transaction's time
        # is up), then the messages behind the verdicts in one query, then the verdicts acted on.
        for start in range(0, len(rows), READ_CHUNK):
            chunk = rows[start : start + READ_CHUNK]
            if out_of_time(chunk[0][1].customer_id, last_customer):
                break
            context.read_windows(session=session, slots=[slot for slot, _ in chunk], now=now)
            verdicts = []
            for slot, device in chunk:
                if out_of_time(device.customer_id, last_customer):
                    break
                last_customer = device.customer_id
                readings = context.readings_of(slot=slot, now=now)
                evaluated = forecast_slot(
                    slot=slot,
                    device=device,
                    now=now,
                    margin_days=margin_days,
                    prior=priors.prior_for(device=device, slot=slot),
                    readings=readings,
                    context=context,
                )
                known = _outcome_may_be_known(slot=slot, evaluated=evaluated, context=context, readings=readings)
                if known is not None:
                    ended.append(
                        outcomes.EndedCycle(
                            slot=slot, device=device, started_at=known[0], ended_at=known[1], readings=readings
                        )
                    )
                next_at[slot.id], screens[slot.id] = evaluated.next_at, evaluated.screen
                context.forecasts[slot.id] = evaluated.forecast
                context.cycle_starts[slot.id] = evaluated.cycle_started_at
                outcome.done.append(waiting.pop(slot.id))
                if evaluated.verdict is not None:
                    verdicts.append((slot, device, evaluated))
            triggers = trigger_messages(session=session, slot_ids=[slot.id for slot, _, _ in verdicts], now=now)
            # A customer's most urgent slot first: its shipment is the one the others join, at its hand-off.
            verdicts.sort(key=lambda found: (found[1].customer_id, found[2].forecast.empty_at_early or now))
            for slot, device, evaluated in verdicts:
                decisions = act_on(
                    session=session,
                    slot=slot,
                    device=device,
                    now=now,
                    evaluated=evaluated,
                    context=context,
                    trigger=triggers.get(slot.id),
                )
                outcome.decisions.extend(decision.id for decision in decisions)
        lessons = outcomes.record_ended_cycles(session=session, ended=ended, now=now)
        store_forecasts(session=session, forecasts=context.forecasts, now=now)
        store_windows(
            session=session,
            windows={
                slot_id: window for slot_id, window in context.changed_windows.items() if slot_id in context.forecasts
            },
        )
        finish_claims(
            session=session,
            claims=outcome.done,
            next_at=next_at,
            screens=screens,
            cycle_starts=context.cycle_starts,
        )
        # Last: the groups' rows it updates are held until the commit.
        outcomes.learn_from(
            session=session,
            lessons=lessons,
            lending={
                customer for customer, (_, document) in context.consents.items() if document.fleet_learning_allowed
            },
            now=now,
        )
    outcome.left = [claim for slot_id, claim in waiting.items() if slot_id in present]  # the rest were deleted
    return outcome


def _outcome_may_be_known(
    *, slot: Slot, evaluated: Evaluated, context: EvaluationContext, readings: ReadingSeries
) -> tuple[datetime, datetime | None] | None:
    """The cycle's start and the refill that the evaluation saw end it; or, for a cycle with a decision whose newest
    reading is empty, its start alone (None for the refill: it may have run empty). outcomes.record_ended_cycles
    tells; None when neither. Every refill counts, decided or not as automation sees it now: an outcome recorded
    when the slot ran empty waits for it even if its request was withdrawn since."""
    started, now_started = slot.cycle_started_at, evaluated.cycle_started_at
    if started is None or now_started is None:
        return None
    if now_started > started:
        return started, ended_by(evaluated.refills, started=started) or now_started
    decided = context.decided.get(slot.id)
    if decided is not None and decided >= started and len(readings) and readings.levels[-1] <= EMPTY_LEVEL:
        return started, None
    return None


def _evaluate_claims(
    *,
    engine: Engine,
    claims: list[Claim],
    now: datetime,
    margin_days: float,
    priors: FleetRates,
    report: EvaluationReport,
    minimum_basket: Decimal | None = None,
) -> list[Claim]:
    """One transaction's worth of the claims (see _evaluate_in_one_transaction); the claims not reached are
    returned. When a slot fails, the transaction is rolled back and its slots are evaluated one per transaction,
    so that one bad slot cannot hold up the others."""
    try:
        outcome = _evaluate_in_one_transaction(
            engine=engine,
            claims=claims,
            now=now,
            margin_days=margin_days,
            priors=priors,
            minimum_basket=minimum_basket,
        )
    except Exception:
        log.info("a transaction of %d slots failed; they are evaluated one by one", len(claims), exc_info=True)
        for claim in claims:
            _evaluate_alone(
                engine=engine,
                claim=claim,
                now=now,
                margin_days=margin_days,
                priors=priors,
                report=report,
                minimum_basket=minimum_basket,
            )
        return []
    report.slots += len(outcome.done)
    report.forecasts += len(outcome.done)
    report.decisions.extend(outcome.decisions)
    return outcome.left


def _evaluate_alone(
    *,
    engine: Engine,
    claim: Claim,
    now: datetime,
    margin_days: float,
    priors: FleetRates,
    report: EvaluationReport,
    minimum_basket: Decimal | None = None,
) -> None:
    report.slots += 1
    try:
        outcome = _evaluate_in_one_transaction(
            engine=engine,
            claims=[claim],
            now=now,
            margin_days=margin_days,
            priors=priors,
            minimum_basket=minimum_basket,
        )
        report.forecasts += len(outcome.done)
        report.decisions.extend(outcome.decisions)
        return
    except IntegrityError:
        # Another evaluator decided this cycle first; the database kept exactly one decision. Evaluated again.
        log.info("slot %s: decision already taken for this cycle", claim.slot_id)
        retry_at = now
    except Exception:
        report.errors += 1
        log.exception("slot %s: evaluation failed; trying again in %s", claim.slot_id, RETRY_AFTER)
        retry_at = now + RETRY_AFTER
    try:
        with transaction(engine) as session:
            finish_claims(session=session, claims=[claim], next_at={claim.slot_id: retry_at})
    except Exception:
        log.exception("slot %s: its claim could not be released; it expires", claim.slot_id)


class FleetRatesCache:
    """The fleet's rates that slots with little history borrow (see fleet_rates), read at most every ``refresh``:
    the fleet moves slowly, and reading every slot's forecast is the costliest read there is."""

    def __init__(self, refresh: timedelta = timedelta(minutes=10)) -> None:
        self.refresh = refresh
        self._taken: datetime | None = None
        self._rates = FleetRates()
        self._lock = threading.Lock()

    def get(self, *, engine: Engine, now: datetime) -> FleetRates:
        with self._lock:
            if self._taken is None or not self._taken <= now < self._taken + self.refresh:
                with Session(engine) as session:
                    self._rates = fleet_rates(session=session)
                self._taken = now
            return self._rates

    def forget(self) -> None:
        with self._lock:
            self._taken = None


def evaluate_all(
    *,
    engine: Engine,
    now: datetime,
    margin_days: float,
    should_stop: Callable[[], bool] = lambda: False,
    minimum_basket: Decimal | None = None,
) -> EvaluationReport:
    """Every slot, due or not: `replenish forecasts rebuild`, and what a test or a replay that wants every slot
    looked at again calls. Marks every slot due, then evaluates as the job does."""
    with transaction(engine) as session:
        forget_windows(session=session)  # rebuilt from the readings themselves
        mark_slots_due(session=session, at=now)
    return evaluate_due(
        engine=engine, now=now, margin_days=margin_days, should_stop=should_stop, minimum_basket=minimum_basket
    )

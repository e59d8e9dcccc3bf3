"""Cycle outcomes: recorded when a decided cycle ends, read per slot and, for operators, as the fleet's reliability.

Like every service here, these functions never commit: the evaluation that sees the cycle run empty, or the refill
end it, records the outcome in its own transaction, with the new cycle start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Float, case, cast, delete, func, or_, update
from sqlmodel import Session, col, select

from replenish.automation.models import Decision
from replenish.columns import table_of
from replenish.constants import WITHDRAWN_ORDER_STATUSES, OrderFeedback
from replenish.db import add_to_counters, within
from replenish.devices.models import Device, Slot
from replenish.forecasting import Forecast, ReadingSeries
from replenish.forecasting.calibration import GROUP_BOUNDS, GROUP_STEP, SLOT_BOUNDS, SLOT_STEP, Calibration, lesson
from replenish.forecasting.model import EMPTY_LEVEL
from replenish.forecasting.outcomes import CycleOutcome as PureOutcome
from replenish.forecasting.outcomes import Prediction, cycle_outcome, outcome_when_empty, teaching
from replenish.forecasting.weekly import SECONDS_PER_DAY
from replenish.orders.models import Order
from replenish.outcomes.models import CalibrationGroup, CycleOutcome, ForecastReliability


@dataclass(frozen=True)
class EndedCycle:
    """A cycle whose outcome an evaluation may know: one a refill after ``started_at`` ended at ``ended_at``, or
    (``ended_at`` None) a decided one whose readings may show it has run empty."""

    slot: Slot
    device: Device
    started_at: datetime
    ended_at: datetime | None
    readings: ReadingSeries  # the slot's readings (fractions of capacity), the cycle among them


@dataclass(frozen=True)
class Lesson:
    """What an outcome teaches the calibration now (``missed``; None: nothing), against what it taught before
    (``before``; None: nothing yet): learn_from applies the difference."""

    outcome: CycleOutcome
    missed: bool | None
    before: bool | None = None

    @property
    def cycles(self) -> int:
        return int(self.missed is not None) - int(self.before is not None)


def record_ended_cycles(*, session: Session, ended: Sequence[EndedCycle], now: datetime) -> list[Lesson]:
    """An outcome for each cycle that ended, or has run empty, and had a decision with a forecast to check: its
    newest such decision (an order the customer asked for, or a line pulled forward into a shipment, counts too).
    One per cycle: a cycle that already has one gets no other. Returns what the new and revised outcomes teach, for
    learn_from.

    A cycle that ran empty has its outcome from its next evaluation on (forecasting.outcomes.outcome_when_empty).
    Its refill fills in when it came, how long the slot was empty and the order as it stands then, and reads the
    cycle again: the empty run may have turned out to be a dip (the level came back), or the customer may have
    said since that the order was not needed; what the outcome taught is revised to match."""
    if not ended:
        return []
    slot_ids = [cycle.slot.id for cycle in ended]
    since = min(cycle.started_at for cycle in ended)
    decisions: dict[str, list[tuple[Decision, Order | None]]] = {}
    # The decisions of these cycles only, newest first, with their orders; and their outcomes so far.
    for decision, its_order in session.exec(
        select(Decision, Order)
        .outerjoin(Order, col(Order.decision_id) == col(Decision.id))
        .where(col(Decision.slot_id).in_(slot_ids), col(Decision.cycle_started_at) >= since)
        .order_by(col(Decision.cycle_started_at).desc())
    ):
        decisions.setdefault(decision.slot_id, []).append((decision, its_order))
    # The outcomes of these cycles, and of these decisions: a decision has one outcome even if a refill found late
    # moved its cycle's start (one per decision, as stored).
    candidates = [decision.id for found in decisions.values() for decision, _ in found]
    known: dict[tuple[str, datetime], CycleOutcome] = {}
    settled: set[str] = set()
    for row in session.exec(
        select(CycleOutcome).where(
            col(CycleOutcome.slot_id).in_(slot_ids),
            or_(col(CycleOutcome.cycle_started_at) >= since, col(CycleOutcome.decision_id).in_(candidates)),
        )
    ):
        known.setdefault((row.slot_id, row.cycle_started_at), row)
        settled.add(row.decision_id)
    lessons = []
    for cycle in ended:
        kept = known.get((cycle.slot.id, cycle.started_at))
        if kept is not None:
            if kept.ended_at is None and cycle.ended_at is not None:
                lessons.append(_refilled(kept, cycle=cycle, candidates=decisions.get(cycle.slot.id, [])))
            continue
        found = _decision_of(decisions.get(cycle.slot.id, []), cycle=cycle)
        if found is None or found[0].id in settled:
            continue
        decision, order, prediction = found
        if cycle.ended_at is None:
            outcome = outcome_when_empty(
                cycle.readings, cycle_started_at=cycle.started_at, now=now, prediction=prediction
            )
            if outcome is None:
                continue
        else:
            outcome = cycle_outcome(
                cycle.readings, cycle_started_at=cycle.started_at, ended_at=cycle.ended_at, prediction=prediction
            )
        row = CycleOutcome(
            decision_id=decision.id,
            slot_id=cycle.slot.id,
            device_id=cycle.device.id,
            customer_id=cycle.device.customer_id,
            device_kind=cycle.device.kind,
            slot_name=cycle.slot.name,
            cycle_started_at=cycle.started_at,
            recorded_at=now,
            decided_at=decision.decided_at,
            action=decision.action,
            service_level=prediction.service_level,
            lead_time_days=float(decision.policy.get("lead_time_days", cycle.slot.lead_time_days)),
            predicted_empty_at=prediction.empty_at,
            predicted_early_at=prediction.early_at,
            predicted_late_at=prediction.late_at,
            rate_per_day=prediction.rate_per_day,
            **_outcome_columns(outcome),
        )
        _take_order(row, order)
        session.add(row)
        lessons.append(Lesson(row, missed=_teaching(row)))
    return lessons


def _refilled(row: CycleOutcome, *, cycle: EndedCycle, candidates: list[tuple[Decision, Order | None]]) -> Lesson:
    """The refill of a cycle whose outcome was recorded when it ran empty. If the level came back above empty since
    (the empty run was a dip after all), the cycle is read again to its end; otherwise what was read stands (the
    readings kept may no longer reach back to it), with the refill's end and how long the slot stayed empty."""
    assert cycle.ended_at is not None and row.ran_out_at is not None
    before = _teaching(row)
    decision, order = next((found for found in candidates if found[0].id == row.decision_id), (None, None))
    forecast = Forecast.from_json(decision.forecast) if decision is not None else None
    prediction = (
        Prediction.of(forecast, decided_at=row.decided_at, stated=row.service_level) if forecast is not None else None
    )
    times, levels = cycle.readings.times, cycle.readings.levels
    since_then = (times >= row.ran_out_at.timestamp()) & (times < cycle.ended_at.timestamp())
    came_back = (
        len(times) > 0 and times[0] <= row.ran_out_at.timestamp() and bool((levels[since_then] > EMPTY_LEVEL).any())
    )
    if prediction is not None and came_back:
        read_again = cycle_outcome(
            cycle.readings, cycle_started_at=cycle.started_at, ended_at=cycle.ended_at, prediction=prediction
        )
        for name, value in _outcome_columns(read_again).items():
            setattr(row, name, value)
    else:
        row.ended_at = cycle.ended_at
        row.empty_days = round(max(0.0, (cycle.ended_at - row.ran_out_at).total_seconds() / SECONDS_PER_DAY), 3)
    _take_order(row, order)
    return Lesson(row, missed=_teaching(row), before=before)


def _outcome_columns(outcome: PureOutcome) -> dict[str, Any]:
    """What happened, as the outcome row keeps it."""
    return {
        "ended_at": outcome.ended_at,
        "ran_out_at": outcome.ran_out_at,
        "empty_estimated_at": outcome.empty_estimated_at,
        "ran_out_before_early": outcome.ran_out_before_early,
        "empty_days": round(outcome.empty_days, 3),
        "left_days": round(outcome.left_days, 3),
        "error_days": round(outcome.error_days, 3),
    }


def _take_order(row: CycleOutcome, order: Order | None) -> None:
    """The cycle's order as it stands now, and what the customer said if they declined or cancelled it."""
    if order is None:
        return
    row.order_id = order.id
    row.order_status = order.status
    row.delivered_at = order.delivered_at
    row.feedback = order.feedback


def _teaching(row: CycleOutcome) -> bool | None:
    return teaching(
        missed=row.ran_out_before_early,
        predicted_empty_at=row.predicted_empty_at,
        decided_at=row.decided_at,
        not_needed=row.feedback == OrderFeedback.NOT_NEEDED,
    )


def learn_from(*, session: Session, lessons: Sequence[Lesson], lending: Collection[str], now: datetime) -> None:
    """What the outcomes teach (forecasting.calibration): each slot's own shift, and its group's (device kind and
    slot name) from the outcomes of customers in ``lending`` (who allow fleet learning: a group's shift changes
    everyone's forecasts). A revised outcome takes back what it taught before, from its group only if it taught
    the group then (``group_taught``: the customer may have changed their consent since). Added in SQL, groups last
    and in key order: evaluators learning from the same groups at the same moment neither lose an outcome nor wait
    on each other in a circle, and a group's row is held only until the commit that follows."""
    slots = table_of(Slot)
    for item in sorted(lessons, key=lambda found: found.outcome.slot_id):
        if item.missed == item.before:
            continue
        session.execute(
            update(slots)
            .where(slots.c.id == item.outcome.slot_id)
            .values(
                calibration_shift=within(slots.c.calibration_shift + _lesson(item, step=SLOT_STEP), SLOT_BOUNDS),
                calibration_cycles=slots.c.calibration_cycles + item.cycles,
            )
        )
    groups: dict[tuple[str, str], list[Lesson]] = {}
    for item in lessons:
        row = item.outcome
        taught = Lesson(
            row,
            missed=item.missed if row.customer_id in lending else None,
            before=item.before if row.group_taught else None,
        )
        row.group_taught = taught.missed is not None
        if taught.missed != taught.before:
            groups.setdefault((row.device_kind, row.slot_name), []).append(taught)
    for (kind, name), members in sorted(groups.items()):
        add_to_counters(
            session,
            table_of(CalibrationGroup),
            key={"device_kind": kind, "slot_name": name},
            add={
                "shift": sum(_lesson(item, step=GROUP_STEP) for item in members),
                "cycles": sum(item.cycles for item in members),
            },
            latest={"updated_at": now},
            bounds={"shift": GROUP_BOUNDS},
        )


def _lesson(item: Lesson, *, step: float) -> float:
    return lesson(missed=item.missed, before=item.before, stated=item.outcome.service_level, step=step)


def calibrations(*, session: Session, slots: Sequence[tuple[Slot, Device]]) -> dict[str, Calibration]:
    """Each slot's calibration: its group's shift and its own (forecasting.calibration), in one query."""
    kinds = sorted({device.kind for _, device in slots})
    groups = {
        (row.device_kind, row.slot_name): row
        for row in (
            session.exec(select(CalibrationGroup).where(col(CalibrationGroup.device_kind).in_(kinds))) if kinds else []
        )
    }
    found = {}
    for slot, device in slots:
        group = groups.get((device.kind, slot.name))
        found[slot.id] = Calibration(
            group_shift=group.shift if group else 0.0,
            slot_shift=slot.calibration_shift,
            group_cycles=group.cycles if group else 0,
            slot_cycles=slot.calibration_cycles,
        )
    return found


def _decision_of(
    candidates: list[tuple[Decision, Order | None]], *, cycle: EndedCycle
) -> tuple[Decision, Order | None, Prediction] | None:
    """The cycle's newest decision (newest first in ``candidates``) with a prediction to check: not a request of the
    customer's own, or a line pulled into a shipment, that was withdrawn (it decided nothing about the cycle, as
    automation's latest decision keys say). One made on a forecast already at or past its median empty date (an
    order for a slot that had run out) has nothing to check: an earlier one is taken before it."""
    uncheckable: tuple[Decision, Order | None, Prediction] | None = None
    for decision, order in candidates:
        if decision.cycle_started_at < cycle.started_at or (
            cycle.ended_at is not None and decision.cycle_started_at >= cycle.ended_at
        ):
            continue
        asked = decision.requested_by is not None or decision.pulled_into is not None
        if asked and order is not None and order.status in WITHDRAWN_ORDER_STATUSES:
            continue
        forecast = Forecast.from_json(decision.forecast)
        stated = decision.policy.get("service_level")
        prediction = (
            None
            if forecast is None
            else Prediction.of(
                forecast, decided_at=decision.decided_at, stated=float(stated) if stated is not None else None
            )
        )
        if prediction is not None and prediction.checkable:
            return decision, order, prediction
        if prediction is not None and uncheckable is None:
            uncheckable = (decision, order, prediction)
    return uncheckable


def list_for_slots(*, session: Session, slot_ids: Sequence[str], per_slot: int) -> dict[str, list[CycleOutcome]]:
    """Each slot's newest ``per_slot`` outcomes, newest first, in one query."""
    if not slot_ids:
        return {}
    rank = (
        func.row_number()
        .over(
            partition_by=col(CycleOutcome.slot_id),
            order_by=(col(CycleOutcome.cycle_started_at).desc(), col(CycleOutcome.id)),
        )
        .label("rank")
    )
    ranked = select(CycleOutcome.id, rank).where(col(CycleOutcome.slot_id).in_(list(slot_ids))).subquery()
    found: dict[str, list[CycleOutcome]] = {}
    for outcome in session.exec(
        select(CycleOutcome)
        .join(ranked, ranked.c.id == col(CycleOutcome.id))
        .where(ranked.c.rank <= per_slot)
        .order_by(col(CycleOutcome.slot_id), col(CycleOutcome.cycle_started_at).desc(), col(CycleOutcome.id))
    ):
        found.setdefault(outcome.slot_id, []).append(outcome)
    return found


@dataclass(frozen=True)
class Reliability:
    """How often a group's slots ran out before the stated early date, against how often they should have."""

    device_kind: str
    cycles: int
    stated: float  # the mean of 1 - service level: the stated probability of running out before the early date
    observed: float  # the share that did
    ran_out: float  # the share that ran empty at all before the refill
    median_error_days: float | None  # from the forecast's median to the empty moment; negative: sooner

    @property
    def verdict(self) -> str:
        """How the observed share compares with the stated one, as far as this many cycles can tell."""
        if self.cycles < MIN_RELIABILITY_CYCLES:
            return "too few cycles to tell"
        if self.observed > 2 * self.stated:
            return "runs out more often than stated"
        if self.observed < self.stated / 2:
            return "more cautious than stated"
        return "as stated"


# Fewer cycles than this say little about a probability of a few percent.
MIN_RELIABILITY_CYCLES = 50


# The reliability the Fleet page and GET /reliability show: over the outcomes recorded in this many days.
RELIABILITY_DAYS = 90


def refresh_reliability(*, session: Session, now: datetime) -> int:
    """Compute the reliability per device kind over the last RELIABILITY_DAYS and keep it (ForecastReliability),
    in place of what was kept: the insights job does, hourly. Returns how many kinds."""
    since = now - timedelta(days=RELIABILITY_DAYS)
    rows = reliability(session=session, since=since)
    session.execute(delete(ForecastReliability))
    session.add_all(ForecastReliability(**dataclasses.asdict(row), since=since, computed_at=now) for row in rows)
    return len(rows)


def kept_reliability(*, session: Session) -> tuple[list[Reliability], datetime | None]:
    """The reliability as last computed (refresh_reliability), most cycles first, and when."""
    rows = list(session.exec(select(ForecastReliability)))
    found = [Reliability(**row.model_dump(exclude={"since", "computed_at"})) for row in rows]
    return _most_cycles_first(found), max((row.computed_at for row in rows), default=None)


def reliability(*, session: Session, since: datetime | None = None) -> list[Reliability]:
    """Per device kind, over the outcomes recorded since ``since`` (all, without it): the stated probability of
    running out before the early date against the observed frequency. Most cycles first."""
    # Five columns: more than sqlmodel's select is typed for.
    query = sa.select(
        col(CycleOutcome.device_kind),
        func.count(),
        func.avg(1.0 - col(CycleOutcome.service_level)),
        func.avg(cast(case((col(CycleOutcome.ran_out_before_early), 1.0), else_=0.0), Float)),
        func.avg(cast(case((col(CycleOutcome.ran_out_at).is_not(None), 1.0), else_=0.0), Float)),
    ).group_by(col(CycleOutcome.device_kind))
    if since is not None:
        query = query.where(col(CycleOutcome.recorded_at) >= since)
    rows = session.execute(query).all()
    found = [
        Reliability(
            device_kind=kind,
            cycles=int(count),
            stated=float(stated),
            observed=float(observed),
            ran_out=float(ran_out),
            median_error_days=_median_error(session=session, device_kind=kind, cycles=int(count), since=since),
        )
        for kind, count, stated, observed, ran_out in rows
    ]
    return _most_cycles_first(found)


def _most_cycles_first(rows: list[Reliability]) -> list[Reliability]:
    return sorted(rows, key=lambda row: (-row.cycles, row.device_kind))


def _median_error(*, session: Session, device_kind: str, cycles: int, since: datetime | None) -> float | None:
    # Both dialects (percentile_cont is PostgreSQL's alone), and nothing but the middle row leaves the database.
    if not cycles:
        return None
    query = select(col(CycleOutcome.error_days)).where(col(CycleOutcome.device_kind) == device_kind)
    if since is not None:
        query = query.where(col(CycleOutcome.recorded_at) >= since)
    middle = list(session.exec(query.order_by(col(CycleOutcome.error_days)).offset((cycles - 1) // 2).limit(2)))
    if not middle:
        return None
    return middle[0] if cycles % 2 or len(middle) < 2 else (middle[0] + middle[1]) / 2

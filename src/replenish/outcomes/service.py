"""Cycle outcomes: recorded when a decided cycle ends, read per slot and, for operators, as the fleet's reliability.

Like every service here, these functions never commit: the evaluation that sees the refill records the outcome in
its own transaction, with the new cycle start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Float, case, cast, func, update
from sqlmodel import Session, col, select

from replenish.automation.models import Decision
from replenish.columns import table_of
from replenish.db import add_to_counters
from replenish.devices.models import Device, Slot
from replenish.forecasting import Forecast, ReadingSeries
from replenish.forecasting.calibration import GROUP_BOUNDS, GROUP_STEP, SLOT_BOUNDS, SLOT_STEP, Calibration, lesson
from replenish.forecasting.outcomes import Prediction, cycle_outcome
from replenish.orders.models import Order
from replenish.outcomes.models import CalibrationGroup, CycleOutcome


@dataclass(frozen=True)
class EndedCycle:
    """A cycle that an evaluation saw end: a refill after ``started_at``, at ``ended_at``."""

    slot: Slot
    device: Device
    started_at: datetime
    ended_at: datetime
    readings: ReadingSeries  # the slot's readings (fractions of capacity), the ended cycle among them


def record_ended_cycles(*, session: Session, ended: Sequence[EndedCycle], now: datetime) -> list[CycleOutcome]:
    """An outcome for each ended cycle that had a decision with a forecast to check: its newest such decision (an
    order the customer asked for, or a line pulled forward into a shipment, counts too). Cycles without one, and
    decisions that already have an outcome, are left alone."""
    if not ended:
        return []
    slot_ids = [cycle.slot.id for cycle in ended]
    decisions: dict[str, list[Decision]] = {}
    for decision in session.exec(
        select(Decision).where(col(Decision.slot_id).in_(slot_ids)).order_by(col(Decision.cycle_started_at).desc())
    ):
        decisions.setdefault(decision.slot_id, []).append(decision)
    recorded = []
    for cycle in ended:
        found = _decision_of(decisions.get(cycle.slot.id, []), cycle=cycle)
        if found is None:
            continue
        decision, prediction = found
        if session.exec(select(CycleOutcome.id).where(CycleOutcome.decision_id == decision.id)).first() is not None:
            continue
        order = session.exec(select(Order).where(Order.decision_id == decision.id)).first()
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
            ended_at=cycle.ended_at,
            recorded_at=now,
            decided_at=decision.decided_at,
            action=decision.action,
            service_level=prediction.service_level,
            lead_time_days=float(decision.policy.get("lead_time_days", cycle.slot.lead_time_days)),
            predicted_empty_at=prediction.empty_at,
            predicted_early_at=prediction.early_at,
            predicted_late_at=prediction.late_at,
            rate_per_day=prediction.rate_per_day,
            order_id=order.id if order is not None else None,
            order_status=order.status if order is not None else None,
            delivered_at=order.delivered_at if order is not None else None,
            feedback=order.feedback if order is not None else None,
            ran_out_at=outcome.ran_out_at,
            empty_estimated_at=outcome.empty_estimated_at,
            ran_out_before_early=outcome.ran_out_before_early,
            empty_days=round(outcome.empty_days, 3),
            left_days=round(outcome.left_days, 3),
            error_days=round(outcome.error_days, 3),
        )
        session.add(row)
        recorded.append(row)
        _learn(session=session, outcome=row, now=now)
    return recorded


def _learn(*, session: Session, outcome: CycleOutcome, now: datetime) -> None:
    """What the outcome teaches its group's forecasts and its slot's (forecasting.calibration), added in SQL: other
    evaluators may be learning from the same group at the same moment."""
    missed, stated = outcome.ran_out_before_early, outcome.service_level
    add_to_counters(
        session,
        table_of(CalibrationGroup),
        key={"device_kind": outcome.device_kind, "slot_name": outcome.slot_name},
        add={"shift": lesson(missed=missed, stated=stated, step=GROUP_STEP), "cycles": 1},
        latest={"updated_at": now},
        bounds={"shift": GROUP_BOUNDS},
    )
    slots = table_of(Slot)
    moved = slots.c.calibration_shift + lesson(missed=missed, stated=stated, step=SLOT_STEP)
    low, high = SLOT_BOUNDS
    session.execute(
        update(slots)
        .where(slots.c.id == outcome.slot_id)
        .values(
            calibration_shift=case((moved > high, high), (moved < low, low), else_=moved),
            calibration_cycles=slots.c.calibration_cycles + 1,
        )
    )


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


def _decision_of(candidates: list[Decision], *, cycle: EndedCycle) -> tuple[Decision, Prediction] | None:
    """The cycle's newest decision (newest first in ``candidates``) with a prediction to check."""
    for decision in candidates:
        if not cycle.started_at <= decision.cycle_started_at < cycle.ended_at:
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
        if prediction is not None:
            return decision, prediction
    return None


def list_for_slot(*, session: Session, slot_id: str, limit: int = 10) -> list[CycleOutcome]:
    """The slot's outcomes, newest first."""
    return list(
        session.exec(
            select(CycleOutcome)
            .where(CycleOutcome.slot_id == slot_id)
            .order_by(col(CycleOutcome.ended_at).desc())
            .limit(limit)
        )
    )


def list_for_slots(*, session: Session, slot_ids: Sequence[str], per_slot: int) -> dict[str, list[CycleOutcome]]:
    """Each slot's newest ``per_slot`` outcomes, newest first, in one query."""
    if not slot_ids:
        return {}
    rank = (
        func.row_number()
        .over(partition_by=col(CycleOutcome.slot_id), order_by=col(CycleOutcome.ended_at).desc())
        .label("rank")
    )
    ranked = select(CycleOutcome.id, rank).where(col(CycleOutcome.slot_id).in_(list(slot_ids))).subquery()
    found: dict[str, list[CycleOutcome]] = {}
    for outcome in session.exec(
        select(CycleOutcome)
        .join(ranked, ranked.c.id == col(CycleOutcome.id))
        .where(ranked.c.rank <= per_slot)
        .order_by(col(CycleOutcome.slot_id), col(CycleOutcome.ended_at).desc())
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
    return sorted(found, key=lambda row: (-row.cycles, row.device_kind))


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

"""Re-forecast slots and act on them. The database side around the pure forecast and policy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import Engine, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from replenish.answers import service as answers
from replenish.audit import service as audit
from replenish.automation.engine import FORECAST_HISTORY_DAYS, SlotMemory, evaluate
from replenish.automation.models import Decision
from replenish.automation.policy import ReorderPolicy, Verdict, within_limits
from replenish.consent import service as consent
from replenish.consent.schemas import ConsentDocument
from replenish.constants import (
    DEFAULT_REORDER_MARGIN_DAYS,
    AuditAction,
    ConsentMode,
    DecisionAction,
    NoticeKind,
    OrderStatus,
)
from replenish.db import transaction
from replenish.devices.models import Device, Slot, SlotForecast
from replenish.forecasting import Forecast, RatePrior, ReadingSeries
from replenish.forecasting.model import fleet_prior, lends_to_fleet
from replenish.ingest.models import DeviceMessage, Reading
from replenish.notifications import service as notifications
from replenish.observability import correlation
from replenish.orders import service as orders
from replenish.orders.models import Order

log = logging.getLogger(__name__)

ACTOR = "automation"


@dataclass
class EvaluationReport:
    slots: int = 0
    forecasts: int = 0
    decisions: list[str] = field(default_factory=list)
    errors: int = 0
    interrupted: bool = False  # stopped between slots: the process is stopping


def slot_readings(*, session: Session, slot: Slot, now: datetime) -> ReadingSeries:
    """What an evaluation needs: the slot's readings over the forecast's history window."""
    since = now - timedelta(days=FORECAST_HISTORY_DAYS)
    rows = session.exec(
        select(Reading.ts, Reading.level)
        .where(Reading.slot_id == slot.id, Reading.ts > since, Reading.ts <= now)
        .order_by(col(Reading.ts), col(Reading.id))
    ).all()
    return ReadingSeries(
        times=np.fromiter((ts.timestamp() for ts, _ in rows), dtype=float, count=len(rows)),
        levels=np.fromiter((level / slot.capacity for _, level in rows), dtype=float, count=len(rows)),
    )


def fleet_priors(*, session: Session) -> dict[tuple[str, str], list[tuple[str, float]]]:
    """Per (device kind, slot name), the slots whose latest forecast rests on enough of their own readings, with
    their rates: what a slot with little history borrows (see prior_for). Only slots of customers whose current
    consent allows fleet learning lend their rate."""
    rates: dict[tuple[str, str], list[tuple[str, float]]] = {}
    lending = set(consent.customers_allowing_fleet_learning(session=session))
    rows = session.exec(
        select(Device.kind, Slot.name, Slot.id, SlotForecast.forecast, Device.customer_id)
        .join(Slot, col(Slot.id) == col(SlotForecast.slot_id))
        .join(Device, col(Device.id) == col(Slot.device_id))
    )
    for kind, name, slot_id, stored, customer_id in rows:
        if customer_id not in lending:
            continue
        forecast = Forecast.from_json(stored)
        if forecast is not None and lends_to_fleet(forecast):
            assert forecast.rate_per_day is not None
            rates.setdefault((kind, name), []).append((slot_id, forecast.rate_per_day))
    return rates


def prior_for(fleet: dict[tuple[str, str], list[tuple[str, float]]], *, device: Device, slot: Slot) -> RatePrior | None:
    return fleet_prior([rate for slot_id, rate in fleet.get((device.kind, slot.name), []) if slot_id != slot.id])


def evaluate_slot(
    *,
    session: Session,
    slot: Slot,
    device: Device,
    now: datetime,
    margin_days: float,
    prior: RatePrior | None = None,
) -> Decision | None:
    consent.lock_customer(session=session, customer_id=device.customer_id)
    version, document = consent.current_document(session=session, customer_id=device.customer_id)
    mode = document.mode_for(device_id=device.id, slot_name=slot.name)
    policy = ReorderPolicy(
        lead_time_days=slot.lead_time_days, margin_days=margin_days, service_level=slot.service_level
    )
    open_order = orders.open_order_for_slot(session=session, slot_id=slot.id)
    latest_decision = _latest_decision_key(session=session, slot_id=slot.id)
    memory = SlotMemory(
        cycle_started_at=slot.cycle_started_at,
        decided_cycle_started_at=latest_decision,
        open_order_placed_at=open_order.created_at if open_order else None,
    )
    evaluation = evaluate(
        slot_readings(session=session, slot=slot, now=now),
        now=now,
        mode=mode,
        policy=policy,
        memory=memory,
        prior=prior,
        pauses=document.pauses_for(device_id=device.id, slot_name=slot.name),
    )
    _store_forecast(session=session, slot_id=slot.id, forecast=evaluation.forecast, now=now)
    slot.cycle_started_at = evaluation.cycle_started_at
    if evaluation.verdict is None or evaluation.cycle_started_at is None:
        return None
    month_start, month_end = document.calendar_month(now)
    verdict = within_limits(
        evaluation.verdict,
        limits=document.limits,
        quantity=slot.order_quantity,
        total_price=slot.unit_price * slot.order_quantity if slot.unit_price is not None else None,
        spent_this_month=orders.spent_between(
            session=session, customer_id=device.customer_id, start=month_start, end=month_end
        ),
    )
    trigger = _newest_message(session=session, slot=slot, now=now)
    # The decision, its order or notification, their outbox messages and log lines: all carry the trigger's id.
    with correlation.bound(trigger):
        return _act(
            session=session,
            slot=slot,
            device=device,
            cycle_started_at=evaluation.cycle_started_at,
            forecast=evaluation.forecast,
            verdict=verdict,
            mode=mode,
            consent_version=version,
            consent_document=document,
            policy=policy,
            now=now,
            correlation_id=trigger,
        )


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
    consent.lock_customer(session=session, customer_id=device.customer_id)
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
    order_quantity = quantity or slot.order_quantity
    month_start, month_end = document.calendar_month(now)
    verdict = within_limits(
        verdict,
        limits=document.limits,
        quantity=order_quantity,
        total_price=slot.unit_price * order_quantity if slot.unit_price is not None else None,
        spent_this_month=orders.spent_between(
            session=session, customer_id=device.customer_id, start=month_start, end=month_end
        ),
    )
    decision = _act(
        session=session,
        slot=slot,
        device=device,
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
        quantity=order_quantity,
        requested_by=actor,
    )
    order = orders.order_for_decision(session=session, decision_id=decision.id)
    assert order is not None
    return OrderNow(order=order, created=True)


def _latest_decision_key(
    *, session: Session, slot_id: str, counting_withdrawn_requests: bool = False
) -> datetime | None:
    """The newest decision's key: what tells the engine which cycle is decided. An order the customer asked for and
    then cancelled or declined (a button pressed by mistake) decides nothing: automation still watches that cycle."""
    query = (
        select(Decision.cycle_started_at)
        .outerjoin(Order, col(Order.decision_id) == col(Decision.id))
        .where(Decision.slot_id == slot_id)
    )
    if not counting_withdrawn_requests:
        query = query.where(
            or_(
                col(Decision.requested_by).is_(None),
                col(Order.status).not_in([OrderStatus.CANCELLED, OrderStatus.DECLINED]),
            )
        )
    return session.exec(query.order_by(col(Decision.cycle_started_at).desc()).limit(1)).first()


def _request_key(*, session: Session, slot: Slot, now: datetime) -> datetime:
    """The key of an order the customer asks for now: the slot's newest reading's time (the device's clock, as the
    cycles' starts are), so that a refill reported after it starts a cycle of its own even when the device's clock
    runs behind the platform's; after the cycle's start, and after every earlier decision's key (unique)."""
    # A microsecond after it: never the very time of a reading, which may yet become a cycle's start and its key.
    key = max(filter(None, (slot.level_at, slot.cycle_started_at)), default=now) + timedelta(microseconds=1)
    latest = _latest_decision_key(session=session, slot_id=slot.id, counting_withdrawn_requests=True)
    if latest is not None and key <= latest:
        key = latest + timedelta(microseconds=1)
    return key


def _newest_message(*, session: Session, slot: Slot, now: datetime) -> str | None:
    """The correlation id of the message behind the newest reading the forecast used (as slot_readings chose them):
    the one that tipped the decision."""
    newest = session.exec(
        select(DeviceMessage.device_id, DeviceMessage.seq)
        .join(Reading, col(Reading.message_id) == col(DeviceMessage.id))
        .where(Reading.slot_id == slot.id, Reading.ts <= now)
        .order_by(col(Reading.ts).desc(), col(Reading.id).desc())
        .limit(1)
    ).first()
    return correlation.for_device_message(*newest) if newest else None


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
    quantity: int | None = None,
    requested_by: str | None = None,
) -> Decision:
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
    )
    session.add(decision)
    # Flush first: the unique (slot, cycle) constraint rejects a second decision before anything else is written.
    session.flush()
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
        order = orders.create(
            session=session,
            decision=decision,
            slot=slot,
            awaiting_approval=True,
            now=now,
            actor=actor,
            quantity=quantity,
        )
        answers.request_approval(
            session=session,
            order=order,
            lead_time_days=slot.lead_time_days,
            # The customer's own order waits for their answer: no deadline decides it for them.
            empty_at_early=None if requested_by else forecast.empty_at_early,
            document=consent_document,
            consent_version=consent_version,
            now=now,
        )
    else:
        order = orders.create(
            session=session,
            decision=decision,
            slot=slot,
            awaiting_approval=False,
            now=now,
            actor=actor,
            quantity=quantity,
            hand_off_at=answers.hand_off_time(
                document=consent_document,
                lead_time_days=slot.lead_time_days,
                empty_at_early=forecast.empty_at_early,
                now=now,
            ),
        )
        answers.announce_order(
            session=session,
            order=order,
            lead_time_days=slot.lead_time_days,
            document=consent_document,
            consent_version=consent_version,
            now=now,
        )
    log.info("decision %s: %s for %s/%s (%s)", decision.id, verdict.action, device.id, slot.name, verdict.reason)
    return decision


def _store_forecast(*, session: Session, slot_id: str, forecast: Forecast, now: datetime) -> None:
    stored = session.get(SlotForecast, slot_id)
    if stored is None:
        stored = SlotForecast(slot_id=slot_id, computed_at=now, forecast=forecast.to_json())
    else:
        stored.computed_at = now
        stored.forecast = forecast.to_json()
    session.add(stored)


def evaluate_all(
    *, engine: Engine, now: datetime, margin_days: float, should_stop: Callable[[], bool] = lambda: False
) -> EvaluationReport:
    """The scheduler job: every slot in its own transaction, so one bad slot cannot stall the rest. It stops between
    slots once ``should_stop()`` says so (the process is stopping): the rest waits for the next pass, here or in the
    process that leads next."""
    report = EvaluationReport()
    with Session(engine) as session:
        targets = list(session.exec(select(Slot.id, Slot.device_id).order_by(col(Slot.device_id), col(Slot.name))))
        fleet = fleet_priors(session=session)
    for slot_id, device_id in targets:
        if should_stop():
            report.interrupted = True
            break
        report.slots += 1
        try:
            with transaction(engine) as session:
                slot = session.get(Slot, slot_id)
                device = session.get(Device, device_id)
                if slot is None or device is None:
                    continue  # deleted since the list was read
                decision = evaluate_slot(
                    session=session,
                    slot=slot,
                    device=device,
                    now=now,
                    margin_days=margin_days,
                    prior=prior_for(fleet, device=device, slot=slot),
                )
                report.forecasts += 1
                if decision is not None:
                    report.decisions.append(decision.id)
        except IntegrityError:
            # Another evaluator decided this cycle first; the database kept exactly one decision.
            log.info("slot %s: decision already taken for this cycle", slot_id)
        except Exception:
            report.errors += 1
            log.exception("slot %s: evaluation failed", slot_id)
    return report

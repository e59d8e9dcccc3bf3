"""The order lifecycle: awaiting_approval → placed → confirmed → shipped → delivered, or declined/cancelled."""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal

from sqlmodel import Session, col, func, select

from replenish.audit import service as audit
from replenish.automation.models import Decision
from replenish.automation.ordering import LinePlan
from replenish.constants import OPEN_ORDER_STATUSES, AuditAction, OrderStatus, OutboxKind
from replenish.customers.locks import lock_customer
from replenish.db import get_or_raise
from replenish.devices import service as devices
from replenish.devices.models import Slot
from replenish.errors import Conflict, NotFound
from replenish.ingest.models import DeviceMessage, Reading
from replenish.orders.models import Order, OrderEvent
from replenish.outbox import service as outbox

log = logging.getLogger(__name__)

# An order's explanation lists at most this many of the readings behind it (the newest).
EVIDENCE_LIMIT = 500

_ALLOWED: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.AWAITING_APPROVAL: frozenset({OrderStatus.PLACED, OrderStatus.DECLINED, OrderStatus.CANCELLED}),
    OrderStatus.PLACED: frozenset({OrderStatus.CONFIRMED, OrderStatus.CANCELLED, OrderStatus.HELD}),
    OrderStatus.CONFIRMED: frozenset({OrderStatus.SHIPPED, OrderStatus.CANCELLED, OrderStatus.HELD}),
    # Released (to what it was when held), cancelled, or shipped by a partner that had not yet seen the hold.
    OrderStatus.HELD: frozenset(
        {OrderStatus.PLACED, OrderStatus.CONFIRMED, OrderStatus.CANCELLED, OrderStatus.SHIPPED}
    ),
    OrderStatus.SHIPPED: frozenset({OrderStatus.DELIVERED}),
    OrderStatus.DELIVERED: frozenset(),
    OrderStatus.DECLINED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
}


def create(
    *,
    session: Session,
    decision: Decision,
    slot: Slot,
    line: LinePlan,
    awaiting_approval: bool,
    now: datetime,
    actor: str,
    hand_off_at: datetime | None = None,
) -> Order:
    """A new order for the decision, of what ``line`` says (product, catalogue version, packs, price). A placed one
    goes to fulfilment at ``hand_off_at`` (default: now); until then a cancel withdraws it and fulfilment never
    hears of it."""
    order = Order(
        decision_id=decision.id,
        customer_id=decision.customer_id,
        device_id=decision.device_id,
        slot_id=slot.id,
        product_sku=line.offer.sku,
        product_version_id=line.offer.version_id,
        quantity=line.quantity,
        unit_price=line.offer.price,
        total_price=line.total_price,
        status=OrderStatus.AWAITING_APPROVAL if awaiting_approval else OrderStatus.PLACED,
        consent_version=decision.consent_version,
        created_at=now,
        updated_at=now,
        placed_at=None if awaiting_approval else now,
        hand_off_at=None if awaiting_approval else max(hand_off_at or now, now),
    )
    session.add(order)  # rows that refer to it follow it in the same flush (columns.written_after)
    _record(session=session, order=order, from_status=None, actor=actor, now=now, reason=None)
    if order.status == OrderStatus.PLACED:
        _send_to_fulfilment(session=session, order=order, now=now)
    log.info(
        "order %s %s: %d x %s for %s (decision %s)",
        order.id,
        order.status,
        order.quantity,
        order.product_sku,
        order.device_id,
        decision.id,
    )
    return order


def order_for_decision(*, session: Session, decision_id: str) -> Order | None:
    return session.exec(select(Order).where(Order.decision_id == decision_id)).first()


def can_become(current: OrderStatus, to: OrderStatus) -> bool:
    """Whether an order in `current` may move to `to` (what transition allows)."""
    return to in _ALLOWED[current]


def get(*, session: Session, order_id: str, customer_id: str | None = None) -> Order:
    """The order; given ``customer_id``, only if it is that customer's (another's answers as a missing one)."""
    return get_or_raise(session, Order, order_id, entity="order", customer_id=customer_id)


def list_orders(
    *,
    session: Session,
    customer_id: str | None = None,
    device_id: str | None = None,
    status: OrderStatus | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Order]:
    query = select(Order)
    if customer_id:
        query = query.where(Order.customer_id == customer_id)
    if device_id:
        query = query.where(Order.device_id == device_id)
    if status:
        query = query.where(Order.status == status)
    return list(session.exec(query.order_by(col(Order.created_at).desc(), col(Order.id)).offset(offset).limit(limit)))


SPENDING_STATUSES = (
    OrderStatus.PLACED,
    OrderStatus.CONFIRMED,
    OrderStatus.SHIPPED,
    OrderStatus.DELIVERED,
    OrderStatus.HELD,
)


def spent_between(*, session: Session, customer_id: str, start: datetime, end: datetime) -> Decimal:
    """What the customer's orders placed (by the platform, or approved) in [start, end) and not cancelled cost."""
    total = session.exec(
        select(func.coalesce(func.sum(Order.total_price), 0)).where(
            Order.customer_id == customer_id,
            col(Order.placed_at) >= start,
            col(Order.placed_at) < end,
            col(Order.status).in_(SPENDING_STATUSES),
        )
    ).one()
    return Decimal(total or 0)  # coalesce makes it 0 already; the type does not know


def history(*, session: Session, order_id: str) -> list[OrderEvent]:
    return list(session.exec(select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(col(OrderEvent.id))))


def open_order_for_slot(*, session: Session, slot_id: str) -> Order | None:
    """The slot's newest order that is neither delivered nor declined nor cancelled, if any."""
    return session.exec(
        select(Order)
        .where(Order.slot_id == slot_id, col(Order.status).in_(OPEN_ORDER_STATUSES))
        .order_by(col(Order.created_at).desc())
        .limit(1)
    ).first()


def transition(
    *, session: Session, order_id: str, to: OrderStatus, actor: str, now: datetime, reason: str | None = None
) -> Order:
    if to == OrderStatus.PLACED:
        # Placing spends from the customer's monthly cap: under the customer's lock, as every decision is, so that an
        # evaluation counting this month's spending cannot miss it. The customer first, then the order: the lock
        # order of every writer of both.
        found = session.get(Order, order_id)
        if found is not None:
            lock_customer(session=session, customer_id=found.customer_id)
    # Lock the row (PostgreSQL; SQLite serialises writers anyway): an approve and a cancel racing each other
    # must see each other's result, not both act on the old status.
    # populate_existing: an Order this session loaded earlier must not stand in for the row just locked.
    order = session.get(Order, order_id, with_for_update=True, populate_existing=True)
    if order is None:
        raise NotFound("order", order_id)
    current = OrderStatus(order.status)
    if current == OrderStatus.HELD and to == OrderStatus.PLACED:
        to = _status_before_hold(session=session, order_id=order.id)  # a release goes back to where it was
    if to == current:
        return order  # Repeating a request (a retried click or webhook) is harmless.
    if not can_become(current, to):
        raise Conflict(f"order {order_id!r} is {current}; it cannot become {to}")
    order.status = to
    order.updated_at = now
    session.add(order)
    # An order no longer open, or open again, changes what the slot may decide (see automation.engine).
    devices.mark_slots_due(session=session, at=now, slot_ids=[order.slot_id])
    _record(session=session, order=order, from_status=current, actor=actor, now=now, reason=reason)
    if current == OrderStatus.HELD and to in (OrderStatus.PLACED, OrderStatus.CONFIRMED):
        # Spending counts from when it was first placed.
        if outbox.exists(session=session, idempotency_key=_placed_key(order)):
            _tell_fulfilment(session=session, order=order, kind=OutboxKind.ORDER_RELEASED, reason=reason, now=now)
        else:  # held inside its cancel window: fulfilment never had it, and gets it now
            order.hand_off_at = now
            _send_to_fulfilment(session=session, order=order, now=now)
    elif to == OrderStatus.PLACED:
        order.placed_at = now
        order.hand_off_at = now  # the customer said yes just now: no cancel window
        _send_to_fulfilment(session=session, order=order, now=now)
    elif to == OrderStatus.HELD:
        if not _withdraw_from_fulfilment(session=session, order=order, actor=actor, now=now):
            _tell_fulfilment(session=session, order=order, kind=OutboxKind.ORDER_HELD, reason=reason, now=now)
    elif (
        to == OrderStatus.CANCELLED
        and current != OrderStatus.AWAITING_APPROVAL
        # Inside the cancel window the hand-off is simply taken back; a fulfilment that has it is told.
        and not _withdraw_from_fulfilment(session=session, order=order, actor=actor, now=now)
        and outbox.exists(session=session, idempotency_key=_placed_key(order))
    ):
        outbox.enqueue(
            session=session,
            kind=OutboxKind.ORDER_CANCELLED,
            stream=f"order:{order.id}",
            idempotency_key=f"order:{order.id}:cancelled",
            payload={**fulfilment_payload(order), "reason": reason},
            now=now,
        )
    return order


def _placed_key(order: Order) -> str:
    return f"order:{order.id}:placed"


def _withdraw_from_fulfilment(*, session: Session, order: Order, actor: str, now: datetime) -> bool:
    """Inside its cancel window an order has not left yet: take its hand-off back, so fulfilment never hears of
    it. False once fulfilment has it (or is being handed it this moment): then fulfilment is told."""
    if not outbox.withdraw(session=session, idempotency_key=_placed_key(order)):
        return False
    note(session=session, order=order, actor=actor, now=now, reason="withdrawn before it reached fulfilment")
    return True


def in_cancel_window(order: Order, *, now: datetime) -> bool:
    """Placed, and not yet handed to fulfilment: a cancel now never reaches it."""
    return order.status == OrderStatus.PLACED and order.hand_off_at is not None and order.hand_off_at > now


def _record(
    *, session: Session, order: Order, from_status: str | None, actor: str, now: datetime, reason: str | None
) -> None:
    """The order's own history, and the audit log."""
    session.add(
        OrderEvent(
            order_id=order.id, from_status=from_status, to_status=order.status, at=now, actor=actor, reason=reason
        )
    )
    audit.record(
        session=session,
        at=now,
        actor=actor,
        action=AuditAction.ORDER_STATUS,
        customer_id=order.customer_id,
        subject_type="order",
        subject_id=order.id,
        detail={"from": from_status, "to": order.status, "reason": reason},
    )


def note(*, session: Session, order: Order, actor: str, now: datetime, reason: str) -> None:
    """Record something about the order in its history without changing its status."""
    session.add(
        OrderEvent(
            order_id=order.id, from_status=order.status, to_status=order.status, at=now, actor=actor, reason=reason
        )
    )


def _status_before_hold(*, session: Session, order_id: str) -> OrderStatus:
    held = session.exec(
        select(OrderEvent.from_status)
        .where(
            OrderEvent.order_id == order_id,
            OrderEvent.to_status == OrderStatus.HELD,
            OrderEvent.from_status != OrderStatus.HELD,  # not a note made while it was held
        )
        .order_by(col(OrderEvent.id).desc())
        .limit(1)
    ).first()
    return OrderStatus(held) if held else OrderStatus.PLACED


def _tell_fulfilment(*, session: Session, order: Order, kind: OutboxKind, reason: str | None, now: datetime) -> None:
    """A hold or a release: an order can be held and released more than once, so each has its own key."""
    changes = session.exec(select(func.count()).where(OrderEvent.order_id == order.id)).one()
    outbox.enqueue(
        session=session,
        kind=kind,
        stream=f"order:{order.id}",
        idempotency_key=f"order:{order.id}:{kind.removeprefix('order.')}:{changes}",
        payload={**fulfilment_payload(order), "reason": reason},
        now=now,
    )


def fulfilment_payload(order: Order) -> dict[str, object]:
    return {
        "order_id": order.id,
        "customer_id": order.customer_id,
        "device_id": order.device_id,
        "slot_id": order.slot_id,
        "product_sku": order.product_sku,
        "product_version_id": order.product_version_id,
        "quantity": order.quantity,
        "unit_price": str(order.unit_price) if order.unit_price is not None else None,
        "total_price": str(order.total_price) if order.total_price is not None else None,
        "consent_version": order.consent_version,
    }


def _send_to_fulfilment(*, session: Session, order: Order, now: datetime) -> None:
    outbox.enqueue(
        session=session,
        kind=OutboxKind.ORDER_PLACED,
        stream=f"order:{order.id}",
        idempotency_key=_placed_key(order),
        payload=fulfilment_payload(order),
        now=now,
        available_at=order.hand_off_at,
    )


def explain(*, session: Session, order: Order) -> dict[str, object]:
    """The decision behind an order with the readings its forecast used."""
    return explain_decision(session=session, decision_id=order.decision_id)


def explain_decision(*, session: Session, decision_id: str) -> dict[str, object]:
    """A decision (behind an order or a notification) with the readings its forecast used."""
    decision = session.get(Decision, decision_id)
    assert decision is not None
    slot = session.get(Slot, decision.slot_id)
    assert slot is not None
    evidence_from = decision.forecast.get("evidence_from")
    evidence_to = decision.forecast.get("evidence_to")
    readings: list[dict[str, object]] = []
    if evidence_from and evidence_to:
        # The readings in the forecast's range that the platform had received when it decided (not ones that
        # arrived later), newest EVIDENCE_LIMIT of them.
        rows = session.exec(
            select(Reading.ts, Reading.level)
            .join(DeviceMessage, col(DeviceMessage.id) == Reading.message_id)
            .where(
                Reading.slot_id == slot.id,
                Reading.ts >= datetime.fromisoformat(evidence_from),
                Reading.ts <= datetime.fromisoformat(evidence_to),
                DeviceMessage.received_at <= decision.decided_at,
            )
            .order_by(col(Reading.ts).desc())
            .limit(EVIDENCE_LIMIT)
        )
        readings = [{"ts": ts, "level": level} for ts, level in reversed(rows.all())]
    return {
        "decision_id": decision.id,
        "correlation_id": decision.correlation_id,
        "decided_at": decision.decided_at,
        "action": decision.action,
        "reason": decision.reason,
        "slot_name": slot.name,
        "cycle_started_at": decision.cycle_started_at,
        "consent_mode": decision.consent_mode,
        "consent_version": decision.consent_version,
        "forecast": decision.forecast,
        "policy": decision.policy,
        "readings": readings,
    }

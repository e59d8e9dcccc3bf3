"""The order lifecycle: awaiting_approval → placed → confirmed → shipped → delivered, or declined/cancelled."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import event
from sqlmodel import Session, col, func, select

from replenish.audit import service as audit
from replenish.automation.models import Decision
from replenish.automation.ordering import LinePlan
from replenish.catalogue.models import ProductVersion
from replenish.constants import (
    OPEN_ORDER_STATUSES,
    WITHDRAWN_ORDER_STATUSES,
    AuditAction,
    OrderFeedback,
    OrderStatus,
    OutboxKind,
)
from replenish.customers.locks import lock_customer
from replenish.db import get_or_raise
from replenish.devices import service as devices
from replenish.devices.models import Device, Slot
from replenish.errors import Conflict, InvalidRequest, NotFound
from replenish.ingest.models import DeviceMessage, Reading
from replenish.orders.models import Order, OrderEvent, Shipment
from replenish.orders.schemas import OrderRead, ShipmentLine, ShipmentRead
from replenish.outbox import service as outbox
from replenish.outbox.models import OutboxMessage

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
    shipment: Shipment,
    awaiting_approval: bool,
    now: datetime,
    actor: str,
    hand_off_at: datetime | None = None,
) -> Order:
    """A new order line for the decision, of what ``line`` says (product, catalogue version, packs, price), in
    ``shipment`` (new_shipment). A placed one goes to fulfilment with the shipment's other placed lines: at the
    shipment's hand-off when it has one waiting, else at ``hand_off_at`` (its cancel window; default now). Until
    then a cancel withdraws the line and fulfilment never hears of it."""
    order = Order(
        decision_id=decision.id,
        customer_id=decision.customer_id,
        shipment_id=shipment.id,
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
    )
    session.add(order)  # rows that refer to it follow it in the same flush (columns.written_after)
    _written(session).lines.setdefault(shipment.id, []).append(order)
    _record(session=session, order=order, from_status=None, actor=actor, now=now, reason=None)
    if order.status == OrderStatus.PLACED:
        _send_to_fulfilment(session=session, order=order, now=now, hand_off_at=hand_off_at or now)
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


@dataclass
class _Written:
    """What this transaction has written of shipments (new shipments, their lines, their hand-offs), found without
    writing the transaction out first: an evaluation writes a decision's rows together, at the end."""

    shipments: set[str] = field(default_factory=set)
    lines: dict[str, list[Order]] = field(default_factory=dict)
    hand_offs: dict[str, OutboxMessage] = field(default_factory=dict)


_WRITTEN = "replenish.orders.written"
_FORGETS = "replenish.orders.forgets"


def _written(session: Session) -> _Written:
    written = session.info.get(_WRITTEN)
    if written is None:
        written = session.info[_WRITTEN] = _Written()
        if not session.info.get(_FORGETS):
            session.info[_FORGETS] = True
            event.listen(session, "after_transaction_end", _forget_written)
    return written


def _forget_written(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # the transaction ended, not a savepoint
        session.info.pop(_WRITTEN, None)


def new_shipment(*, session: Session, customer_id: str, now: datetime) -> Shipment:
    """A new shipment for the customer's order lines decided now."""
    shipment = Shipment(customer_id=customer_id, created_at=now)
    session.add(shipment)
    _written(session).shipments.add(shipment.id)
    return shipment


def box_of(*, session: Session, order: Order) -> list[Order]:
    """The other lines of the order's shipment, those written before and those this transaction is writing, in the
    order they were made."""
    if order.shipment_id is None:
        return []
    written = _written(session)
    lines = {line.id: line for line in written.lines.get(order.shipment_id, [])}
    if order.shipment_id not in written.shipments:
        with session.no_autoflush:
            query = select(Order).where(Order.shipment_id == order.shipment_id)
            lines |= {line.id: line for line in session.exec(query)}
    lines.pop(order.id, None)
    return sorted(lines.values(), key=lambda line: (line.created_at, line.id))


def shipment_lines(*, session: Session, shipment_id: str) -> list[Order]:
    query = select(Order).where(Order.shipment_id == shipment_id).order_by(col(Order.created_at), col(Order.id))
    return list(session.exec(query))


def get_shipment(
    *, session: Session, shipment_id: str, customer_id: str | None = None, device_ids: Collection[str] | None = None
) -> Shipment:
    """The shipment; given ``customer_id``, only if it is that customer's (another's answers as a missing one); given
    ``device_ids`` (what a member or carer sees), only one with a line for one of them."""
    shipment = get_or_raise(session, Shipment, shipment_id, entity="shipment", customer_id=customer_id)
    if device_ids is not None and shipment.id not in set(
        session.exec(_shipments_with_lines_of(device_ids).where(Order.shipment_id == shipment.id))
    ):
        raise NotFound("shipment", shipment_id)
    return shipment


def _shipments_with_lines_of(device_ids: Collection[str]) -> Any:
    return select(Order.shipment_id).where(col(Order.device_id).in_(list(device_ids)))


def list_shipments(
    *,
    session: Session,
    customer_id: str | None = None,
    device_ids: Collection[str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Shipment]:
    query = select(Shipment)
    if customer_id:
        query = query.where(Shipment.customer_id == customer_id)
    if device_ids is not None:
        query = query.where(col(Shipment.id).in_(_shipments_with_lines_of(device_ids)))
    return list(
        session.exec(query.order_by(col(Shipment.created_at).desc(), col(Shipment.id)).offset(offset).limit(limit))
    )


def view_shipment(*, session: Session, shipment: Shipment, device_ids: Collection[str] | None = None) -> ShipmentRead:
    """The shipment with its lines: each line's slot, product, price and why it is in it. Given ``device_ids`` (what
    a member or carer sees), only the lines of those devices, and the total of those."""
    lines = [
        line
        for line in shipment_lines(session=session, shipment_id=shipment.id)
        if device_ids is None or line.device_id in device_ids
    ]
    reasons = dict(
        session.exec(
            select(Decision.id, Decision.reason).where(col(Decision.id).in_([line.decision_id for line in lines]))
        ).all()
    )
    slots = {
        slot.id: (slot, device)
        for slot, device in session.exec(
            select(Slot, Device)
            .join(Device, col(Device.id) == col(Slot.device_id))
            .where(col(Slot.id).in_([line.slot_id for line in lines]))
        )
    }
    versions = {
        version.id: version
        for version in session.exec(
            select(ProductVersion).where(col(ProductVersion.id).in_([line.product_version_id for line in lines]))
        )
    }
    kept = [line for line in lines if line.status not in WITHDRAWN_ORDER_STATUSES]
    prices = [line.total_price for line in kept if line.total_price is not None]
    currencies = {versions[line.product_version_id].currency for line in kept if line.product_version_id in versions}
    hand_offs = [line.hand_off_at for line in kept if line.hand_off_at is not None]
    return ShipmentRead(
        id=shipment.id,
        customer_id=shipment.customer_id,
        created_at=shipment.created_at,
        hand_off_at=min(hand_offs, default=None),
        total_price=sum(prices, Decimal(0)) if len(prices) == len(kept) else None,
        currency=currencies.pop() if len(currencies) == 1 else None,
        lines=[
            ShipmentLine(
                order=OrderRead.model_validate(line),
                device_id=line.device_id,
                device_name=slots[line.slot_id][1].name if line.slot_id in slots else line.device_id,
                slot_name=slots[line.slot_id][0].name if line.slot_id in slots else "",
                product_name=versions[line.product_version_id].name if line.product_version_id in versions else None,
                reason=reasons.get(line.decision_id, ""),
                removable=can_become(OrderStatus(line.status), OrderStatus.CANCELLED),
            )
            for line in sorted(
                lines,
                key=lambda line: (
                    line.created_at,
                    line.device_id,
                    slots[line.slot_id][0].name if line.slot_id in slots else "",
                ),
            )
        ],
    )


def remove_line(
    *,
    session: Session,
    shipment_id: str,
    order_id: str,
    actor: str,
    now: datetime,
    reason: str | None,
    device_ids: Collection[str] | None = None,
) -> Order:
    """Take one line out of its shipment: declined while it awaits approval, cancelled once placed (fulfilment is
    told if it has it). The shipment's other lines go on. Given ``device_ids`` (what a member sees), only a line of
    one of those devices."""
    order = session.get(Order, order_id)
    if (
        order is None
        or order.shipment_id != shipment_id
        or (device_ids is not None and order.device_id not in device_ids)
    ):
        raise NotFound("line", order_id)
    status = OrderStatus(order.status)
    if status in WITHDRAWN_ORDER_STATUSES:
        return order  # removing it again is harmless
    to = OrderStatus.DECLINED if can_become(status, OrderStatus.DECLINED) else OrderStatus.CANCELLED
    return transition(
        session=session, order_id=order_id, to=to, actor=actor, now=now, reason=reason or "removed from the shipment"
    )


def order_for_decision(*, session: Session, decision_id: str) -> Order | None:
    return session.exec(select(Order).where(Order.decision_id == decision_id)).first()


def can_become(current: OrderStatus, to: OrderStatus) -> bool:
    """Whether an order in `current` may move to `to` (what transition allows)."""
    return to in _ALLOWED[current]


def get(
    *, session: Session, order_id: str, customer_id: str | None = None, device_ids: Collection[str] | None = None
) -> Order:
    """The order; given ``customer_id``, only if it is that customer's (another's answers as a missing one); given
    ``device_ids`` (what a member or carer sees), only one of those devices'."""
    return get_or_raise(session, Order, order_id, entity="order", customer_id=customer_id, device_ids=device_ids)


def list_orders(
    *,
    session: Session,
    customer_id: str | None = None,
    device_ids: Collection[str] | None = None,
    device_id: str | None = None,
    status: OrderStatus | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Order]:
    query = select(Order)
    if customer_id:
        query = query.where(Order.customer_id == customer_id)
    if device_ids is not None:
        query = query.where(col(Order.device_id).in_(list(device_ids)))
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


def lock_for_change(*, session: Session, order_id: str, to: OrderStatus) -> Order | None:
    """The order, locked as a change to ``to`` locks it, for a check of its status that the change must not outrun
    (a member's limit applies to a release of a held order, not to an order already placed)."""
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
    return session.get(Order, order_id, with_for_update=True, populate_existing=True)


def transition(
    *,
    session: Session,
    order_id: str,
    to: OrderStatus,
    actor: str,
    now: datetime,
    reason: str | None = None,
    feedback: OrderFeedback | None = None,
) -> Order:
    """Move the order to ``to`` (409 when its status does not allow it); repeating its status changes nothing. A
    decline or cancel keeps the customer's ``feedback``."""
    if feedback is not None and to not in (OrderStatus.DECLINED, OrderStatus.CANCELLED):
        raise InvalidRequest("feedback is for declining or cancelling an order", field="feedback")
    order = lock_for_change(session=session, order_id=order_id, to=to)
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
    if feedback is not None:
        order.feedback = feedback
    session.add(order)
    # An order no longer open, or open again, changes what the slot may decide (see automation.engine).
    devices.mark_slots_due(session=session, at=now, slot_ids=[order.slot_id])
    _record(session=session, order=order, from_status=current, actor=actor, now=now, reason=reason)
    if current == OrderStatus.HELD and to in (OrderStatus.PLACED, OrderStatus.CONFIRMED):
        # Spending counts from when it was first placed.
        if _reached_fulfilment(session=session, order=order):
            _tell_fulfilment(session=session, order=order, kind=OutboxKind.ORDER_RELEASED, reason=reason, now=now)
        else:  # held inside its cancel window: fulfilment never had it, and gets it now
            _send_to_fulfilment(session=session, order=order, now=now, hand_off_at=now)
    elif to == OrderStatus.PLACED:
        order.placed_at = now
        # The customer said yes just now: no cancel window of its own. It goes with its shipment's other lines when
        # they leave before its latest useful moment (answer_by), else at once, alone.
        _send_to_fulfilment(session=session, order=order, now=now, hand_off_at=now, by=order.answer_by)
    elif to == OrderStatus.HELD:
        if not _withdraw_from_fulfilment(session=session, order=order, actor=actor, now=now):
            _tell_fulfilment(session=session, order=order, kind=OutboxKind.ORDER_HELD, reason=reason, now=now)
    elif (
        to == OrderStatus.CANCELLED
        and current != OrderStatus.AWAITING_APPROVAL
        # Inside the cancel window the hand-off is simply taken back; a fulfilment that has it is told.
        and not _withdraw_from_fulfilment(session=session, order=order, actor=actor, now=now)
        and _reached_fulfilment(session=session, order=order)
    ):
        outbox.enqueue(
            session=session,
            kind=OutboxKind.ORDER_CANCELLED,
            stream=_stream(order),
            idempotency_key=f"order:{order.id}:cancelled",
            payload={**fulfilment_payload(order), "reason": reason},
            now=now,
        )
    return order


def _stream(order: Order) -> str:
    """Fulfilment hears of a line in order: its cancel, hold or release never overtakes its shipment's hand-off."""
    return f"shipment:{order.shipment_id}" if order.shipment_id is not None else f"order:{order.id}"


def _placed_key(order: Order) -> str:
    """The hand-off of an order from before shipments, which went to fulfilment alone."""
    return f"order:{order.id}:placed"


def shipment_key(shipment_id: str) -> str:
    """The outbox key of a shipment's hand-off: one payload with its placed lines."""
    return f"shipment:{shipment_id}:placed"


def _lock_shipment(*, session: Session, shipment_id: str) -> None:
    """Hold the shipment until the transaction ends (PostgreSQL; SQLite has one writer anyway): whoever rewrites its
    hand-off (a line added, taken out, held, released, or the hand-off moved) reads it as the last writer left it,
    so that a withdrawal that fails means a dispatcher took it, never that another rewrite got there first. One
    this transaction made is its own already."""
    if shipment_id in _written(session).shipments:
        return
    with session.no_autoflush:
        session.exec(select(Shipment.id).where(Shipment.id == shipment_id).with_for_update()).first()


def _hand_off_message(*, session: Session, key: str) -> OutboxMessage | None:
    """The hand-off message under ``key``: written in this transaction, or stored."""
    written = _written(session).hand_offs.get(key)
    if written is not None:
        return written
    with session.no_autoflush:
        return session.exec(select(OutboxMessage).where(OutboxMessage.idempotency_key == key)).first()


def _line_ids(message: OutboxMessage) -> list[str]:
    return [line["order_id"] for line in message.payload["lines"]]


def _reached_fulfilment(*, session: Session, order: Order) -> bool:
    """Whether fulfilment has (or may have) the line: it is in a hand-off no longer withdrawable. A line is taken
    out of a hand-off still waiting (_withdraw_from_fulfilment), so a line still in one after that went out."""
    if order.shipment_id is None:
        return outbox.exists(session=session, idempotency_key=_placed_key(order))
    message = _hand_off_message(session=session, key=shipment_key(order.shipment_id))
    return message is not None and order.id in _line_ids(message)


def _rewrite(
    *, session: Session, message: OutboxMessage, lines: list[Order], now: datetime, at: datetime | None = None
) -> bool:
    """Replace a hand-off that has not gone yet with one of ``lines`` (none: no hand-off), at the same moment (or
    ``at``). False when it has gone (a dispatcher claimed it): fulfilment has the lines it had."""
    written = _written(session).hand_offs
    if written.get(message.idempotency_key) is message and message in session.new:
        if lines:
            message.payload = _shipment_payload(message.payload["shipment_id"], message.payload["customer_id"], lines)
            message.available_at = at or message.available_at
        else:
            session.expunge(message)
            del written[message.idempotency_key]
        return True
    when = at or message.available_at
    if not outbox.withdraw(session=session, idempotency_key=message.idempotency_key):
        return False
    # Gone from the table: a new row may even get its id (SQLite reuses the highest).
    if message in session:
        session.expunge(message)
    written.pop(message.idempotency_key, None)
    if lines:
        _enqueue_shipment(
            session=session,
            shipment_id=message.payload["shipment_id"],
            customer_id=message.payload["customer_id"],
            lines=lines,
            now=now,
            at=when,
        )
    return True


def _waiting(message: OutboxMessage, *, now: datetime) -> bool:
    """A hand-off still to come: no dispatcher has taken it, and its moment is ahead."""
    return (
        message.delivered_at is None
        and message.claimed_by is None
        and message.attempts == 0
        and message.available_at > now
    )


def pending_shipment(
    *, session: Session, customer_id: str, now: datetime, by: datetime | None = None
) -> Shipment | None:
    """The customer's newest shipment whose hand-off is still to come (at ``by`` at the latest): a line decided
    meanwhile joins it, in the same box, instead of making a parcel of its own."""
    shipment = session.exec(
        select(Shipment)
        .where(Shipment.customer_id == customer_id)
        .order_by(col(Shipment.created_at).desc(), col(Shipment.id).desc())
        .limit(1)
    ).first()
    if shipment is None:
        return None
    message = _hand_off_message(session=session, key=shipment_key(shipment.id))
    if message is None or not _waiting(message, now=now) or (by is not None and message.available_at > by):
        return None
    return shipment


def basket_value(*, session: Session, shipment_id: str) -> Decimal:
    """What a shipment's lines still in it cost (those with a price)."""
    total = session.exec(
        select(func.coalesce(func.sum(Order.total_price), 0)).where(
            Order.shipment_id == shipment_id, col(Order.status).not_in(WITHDRAWN_ORDER_STATUSES)
        )
    ).one()
    return Decimal(total or 0)


def latest_useful_hand_off(*, session: Session, shipment_id: str) -> datetime | None:
    """The latest moment a shipment's placed lines can leave and still arrive by their early empty dates (each
    one's decision: its forecast's early empty date less its lead time); None without such a line."""
    rows = session.exec(
        select(Decision.forecast, Decision.policy)
        .join(Order, col(Order.decision_id) == col(Decision.id))
        .where(Order.shipment_id == shipment_id, Order.status == OrderStatus.PLACED)
    ).all()
    moments = [
        datetime.fromisoformat(forecast["empty_at_early"]) - timedelta(days=float(policy["lead_time_days"]))
        for forecast, policy in rows
        if forecast.get("empty_at_early") and policy.get("lead_time_days") is not None
    ]
    return min(moments, default=None)


def hold_shipment(*, session: Session, shipment_id: str, until: datetime, now: datetime, reason: str) -> bool:
    """Move a shipment's hand-off still to come later, to ``until`` (never earlier): its placed lines wait, and
    their history says why. False when there is nothing to move (no hand-off waiting, or it is due by then)."""
    _lock_shipment(session=session, shipment_id=shipment_id)
    message = _hand_off_message(session=session, key=shipment_key(shipment_id))
    if message is None or not _waiting(message, now=now) or until <= message.available_at:
        return False
    lines = _lines_of(session=session, message=message)
    if not _rewrite(session=session, message=message, lines=lines, now=now, at=until):
        return False
    for line in lines:
        line.hand_off_at = until
        note(session=session, order=line, actor="shipments", now=now, reason=reason)
    return True


def _withdraw_from_fulfilment(*, session: Session, order: Order, actor: str, now: datetime) -> bool:
    """Inside its cancel window a line has not left yet: take it out of its shipment's hand-off (the other lines
    still go), so fulfilment never hears of it. False once fulfilment has it (or is being handed it this moment):
    then fulfilment is told."""
    if order.shipment_id is None:
        withdrawn = outbox.withdraw(session=session, idempotency_key=_placed_key(order))
    else:
        _lock_shipment(session=session, shipment_id=order.shipment_id)
        message = _hand_off_message(session=session, key=shipment_key(order.shipment_id))
        if message is None or order.id not in _line_ids(message):
            return True  # never handed over
        others = [line for line in _lines_of(session=session, message=message) if line.id != order.id]
        withdrawn = _rewrite(session=session, message=message, lines=others, now=now)
    if not withdrawn:
        return False
    note(session=session, order=order, actor=actor, now=now, reason="withdrawn before it reached fulfilment")
    return True


def _lines_of(*, session: Session, message: OutboxMessage) -> list[Order]:
    ids = _line_ids(message)
    found = {line.id: line for line in _written(session).lines.get(message.payload["shipment_id"], [])}
    missing = [order_id for order_id in ids if order_id not in found]
    if missing:
        with session.no_autoflush:
            found |= {line.id: line for line in session.exec(select(Order).where(col(Order.id).in_(missing)))}
    assert set(ids) <= set(found), "a hand-off names lines that are not there"
    return [found[order_id] for order_id in ids]


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
        stream=_stream(order),
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
        "shipment_id": order.shipment_id,
        "product_sku": order.product_sku,
        "product_version_id": order.product_version_id,
        "quantity": order.quantity,
        "unit_price": str(order.unit_price) if order.unit_price is not None else None,
        "total_price": str(order.total_price) if order.total_price is not None else None,
        "consent_version": order.consent_version,
    }


def _send_to_fulfilment(
    *, session: Session, order: Order, now: datetime, hand_off_at: datetime, by: datetime | None = None
) -> None:
    """A placed line goes to fulfilment with its shipment: into the shipment's hand-off while that has not gone and
    leaves by ``by`` (the latest the line may leave; default ``hand_off_at``), at the hand-off's moment (the cancel
    windows promised for the other lines stand); otherwise in a follow-up shipment of its own at ``hand_off_at``."""
    hand_off_at = max(hand_off_at, now)
    if order.shipment_id is None:  # from before shipments: alone, as then
        order.hand_off_at = hand_off_at
        outbox.enqueue(
            session=session,
            kind=OutboxKind.ORDER_PLACED,
            stream=_stream(order),
            idempotency_key=_placed_key(order),
            payload=fulfilment_payload(order),
            now=now,
            available_at=hand_off_at,
        )
        return
    _lock_shipment(session=session, shipment_id=order.shipment_id)
    message = _hand_off_message(session=session, key=shipment_key(order.shipment_id))
    if message is not None:
        soon_enough = message.available_at <= max(by or hand_off_at, hand_off_at)
        if soon_enough:
            lines = [line for line in _lines_of(session=session, message=message) if line.id != order.id]
            at = message.available_at
            if _rewrite(session=session, message=message, lines=[*lines, order], now=now):
                order.hand_off_at = at
                return
        follow_up = new_shipment(session=session, customer_id=order.customer_id, now=now)
        why = "had gone to fulfilment" if soon_enough else "leaves too late for it"
        note(
            session=session,
            order=order,
            actor="fulfilment hand-off",
            now=now,
            reason=f"its shipment {why}: it goes in shipment {follow_up.id}",
        )
        written = _written(session).lines
        if order in written.get(order.shipment_id, []):
            written[order.shipment_id].remove(order)
        order.shipment_id = follow_up.id
        written.setdefault(follow_up.id, []).append(order)
    order.hand_off_at = hand_off_at
    _enqueue_shipment(
        session=session,
        shipment_id=order.shipment_id,
        customer_id=order.customer_id,
        lines=[order],
        now=now,
        at=order.hand_off_at,
    )


def _enqueue_shipment(
    *, session: Session, shipment_id: str, customer_id: str, lines: list[Order], now: datetime, at: datetime
) -> None:
    _written(session).hand_offs[shipment_key(shipment_id)] = outbox.enqueue(
        session=session,
        kind=OutboxKind.SHIPMENT_PLACED,
        stream=f"shipment:{shipment_id}",
        idempotency_key=shipment_key(shipment_id),
        payload=_shipment_payload(shipment_id, customer_id, lines),
        now=now,
        available_at=at,
    )


def _shipment_payload(shipment_id: str, customer_id: str, lines: list[Order]) -> dict[str, object]:
    return {
        "shipment_id": shipment_id,
        "customer_id": customer_id,
        "lines": [fulfilment_payload(line) for line in lines],
    }


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

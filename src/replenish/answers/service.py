"""Asking the customer and acting on their answer, in the caller's transaction.

An order awaiting approval is announced at once on every channel the consent names, with one-tap Approve and Decline
links, its deadline (the latest useful answer) and a reminder before it; at the deadline the consent's on_no_answer
decides. An automatic order is announced with a one-tap Cancel link that works until it leaves for fulfilment.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from replenish.answers import messages, timing
from replenish.answers.messages import OrderFacts
from replenish.answers.models import OrderLink
from replenish.audit import service as audit
from replenish.automation.models import Decision
from replenish.automation.policy import Verdict, within_limits
from replenish.consent import service as consent
from replenish.consent.schemas import ConsentDocument, OrderLimits
from replenish.constants import (
    WITHDRAWN_ORDER_STATUSES,
    AuditAction,
    ConsentMode,
    DecisionAction,
    LinkAction,
    NoAnswer,
    NoticeKind,
    OrderStatus,
)
from replenish.customers.locks import lock_customer
from replenish.devices.models import Device, Slot
from replenish.errors import Conflict, NotFound
from replenish.forecasting import Forecast
from replenish.notifications import service as notifications
from replenish.notifications.timing import reachable_at
from replenish.orders import service as orders
from replenish.orders.models import Order

log = logging.getLogger(__name__)

# Who acts when the deadline passes unanswered, and who acts through a link (the link's id is in the audit record).
NO_ANSWER_ACTOR = "automation (no answer)"
LINK_ACTOR = "customer (one-tap link)"
LINK_LABELS = {LinkAction.APPROVE: "Approve", LinkAction.DECLINE: "Decline", LinkAction.CANCEL: "Cancel"}
# The status each link action leads to, and the statuses in which it still can.
LINK_TARGET = {
    LinkAction.APPROVE: OrderStatus.PLACED,
    LinkAction.DECLINE: OrderStatus.DECLINED,
    LinkAction.CANCEL: OrderStatus.CANCELLED,
}


def app_path(order: Order) -> str:
    return f"/app/orders/{order.id}"


def _facts(
    *, session: Session, order: Order, document: ConsentDocument, decision: Decision | None = None
) -> OrderFacts:
    """What a message says about the order. ``decision``: the order's, when the caller has it (a new one is not
    written yet: looking it up would write out the whole transaction first)."""
    device = session.get(Device, order.device_id)
    slot = session.get(Slot, order.slot_id)
    decision = decision or session.get(Decision, order.decision_id)
    forecast = Forecast.from_json(decision.forecast) if decision is not None else None
    return OrderFacts(
        device_name=device.name if device is not None else order.device_id,
        slot_name=slot.name if slot is not None else "",
        product_sku=order.product_sku,
        quantity=order.quantity,
        total_price=order.total_price,
        zone=document.zone,
        empty_at_early=forecast.empty_at_early if forecast is not None else None,
        box=_box(session=session, order=order),
    )


def _box(*, session: Session, order: Order) -> tuple[str, ...]:
    """The other lines of the order's shipment still in it, as "device slot"."""
    labels = []
    with session.no_autoflush:  # the lines being written go out with their decisions, together
        for line in orders.box_of(session=session, order=order):
            if line.status in WITHDRAWN_ORDER_STATUSES:
                continue
            device = session.get(Device, line.device_id)
            slot = session.get(Slot, line.slot_id)
            labels.append(f"{device.name if device else line.device_id} {slot.name if slot else ''}".strip())
    return tuple(labels)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _issue_links(
    *,
    session: Session,
    order: Order,
    actions: tuple[LinkAction, ...],
    notice: NoticeKind,
    consent_version: int,
    on_no_answer: NoAnswer,
    now: datetime,
) -> list[tuple[str, str]]:
    """Fresh links for one message, as (label, token): the tokens go out in the message only."""
    issued = []
    for action in actions:
        token = secrets.token_urlsafe(24)
        session.add(
            OrderLink(
                token_hash=_token_hash(token),
                order_id=order.id,
                customer_id=order.customer_id,
                action=action,
                notice=notice,
                consent_version=consent_version,
                created_at=now,
                expires_at=timing.link_expires_at(
                    action=action,
                    now=now,
                    answer_by=order.answer_by,
                    hand_off_at=order.hand_off_at,
                    on_no_answer=on_no_answer,
                ),
            )
        )
        issued.append((LINK_LABELS[action], token))
    return issued


def _tell(
    *,
    session: Session,
    order: Order,
    document: ConsentDocument,
    consent_version: int,
    kind: NoticeKind,
    text: tuple[str, str],
    now: datetime,
    actions: tuple[LinkAction, ...] = (),
) -> None:
    links = _issue_links(
        session=session,
        order=order,
        actions=actions,
        notice=kind,
        consent_version=consent_version,
        on_no_answer=document.on_no_answer,
        now=now,
    )
    subject, body = text
    notifications.notify_customer(
        session=session,
        customer_id=order.customer_id,
        document=document,
        consent_version=consent_version,
        subject=subject,
        body=body,
        now=now,
        decision_id=order.decision_id,
        kind=kind,
        order_id=order.id,
        links=links,
        app_path=app_path(order),
    )


def _reachable(document: ConsentDocument, now: datetime) -> datetime:
    """When a notice sent now first reaches the customer, given each channel's quiet hours."""
    return reachable_at(
        now,
        quiet_hours=[
            (channel.quiet_hours.start, channel.quiet_hours.end) if channel.quiet_hours else None
            for channel in document.notification_channels
        ],
        zone=document.zone,
    )


def request_approval(
    *,
    session: Session,
    order: Order,
    lead_time_days: float,
    empty_at_early: datetime | None,
    document: ConsentDocument,
    consent_version: int,
    now: datetime,
    decision: Decision | None = None,
) -> None:
    """Ask at once: the deadline and reminder go on the order, the request with its links to every channel.
    ``decision``: the order's, when the caller has it (see _facts)."""
    # Asked in the customer's quiet hours, the request reaches them when those end: their time to answer (and the
    # reminder) counts from then.
    reachable = _reachable(document, now)
    window = timing.answer_window(
        latest_useful=timing.latest_useful_answer(empty_at_early=empty_at_early, lead_time_days=lead_time_days),
        now=reachable,
        reminder_before=timedelta(hours=document.approval_reminder_hours),
    )
    order.answer_by, order.remind_at = window.answer_by, window.remind_at
    session.add(order)
    _ask(
        session=session,
        order=order,
        document=document,
        consent_version=consent_version,
        kind=NoticeKind.APPROVAL_REQUEST,
        write=messages.approval_request,
        now=now,
        decision=decision,
    )


def _ask(
    *,
    session: Session,
    order: Order,
    document: ConsentDocument,
    consent_version: int,
    kind: NoticeKind,
    write: Callable[..., tuple[str, str]],
    now: datetime,
    decision: Decision | None = None,
) -> None:
    """A request or its reminder: what it says (``write``, given the order's facts, deadline and on_no_answer),
    with fresh Approve and Decline links."""
    facts = _facts(session=session, order=order, document=document, decision=decision)
    _tell(
        session=session,
        order=order,
        document=document,
        consent_version=consent_version,
        kind=kind,
        text=write(facts, answer_by=order.answer_by, on_no_answer=document.on_no_answer),
        now=now,
        actions=(LinkAction.APPROVE, LinkAction.DECLINE),
    )


def hand_off_time(
    *, document: ConsentDocument, lead_time_days: float, empty_at_early: datetime | None, now: datetime
) -> datetime:
    """When an automatic order decided now goes to fulfilment (see timing.hand_off_at)."""
    return timing.hand_off_at(
        now=now,
        cancel_window=timedelta(minutes=document.cancel_window_minutes),
        latest_useful=timing.latest_useful_answer(empty_at_early=empty_at_early, lead_time_days=lead_time_days),
        reachable=_reachable(document, now),  # the window is the customer's time, not the night's
    )


def announce_order(
    *,
    session: Session,
    order: Order,
    lead_time_days: float,
    document: ConsentDocument,
    consent_version: int,
    now: datetime,
    decision: Decision | None = None,
) -> None:
    """An automatic order tells the customer what, when it arrives, and until when one tap cancels it.
    ``decision``: the order's, when the caller has it (see _facts)."""
    hand_off = order.hand_off_at or now
    facts = _facts(session=session, order=order, document=document, decision=decision)
    _tell(
        session=session,
        order=order,
        document=document,
        consent_version=consent_version,
        kind=NoticeKind.ORDER_PLACED,
        text=messages.order_placed(
            facts, hand_off_at=hand_off, arriving_at=hand_off + timedelta(days=lead_time_days), now=now
        ),
        now=now,
        actions=(LinkAction.CANCEL,) if hand_off > now else (),
    )


# --- the scheduler's follow-up: reminders and deadlines --------------------------------------------------------


def reminders_due(*, session: Session, now: datetime) -> list[str]:
    return list(
        session.exec(
            select(Order.id).where(
                Order.status == OrderStatus.AWAITING_APPROVAL,
                col(Order.remind_at) <= now,
                col(Order.reminded_at).is_(None),
                col(Order.no_answer_at).is_(None),
            )
        )
    )


def deadlines_due(*, session: Session, now: datetime) -> list[str]:
    return list(
        session.exec(
            select(Order.id).where(
                Order.status == OrderStatus.AWAITING_APPROVAL,
                col(Order.answer_by) <= now,
                col(Order.no_answer_at).is_(None),
            )
        )
    )


def _locked(*, session: Session, order_id: str) -> Order | None:
    # A concurrent answer (a link, the app) and the follow-up must see each other's result.
    return session.get(Order, order_id, with_for_update=True, populate_existing=True)


def remind(*, session: Session, order_id: str, now: datetime) -> bool:
    """The reminder of an unanswered request, once; False if it was answered meanwhile (or already reminded)."""
    order = _locked(session=session, order_id=order_id)
    if order is None or order.status != OrderStatus.AWAITING_APPROVAL or order.reminded_at is not None:
        return False
    if order.answer_by is None or order.no_answer_at is not None:
        return False
    version, document = consent.current_document(session=session, customer_id=order.customer_id)
    order.reminded_at = now
    session.add(order)
    if _reachable(document, now) >= order.answer_by:
        return False  # it would reach them (after quiet hours) only once the deadline has passed: no use
    _ask(
        session=session,
        order=order,
        document=document,
        consent_version=version,
        kind=NoticeKind.APPROVAL_REMINDER,
        write=messages.approval_reminder,
        now=now,
    )
    return True


def act_on_no_answer(*, session: Session, order_id: str, now: datetime) -> NoAnswer | None:
    """The deadline passed unanswered: do what the consent says now (its current version), record that it was for
    lack of an answer and under which version, and tell the customer. None if it was answered meanwhile."""
    found = session.get(Order, order_id)
    if found is None:
        return None
    # As every decision does: the consent cannot change under it, and two decisions never spend one part of the cap.
    lock_customer(session=session, customer_id=found.customer_id)
    order = _locked(session=session, order_id=order_id)
    if order is None or order.status != OrderStatus.AWAITING_APPROVAL or order.no_answer_at is not None:
        return None
    if order.answer_by is None or order.answer_by > now:
        return None
    version, document = consent.current_document(session=session, customer_id=order.customer_id)
    outcome = document.on_no_answer
    why = f"no answer by {order.answer_by:%Y-%m-%d %H:%M} UTC; consent version {version} says on_no_answer={outcome}"
    refusal = None
    if outcome is NoAnswer.APPROVE:
        refusal = _no_longer_orderable(session=session, order=order, document=document) or _over_a_limit(
            session=session, order=order, document=document, now=now
        )
        if refusal is not None:
            outcome = NoAnswer.KEEP_WAITING
            why += f", but it keeps waiting: {refusal}"
    order.no_answer_at = now
    session.add(order)
    if outcome is NoAnswer.KEEP_WAITING:
        orders.note(session=session, order=order, actor=NO_ANSWER_ACTOR, now=now, reason=why)
    else:
        orders.transition(
            session=session,
            order_id=order.id,
            to=OrderStatus.PLACED if outcome is NoAnswer.APPROVE else OrderStatus.DECLINED,
            actor=NO_ANSWER_ACTOR,
            now=now,
            reason=why,
        )
    audit.record(
        session=session,
        at=now,
        actor=NO_ANSWER_ACTOR,
        action=AuditAction.ORDER_NO_ANSWER,
        customer_id=order.customer_id,
        subject_type="order",
        subject_id=order.id,
        detail={
            "answer_by": order.answer_by.isoformat(),
            "on_no_answer": document.on_no_answer,
            "outcome": outcome,
            "consent_version": version,
            "refused": refusal,
        },
    )
    facts = _facts(session=session, order=order, document=document)
    _tell(
        session=session,
        order=order,
        document=document,
        consent_version=version,
        kind=NoticeKind.NO_ANSWER,
        text=messages.no_answer(facts, outcome=outcome, reason=refusal),
        now=now,
        # Still waiting: the answer can still come, in one tap.
        actions=(LinkAction.APPROVE, LinkAction.DECLINE) if outcome is NoAnswer.KEEP_WAITING else (),
    )
    log.info("order %s: no answer by %s; %s", order.id, order.answer_by.isoformat(), outcome)
    return outcome


def _slot_name(*, session: Session, order: Order) -> str:
    slot = session.get(Slot, order.slot_id)
    return slot.name if slot is not None else ""


def _slot_mode(*, session: Session, order: Order, document: ConsentDocument) -> ConsentMode:
    return document.mode_for(device_id=order.device_id, slot_name=_slot_name(session=session, order=order))


def _limits(*, session: Session, order: Order, document: ConsentDocument) -> OrderLimits:
    return document.limits_for(device_id=order.device_id, slot_name=_slot_name(session=session, order=order))


def _no_longer_orderable(*, session: Session, order: Order, document: ConsentDocument) -> str | None:
    """Why the platform may no longer order this slot by itself (the consent took ordering away since), if so."""
    mode = _slot_mode(session=session, order=order, document=document)
    if mode in (ConsentMode.AUTO_ORDER, ConsentMode.ASK_FIRST):
        return None
    return f"the consent's mode for this slot is now {mode}, which lets nothing be ordered by itself"


def _over_a_limit(*, session: Session, order: Order, document: ConsentDocument, now: datetime) -> str | None:
    """Why approving for lack of an answer would break the consent's spending cap or quantity limit, if it would."""
    month_start, month_end = document.calendar_month(now)
    verdict = within_limits(
        Verdict(action=DecisionAction.PLACE_ORDER, reason="no answer"),
        limits=_limits(session=session, order=order, document=document),
        quantity=order.quantity,
        total_price=order.total_price,
        spent_this_month=lambda: orders.spent_between(
            session=session, customer_id=order.customer_id, start=month_start, end=month_end
        ),
    )
    if verdict.action is DecisionAction.PLACE_ORDER:
        return None
    return verdict.reason.split("asks first: ", 1)[-1]


# --- fulfilment's progress, told to the customer ----------------------------------------------------------------


def report_progress(
    *,
    session: Session,
    order_id: str,
    status: OrderStatus,
    actor: str,
    now: datetime,
    reason: str | None = None,
    arriving_at: datetime | None = None,
) -> Order:
    """Fulfilment says the order is confirmed, shipped or delivered: the same transition as ever, and the customer
    hears "shipped, arriving ..." and "delivered". A repeated report changes nothing and tells nobody again."""
    # Locked before it is read: two copies of one report at once must not both find it changed and tell twice.
    found = _locked(session=session, order_id=order_id)
    if found is None:
        raise NotFound("order", order_id)
    if orders.in_cancel_window(found, now=now):
        raise Conflict(f"order {order_id!r} has not been handed to fulfilment yet (its cancel window is open)")
    before = found.status
    order = orders.transition(session=session, order_id=order_id, to=status, actor=actor, now=now, reason=reason)
    if order.status == before:
        return order
    version, document = consent.current_document(session=session, customer_id=order.customer_id)
    facts = _facts(session=session, order=order, document=document)
    if status is OrderStatus.SHIPPED:
        slot = session.get(Slot, order.slot_id)
        order.arriving_at = arriving_at or now + timedelta(days=slot.lead_time_days if slot is not None else 0)
        text = messages.shipped(facts, arriving_at=order.arriving_at)
        kind = NoticeKind.ORDER_SHIPPED
    elif status is OrderStatus.DELIVERED:
        order.delivered_at = now
        text, kind = messages.delivered(facts), NoticeKind.ORDER_DELIVERED
    else:
        return order
    session.add(order)
    _tell(session=session, order=order, document=document, consent_version=version, kind=kind, text=text, now=now)
    return order


def nudges_due(*, session: Session, now: datetime) -> list[str]:
    """Delivered orders not yet nudged whose slot has shown no refill since the order was made (a refill starts a
    new cycle). Whether enough time has passed is each customer's consent: nudge() decides."""
    return list(
        session.exec(
            select(Order.id)
            .join(Slot, col(Slot.id) == col(Order.slot_id))
            .where(
                Order.status == OrderStatus.DELIVERED,
                col(Order.delivered_at) <= now,
                col(Order.nudged_at).is_(None),
                or_(col(Slot.cycle_started_at).is_(None), col(Slot.cycle_started_at) <= col(Order.created_at)),
            )
        )
    )


def nudge(*, session: Session, order_id: str, now: datetime) -> bool:
    """One nudge, once delivery_nudge_hours have passed since delivery with no refill seen."""
    order = _locked(session=session, order_id=order_id)
    if order is None or order.delivered_at is None or order.nudged_at is not None:
        return False
    version, document = consent.current_document(session=session, customer_id=order.customer_id)
    if not document.delivery_nudge_hours or now < order.delivered_at + timedelta(hours=document.delivery_nudge_hours):
        return False
    slot = session.get(Slot, order.slot_id)
    if slot is None or (slot.cycle_started_at is not None and slot.cycle_started_at > order.created_at):
        return False  # refilled meanwhile
    order.nudged_at = now
    session.add(order)
    level = slot.level / slot.capacity if slot.level is not None and slot.capacity else None
    facts = _facts(session=session, order=order, document=document)
    _tell(
        session=session,
        order=order,
        document=document,
        consent_version=version,
        kind=NoticeKind.DELIVERY_NUDGE,
        text=messages.delivery_nudge(facts, delivered_at=order.delivered_at, level_share=level),
        now=now,
    )
    return True


# --- one-tap links ---------------------------------------------------------------------------------------------


LinkProblem = Literal["unknown", "expired", "used", "answered", "consent_changed"]


class LinkRefused(Exception):
    """A link that does nothing: forged or tampered (unknown), expired, used, its order answered since, or the
    consent changed since it was sent. The page says which; an audit record keeps it."""

    def __init__(self, problem: LinkProblem, message: str, *, link: OrderLink | None = None) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message
        self.link = link


@dataclass(frozen=True)
class LinkView:
    """What the confirmation page shows."""

    link: OrderLink
    order: Order
    facts: OrderFacts
    action: LinkAction


def _check(*, session: Session, token: str, now: datetime) -> LinkView:
    link = session.exec(select(OrderLink).where(OrderLink.token_hash == _token_hash(token))).first()
    if link is None:
        raise LinkRefused("unknown", "This link is not one of ours, or it was changed on the way.")
    order = session.get(Order, link.order_id)
    if order is None:
        raise LinkRefused("unknown", "The order this link was about no longer exists.", link=link)
    version, document = consent.current_document(session=session, customer_id=order.customer_id)
    facts = _facts(session=session, order=order, document=document)
    view = LinkView(link=link, order=order, facts=facts, action=LinkAction(link.action))
    if link.used_at is not None:
        raise LinkRefused("used", f"This link was used already, on {view.facts.at(link.used_at)}.", link=link)
    if not orders.can_become(OrderStatus(order.status), LINK_TARGET[view.action]):
        status = order.status.replace("_", " ")
        raise LinkRefused("answered", f"Nothing to do: the order is {status} now.", link=link)
    if view.action is LinkAction.CANCEL and not orders.in_cancel_window(order, now=now):
        raise LinkRefused(
            "expired",
            "The cancel window has closed: the order has gone to the supplier. You can still cancel it in the app "
            "until it ships.",
            link=link,
        )
    if link.expires_at <= now:
        raise LinkRefused("expired", f"This link expired on {view.facts.at(link.expires_at)}.", link=link)
    if link.consent_version != version and _changed_for(session=session, order=order, link=link, current=document):
        raise LinkRefused(
            "consent_changed",
            "Your settings for this have changed since this was sent, so this link no longer answers for you. Open "
            "the order in the app to decide.",
            link=link,
        )
    return view


def _changed_for(*, session: Session, order: Order, link: OrderLink, current: ConsentDocument) -> bool:
    """Whether the consent changed, since the link's version, in what the link's answer rests on: the slot's mode
    or the limits on orders. (Quiet hours, a new channel or a pause elsewhere leave the link as good as it was.)"""
    then = consent.document_of(session=session, customer_id=order.customer_id, version=link.consent_version)
    if then is None:
        return True
    mode_then = _slot_mode(session=session, order=order, document=then)
    return mode_then != _slot_mode(session=session, order=order, document=current) or _limits(
        session=session, order=order, document=then
    ) != _limits(session=session, order=order, document=current)


def _refused(*, session: Session, refusal: LinkRefused, token: str, now: datetime, step: str) -> None:
    link = refusal.link
    audit.record(
        session=session,
        at=now,
        actor="one-tap link",
        action=AuditAction.ORDER_LINK_REFUSED,
        customer_id=link.customer_id if link is not None else None,
        subject_type="order_link",
        subject_id=link.id if link is not None else _token_hash(token)[:16],
        detail={
            "problem": refusal.problem,
            "step": step,
            "order_id": link.order_id if link is not None else None,
            "action": link.action if link is not None else None,
        },
    )


def read_link(*, session: Session, token: str, now: datetime) -> LinkView:
    """What a link would do, changing nothing (a mail scanner fetching it approves nothing). A refused link raises
    LinkRefused after recording it: the caller commits that record."""
    try:
        return _check(session=session, token=token, now=now)
    except LinkRefused as refusal:
        _refused(session=session, refusal=refusal, token=token, now=now, step="view")
        raise


def use_link(*, session: Session, token: str, now: datetime) -> LinkView:
    """Do what the link says, through the same transition as the API, once. Refused: LinkRefused, recorded (the
    caller commits the record and nothing else)."""
    try:
        view = _check(session=session, token=token, now=now)
        order = orders.transition(
            session=session,
            order_id=view.order.id,
            to=LINK_TARGET[view.action],
            actor=LINK_ACTOR,
            now=now,
            reason=f"one tap in the {view.link.notice.replace('_', ' ')}",
        )
    except Conflict as exc:  # it changed under us: answered in the same moment elsewhere
        refusal = LinkRefused("answered", f"Nothing to do: {exc.message}")
        _refused(session=session, refusal=refusal, token=token, now=now, step="use")
        raise refusal from exc
    except LinkRefused as refusal:
        _refused(session=session, refusal=refusal, token=token, now=now, step="use")
        raise
    # Works once, even when the same link is posted twice at once: only one of them marks it used.
    marked = session.exec(
        update(OrderLink).where(col(OrderLink.id) == view.link.id, col(OrderLink.used_at).is_(None)).values(used_at=now)
    )
    if marked.rowcount != 1:
        raise LinkRefused("used", "This link was used already.", link=view.link)
    audit.record(
        session=session,
        at=now,
        actor=LINK_ACTOR,
        action=AuditAction.ORDER_LINK_USED,
        customer_id=order.customer_id,
        subject_type="order",
        subject_id=order.id,
        detail={"link_id": view.link.id, "action": view.action, "consent_version": view.link.consent_version},
    )
    return LinkView(link=view.link, order=order, facts=view.facts, action=view.action)

"""Data rights: export everything about a customer, delete a customer, and keep telemetry only as long as consented.

What deletion purges and what it keeps is stated in docs/privacy.md; keep the two in step.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, update
from sqlmodel import Session, SQLModel, col, select

from replenish.alerts.models import Alert, EscalationAttempt, EscalationStep
from replenish.answers.models import OrderLink
from replenish.audit import service as audit
from replenish.audit.models import AuditEvent
from replenish.auth import service as auth
from replenish.auth.models import AccessToken, Account, DeviceShare
from replenish.auth.service import Principal
from replenish.automation.models import Decision
from replenish.columns import table_of
from replenish.consent import service as consent
from replenish.consent.models import ConsentVersion
from replenish.constants import (
    INVITATION_NOTICE_PREFIX,
    AuditAction,
    HouseholdRole,
    OrderStatus,
    OutboxKind,
)
from replenish.customers import service as customers
from replenish.customers.locks import lock_customer
from replenish.customers.models import Customer
from replenish.devices import service as devices
from replenish.devices.models import Device, Slot, SlotForecast, SlotWindow
from replenish.errors import DomainError, InvalidRequest
from replenish.health.models import Alarm
from replenish.households.models import Invitation
from replenish.ingest.models import DeadLetter, DeadLetterOverflow, DeviceMessage, Reading
from replenish.insights.models import MonthlyDigest
from replenish.notifications.models import Notification, PushSubscription
from replenish.orders import service as orders
from replenish.orders.models import Order, OrderEvent, Shipment
from replenish.outbox.models import OutboxMessage
from replenish.outcomes.models import CycleOutcome

log = logging.getLogger(__name__)

EXPORT_FORMAT = "replenish-export/1"
# Never exported: secrets, even hashed.
_SECRET_FIELDS = {
    Account: {"password_hash"},
    Invitation: {"token_hash"},
    AccessToken: {"token_hash"},
    Device: {"mqtt_password_hash"},
    EscalationStep: {"token_hash"},
    EscalationAttempt: {"token_hash"},
}
_BATCH = 1000
DELETED_ACTOR = "customer:deleted"


def _row(row: SQLModel) -> dict[str, Any]:
    data = row.model_dump(mode="json", exclude=_SECRET_FIELDS.get(type(row), set()))
    if isinstance(row, DeadLetter):
        data["payload"] = row.payload.decode("utf-8", errors="replace")
    return data


def record_export(*, session: Session, customer_id: str, actor: str, now: datetime) -> None:
    """Before an export streams (the API's route and the web app's download): the customer exists (NotFound
    otherwise), and the audit record of who took it, committed by the caller before the first byte goes out."""
    customers.get(session=session, customer_id=customer_id)
    audit.record(
        session=session,
        at=now,
        actor=actor,
        action=AuditAction.CUSTOMER_EXPORTED,
        customer_id=customer_id,
        subject_type="customer",
        subject_id=customer_id,
    )


def export_filename(customer_id: str) -> str:
    return f"replenish-{customer_id}.json"


def export(*, engine: Engine, customer_id: str, now: datetime) -> Iterator[str]:
    """Everything stored about the customer, as one JSON document in chunks (telemetry can be large).

    Raises NotFound before the first chunk when there is no such customer.
    """
    with Session(engine) as session:
        customer = customers.get(session=session, customer_id=customer_id)
        device_ids = list(session.exec(select(Device.id).where(Device.customer_id == customer_id)))
        slot_ids = list(session.exec(select(Slot.id).where(col(Slot.device_id).in_(device_ids))))
        order_ids = list(session.exec(select(Order.id).where(Order.customer_id == customer_id)))
    sections: list[tuple[str, Any]] = [
        ("accounts", select(Account).where(Account.customer_id == customer_id)),
        ("invitations", select(Invitation).where(Invitation.customer_id == customer_id)),
        ("device_shares", select(DeviceShare).where(col(DeviceShare.device_id).in_(device_ids))),
        (
            "tokens",
            select(AccessToken)
            .join(Account, col(Account.id) == col(AccessToken.account_id))
            .where(Account.customer_id == customer_id),
        ),
        ("consent_versions", select(ConsentVersion).where(ConsentVersion.customer_id == customer_id)),
        ("devices", select(Device).where(col(Device.id).in_(device_ids))),
        ("slots", select(Slot).where(col(Slot.id).in_(slot_ids))),
        ("forecasts", select(SlotForecast).where(col(SlotForecast.slot_id).in_(slot_ids))),
        ("messages", select(DeviceMessage).where(col(DeviceMessage.device_id).in_(device_ids))),
        ("readings", select(Reading).where(col(Reading.slot_id).in_(slot_ids))),
        ("dead_letters", select(DeadLetter).where(col(DeadLetter.device_id).in_(device_ids))),
        ("decisions", select(Decision).where(Decision.customer_id == customer_id)),
        ("cycle_outcomes", select(CycleOutcome).where(CycleOutcome.customer_id == customer_id)),
        ("monthly_digests", select(MonthlyDigest).where(MonthlyDigest.customer_id == customer_id)),
        ("shipments", select(Shipment).where(Shipment.customer_id == customer_id)),
        ("orders", select(Order).where(Order.customer_id == customer_id)),
        ("order_events", select(OrderEvent).where(col(OrderEvent.order_id).in_(order_ids))),
        ("order_links", select(OrderLink).where(OrderLink.customer_id == customer_id)),
        ("alerts", select(Alert).where(Alert.customer_id == customer_id)),
        ("alert_escalations", select(EscalationStep).where(col(EscalationStep.alert_id).in_(_alert_ids(customer_id)))),
        (
            "alert_escalation_attempts",
            select(EscalationAttempt).where(col(EscalationAttempt.step_id).in_(_step_ids(customer_id))),
        ),
        ("alarms", select(Alarm).where(Alarm.customer_id == customer_id)),
        ("notifications", select(Notification).where(Notification.customer_id == customer_id)),
        ("push_subscriptions", select(PushSubscription).where(PushSubscription.customer_id == customer_id)),
        ("audit_events", select(AuditEvent).where(AuditEvent.customer_id == customer_id)),
    ]
    yield f'{{"format": "{EXPORT_FORMAT}", "exported_at": {json.dumps(now.isoformat())}, '
    yield f'"customer": {json.dumps(_row(customer))}'
    with Session(engine) as session:
        for name, query in sections:
            yield f', "{name}": ['
            entity = query.column_descriptions[0]["entity"]
            rows = session.exec(
                query.order_by(*table_of(entity).primary_key.columns).execution_options(yield_per=_BATCH)
            )
            for number, row in enumerate(rows):
                yield ("" if number == 0 else ", ") + json.dumps(_row(row))
            yield "]"
    yield "}"


def _alert_ids(customer_id: str) -> Any:
    return select(Alert.id).where(Alert.customer_id == customer_id)


def _step_ids(customer_id: str) -> Any:
    return select(EscalationStep.id).where(col(EscalationStep.alert_id).in_(_alert_ids(customer_id)))


def check_deletion(
    *, session: Session, customer_id: str, principal: Principal, confirm: str, password: str, now: datetime
) -> DomainError | None:
    """Why a deletion is refused, or None when it is meant: the customer's e-mail typed out, and a customer's own
    password (a token alone, stolen, must not be enough to destroy everything; an operator acts on a request
    received elsewhere). A wrong password counts as a failed sign-in, recorded in the session (the caller commits
    it and then raises the answer), and the sign-in's limit applies: guessing here is no easier than there."""
    customer = customers.get(session=session, customer_id=customer_id)
    if confirm.strip().lower() != customer.email:
        return InvalidRequest("confirm must be the customer's e-mail address", field="confirm")
    if principal.is_operator:
        return None
    return auth.check_password(session=session, principal=principal, password=password, now=now)


def delete_customer(*, session: Session, customer_id: str, actor: str, now: datetime) -> dict[str, int]:
    """Delete the customer and everything about them, in the caller's transaction; returns what was removed.

    Orders not yet shipped are cancelled first (fulfilment is told). The audit log keeps its events, with the
    e-mail addresses in them replaced, and gains a customer.deleted event.
    """
    lock_customer(session=session, customer_id=customer_id)  # no decision for them commits meanwhile
    customer = customers.get(session=session, customer_id=customer_id)
    emails = {customer.email, *session.exec(select(Account.email).where(Account.customer_id == customer_id))}
    # Whoever the household invited (a member removed since, or one who never answered): an address the owner typed,
    # which may be anyone's. Scrubbed only from this household's records, and only as a member or carer of it.
    invited = set(session.exec(select(Invitation.email).where(Invitation.customer_id == customer_id))) - emails
    for order in session.exec(
        select(Order).where(
            Order.customer_id == customer_id,
            col(Order.status).in_(
                (OrderStatus.AWAITING_APPROVAL, OrderStatus.PLACED, OrderStatus.CONFIRMED, OrderStatus.HELD)
            ),
        )
    ).all():
        orders.transition(
            session=session, order_id=order.id, to=OrderStatus.CANCELLED, actor=actor, now=now, reason="account deleted"
        )
    device_ids = list(session.exec(select(Device.id).where(Device.customer_id == customer_id)))
    slot_ids = list(session.exec(select(Slot.id).where(col(Slot.device_id).in_(device_ids))))
    order_ids = list(session.exec(select(Order.id).where(Order.customer_id == customer_id)))
    shipment_ids = list(session.exec(select(Shipment.id).where(Shipment.customer_id == customer_id)))
    notification_ids = list(session.exec(select(Notification.id).where(Notification.customer_id == customer_id)))
    account_ids = list(session.exec(select(Account.id).where(Account.customer_id == customer_id)))
    invitation_ids = list(session.exec(select(Invitation.id).where(Invitation.customer_id == customer_id)))
    # Children before parents: the database checks every foreign key.
    steps = [
        (
            "alert_escalation_attempts",
            delete(EscalationAttempt).where(col(EscalationAttempt.step_id).in_(_step_ids(customer_id))),
        ),
        (
            "alert_escalations",
            delete(EscalationStep).where(col(EscalationStep.alert_id).in_(_alert_ids(customer_id))),
        ),
        ("readings", delete(Reading).where(col(Reading.slot_id).in_(slot_ids))),
        (
            "notification_deliveries",
            delete(OutboxMessage).where(
                col(OutboxMessage.kind) == OutboxKind.NOTIFICATION,
                col(OutboxMessage.stream).in_([f"notification:{n}" for n in notification_ids]),
            ),
        ),
        ("notifications", delete(Notification).where(col(Notification.customer_id) == customer_id)),
        ("push_subscriptions", delete(PushSubscription).where(col(PushSubscription.customer_id) == customer_id)),
        (
            # Commands for their devices: a device id freed here may be registered by someone else.
            "device_commands",
            delete(OutboxMessage).where(col(OutboxMessage.stream).in_([f"device:{d}" for d in device_ids])),
        ),
        (
            # Order messages already delivered to fulfilment; undelivered ones (the cancellations above) go first.
            "delivered_order_messages",
            delete(OutboxMessage).where(
                col(OutboxMessage.stream).in_(
                    [f"order:{o}" for o in order_ids] + [f"shipment:{s}" for s in shipment_ids]
                ),
                col(OutboxMessage.delivered_at).is_not(None),
            ),
        ),
        ("cycle_outcomes", delete(CycleOutcome).where(col(CycleOutcome.customer_id) == customer_id)),
        ("monthly_digests", delete(MonthlyDigest).where(col(MonthlyDigest.customer_id) == customer_id)),
        ("alerts", delete(Alert).where(col(Alert.customer_id) == customer_id)),
        ("alarms", delete(Alarm).where(col(Alarm.customer_id) == customer_id)),
        ("order_events", delete(OrderEvent).where(col(OrderEvent.order_id).in_(order_ids))),
        ("order_links", delete(OrderLink).where(col(OrderLink.customer_id) == customer_id)),
        ("orders", delete(Order).where(col(Order.customer_id) == customer_id)),
        ("shipments", delete(Shipment).where(col(Shipment.customer_id) == customer_id)),
        ("decisions", delete(Decision).where(col(Decision.customer_id) == customer_id)),
        ("messages", delete(DeviceMessage).where(col(DeviceMessage.device_id).in_(device_ids))),
        ("dead_letters", delete(DeadLetter).where(col(DeadLetter.device_id).in_(device_ids))),
        ("dead_letter_overflow", delete(DeadLetterOverflow).where(col(DeadLetterOverflow.sender).in_(device_ids))),
        ("forecasts", delete(SlotForecast).where(col(SlotForecast.slot_id).in_(slot_ids))),
        ("reading_windows", delete(SlotWindow).where(col(SlotWindow.slot_id).in_(slot_ids))),
        ("slots", delete(Slot).where(col(Slot.id).in_(slot_ids))),
        ("device_shares", delete(DeviceShare).where(col(DeviceShare.device_id).in_(device_ids))),
        ("devices", delete(Device).where(col(Device.id).in_(device_ids))),
        ("consent_versions", delete(ConsentVersion).where(col(ConsentVersion.customer_id) == customer_id)),
        ("tokens", delete(AccessToken).where(col(AccessToken.account_id).in_(account_ids))),
        (
            "invitation_mails",
            delete(OutboxMessage).where(
                col(OutboxMessage.stream).in_([f"notification:{INVITATION_NOTICE_PREFIX}{i}" for i in invitation_ids])
            ),
        ),
        ("invitations", delete(Invitation).where(col(Invitation.customer_id) == customer_id)),
        ("accounts", delete(Account).where(col(Account.id).in_(account_ids))),
        ("customers", delete(Customer).where(col(Customer.id) == customer_id)),
    ]
    removed = {}
    session.flush()  # the cancellations above go first
    for name, statement in steps:
        removed[name] = session.connection().execute(statement).rowcount
    for email in emails:
        for prefix in ("customer", "operator", "anonymous", HouseholdRole.MEMBER, HouseholdRole.CARER):
            session.connection().execute(
                update(AuditEvent).where(col(AuditEvent.actor) == f"{prefix}:{email}").values(actor=DELETED_ACTOR)
            )
        session.connection().execute(
            update(AuditEvent).where(col(AuditEvent.subject_id) == email).values(subject_id="deleted")
        )
    for email in invited:
        session.connection().execute(
            update(AuditEvent)
            .where(
                col(AuditEvent.customer_id) == customer_id,
                col(AuditEvent.actor).in_(
                    [
                        f"{prefix}:{email}"
                        for prefix in ("customer", "anonymous", HouseholdRole.MEMBER, HouseholdRole.CARER)
                    ]
                ),
            )
            .values(actor=DELETED_ACTOR)
        )
    audit.record(
        session=session,
        at=now,
        actor=actor if not any(actor.endswith(f":{email}") for email in emails) else DELETED_ACTOR,
        action=AuditAction.CUSTOMER_DELETED,
        customer_id=customer_id,
        subject_type="customer",
        subject_id=customer_id,
        detail=removed,
    )
    return removed


def apply_retention(*, session: Session, customer_id: str, now: datetime) -> dict[str, int]:
    """Delete the customer's telemetry received longer ago than their consent keeps it: stored messages (except an
    event that raised an alert, kept with the alert) with their readings, and dead letters of their devices. Age is
    counted from when the platform received it: a device's own clock may be anything."""
    # As an evaluation of their slots takes it first: none reads a reading window before this deletes it and stores
    # it back after, with the deleted readings in it.
    lock_customer(session=session, customer_id=customer_id)
    _, document = consent.current_document(session=session, customer_id=customer_id)
    cutoff = now - timedelta(days=document.telemetry_retention_days)
    device_ids = select(Device.id).where(Device.customer_id == customer_id)
    slot_ids = select(Slot.id).where(col(Slot.device_id).in_(device_ids))
    old_messages = select(DeviceMessage.id).where(
        col(DeviceMessage.device_id).in_(device_ids),
        DeviceMessage.received_at < cutoff,
        # (NULLs out: NOT IN a list holding one is never true, and nothing would be deleted.)
        col(DeviceMessage.id).not_in(
            select(Alert.trigger_message_id).where(
                Alert.customer_id == customer_id, col(Alert.trigger_message_id).is_not(None)
            )
        ),
    )
    connection = session.connection()
    removed = {
        "readings": connection.execute(
            delete(Reading).where(col(Reading.slot_id).in_(slot_ids), col(Reading.message_id).in_(old_messages))
        ).rowcount,
    }
    if removed["readings"]:
        devices.forget_windows(session=session, slot_ids=slot_ids)  # they held some of those readings
    removed["messages"] = connection.execute(
        delete(DeviceMessage).where(
            col(DeviceMessage.id).in_(old_messages),
            col(DeviceMessage.id).not_in(select(Reading.message_id).where(col(Reading.slot_id).in_(slot_ids))),
        )
    ).rowcount
    removed["dead_letters"] = connection.execute(
        delete(DeadLetter).where(col(DeadLetter.device_id).in_(device_ids), col(DeadLetter.received_at) < cutoff)
    ).rowcount
    return removed

"""Notifications: a row per recipient and channel, and its delivery through the outbox, in the caller's transaction."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from replenish.consent.schemas import ConsentDocument
from replenish.constants import NoticeKind, OutboxKind
from replenish.notifications.models import Notification
from replenish.outbox import service as outbox


def notify_customer(
    *,
    session: Session,
    customer_id: str,
    document: ConsentDocument,
    consent_version: int,
    subject: str,
    body: str,
    now: datetime,
    decision_id: str | None = None,
    alert_id: str | None = None,
    alarm_id: str | None = None,
    urgent: bool = False,
    kind: NoticeKind | None = None,
    order_id: str | None = None,
    links: list[tuple[str, str]] | None = None,
    app_path: str | None = None,
) -> list[Notification]:
    """Tell the customer, on every channel their consent names. ``links`` are one-tap answers, (label, token) pairs
    the dispatcher turns into URLs; ``app_path``, the web app's page about it."""
    return [
        send(
            session=session,
            customer_id=customer_id,
            channel=channel.type,
            address=channel.address,
            subject=subject,
            body=body,
            consent_version=consent_version,
            now=now,
            decision_id=decision_id,
            alert_id=alert_id,
            alarm_id=alarm_id,
            urgent=urgent,
            kind=kind,
            order_id=order_id,
            links=links,
            app_path=app_path,
        )
        for channel in document.notification_channels
    ]


def send(
    *,
    session: Session,
    customer_id: str,
    channel: str,
    address: str | None,
    subject: str,
    body: str,
    consent_version: int,
    now: datetime,
    decision_id: str | None = None,
    alert_id: str | None = None,
    alarm_id: str | None = None,
    acknowledge_token: str | None = None,
    urgent: bool = False,
    kind: NoticeKind | None = None,
    order_id: str | None = None,
    links: list[tuple[str, str]] | None = None,
    app_path: str | None = None,
) -> Notification:
    """One notification to one address (the customer's, or an emergency contact's on the customer's behalf).

    ``acknowledge_token`` and the tokens of ``links`` travel in the outbox message only, for the dispatcher to build
    the links, and are wiped from it once delivered; the notification row keeps the text without them.
    """
    notification = Notification(
        customer_id=customer_id,
        subject=subject,
        body=body,
        channel=channel,
        address=address,
        consent_version=consent_version,
        decision_id=decision_id,
        alert_id=alert_id,
        alarm_id=alarm_id,
        order_id=order_id,
        kind=kind,
        created_at=now,
    )
    session.add(notification)
    outbox.enqueue(
        session=session,
        kind=OutboxKind.NOTIFICATION,
        stream=f"notification:{notification.id}",
        idempotency_key=f"notification:{notification.id}",
        payload={
            "notification_id": notification.id,
            "customer_id": customer_id,
            "channel": channel,
            "address": address,
            "subject": subject,
            "body": body,
            "alert_id": alert_id,
            "acknowledge_token": acknowledge_token,
            "kind": kind,
            "order_id": order_id,
            "links": [{"label": label, "token": token} for label, token in links or ()],
            "app_path": app_path,
        },
        now=now,
        urgent=urgent,
    )
    return notification

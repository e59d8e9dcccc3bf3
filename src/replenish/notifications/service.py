from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from replenish.constants import OutboxKind
from replenish.notifications.models import Notification
from replenish.outbox import service as outbox


def notify(
    *,
    session: Session,
    customer_id: str,
    subject: str,
    body: str,
    consent_version: int,
    now: datetime,
    decision_id: str | None = None,
    alert_id: str | None = None,
) -> Notification:
    notification = Notification(
        customer_id=customer_id,
        subject=subject,
        body=body,
        consent_version=consent_version,
        decision_id=decision_id,
        alert_id=alert_id,
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
            "channel": notification.channel,
            "subject": subject,
            "body": body,
        },
        now=now,
    )
    return notification

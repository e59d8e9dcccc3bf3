from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select

from replenish.api.deps import CurrentPrincipal, Limit, Offset, ReadSession
from replenish.db import get_or_raise
from replenish.notifications.models import Notification
from replenish.orders.service import explain_decision

router = APIRouter(prefix="/notifications", tags=["notifications"])


class NotificationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    customer_id: str
    subject: str
    body: str
    channel: str = Field(description="log, email or webhook")
    address: str | None = Field(description="The e-mail address or webhook URL it went to; none for the log.")
    decision_id: str | None
    alert_id: str | None
    alarm_id: str | None = Field(description="The device health alarm it is about, if any.")
    order_id: str | None = Field(None, description="The order it is about, if any.")
    kind: str | None = Field(
        None,
        description="What it is about: low, approval_request, approval_reminder, no_answer, order_placed, "
        "order_shipped, order_delivered, delivery_nudge, safety, device_health, order_changed (null: sent before "
        "kinds were recorded).",
    )
    consent_version: int
    created_at: datetime
    sent_at: datetime | None


class NotificationDetail(NotificationRead):
    explanation: dict[str, Any] | None = Field(
        description="For a notification a decision sent (a slot running low under notify_only): the decision as an "
        "order's explanation gives it. Null for an alert's or alarm's notification: the alert or alarm says why."
    )


@router.get("", response_model=list[NotificationRead], summary="Notifications sent or queued, newest first")
def list_notifications(
    session: ReadSession,
    principal: CurrentPrincipal,
    customer_id: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[NotificationRead]:
    query = select(Notification)
    customer_id = principal.scope(customer_id)
    if customer_id:
        query = query.where(Notification.customer_id == customer_id)
    rows = session.exec(
        query.order_by(col(Notification.created_at).desc(), col(Notification.id)).offset(offset).limit(limit)
    )
    return [NotificationRead.model_validate(row) for row in rows]


@router.get("/{notification_id}", response_model=NotificationDetail, summary="A notification and why it was sent")
def get_notification(notification_id: str, session: ReadSession, principal: CurrentPrincipal) -> NotificationDetail:
    notification = get_or_raise(session, Notification, notification_id, entity="notification")
    principal.check_access(notification.customer_id, entity="notification", key=notification_id)
    explanation = (
        explain_decision(session=session, decision_id=notification.decision_id) if notification.decision_id else None
    )
    return NotificationDetail(**NotificationRead.model_validate(notification).model_dump(), explanation=explanation)

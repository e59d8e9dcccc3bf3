from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict
from sqlmodel import col, select

from replenish.api.deps import CurrentPrincipal, Limit, Offset, ReadSession
from replenish.notifications.models import Notification

router = APIRouter(prefix="/notifications", tags=["notifications"])


class NotificationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    customer_id: str
    subject: str
    body: str
    channel: str
    decision_id: str | None
    alert_id: str | None
    consent_version: int
    created_at: datetime
    sent_at: datetime | None


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

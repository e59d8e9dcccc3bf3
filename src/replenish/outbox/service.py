from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from replenish.constants import OutboxKind
from replenish.outbox.models import OutboxMessage


def enqueue(
    *,
    session: Session,
    kind: OutboxKind,
    stream: str,
    idempotency_key: str,
    payload: dict[str, Any],
    now: datetime,
) -> OutboxMessage:
    """Record an effect to deliver. It commits with the caller's transaction, or not at all."""
    message = OutboxMessage(
        kind=kind, stream=stream, idempotency_key=idempotency_key, payload=payload, created_at=now, available_at=now
    )
    session.add(message)
    return message


def due(*, session: Session, now: datetime, limit: int = 100) -> list[OutboxMessage]:
    """Undelivered messages whose time has come and that wait for no earlier message of their stream."""
    earlier = aliased(OutboxMessage)
    waiting_for_earlier = (
        select(earlier.id)
        .where(
            earlier.stream == OutboxMessage.stream,
            col(earlier.id) < OutboxMessage.id,
            col(earlier.delivered_at).is_(None),
        )
        .exists()
    )
    return list(
        session.exec(
            select(OutboxMessage)
            .where(col(OutboxMessage.delivered_at).is_(None), OutboxMessage.available_at <= now, ~waiting_for_earlier)
            .order_by(col(OutboxMessage.id))
            .limit(limit)
        )
    )

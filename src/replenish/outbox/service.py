from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from replenish.constants import OutboxKind
from replenish.outbox.models import OutboxMessage


def enqueue(
    *, session: Session, kind: OutboxKind, idempotency_key: str, payload: dict[str, Any], now: datetime
) -> OutboxMessage:
    """Record an effect to deliver. It commits with the caller's transaction, or not at all."""
    message = OutboxMessage(
        kind=kind, idempotency_key=idempotency_key, payload=payload, created_at=now, available_at=now
    )
    session.add(message)
    return message


def due(*, session: Session, now: datetime, limit: int = 100) -> list[OutboxMessage]:
    return list(
        session.exec(
            select(OutboxMessage)
            .where(col(OutboxMessage.delivered_at).is_(None), OutboxMessage.available_at <= now)
            .order_by(col(OutboxMessage.id))
            .limit(limit)
        )
    )

from __future__ import annotations

import threading
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import delete, event, or_, update
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from replenish.constants import OutboxKind
from replenish.observability import correlation
from replenish.outbox.models import OutboxMessage


def enqueue(
    *,
    session: Session,
    kind: OutboxKind,
    stream: str,
    idempotency_key: str,
    payload: dict[str, Any],
    now: datetime,
    urgent: bool = False,
    available_at: datetime | None = None,
) -> OutboxMessage:
    """Record an effect to deliver. It commits with the caller's transaction, or not at all. An urgent one (a safety
    notification, a command the wearer waits for) wakes this process's dispatch loops as soon as it commits, rather
    than at their next poll. It carries the correlation id of the work that enqueues it. ``available_at`` holds it
    back until then (an automatic order's cancel window)."""
    message = OutboxMessage(
        kind=kind,
        stream=stream,
        idempotency_key=idempotency_key,
        payload=payload,
        created_at=now,
        available_at=available_at or now,
        urgent=urgent,
        correlation_id=correlation.current(),
    )
    session.add(message)
    if urgent:
        session.info[_URGENT] = True
    return message


_URGENT = "replenish.outbox.urgent"
_wakeups: set[threading.Event] = set()
_wakeups_lock = threading.Lock()


def wakeup() -> threading.Event:
    """An event set whenever a transaction in this process commits an urgent message; release it when done."""
    wake = threading.Event()
    with _wakeups_lock:
        _wakeups.add(wake)
    return wake


def release_wakeup(wake: threading.Event) -> None:
    with _wakeups_lock:
        _wakeups.discard(wake)


@event.listens_for(OrmSession, "after_commit")
def _wake_dispatch_loops(session: OrmSession) -> None:
    if session.info.pop(_URGENT, False):
        with _wakeups_lock:
            for wake in _wakeups:
                wake.set()


@event.listens_for(OrmSession, "after_rollback")
def _forget_urgency(session: OrmSession) -> None:
    session.info.pop(_URGENT, None)


def due(
    *,
    session: Session,
    now: datetime,
    limit: int = 100,
    kinds: Collection[str] | None = None,
    urgent_only: bool = False,
) -> list[OutboxMessage]:
    """Undelivered messages whose time has come, that no dispatcher holds, and that wait for no earlier message of
    their stream."""
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
    query = select(OutboxMessage).where(
        col(OutboxMessage.delivered_at).is_(None),
        OutboxMessage.available_at <= now,
        or_(col(OutboxMessage.claimed_until).is_(None), col(OutboxMessage.claimed_until) < now),
        ~waiting_for_earlier,
    )
    if kinds is not None:
        query = query.where(col(OutboxMessage.kind).in_(list(kinds)))
    if urgent_only:
        query = query.where(col(OutboxMessage.urgent).is_(True))
    return list(session.exec(query.order_by(col(OutboxMessage.id)).limit(limit)))


def withdraw(*, session: Session, idempotency_key: str) -> bool:
    """Take back a message that no dispatcher has ever claimed: true if it is gone (its receiver never hears of it),
    false if any dispatcher took it to deliver, whatever came of that. One conditional DELETE, so of a withdrawal
    and a dispatcher's claim racing each other exactly one wins, as with two claims."""
    result = session.exec(
        delete(OutboxMessage).where(
            col(OutboxMessage.idempotency_key) == idempotency_key,
            col(OutboxMessage.delivered_at).is_(None),
            # Never claimed: a dispatcher that claimed it may have sent it (and died, or failed to record it, or got
            # a 503 from a receiver that acted anyway): then the receiver must be told, not left guessing.
            col(OutboxMessage.claimed_by).is_(None),
            col(OutboxMessage.attempts) == 0,
        )
    )
    return result.rowcount == 1


def exists(*, session: Session, idempotency_key: str) -> bool:
    return (
        session.exec(select(OutboxMessage.id).where(OutboxMessage.idempotency_key == idempotency_key)).first()
        is not None
    )


def claim(*, session: Session, message_id: int, now: datetime, until: datetime, by: str) -> bool:
    """Hold the message for delivery until ``until``; false if it is delivered or another dispatcher holds it. One
    conditional UPDATE: of two dispatchers racing for it, exactly one wins, on SQLite and PostgreSQL alike."""
    result = session.exec(
        update(OutboxMessage)
        .where(
            col(OutboxMessage.id) == message_id,
            col(OutboxMessage.delivered_at).is_(None),
            or_(col(OutboxMessage.claimed_until).is_(None), col(OutboxMessage.claimed_until) < now),
        )
        .values(claimed_until=until, claimed_by=by)
    )
    return result.rowcount == 1

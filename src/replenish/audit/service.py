"""The audit log: one row per sign-in, token, consent change, decision and order status change."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, func, select

from replenish.audit.models import AuditEvent
from replenish.constants import AuditAction


def record(
    *,
    session: Session,
    at: datetime,
    actor: str,
    action: AuditAction,
    subject_type: str,
    subject_id: str,
    customer_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    event = AuditEvent(
        at=at,
        actor=actor,
        action=action,
        customer_id=customer_id,
        subject_type=subject_type,
        subject_id=subject_id,
        detail=detail or {},
    )
    session.add(event)
    return event


def count_since(*, session: Session, action: AuditAction, subject_id: str, since: datetime) -> int:
    return session.exec(
        select(func.count()).where(
            AuditEvent.action == action, AuditEvent.subject_id == subject_id, AuditEvent.at > since
        )
    ).one()


def list_events(
    *,
    session: Session,
    customer_id: str | None = None,
    action: AuditAction | None = None,
    subject_id: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[AuditEvent]:
    query = select(AuditEvent)
    if customer_id is not None:
        query = query.where(AuditEvent.customer_id == customer_id)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    if subject_id is not None:
        query = query.where(AuditEvent.subject_id == subject_id)
    return list(session.exec(query.order_by(col(AuditEvent.id).desc()).offset(offset).limit(limit)))

"""Alerts raised by device events. Escalation chains come later; today an alert notifies its owner."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlmodel import Session, col, select

from replenish.alerts.models import Alert
from replenish.consent import service as consent
from replenish.constants import (
    COMMANDS_TOPIC,
    AlertKind,
    AlertSeverity,
    AlertStatus,
    EventType,
    OutboxKind,
)
from replenish.db import get_or_raise
from replenish.devices.models import Device
from replenish.errors import Conflict
from replenish.ingest.models import DeviceMessage
from replenish.notifications import service as notifications
from replenish.outbox import service as outbox

log = logging.getLogger(__name__)

_RAISING_EVENTS: dict[str, tuple[AlertKind, AlertSeverity]] = {
    EventType.FALL_DETECTED: (AlertKind.FALL, AlertSeverity.CRITICAL),
    EventType.HELP_REQUESTED: (AlertKind.HELP_REQUESTED, AlertSeverity.CRITICAL),
    EventType.BATTERY_LOW: (AlertKind.BATTERY_LOW, AlertSeverity.WARNING),
}


def on_device_event(*, session: Session, device: Device, message: DeviceMessage, now: datetime) -> Alert | None:
    """Apply one stored event to the alert state, in the ingesting transaction (no scheduler tick)."""
    event_type = message.event_type
    if event_type == EventType.FALL_CANCELLED:
        return _cancel_fall(session=session, device=device, now=now)
    if event_type not in _RAISING_EVENTS:
        return None
    kind, severity = _RAISING_EVENTS[event_type]
    existing = _open(session=session, device_id=device.id, kind=kind)
    if existing is not None:
        # A repeat before anyone has answered joins the open incident instead of paging the same people again.
        # Once acknowledged, a new event is a new incident: it must reach someone.
        existing.event_count += 1
        existing.updated_at = now
        session.add(existing)
        return existing
    version = consent.current(session=session, customer_id=device.customer_id).version
    alert = Alert(
        customer_id=device.customer_id,
        device_id=device.id,
        kind=kind,
        severity=severity,
        status=AlertStatus.OPEN,
        opened_at=now,
        updated_at=now,
        trigger_message_id=message.id,
        consent_version=version,
    )
    session.add(alert)
    session.flush()
    notifications.notify(
        session=session,
        customer_id=device.customer_id,
        subject=f"{kind.replace('_', ' ')} alert from {device.name}",
        body=f"Device {device.id} reported {event_type} at {message.ts.isoformat()}.",
        consent_version=version,
        now=now,
        alert_id=alert.id,
    )
    log.warning("alert %s opened: %s on %s", alert.id, kind, device.id)
    return alert


def _open(*, session: Session, device_id: str, kind: str) -> Alert | None:
    return session.exec(
        select(Alert).where(Alert.device_id == device_id, Alert.kind == kind, Alert.status == AlertStatus.OPEN)
    ).first()


def _cancel_fall(*, session: Session, device: Device, now: datetime) -> Alert | None:
    alert = _open(session=session, device_id=device.id, kind=AlertKind.FALL)
    if alert is None:
        return None
    alert.status = AlertStatus.CANCELLED
    alert.closed_reason = "cancelled by the wearer"
    alert.updated_at = now
    session.add(alert)
    return alert


def explain(*, session: Session, alert: Alert) -> dict[str, object]:
    """Why the alert exists: the event that raised it (as the device sent it), the rule, the consent version."""
    trigger = session.get(DeviceMessage, alert.trigger_message_id)
    return {
        "rule": f"a {trigger.event_type if trigger else 'device'} event opens a {alert.severity} {alert.kind} alert at "
        "once, without waiting for a scheduler tick; repeats join it while it is open",
        "trigger": None
        if trigger is None
        else {
            "message_id": trigger.id,
            "ts": trigger.ts,
            "received_at": trigger.received_at,
            "payload": trigger.payload,
        },
        "consent_version": alert.consent_version,
    }


def get(*, session: Session, alert_id: str) -> Alert:
    return get_or_raise(session, Alert, alert_id, entity="alert")


def list_alerts(
    *,
    session: Session,
    customer_id: str | None = None,
    device_id: str | None = None,
    status: AlertStatus | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Alert]:
    query = select(Alert)
    if customer_id:
        query = query.where(Alert.customer_id == customer_id)
    if device_id:
        query = query.where(Alert.device_id == device_id)
    if status:
        query = query.where(Alert.status == status)
    query = query.order_by(col(Alert.opened_at).desc(), col(Alert.id)).offset(offset).limit(limit)
    return list(session.exec(query))


def acknowledge(*, session: Session, alert_id: str, actor: str, now: datetime) -> Alert:
    """Someone has it in hand. The wearer's device is told, so the wearer knows help is coming."""
    alert = get(session=session, alert_id=alert_id)
    if alert.status == AlertStatus.ACKNOWLEDGED:
        return alert
    if alert.status != AlertStatus.OPEN:
        raise Conflict(f"alert {alert_id!r} is {alert.status} and cannot be acknowledged")
    alert.status = AlertStatus.ACKNOWLEDGED
    alert.acknowledged_at = now
    alert.acknowledged_by = actor
    alert.updated_at = now
    session.add(alert)
    outbox.enqueue(
        session=session,
        kind=OutboxKind.DEVICE_COMMAND,
        stream=f"device:{alert.device_id}",
        idempotency_key=f"alert:{alert.id}:acknowledged",
        payload={
            "topic": COMMANDS_TOPIC.format(device_id=alert.device_id),
            "command": {"type": "alert_acknowledged", "alert_id": alert.id, "ts": now.isoformat()},
        },
        now=now,
    )
    return alert


def resolve(*, session: Session, alert_id: str, actor: str, now: datetime, reason: str | None) -> Alert:
    """Close an alert that has been dealt with. Resolving twice is harmless."""
    alert = get(session=session, alert_id=alert_id)
    if alert.status == AlertStatus.RESOLVED:
        return alert
    if alert.status == AlertStatus.CANCELLED:
        raise Conflict(f"alert {alert_id!r} was cancelled by the wearer; there is nothing to resolve")
    alert.status = AlertStatus.RESOLVED
    alert.closed_reason = reason or f"resolved by {actor}"
    alert.updated_at = now
    session.add(alert)
    return alert

"""Alerts raised by device events. A fall or a help request is a safety incident: it escalates through the wearer's
emergency contacts until someone acknowledges (alerts.escalation decides who and when; the state is kept here, in the
database, so that a restart resumes the chain at the right step and time and nobody is asked twice)."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import literal
from sqlalchemy import select as select_columns  # Core's: sqlmodel's select is typed for at most four columns
from sqlmodel import Session, col, select, update

from replenish.alerts import escalation, where
from replenish.alerts.models import Alert, EscalationAttempt, EscalationStep
from replenish.auth.models import Account, DeviceShare
from replenish.consent import service as consent
from replenish.consent.schemas import ConsentDocument
from replenish.constants import (
    COMMANDS_TOPIC,
    AlarmKind,
    AlertKind,
    AlertSeverity,
    AlertStatus,
    DeviceKind,
    EventType,
    HouseholdRole,
    NoticeKind,
    OutboxKind,
    TargetKind,
)
from replenish.customers.models import Customer
from replenish.db import get_or_raise
from replenish.devices.models import Device
from replenish.errors import Conflict, NotFound
from replenish.health.models import Alarm
from replenish.ingest.models import DeviceMessage
from replenish.ingest.schemas import Location
from replenish.notifications import service as notifications
from replenish.notifications.models import Notification
from replenish.observability import correlation
from replenish.outbox import service as outbox
from replenish.outbox.models import OutboxMessage

log = logging.getLogger(__name__)

# Every event that raises an alert raises a safety incident.
_RAISING_EVENTS: dict[str, tuple[AlertKind, AlertSeverity]] = {
    EventType.FALL_DETECTED: (AlertKind.FALL, AlertSeverity.CRITICAL),
    EventType.HELP_REQUESTED: (AlertKind.HELP_REQUESTED, AlertSeverity.CRITICAL),
}
# battery_low is a matter of device health (replenish.health): an alarm with hysteresis, not an incident.
SAFETY_KINDS = (AlertKind.FALL, AlertKind.HELP_REQUESTED)


def on_device_event(
    *,
    session: Session,
    device: Device,
    message: DeviceMessage,
    now: datetime,
    location: Location | None = None,
    confidence: float | None = None,
) -> Alert | None:
    """Apply one stored event to the alert state, in the ingesting transaction (no scheduler tick). ``location`` and
    ``confidence``: what the contract's parser read from it (a location it dropped is None)."""
    event_type = message.event_type
    if event_type == EventType.FALL_CANCELLED:
        return _cancel_fall(session=session, device=device, now=now)
    if event_type not in _RAISING_EVENTS:
        return None
    kind, severity = _RAISING_EVENTS[event_type]
    existing = _open(session=session, device_id=device.id, kinds=SAFETY_KINDS, still_escalating=True)
    if existing is not None:
        # A repeat while the chain is still asking people joins the incident instead of paging the same people
        # again. Once acknowledged, or once the chain ran out with nobody answering, a new event is a new
        # incident: it must reach someone.
        existing.event_count += 1
        existing.updated_at = now
        if location is not None:  # the wearer may have moved: the newest place counts
            existing.location = location.model_dump(exclude_none=True)
        if event_type == EventType.HELP_REQUESTED and existing.kind != AlertKind.HELP_REQUESTED:
            # The wearer asks for help: that is no longer a fall they might cancel ("I'm OK" cannot close it),
            # and if the cancel window is still running, nobody waits for it to end.
            existing.kind = AlertKind.HELP_REQUESTED
            if existing.escalation_level == 0:
                existing.cancel_until = None
                existing.next_escalation_at = now
        session.add(existing)
        _escalate_if_due(session=session, alert=existing, now=now)
        return existing
    version, document = consent.current_document(session=session, customer_id=device.customer_id)
    assert message.id is not None  # stored (and flushed) by ingest before its alert
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
    alert.location = location.model_dump(exclude_none=True) if location is not None else None
    alert.confidence = confidence
    policy = escalation.Policy.from_consent(document, device_id=device.id)
    skip_window = kind == AlertKind.HELP_REQUESTED or not policy.cancel_window
    alert.cancel_until = None if skip_window else now + policy.cancel_window
    alert.next_escalation_at = escalation.first_escalation_at(
        opened_at=now, cancel_window=policy.cancel_window, skip_cancel_window=skip_window
    )
    session.add(alert)
    session.flush()
    notifications.notify_customer(
        session=session,
        customer_id=device.customer_id,
        document=document,
        consent_version=version,
        subject=f"{kind.replace('_', ' ')} alert from {device.name}",
        body=_opening_text(device=device, event_type=event_type, message=message, alert=alert, policy=policy),
        now=now,
        alert_id=alert.id,
        urgent=True,
        kind=NoticeKind.SAFETY,
    )
    log.warning("alert %s opened: %s on %s", alert.id, kind, device.id)
    _escalate_if_due(session=session, alert=alert, now=now)
    return alert


def _opening_text(
    *, device: Device, event_type: str, message: DeviceMessage, alert: Alert, policy: escalation.Policy
) -> str:
    text = f"{device.name} ({device.id}) reported {event_type} at {message.ts.isoformat()}"
    text += f" (detection confidence {alert.confidence:.0%})." if alert.confidence is not None else "."
    place = where.describe(alert.location)
    text += f" {place}" if place else " The device sent no location."
    if alert.cancel_until is not None:
        text += (
            f" If the wearer does not cancel it by {alert.cancel_until.isoformat()}, their emergency contacts will be"
            " asked to help, in order."
        )
    else:
        text += " Their emergency contacts are being asked to help, in order."
    if not policy.targets:
        text += " The wearer has no emergency contacts, and emergency services may not be called: please check on them."
    return text


def _open(*, session: Session, device_id: str, kinds: tuple[str, ...], still_escalating: bool = False) -> Alert | None:
    """The device's newest open incident of these kinds (``still_escalating``: whose chain has not run out)."""
    query = select(Alert).where(
        Alert.device_id == device_id, col(Alert.kind).in_(kinds), Alert.status == AlertStatus.OPEN
    )
    if still_escalating:
        query = query.where(col(Alert.escalation_exhausted_at).is_(None))
    # Locked: the escalator may be stepping the same incident (PostgreSQL; on SQLite the version check catches it).
    return session.exec(query.order_by(col(Alert.opened_at).desc()).limit(1).with_for_update()).first()


def _cancel_fall(*, session: Session, device: Device, now: datetime) -> Alert | None:
    alert = _open(session=session, device_id=device.id, kinds=(AlertKind.FALL,))
    if alert is None:
        return None
    alert.status = AlertStatus.CANCELLED
    alert.closed_reason = "cancelled by the wearer"
    alert.next_escalation_at = None
    alert.updated_at = now
    session.add(alert)
    _tell_those_asked(
        session=session,
        alert=alert,
        subject=f"False alarm: {device.name}",
        body=f"The wearer of {device.name} cancelled the fall alert: they are OK. Nothing more is needed.",
        now=now,
    )
    return alert


# -- silence: a wearable that cannot report a fall -------------------------------------------------------------------

# The health alarms that silence a wearable: it is offline, or its battery is (nearly) flat.
SILENCING_ALARMS = (AlarmKind.OFFLINE, AlarmKind.BATTERY_LOW)


def on_wearable_health(
    *,
    session: Session,
    device: Device,
    alarms: Collection[Alarm],
    document: ConsentDocument,
    version: int,
    now: datetime,
) -> Alert | None:
    """Open the wearable's silence incident once an offline or flat-battery alarm has lasted longer than the consent
    allows (it goes to its carers, not urgently, until one acknowledges); close it when the device is back. Called
    by the health job, in its transaction, with the device's uncleared alarms."""
    if device.kind != DeviceKind.WEARABLE:
        return None
    # Uncleared: an alarm that is only in doubt (the device spoke once) keeps the incident; a cleared one ends it.
    silencing = [a for a in alarms if a.kind in SILENCING_ALARMS and a.cleared_at is None]
    current = session.exec(
        select(Alert)
        .where(
            Alert.device_id == device.id,
            Alert.kind == AlertKind.SILENCE,
            col(Alert.status).in_((AlertStatus.OPEN, AlertStatus.ACKNOWLEDGED)),
        )
        .with_for_update()
    ).first()
    if not silencing:
        if current is not None:
            resolve(session=session, alert_id=current.id, actor="automation", now=now, reason="the wearable is back")
        return current
    if current is not None:
        return current
    # One incident per alarm: a carer who closed it is not asked again about the same silence, but a new alarm (the
    # battery after the connection, say) is a new one.
    had_one = set(
        session.exec(select(Alert.alarm_id).where(col(Alert.alarm_id).in_([alarm.id for alarm in silencing])))
    )
    due = [
        alarm
        for alarm in silencing
        if alarm.condition_present
        and alarm.id not in had_one
        and now - alarm.raised_at >= timedelta(minutes=document.wearable_silence_minutes)
    ]
    if not due:
        return None
    first = min(due, key=lambda alarm: alarm.raised_at)
    alert = Alert(
        customer_id=device.customer_id,
        device_id=device.id,
        kind=AlertKind.SILENCE,
        severity=AlertSeverity.WARNING,
        status=AlertStatus.OPEN,
        opened_at=now,
        updated_at=now,
        alarm_id=first.id,
        consent_version=version,
        next_escalation_at=now,
    )
    session.add(alert)
    session.flush()
    why = "offline" if first.kind == AlarmKind.OFFLINE else "its battery is low"
    notifications.notify_customer(
        session=session,
        customer_id=device.customer_id,
        document=document,
        consent_version=version,
        subject=f"{device.name} is silent: it cannot report a fall",
        body=f"{device.name} has been {why} since {first.raised_at.isoformat()}, longer than the "
        f"{document.wearable_silence_minutes} minutes you allowed: it could not report a fall now. Its carers are "
        "being asked to check on the wearer and the device. This closes by itself when the device is back.",
        now=now,
        alert_id=alert.id,
        kind=NoticeKind.SAFETY,
    )
    log.warning("alert %s opened: %s silent (%s)", alert.id, device.id, first.kind)
    _escalate_if_due(session=session, alert=alert, now=now)
    return alert


def silent_devices(*, session: Session, device_ids: Collection[str]) -> list[str]:
    """Which of these devices have a silence incident not yet resolved."""
    return list(
        session.exec(
            select(Alert.device_id).where(
                col(Alert.device_id).in_(list(device_ids)),
                Alert.kind == AlertKind.SILENCE,
                col(Alert.status).in_((AlertStatus.OPEN, AlertStatus.ACKNOWLEDGED)),
            )
        )
    )


def _carers(*, session: Session, device_id: str, document: ConsentDocument) -> tuple[escalation.Target, ...]:
    """Who a silence incident asks, in the order they joined: the carers the wearable is shared with, each on their
    channels as an emergency contact of it, or else by e-mail to their account."""
    carers = session.exec(
        select(Account)
        .join(DeviceShare, col(DeviceShare.account_id) == col(Account.id))
        .where(DeviceShare.device_id == device_id, Account.household_role == HouseholdRole.CARER)
        .order_by(col(Account.created_at), col(Account.id))
    ).all()
    targets = []
    for carer in carers:
        contact = next(
            (c for c in document.emergency_contacts if c.account_id == carer.id and c.covers(device_id)), None
        )
        channels = contact.channels() if contact is not None else [("email", carer.email)]
        targets.append(
            escalation.Target(
                kind=TargetKind.CONTACT,
                name=contact.name if contact is not None else (carer.name or carer.email),
                channel=channels[0][0],
                address=channels[0][1],
                fallbacks=tuple(channels[1:]),
                account_id=carer.id,
            )
        )
    return tuple(targets)


# -- escalation ----------------------------------------------------------------------------------------------------


def due_for_escalation(*, session: Session, now: datetime, limit: int = 100) -> list[str]:
    """Open incidents whose next escalation time has come, most overdue first."""
    return list(
        session.exec(
            select(Alert.id)
            .where(
                Alert.status == AlertStatus.OPEN,
                col(Alert.next_escalation_at).is_not(None),
                col(Alert.next_escalation_at) <= now,
            )
            .order_by(col(Alert.next_escalation_at))
            .limit(limit)
        )
    )


def escalate(*, session: Session, alert_id: str, now: datetime) -> Alert | None:
    """Take the incident's escalation step if it is still due; the caller commits. The row is locked (PostgreSQL:
    skipped if another escalator holds it), and a step is unique per incident and level, so that two escalators, or
    an escalator and the ingestor, never ask the same person twice."""
    alert = session.exec(select(Alert).where(Alert.id == alert_id).with_for_update(skip_locked=True)).first()
    if alert is None:
        return None
    # The step's log lines and notifications carry the correlation id of the event that opened the incident.
    trigger = session.get(DeviceMessage, alert.trigger_message_id) if alert.trigger_message_id else None
    with correlation.bound(correlation.for_device_message(trigger.device_id, trigger.seq) if trigger else None):
        _escalate_if_due(session=session, alert=alert, now=now)
    return alert


def _escalate_if_due(*, session: Session, alert: Alert, now: datetime) -> None:
    if alert.status != AlertStatus.OPEN or alert.next_escalation_at is None or alert.next_escalation_at > now:
        return
    version, document = consent.current_document(session=session, customer_id=alert.customer_id)
    asked = [step.target for step in steps(session=session, alert_id=alert.id)]
    if alert.kind == AlertKind.SILENCE:
        policy = escalation.Policy(
            targets=_carers(session=session, device_id=alert.device_id, document=document),
            cancel_window=timedelta(0),
            timeout=timedelta(seconds=document.escalation_timeout_seconds),
        )
    else:
        policy = escalation.Policy.from_consent(document, device_id=alert.device_id)
    outcome = escalation.due(policy=policy, asked=asked, now=now)
    device = session.get(Device, alert.device_id)
    device_name = device.name if device is not None else alert.device_id
    if isinstance(outcome, escalation.Exhausted):
        alert.next_escalation_at = None
        alert.escalation_exhausted_at = now
        alert.updated_at = now
        session.add(alert)
        log.critical("alert %s (%s on %s): nobody acknowledged; operators must act", alert.id, alert.kind, device_name)
        if any(step.target_kind == TargetKind.EMERGENCY_SERVICES for step in steps(session=session, alert_id=alert.id)):
            log.critical("alert %s: the monitoring centre did not acknowledge: CALL EMERGENCY SERVICES", alert.id)
        if alert.escalation_level == 0:
            return  # nobody to ask: the customer's first notification said so
        notifications.notify_customer(
            session=session,
            customer_id=alert.customer_id,
            document=document,
            consent_version=version,
            subject=f"Nobody has answered the {alert.kind.replace('_', ' ')} alert from {device_name}",
            body=f"Everyone in the wearer's emergency chain was asked ({alert.escalation_level} in all) and nobody "
            "acknowledged. Please check on the wearer now; our operators have been alerted.",
            now=now,
            alert_id=alert.id,
            urgent=alert.kind != AlertKind.SILENCE,
            kind=NoticeKind.SAFETY,
        )
        return
    token = secrets.token_urlsafe(24)
    target = outcome.target
    _call_request_logged(alert=alert, device_name=device_name, target=target, channel=target.channel)
    notification = notifications.send(
        session=session,
        customer_id=alert.customer_id,
        channel=target.channel,
        address=target.address,
        subject=_request_subject(alert=alert, device_name=device_name),
        body=_request_text(alert=alert, device_name=device_name, target=target, level=outcome.level),
        consent_version=version,
        now=now,
        alert_id=alert.id,
        acknowledge_token=token,
        urgent=alert.kind != AlertKind.SILENCE,  # a silent device waits its turn; a fall never does
        kind=NoticeKind.SAFETY,
        details=_incident_details(session=session, alert=alert, device=device)
        if target.kind is TargetKind.EMERGENCY_SERVICES
        else None,
    )
    session.flush()  # the step refers to the notification: its row goes first
    step = EscalationStep(
        alert_id=alert.id,
        level=outcome.level,
        target_kind=target.kind,
        target_name=target.name,
        channel=target.channel,
        address=target.address,
        notified_at=now,
        notification_id=notification.id,
        consent_version=version,
        token_hash=_token_hash(token),
        account_id=target.account_id,
        channels=[[channel, address] for channel, address in target.channels()],
    )
    session.add(step)
    alert.escalation_level = outcome.level
    alert.next_escalation_at = outcome.next_at
    alert.updated_at = now
    session.add(alert)
    # The unique (alert, level) constraint refuses a step a concurrent escalator already took, before any commit.
    session.flush()
    session.add(
        EscalationAttempt(
            step_id=step.id,
            number=0,
            channel=target.channel,
            address=target.address,
            notification_id=notification.id,
            sent_at=now,
        )
    )


def _call_request_logged(*, alert: Alert, device_name: str, target: escalation.Target, channel: str) -> None:
    """The operators' log carries the call request when it is the channel: no monitoring centre, or it failed."""
    if target.kind is TargetKind.EMERGENCY_SERVICES and channel == "log":
        place = where.describe(alert.location) or "The device sent no location."
        log.critical(
            "alert %s: CALL EMERGENCY SERVICES for the wearer of %s (consented; no contact acknowledged). %s",
            alert.id,
            device_name,
            place,
        )


def _incident_details(*, session: Session, alert: Alert, device: Device | None) -> dict[str, object]:
    """What the monitoring centre is sent besides the text (docs/api.md, "Monitoring centre")."""
    customer = session.get(Customer, alert.customer_id)
    return {
        "kind": alert.kind,
        "opened_at": alert.opened_at.isoformat(),
        "household": customer.name if customer is not None else None,
        "device": {"id": alert.device_id, "name": device.name if device is not None else alert.device_id},
        "location": alert.location,
        "map_url": where.map_url(alert.location),
        "confidence": alert.confidence,
        "asked": [
            {"name": step.target_name, "level": step.level, "at": step.notified_at.isoformat()}
            for step in steps(session=session, alert_id=alert.id)
        ],
    }


def _request_subject(*, alert: Alert, device_name: str) -> str:
    if alert.kind == AlertKind.SILENCE:
        return f"Please check on the wearer of {device_name}: it is silent"
    return f"Urgent: {alert.kind.replace('_', ' ')} alert for the wearer of {device_name}"


def _request_text(*, alert: Alert, device_name: str, target: escalation.Target, level: int) -> str:
    if alert.kind == AlertKind.SILENCE:
        return (
            f"{device_name} has been silent (offline, or its battery flat) since before {alert.opened_at.isoformat()}:"
            f" it could not report a fall now. You are carer {level} asked. Please check on the wearer and the device."
        )
    what = "may have fallen" if alert.kind == AlertKind.FALL else "has asked for help"
    text = (
        f"The wearer of {device_name} {what} ({alert.opened_at.isoformat()}). You are step {level}"
        " of their emergency chain. Please check on them now."
    )
    if target.kind is TargetKind.EMERGENCY_SERVICES:
        text = f"Call emergency services for the wearer of {device_name}, who {what}: no emergency contact answered."
    place = where.describe(alert.location)
    return f"{text} {place}" if place else text


# -- falling back to a contact's next channel ---------------------------------------------------------------------

# Channels whose provider confirms each delivery: without a receipt in time, the attempt counts as failed.
RECEIPT_CHANNELS = frozenset({"sms", "voice"})
NO_RECEIPT = "no delivery receipt"
REACHED = "delivered"


@dataclass(frozen=True)
class Settled:
    """Attempts whose outcome is known: those that reached the person, and those that failed."""

    reached: list[str]
    failed: list[str]


def attempts_to_settle(*, session: Session, now: datetime, receipt_timeout: timedelta, limit: int = 200) -> Settled:
    """Attempts whose outcome is known now, on steps nobody has acknowledged, of open incidents. One query: the many
    that are merely waiting (an SMS's receipt takes seconds) cost no transaction, and those that reached the person
    are recorded together (mark_reached); only a failure needs one of its own (check_attempt)."""
    query = (
        _attempt_states()
        .join(EscalationStep, col(EscalationStep.id) == col(EscalationAttempt.step_id))
        .join(Alert, col(Alert.id) == col(EscalationStep.alert_id))
        .where(
            col(EscalationAttempt.outcome).is_(None),
            col(EscalationStep.acknowledged_at).is_(None),
            col(Alert.status) == AlertStatus.OPEN,
        )
        .order_by(col(EscalationAttempt.sent_at))
        .limit(limit)
    )
    settled = Settled(reached=[], failed=[])
    for attempt_id, *state in session.execute(query):
        outcome = _outcome(*state, now=now, receipt_timeout=receipt_timeout)
        if outcome is not None:
            (settled.reached if outcome == REACHED else settled.failed).append(attempt_id)
    return settled


def mark_reached(*, session: Session, attempt_ids: Collection[str], now: datetime) -> None:
    """These attempts reached the person (attempts_to_settle said so): recorded in one statement."""
    session.exec(
        update(EscalationAttempt)
        .where(col(EscalationAttempt.id).in_(list(attempt_ids)), col(EscalationAttempt.outcome).is_(None))
        .values(outcome=REACHED, outcome_at=now)
        .execution_options(synchronize_session=False)
    )


def _attempt_states() -> Any:
    """Each attempt's id and what its outcome is judged on (_outcome's arguments, in order): the attempt, its
    notification, and the outbox message that carries it."""
    return (
        select_columns(
            col(EscalationAttempt.id),
            col(EscalationAttempt.channel),
            col(EscalationAttempt.sent_at),
            col(Notification.sent_at),
            col(Notification.receipt_at),
            col(Notification.failure),
            col(Notification.failed_at),
            col(OutboxMessage.attempts),
            col(OutboxMessage.delivered_at),
            col(OutboxMessage.last_error),
        )
        .join(Notification, col(Notification.id) == col(EscalationAttempt.notification_id))
        .outerjoin(OutboxMessage, col(OutboxMessage.stream) == literal("notification:") + col(Notification.id))
    )


def _outcome(
    channel: str,
    asked_at: datetime,
    sent_at: datetime | None,
    receipt_at: datetime | None,
    failure: str | None,
    failed_at: datetime | None,
    tries: int | None,
    delivered_at: datetime | None,
    last_error: str | None,
    *,
    now: datetime,
    receipt_timeout: timedelta,
) -> str | None:
    """REACHED, why the attempt failed, or None while that is not known yet. Pure: the one rule for both the
    escalator's sweep and the check of one attempt under its incident's lock."""
    if failed_at is not None:
        return failure or "it failed"
    if receipt_at is not None or (channel not in RECEIPT_CHANNELS and sent_at is not None):
        return REACHED
    if tries is not None and tries >= 1 and delivered_at is None:
        return f"it could not be sent: {_said(last_error)}"
    if channel in RECEIPT_CHANNELS and now >= asked_at + receipt_timeout:
        return f"{NO_RECEIPT} within {receipt_timeout.total_seconds():g} s"
    return None


_REPR = re.compile(r"^\w+\((['\"])(?P<said>.*)\1\)$", re.DOTALL)


def _said(error: str | None) -> str:
    """What an error said, as the outbox keeps it (its repr: ProviderRefused('...')), without the wrapping."""
    found = _REPR.match(error or "")
    return (found.group("said") if found else error or "an error")[:200]


def check_attempt(*, session: Session, attempt_id: str, now: datetime, receipt_timeout: timedelta) -> str | None:
    """Settle one attempt if its outcome is known: delivered, or failed, and then the contact's next channel is tried
    at once (their step's timeout does not wait for a message that never arrived); with no channel left, the next
    person in the chain is asked now. Returns the outcome, None while it is still open. The caller commits."""
    found = session.get(EscalationAttempt, attempt_id)
    if found is None:
        return None
    step = session.get_one(EscalationStep, found.step_id)
    # The incident first, then the attempt read again under its lock: two checkers never both settle it.
    alert = session.exec(select(Alert).where(Alert.id == step.alert_id).with_for_update(skip_locked=True)).first()
    if alert is None or alert.status != AlertStatus.OPEN:
        return None
    attempt = session.get(EscalationAttempt, attempt_id, populate_existing=True)
    if attempt is None or attempt.outcome is not None:
        return None
    _, *state = session.execute(_attempt_states().where(col(EscalationAttempt.id) == attempt.id)).one()
    failure = _outcome(*state, now=now, receipt_timeout=receipt_timeout)
    if failure is None:
        return None
    attempt.outcome = failure
    attempt.outcome_at = now
    session.add(attempt)
    if failure == REACHED:
        return attempt.outcome
    # The incident changes (its version with it): an acknowledgement that read it before cannot also commit.
    alert.updated_at = now
    session.add(alert)
    channels = step.channels or [[step.channel, step.address]]
    device = session.get(Device, alert.device_id)
    device_name = device.name if device is not None else alert.device_id
    log.warning("alert %s: %s by %s failed (%s)", alert.id, step.target_name, attempt.channel, failure)
    if attempt.number + 1 >= len(channels):
        # Nobody reached: the next person is asked now rather than at the end of this one's timeout; unless the
        # chain moved on already (the next one's turn is theirs), or only the receipt is missing (it may still
        # have reached them: some carriers send none).
        current = step.level == alert.escalation_level and alert.escalation_exhausted_at is None
        if current and not failure.startswith(NO_RECEIPT) and alert.next_escalation_at is not None:
            alert.next_escalation_at = min(alert.next_escalation_at, now)
        return attempt.outcome
    channel, address = channels[attempt.number + 1]
    _call_request_logged(alert=alert, device_name=device_name, target=step.target, channel=str(channel))
    token = secrets.token_urlsafe(24)
    notification = notifications.send(
        session=session,
        customer_id=alert.customer_id,
        channel=str(channel),
        address=address,
        subject=_request_subject(alert=alert, device_name=device_name),
        body=_request_text(alert=alert, device_name=device_name, target=step.target, level=step.level),
        consent_version=step.consent_version,
        now=now,
        alert_id=alert.id,
        acknowledge_token=token,
        urgent=alert.kind != AlertKind.SILENCE,
        kind=NoticeKind.SAFETY,
    )
    session.flush()
    session.add(
        EscalationAttempt(
            step_id=step.id,
            number=attempt.number + 1,
            channel=str(channel),
            address=address,
            notification_id=notification.id,
            sent_at=now,
            token_hash=_token_hash(token),
        )
    )
    session.flush()  # unique (step, number): a concurrent checker that tried it first wins
    return attempt.outcome


def outcome_word(outcome: str | None) -> str | None:
    """An attempt's outcome as someone who may not read the contacts' addresses sees it: the reason can name them."""
    return outcome if outcome in (None, REACHED) else "failed"


def attempts(*, session: Session, step_ids: Collection[str]) -> dict[str, list[EscalationAttempt]]:
    """Each step's attempts, in order."""
    found: dict[str, list[EscalationAttempt]] = {step_id: [] for step_id in step_ids}
    for attempt in session.exec(
        select(EscalationAttempt)
        .where(col(EscalationAttempt.step_id).in_(list(step_ids)))
        .order_by(col(EscalationAttempt.number))
    ):
        found[attempt.step_id].append(attempt)
    return found


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _tell_those_asked(*, session: Session, alert: Alert, subject: str, body: str, now: datetime) -> None:
    """Everyone already asked to help hears that they no longer need to (a cancel, or someone else has it): each
    contact on the channel that reached them (their first, when none is known to have), and the monitoring centre,
    which stands down."""
    asked = steps(session=session, alert_id=alert.id)
    tried = attempts(session=session, step_ids=[step.id for step in asked])
    for step in asked:
        if step.acknowledged_at is not None:
            continue
        if step.target_kind == TargetKind.EMERGENCY_SERVICES:
            reached_centre = any(a.channel == "monitoring_centre" and a.outcome == REACHED for a in tried[step.id])
            if not reached_centre:
                continue  # the operators' log needs no word: the incident's state says it
            channel, address, details = "monitoring_centre", None, {"type": "stand_down", "reason": body}
        else:
            reached = [a for a in tried[step.id] if a.outcome == REACHED]
            channel, address = (reached[-1].channel, reached[-1].address) if reached else (step.channel, step.address)
            details = None
        notifications.send(
            session=session,
            customer_id=alert.customer_id,
            channel=channel,
            address=address,
            subject=subject,
            body=body,
            consent_version=step.consent_version,
            now=now,
            alert_id=alert.id,
            urgent=True,
            kind=NoticeKind.SAFETY,
            details=details,
        )


def steps(*, session: Session, alert_id: str) -> list[EscalationStep]:
    query = select(EscalationStep).where(EscalationStep.alert_id == alert_id)
    return list(session.exec(query.order_by(col(EscalationStep.level))))


def delivered_at(*, session: Session, steps: list[EscalationStep]) -> dict[str, datetime]:
    """Step id -> when its notification was delivered, for the steps delivered so far."""
    by_notification = {step.notification_id: step.id for step in steps if step.notification_id}
    rows = session.exec(
        select(Notification.id, Notification.sent_at).where(col(Notification.id).in_(list(by_notification)))
    )
    return {by_notification[notification_id]: sent for notification_id, sent in rows if sent is not None}


def step_for_token(*, session: Session, token: str) -> EscalationStep:
    """The step a link was sent for: its first channel's link, or a fallback channel's."""
    hashed = _token_hash(token)
    step = session.exec(select(EscalationStep).where(EscalationStep.token_hash == hashed)).first()
    if step is None:
        attempt = session.exec(select(EscalationAttempt).where(EscalationAttempt.token_hash == hashed)).first()
        step = session.get(EscalationStep, attempt.step_id) if attempt is not None else None
    if step is None:
        raise NotFound("acknowledgement link", "this")
    return step


def acknowledge_by_contact(*, session: Session, token: str, now: datetime) -> tuple[Alert, EscalationStep]:
    """The contact who followed the link has it in hand."""
    step = step_for_token(session=session, token=token)
    alert = get(session=session, alert_id=step.alert_id)
    if alert.status == AlertStatus.ACKNOWLEDGED and step.acknowledged_at is not None:
        return alert, step
    if alert.status == AlertStatus.OPEN:
        step.acknowledged_at = now  # first: the others asked are told, not the one who answered
        session.add(step)
    role = f"emergency contact {step.level}" if step.target_kind == "contact" else "emergency services"
    alert = acknowledge(session=session, alert_id=alert.id, actor=f"{step.target_name} ({role})", now=now)
    return alert, step


def explain(*, session: Session, alert: Alert) -> dict[str, object]:
    """Why the alert exists: the event that raised it (as the device sent it), or the health alarm behind a silence
    incident; the rule; the consent version."""
    if alert.kind == AlertKind.SILENCE:
        alarm = session.get(Alarm, alert.alarm_id) if alert.alarm_id else None
        return {
            "rule": "a wearable offline or with a flat battery for longer than the consent's wearable_silence_minutes "
            "opens a silence incident for its carers; it closes when the device is back",
            "trigger": None,
            "alarm": None
            if alarm is None
            else {"id": alarm.id, "kind": alarm.kind, "raised_at": alarm.raised_at, "detail": alarm.detail},
            "consent_version": alert.consent_version,
        }
    trigger = session.get(DeviceMessage, alert.trigger_message_id) if alert.trigger_message_id else None
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


def get(
    *, session: Session, alert_id: str, customer_id: str | None = None, device_ids: Collection[str] | None = None
) -> Alert:
    """The alert; given ``customer_id``, only if it is that customer's (another's answers as a missing one); given
    ``device_ids`` (what a member or carer sees), only one of those devices'."""
    return get_or_raise(session, Alert, alert_id, entity="alert", customer_id=customer_id, device_ids=device_ids)


def list_alerts(
    *,
    session: Session,
    customer_id: str | None = None,
    device_ids: Collection[str] | None = None,
    device_id: str | None = None,
    status: AlertStatus | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Alert]:
    query = select(Alert)
    if customer_id:
        query = query.where(Alert.customer_id == customer_id)
    if device_ids is not None:
        query = query.where(col(Alert.device_id).in_(list(device_ids)))
    if device_id:
        query = query.where(Alert.device_id == device_id)
    if status:
        query = query.where(Alert.status == status)
    query = query.order_by(col(Alert.opened_at).desc(), col(Alert.id)).offset(offset).limit(limit)
    return list(session.exec(query))


def acknowledge(*, session: Session, alert_id: str, actor: str, now: datetime, account_id: str | None = None) -> Alert:
    """Someone has it in hand. The wearer's device is told, so the wearer knows help is coming. Given the household
    account that acknowledged in the app, their own step of the chain (if they are a contact) counts as answered."""
    alert = get(session=session, alert_id=alert_id)
    if alert.status == AlertStatus.ACKNOWLEDGED:
        return alert
    if alert.status != AlertStatus.OPEN:
        raise Conflict(f"alert {alert_id!r} is {alert.status} and cannot be acknowledged")
    if account_id is not None:
        for step in steps(session=session, alert_id=alert.id):
            if step.account_id == account_id and step.acknowledged_at is None:
                step.acknowledged_at = now  # first: the others asked are told, not the one who answered
                session.add(step)
    alert.status = AlertStatus.ACKNOWLEDGED
    alert.acknowledged_at = now
    alert.acknowledged_by = actor
    alert.next_escalation_at = None
    alert.updated_at = now
    session.add(alert)
    _tell_those_asked(
        session=session,
        alert=alert,
        subject="Someone is handling it",
        body=f"{actor} has acknowledged the {alert.kind.replace('_', ' ')} alert and is handling it.",
        now=now,
    )
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
        urgent=True,  # the wearer is waiting to know that help is coming
    )
    return alert


def resolve(*, session: Session, alert_id: str, actor: str, now: datetime, reason: str | None) -> Alert:
    """Close an alert that has been dealt with. Resolving twice is harmless."""
    alert = get(session=session, alert_id=alert_id)
    if alert.status == AlertStatus.RESOLVED:
        return alert
    if alert.status == AlertStatus.CANCELLED:
        raise Conflict(f"alert {alert_id!r} was cancelled by the wearer; there is nothing to resolve")
    was_open = alert.status == AlertStatus.OPEN
    alert.status = AlertStatus.RESOLVED
    alert.closed_reason = reason or f"resolved by {actor}"
    alert.next_escalation_at = None
    alert.updated_at = now
    session.add(alert)
    if was_open:
        _tell_those_asked(
            session=session,
            alert=alert,
            subject="Resolved: no need to act",
            body=f"{actor} resolved the {alert.kind.replace('_', ' ')} alert: {alert.closed_reason}.",
            now=now,
        )
    return alert

"""Device health alarms: the health job judges every device (replenish.health.rules) and brings its alarms in line;
people acknowledge them. Services never commit: the caller owns the transaction."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, select

from replenish.alerts import service as alerts
from replenish.consent import service as consent
from replenish.consent.schemas import ConsentDocument
from replenish.constants import AlarmKind, AlarmSeverity, AlarmStatus, DeviceKind, NoticeKind
from replenish.db import get_or_raise
from replenish.devices.models import Device, Slot
from replenish.health import rules
from replenish.health.models import Alarm
from replenish.notifications import service as notifications

log = logging.getLogger(__name__)

SEVERITY = {
    AlarmKind.OFFLINE: AlarmSeverity.MAJOR,
    AlarmKind.BATTERY_LOW: AlarmSeverity.WARNING,
    AlarmKind.STUCK_SENSOR: AlarmSeverity.MINOR,
}
# Minor alarms are shown, not sent: a sensor that repeats itself may just be a consumable nobody uses.
NOTIFIED = {AlarmSeverity.MAJOR, AlarmSeverity.WARNING}


@dataclass
class HealthReport:
    devices: int = 0
    raised: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)


def assess_devices(
    *, session: Session, device_ids: list[str], now: datetime, policy: rules.HealthPolicy
) -> HealthReport:
    """Judge these devices now and raise, update or clear their alarms."""
    report = HealthReport()
    devices = list(session.exec(select(Device).where(col(Device.id).in_(device_ids))))
    slots: dict[str, list[Slot]] = {}
    for slot in session.exec(select(Slot).where(col(Slot.device_id).in_(device_ids))):
        slots.setdefault(slot.device_id, []).append(slot)
    uncleared = {
        (alarm.device_id, alarm.kind, alarm.slot_name): alarm
        for alarm in session.exec(
            select(Alarm).where(col(Alarm.device_id).in_(device_ids), col(Alarm.cleared_at).is_(None))
        )
    }
    documents: dict[str, tuple[int, ConsentDocument]] = {}
    for device in devices:
        report.devices += 1
        if device.customer_id not in documents:
            documents[device.customer_id] = consent.current_document(session=session, customer_id=device.customer_id)
        version, document = documents[device.customer_id]
        judged: list[tuple[AlarmKind, str, rules.Judgement, dict[str, object]]] = []
        presence = rules.Presence(
            kind=device.kind,
            created_at=device.created_at,
            online=device.online,
            status_changed_at=device.status_changed_at,
            last_seen_at=device.last_seen_at,
        )
        judged.append(
            (
                AlarmKind.OFFLINE,
                "",
                rules.offline(presence, policy=policy, now=now),
                {"last_seen_at": _iso(device.last_seen_at), "status": _status_word(device.online)},
            )
        )
        if device.battery is not None or device.battery_low_at is not None:
            state = rules.Battery(
                level=device.battery, level_at=device.battery_at, low_reported_at=device.battery_low_at
            )
            judged.append(
                (
                    AlarmKind.BATTERY_LOW,
                    "",
                    rules.battery(state, policy=policy),
                    {"battery": device.battery, "battery_at": _iso(device.battery_at)},
                )
            )
        for slot in slots.get(device.id, []):
            # A pause window during the unchanged stretch explains it: nothing was used while the customer was away.
            since = slot.same_level_since or now
            paused = any(
                start < now and end > since
                for start, end in document.pauses_for(device_id=device.id, slot_name=slot.name)
            )
            sameness = rules.Sameness(count=slot.same_level_count, since=slot.same_level_since)
            judged.append(
                (
                    AlarmKind.STUCK_SENSOR,
                    slot.name,
                    rules.stuck(sameness, policy=policy, now=now, paused=paused),
                    {"level": slot.level, "readings": slot.same_level_count, "since": _iso(slot.same_level_since)},
                )
            )
        for kind, slot_name, judgement, detail in judged:
            alarm = uncleared.get((device.id, kind, slot_name))
            outcome = _reconcile(
                session=session,
                device=device,
                alarm=alarm,
                kind=kind,
                slot_name=slot_name,
                judgement=judgement,
                detail=detail,
                now=now,
                document=document,
                consent_version=version,
            )
            if outcome == "raised":
                report.raised.append(f"{device.id}:{kind}{':' + slot_name if slot_name else ''}")
            elif outcome == "cleared":
                report.cleared.append(f"{device.id}:{kind}{':' + slot_name if slot_name else ''}")
    _silences(session=session, devices=devices, documents=documents, now=now)
    return report


def _silences(
    *, session: Session, devices: list[Device], documents: dict[str, tuple[int, ConsentDocument]], now: datetime
) -> None:
    """Bring the page's wearables' silence incidents in line with their alarms (alerts.on_wearable_health). Two
    queries for the page; only a wearable with a silencing alarm or an incident still open is looked at further."""
    wearables = {device.id: device for device in devices if device.kind == DeviceKind.WEARABLE}
    if not wearables:
        return
    session.flush()
    alarms: dict[str, list[Alarm]] = {}
    for alarm in session.exec(
        select(Alarm).where(
            col(Alarm.device_id).in_(list(wearables)),
            col(Alarm.cleared_at).is_(None),
            col(Alarm.kind).in_(alerts.SILENCING_ALARMS),
        )
    ):
        alarms.setdefault(alarm.device_id, []).append(alarm)
    open_ = set(alerts.silent_devices(session=session, device_ids=list(wearables)))
    for device_id in sorted(set(alarms) | open_):
        device = wearables[device_id]
        version, document = documents[device.customer_id]
        try:
            # Its own savepoint: an incident that cannot be written now (a carer acknowledging it at the same moment)
            # is tried again on the next pass, and takes nobody's alarms with it.
            with session.begin_nested():
                alerts.on_wearable_health(
                    session=session,
                    device=device,
                    alarms=alarms.get(device_id, []),
                    document=document,
                    version=version,
                    now=now,
                )
        except (StaleDataError, IntegrityError):
            log.warning("the silence incident of %s is written on the next pass", device.id)


def _reconcile(
    *,
    session: Session,
    device: Device,
    alarm: Alarm | None,
    kind: AlarmKind,
    slot_name: str,
    judgement: rules.Judgement,
    detail: dict[str, object],
    now: datetime,
    document: ConsentDocument,
    consent_version: int,
) -> str | None:
    what = _describe(kind, device, slot_name)
    if judgement == rules.Judgement.BAD and alarm is None:
        alarm = Alarm(
            customer_id=device.customer_id,
            device_id=device.id,
            kind=kind,
            slot_name=slot_name,
            severity=SEVERITY[kind],
            raised_at=now,
            updated_at=now,
            detail=detail,
        )
        session.add(alarm)
        session.flush()
        log.warning("alarm %s raised: %s", alarm.id, what)
        if alarm.severity in NOTIFIED:
            notifications.notify_customer(
                session=session,
                customer_id=device.customer_id,
                document=document,
                consent_version=consent_version,
                subject=f"{device.name}: {what}",
                body=_explain(kind, device, detail),
                now=now,
                alarm_id=alarm.id,
                kind=NoticeKind.DEVICE_HEALTH,
            )
        return "raised"
    if alarm is None:
        return None
    if judgement == rules.Judgement.BAD:
        if not alarm.condition_present:
            # Back after a lull too short to clear the alarm: one more occurrence of the same alarm.
            alarm.occurrences += 1
            alarm.condition_present = True
        alarm.detail = detail
        alarm.updated_at = now
        session.add(alarm)
        return None
    if judgement == rules.Judgement.UNSURE:
        if alarm.condition_present:
            alarm.condition_present = False
            alarm.updated_at = now
            session.add(alarm)
        return None
    alarm.cleared_at = now
    alarm.condition_present = False
    alarm.updated_at = now
    session.add(alarm)
    log.info("alarm %s cleared: %s is over", alarm.id, what)
    if alarm.severity in NOTIFIED:
        notifications.notify_customer(
            session=session,
            customer_id=device.customer_id,
            document=document,
            consent_version=consent_version,
            subject=f"{device.name}: resolved, {what}",
            body=f"Over since {now.isoformat()}; raised at {alarm.raised_at.isoformat()}, "
            f"{alarm.occurrences} occurrence(s).",
            now=now,
            alarm_id=alarm.id,
            kind=NoticeKind.DEVICE_HEALTH,
        )
    return "cleared"


def _describe(kind: AlarmKind, device: Device, slot_name: str) -> str:
    if kind == AlarmKind.OFFLINE:
        return f"{device.id} is offline"
    if kind == AlarmKind.BATTERY_LOW:
        return f"{device.id}'s battery is low"
    return f"the {slot_name} sensor of {device.id} may be stuck"


def _explain(kind: AlarmKind, device: Device, detail: dict[str, object]) -> str:
    if kind == AlarmKind.OFFLINE:
        return f"Last heard from at {detail['last_seen_at'] or 'never'}; its status is {detail['status']}."
    return (
        f"Battery at {detail['battery'] if detail['battery'] is not None else 'a low level'} (reported by the device)."
    )


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _status_word(online: bool | None) -> str:
    return "unknown" if online is None else ("online" if online else "offline")


def get(
    *, session: Session, alarm_id: str, customer_id: str | None = None, device_ids: Collection[str] | None = None
) -> Alarm:
    """The alarm; given ``customer_id``, only if it is that customer's (another's answers as a missing one); given
    ``device_ids`` (what a member or carer sees), only one of those devices'."""
    return get_or_raise(session, Alarm, alarm_id, entity="alarm", customer_id=customer_id, device_ids=device_ids)


def list_alarms(
    *,
    session: Session,
    customer_id: str | None = None,
    device_ids: Collection[str] | None = None,
    device_id: str | None = None,
    kind: AlarmKind | None = None,
    status: AlarmStatus | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Alarm]:
    query = select(Alarm)
    if customer_id:
        query = query.where(Alarm.customer_id == customer_id)
    if device_ids is not None:
        query = query.where(col(Alarm.device_id).in_(list(device_ids)))
    if device_id:
        query = query.where(Alarm.device_id == device_id)
    if kind:
        query = query.where(Alarm.kind == kind)
    if status == AlarmStatus.CLEARED:
        query = query.where(col(Alarm.cleared_at).is_not(None))
    elif status == AlarmStatus.ACKNOWLEDGED:
        query = query.where(col(Alarm.cleared_at).is_(None), col(Alarm.acknowledged_at).is_not(None))
    elif status == AlarmStatus.ACTIVE:
        query = query.where(col(Alarm.cleared_at).is_(None), col(Alarm.acknowledged_at).is_(None))
    query = query.order_by(col(Alarm.raised_at).desc(), col(Alarm.id)).offset(offset).limit(limit)
    return list(session.exec(query))


def acknowledge(*, session: Session, alarm_id: str, actor: str, now: datetime) -> Alarm:
    """Someone has seen it. Allowed before or after it clears; again, it changes nothing."""
    alarm = get(session=session, alarm_id=alarm_id)
    if alarm.acknowledged_at is None:
        alarm.acknowledged_at = now
        alarm.acknowledged_by = actor
        alarm.updated_at = now
        session.add(alarm)
    return alarm

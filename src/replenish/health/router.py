from __future__ import annotations

from fastapi import APIRouter
from sqlmodel import Session

from replenish.api.deps import ClockDep, CurrentPrincipal, EngineDep, Limit, Offset, ReadSession
from replenish.auth.service import Principal
from replenish.constants import AlarmKind, AlarmStatus
from replenish.db import transaction
from replenish.health import service
from replenish.health.models import Alarm
from replenish.health.schemas import AlarmRead

router = APIRouter(prefix="/alarms", tags=["device health"])


def _read(alarm: Alarm) -> AlarmRead:
    return AlarmRead.model_validate(alarm)


def _visible(session: Session, principal: Principal, alarm_id: str) -> Alarm:
    alarm = service.get(session=session, alarm_id=alarm_id)
    principal.check_access(alarm.customer_id, entity="alarm", key=alarm_id)
    return alarm


@router.get("", response_model=list[AlarmRead], summary="Device health alarms, newest first")
def list_alarms(
    session: ReadSession,
    principal: CurrentPrincipal,
    customer_id: str | None = None,
    device_id: str | None = None,
    kind: AlarmKind | None = None,
    status: AlarmStatus | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[AlarmRead]:
    """Offline devices, low batteries, sensors that repeat one value. An operator sees the whole fleet."""
    found = service.list_alarms(
        session=session,
        customer_id=principal.scope(customer_id),
        device_id=device_id,
        kind=kind,
        status=status,
        limit=limit,
        offset=offset,
    )
    return [_read(alarm) for alarm in found]


@router.get("/{alarm_id}", response_model=AlarmRead, summary="One device health alarm")
def get_alarm(alarm_id: str, session: ReadSession, principal: CurrentPrincipal) -> AlarmRead:
    return _read(_visible(session, principal, alarm_id))


@router.post("/{alarm_id}/acknowledge", response_model=AlarmRead, summary="Acknowledge a device health alarm")
def acknowledge(alarm_id: str, principal: CurrentPrincipal, engine: EngineDep, clock: ClockDep) -> AlarmRead:
    """Someone has seen it; it still clears by itself when the condition is over. Again: no change."""
    with transaction(engine) as session:
        _visible(session, principal, alarm_id)
        return _read(service.acknowledge(session=session, alarm_id=alarm_id, actor=principal.actor, now=clock.now()))

from __future__ import annotations

from fastapi import APIRouter

from replenish.api.deps import ClockDep, CurrentPrincipal, EngineDep, Limit, Offset, ReadSession
from replenish.constants import AlarmKind, AlarmStatus, Capability
from replenish.db import transaction
from replenish.health import service
from replenish.health.models import Alarm
from replenish.health.schemas import AlarmRead

router = APIRouter(prefix="/alarms", tags=["device health"])


def _read(alarm: Alarm) -> AlarmRead:
    return AlarmRead.model_validate(alarm)


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
        device_ids=principal.visible_devices,
        device_id=device_id,
        kind=kind,
        status=status,
        limit=limit,
        offset=offset,
    )
    return [_read(alarm) for alarm in found]


@router.get("/{alarm_id}", response_model=AlarmRead, summary="One device health alarm")
def get_alarm(alarm_id: str, session: ReadSession, principal: CurrentPrincipal) -> AlarmRead:
    return _read(
        service.get(
            session=session,
            alarm_id=alarm_id,
            customer_id=principal.visible_customer,
            device_ids=principal.visible_devices,
        )
    )


@router.post("/{alarm_id}/acknowledge", response_model=AlarmRead, summary="Acknowledge a device health alarm")
def acknowledge(alarm_id: str, principal: CurrentPrincipal, engine: EngineDep, clock: ClockDep) -> AlarmRead:
    """Someone has seen it; it still clears by itself when the condition is over. Again: no change."""
    with transaction(engine) as session:
        service.get(
            session=session,
            alarm_id=alarm_id,
            customer_id=principal.visible_customer,
            device_ids=principal.visible_devices,
        )
        principal.require(Capability.ACKNOWLEDGE, subject_type="alarm", subject_id=alarm_id)
        return _read(service.acknowledge(session=session, alarm_id=alarm_id, actor=principal.actor, now=clock.now()))

from __future__ import annotations

from fastapi import APIRouter

from replenish.alerts import service
from replenish.alerts.schemas import AcknowledgeRequest, AlertRead, ResolveRequest
from replenish.api.deps import ClockDep, EngineDep, Limit, Offset, ReadSession
from replenish.constants import AlertStatus
from replenish.db import transaction

router = APIRouter(prefix="/alerts", tags=["alerts"])


@router.get("", response_model=list[AlertRead], summary="List alerts, newest first")
def list_alerts(
    session: ReadSession,
    customer_id: str | None = None,
    device_id: str | None = None,
    status: AlertStatus | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[AlertRead]:
    found = service.list_alerts(
        session=session, customer_id=customer_id, device_id=device_id, status=status, limit=limit, offset=offset
    )
    return [AlertRead.model_validate(alert) for alert in found]


@router.get("/{alert_id}", response_model=AlertRead, summary="An alert")
def get_alert(alert_id: str, session: ReadSession) -> AlertRead:
    return AlertRead.model_validate(service.get(session=session, alert_id=alert_id))


@router.post("/{alert_id}/acknowledge", response_model=AlertRead, summary="Acknowledge an open alert")
def acknowledge(alert_id: str, engine: EngineDep, clock: ClockDep, body: AcknowledgeRequest | None = None) -> AlertRead:
    """Marks the alert acknowledged and sends `alert_acknowledged` to the device's commands topic."""
    with transaction(engine) as session:
        alert = service.acknowledge(
            session=session, alert_id=alert_id, actor=body.by if body else "customer", now=clock.now()
        )
        return AlertRead.model_validate(alert)


@router.post("/{alert_id}/resolve", response_model=AlertRead, summary="Resolve an alert that has been dealt with")
def resolve(alert_id: str, engine: EngineDep, clock: ClockDep, body: ResolveRequest | None = None) -> AlertRead:
    request = body or ResolveRequest()
    with transaction(engine) as session:
        alert = service.resolve(
            session=session, alert_id=alert_id, actor=request.by, now=clock.now(), reason=request.reason
        )
        return AlertRead.model_validate(alert)

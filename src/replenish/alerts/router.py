from __future__ import annotations

from fastapi import APIRouter
from sqlmodel import Session

from replenish.alerts import service
from replenish.alerts.models import Alert
from replenish.alerts.schemas import AcknowledgeRequest, AlertDetail, AlertRead, ResolveRequest
from replenish.api.deps import ClockDep, CurrentPrincipal, EngineDep, Limit, Offset, ReadSession
from replenish.auth.service import Principal
from replenish.constants import AlertStatus
from replenish.db import transaction

router = APIRouter(prefix="/alerts", tags=["alerts"])


def _visible(session: Session, principal: Principal, alert_id: str) -> Alert:
    alert = service.get(session=session, alert_id=alert_id)
    principal.check_access(alert.customer_id, entity="alert", key=alert_id)
    return alert


@router.get("", response_model=list[AlertRead], summary="List alerts, newest first")
def list_alerts(
    session: ReadSession,
    principal: CurrentPrincipal,
    customer_id: str | None = None,
    device_id: str | None = None,
    status: AlertStatus | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[AlertRead]:
    found = service.list_alerts(
        session=session,
        customer_id=principal.scope(customer_id),
        device_id=device_id,
        status=status,
        limit=limit,
        offset=offset,
    )
    return [AlertRead.model_validate(alert) for alert in found]


@router.get("/{alert_id}", response_model=AlertDetail, summary="An alert, and the event behind it")
def get_alert(alert_id: str, session: ReadSession, principal: CurrentPrincipal) -> AlertDetail:
    alert = _visible(session, principal, alert_id)
    return AlertDetail(
        **AlertRead.model_validate(alert).model_dump(), explanation=service.explain(session=session, alert=alert)
    )


@router.post("/{alert_id}/acknowledge", response_model=AlertRead, summary="Acknowledge an open alert")
def acknowledge(
    alert_id: str,
    principal: CurrentPrincipal,
    engine: EngineDep,
    clock: ClockDep,
    body: AcknowledgeRequest | None = None,
) -> AlertRead:
    """Marks the alert acknowledged and sends `alert_acknowledged` to the device's commands topic."""
    with transaction(engine) as session:
        _visible(session, principal, alert_id)
        actor = principal.actor if not (body and body.by) else f"{body.by} (via {principal.actor})"
        alert = service.acknowledge(session=session, alert_id=alert_id, actor=actor, now=clock.now())
        return AlertRead.model_validate(alert)


@router.post("/{alert_id}/resolve", response_model=AlertRead, summary="Resolve an alert that has been dealt with")
def resolve(
    alert_id: str, principal: CurrentPrincipal, engine: EngineDep, clock: ClockDep, body: ResolveRequest | None = None
) -> AlertRead:
    request = body or ResolveRequest()
    with transaction(engine) as session:
        _visible(session, principal, alert_id)
        alert = service.resolve(
            session=session,
            alert_id=alert_id,
            actor=principal.actor if not request.by else f"{request.by} (via {principal.actor})",
            now=clock.now(),
            reason=request.reason,
        )
        return AlertRead.model_validate(alert)

from __future__ import annotations

from html import escape

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session

from replenish.alerts import service
from replenish.alerts.models import Alert, EscalationStep
from replenish.alerts.schemas import (
    AcknowledgementRead,
    AcknowledgeRequest,
    AlertDetail,
    AlertRead,
    EscalationAttemptRead,
    EscalationStepRead,
    ResolveRequest,
)
from replenish.api.deps import ClockDep, CurrentPrincipal, EngineDep, Limit, Offset, ReadSession
from replenish.constants import ACKNOWLEDGE_PAGE_PATH, AlertStatus, Capability
from replenish.db import transaction
from replenish.devices.models import Device
from replenish.errors import DomainError

router = APIRouter(prefix="/alerts", tags=["alerts"])
# The link in an emergency contact's notification is their credential: no account, no bearer token.
acknowledgements_router = APIRouter(prefix="/acknowledgements", tags=["alerts"])
# The same, as a page for a phone's browser (the link in an e-mail leads here).
acknowledgement_page_router = APIRouter(prefix=ACKNOWLEDGE_PAGE_PATH, include_in_schema=False)


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
        device_ids=principal.visible_devices,
        device_id=device_id,
        status=status,
        limit=limit,
        offset=offset,
    )
    return [AlertRead.model_validate(alert) for alert in found]


@router.get("/{alert_id}", response_model=AlertDetail, summary="An alert, and the event behind it")
def get_alert(alert_id: str, session: ReadSession, principal: CurrentPrincipal) -> AlertDetail:
    alert = service.get(
        session=session, alert_id=alert_id, customer_id=principal.visible_customer, device_ids=principal.visible_devices
    )
    steps = service.steps(session=session, alert_id=alert.id)
    delivered = service.delivered_at(session=session, steps=steps)
    tried = service.attempts(session=session, step_ids=[step.id for step in steps])
    # The contacts' numbers and addresses are the consent's: a carer sees whom and how, not where (nor the errors
    # that name them).
    addresses = principal.can(Capability.READ_CONSENT)
    return AlertDetail(
        **AlertRead.model_validate(alert).model_dump(),
        explanation=service.explain(session=session, alert=alert),
        escalation=[
            EscalationStepRead.model_validate(step).model_copy(
                update={
                    "delivered_at": delivered.get(step.id),
                    "attempts": [
                        EscalationAttemptRead.model_validate(attempt).model_copy(
                            update={} if addresses else {"outcome": service.outcome_word(attempt.outcome)}
                        )
                        for attempt in tried[step.id]
                    ],
                    "address": step.address if addresses else None,
                }
            )
            for step in steps
        ],
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
        service.get(
            session=session,
            alert_id=alert_id,
            customer_id=principal.visible_customer,
            device_ids=principal.visible_devices,
        )
        principal.require(Capability.ACKNOWLEDGE, subject_type="alert", subject_id=alert_id)
        actor = principal.actor if not (body and body.by) else f"{body.by} (via {principal.actor})"
        alert = service.acknowledge(
            session=session, alert_id=alert_id, actor=actor, now=clock.now(), account_id=principal.account_id
        )
        return AlertRead.model_validate(alert)


@router.post("/{alert_id}/resolve", response_model=AlertRead, summary="Resolve an alert that has been dealt with")
def resolve(
    alert_id: str, principal: CurrentPrincipal, engine: EngineDep, clock: ClockDep, body: ResolveRequest | None = None
) -> AlertRead:
    request = body or ResolveRequest()
    with transaction(engine) as session:
        service.get(
            session=session,
            alert_id=alert_id,
            customer_id=principal.visible_customer,
            device_ids=principal.visible_devices,
        )
        principal.require(Capability.ACKNOWLEDGE, subject_type="alert", subject_id=alert_id)
        alert = service.resolve(
            session=session,
            alert_id=alert_id,
            actor=principal.actor if not request.by else f"{request.by} (via {principal.actor})",
            now=clock.now(),
            reason=request.reason,
        )
        return AlertRead.model_validate(alert)


def _acknowledgement(session: Session, alert: Alert, step: EscalationStep) -> AcknowledgementRead:
    device = session.get(Device, alert.device_id)
    return AcknowledgementRead(
        alert_id=alert.id,
        kind=alert.kind,
        device_name=device.name if device is not None else alert.device_id,
        opened_at=alert.opened_at,
        status=alert.status,
        acknowledged_at=alert.acknowledged_at,
        acknowledged_by=alert.acknowledged_by,
        you=step.target_name,
        level=step.level,
    )


@acknowledgements_router.get(
    "/{token}", response_model=AcknowledgementRead, summary="What an emergency contact's link is about"
)
def read_acknowledgement(token: str, session: ReadSession) -> AcknowledgementRead:
    step = service.step_for_token(session=session, token=token)
    return _acknowledgement(session, service.get(session=session, alert_id=step.alert_id), step)


@acknowledgements_router.post(
    "/{token}", response_model=AcknowledgementRead, summary="An emergency contact acknowledges: they are handling it"
)
def acknowledge_by_link(token: str, engine: EngineDep, clock: ClockDep) -> AcknowledgementRead:
    """No bearer token: the link the contact received is the credential. Stops the escalation, tells the others
    asked before, and sends `alert_acknowledged` to the wearer's device. Again on an acknowledged alert: no change."""
    with transaction(engine) as session:
        alert, step = service.acknowledge_by_contact(session=session, token=token, now=clock.now())
        return _acknowledgement(session, alert, step)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 32rem; margin: 2rem auto; padding: 0 1rem">
<h1>{title}</h1>{body}</body></html>"""


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=escape(title), body=body), status_code=status_code)


def _describe(view: AcknowledgementRead) -> str:
    what = "may have fallen" if view.kind == "fall" else "has asked for help"
    return (
        f"<p>{escape(view.you)}: the wearer of <strong>{escape(view.device_name)}</strong> {what} "
        f"({escape(view.opened_at.isoformat())}).</p>"
    )


@acknowledgement_page_router.get("/{token}", response_class=HTMLResponse)
def acknowledgement_page(token: str, session: ReadSession) -> HTMLResponse:
    try:
        view = read_acknowledgement(token, session)
    except DomainError as exc:
        return _page("Link not valid", f"<p>{escape(exc.message)}</p>", exc.status_code)
    if view.status != AlertStatus.OPEN:
        by = f" by {escape(view.acknowledged_by)}" if view.acknowledged_by else ""
        return _page("Already handled", _describe(view) + f"<p>This alert is {escape(view.status)}{by}.</p>")
    form = (
        '<form method="post"><button type="submit" style="font-size: 1.25rem; padding: .75rem 1.5rem">'
        "I am handling it</button></form>"
    )
    return _page("Someone needs help", _describe(view) + form)


@acknowledgement_page_router.post("/{token}", response_class=HTMLResponse)
def acknowledgement_page_submit(token: str, engine: EngineDep, clock: ClockDep) -> HTMLResponse:
    try:
        view = acknowledge_by_link(token, engine, clock)
    except DomainError as exc:
        return _page("Could not acknowledge", f"<p>{escape(exc.message)}</p>", exc.status_code)
    except (StaleDataError, IntegrityError):
        # Someone else acknowledged (or the wearer cancelled) at the same moment: show where it stands now.
        with Session(engine) as session:
            return acknowledgement_page(token, session)
    return _page("Thank you", _describe(view) + "<p>Everyone else has been told you are handling it.</p>")

"""The alerts pages: the list (open incidents first, with who has been asked), one alert with its escalation
timeline, and acknowledging it through the same service call as the API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session

from replenish.alerts import service as alerts
from replenish.alerts.models import Alert
from replenish.api.state import api_state
from replenish.auth.service import Principal
from replenish.constants import AlertStatus, Capability
from replenish.db import transaction
from replenish.devices import service as devices
from replenish.errors import DomainError
from replenish.web.pages import PREFIX, WebPrincipal, not_found_page, now_of, redirect_to, render_page
from replenish.web.session import CSRF_FIELD, check_csrf

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/alerts", response_class=HTMLResponse)
def alert_list(request: Request, principal: WebPrincipal) -> HTMLResponse:
    """Open incidents first, with who has been asked so far; then the closed ones."""
    with Session(api_state(request).engine) as session:
        found = alerts.list_alerts(
            session=session, customer_id=principal.scope(None), device_ids=principal.visible_devices, limit=200
        )
        names = {
            device.id: device.name
            for device in devices.list_devices(
                session=session, customer_id=principal.scope(None), device_ids=principal.visible_devices, limit=500
            )
        }
        asked = {
            alert.id: alerts.steps(session=session, alert_id=alert.id)
            for alert in found
            if alert.status == AlertStatus.OPEN
        }
    open_ = [alert for alert in found if alert.status == AlertStatus.OPEN]
    closed = [alert for alert in found if alert.status != AlertStatus.OPEN]
    context = {
        "title": "Alerts",
        "principal": principal,
        "open": open_,
        "closed": closed,
        "names": names,
        "asked": asked,
        "live_page": "alerts",
    }
    return render_page(request, "alerts.html", context)


def _own_alert(session: Session, principal: Principal, alert_id: str) -> Alert:
    """The alert if it is the principal's to see; missing and another customer's answer the same 404 page."""
    with not_found_page():
        return alerts.get(
            session=session,
            alert_id=alert_id,
            customer_id=principal.visible_customer,
            device_ids=principal.visible_devices,
        )


@router.get("/alerts/{alert_id}", response_class=HTMLResponse)
def alert_page(request: Request, alert_id: str, principal: WebPrincipal, error: str | None = None) -> HTMLResponse:
    """One alert: the event that raised it, and its escalation timeline (who was asked when, who answered)."""
    with Session(api_state(request).engine) as session:
        alert = _own_alert(session, principal, alert_id)
        steps = alerts.steps(session=session, alert_id=alert.id)
        delivered = alerts.delivered_at(session=session, steps=steps)
        tried = alerts.attempts(session=session, step_ids=[step.id for step in steps])
        explanation = alerts.explain(session=session, alert=alert)
        device = devices.get(session=session, device_id=alert.device_id)
    context = {
        "title": f"Alert: {alert.kind.replace('_', ' ')}",
        "principal": principal,
        "alert": alert,
        "device": device,
        "steps": steps,
        "tried": tried,
        # The reasons a channel failed can name the contact's number or URL: the owner's to read.
        "outcome": (lambda outcome: outcome) if principal.can(Capability.READ_CONSENT) else alerts.outcome_word,
        "delivered": delivered,
        "explanation": explanation,
        "error": f"It could not be {'acknowledged' if error == 'acknowledge' else 'closed'}: it is {alert.status} now."
        if error in ("acknowledge", "resolve")
        else None,
    }
    return render_page(request, "alert.html", context)


@router.post("/alerts/{alert_id}/acknowledge")
def acknowledge_alert(
    request: Request,
    alert_id: str,
    principal: WebPrincipal,
    csrf: Annotated[str | None, Form(alias=CSRF_FIELD)] = None,
    back: Annotated[str | None, Form()] = None,
) -> Response:
    """The API's acknowledgement: escalation stops, those asked are told, and the device gets alert_acknowledged."""
    check_csrf(request, csrf)
    with transaction(api_state(request).engine) as session:
        _own_alert(session, principal, alert_id)
        principal.require(Capability.ACKNOWLEDGE, subject_type="alert", subject_id=alert_id)
        try:
            alerts.acknowledge(
                session=session,
                alert_id=alert_id,
                actor=principal.actor,
                now=now_of(request),
                account_id=principal.account_id,
            )
        except DomainError:
            session.rollback()
            return redirect_to(f"{PREFIX}/alerts/{alert_id}?error=acknowledge")
    return redirect_to(back if back == f"{PREFIX}/alerts" else f"{PREFIX}/alerts/{alert_id}")


@router.post("/alerts/{alert_id}/resolve")
def resolve_alert(
    request: Request,
    alert_id: str,
    principal: WebPrincipal,
    csrf: Annotated[str | None, Form(alias=CSRF_FIELD)] = None,
) -> Response:
    """The API's resolve: dealt with; those asked who have not answered hear that they need not act."""
    check_csrf(request, csrf)
    with transaction(api_state(request).engine) as session:
        _own_alert(session, principal, alert_id)
        principal.require(Capability.ACKNOWLEDGE, subject_type="alert", subject_id=alert_id)
        try:
            alerts.resolve(session=session, alert_id=alert_id, actor=principal.actor, now=now_of(request), reason=None)
        except DomainError:
            session.rollback()
            return redirect_to(f"{PREFIX}/alerts/{alert_id}?error=resolve")
    return redirect_to(f"{PREFIX}/alerts/{alert_id}")

"""The customer web app under /app: server-rendered pages over the same services the API uses.

Pages read through the domain services with the signed-in principal's scope, exactly as the API's routes do, so a
customer sees only their own devices and orders and another customer's answers 404. Forms post back here (with the
session's CSRF token) and redirect, so a reload never repeats an action.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Request, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from sqlmodel import Session

from replenish.alerts import service as alerts
from replenish.alerts.models import Alert
from replenish.auth import service as auth
from replenish.auth.service import Principal
from replenish.automation import service as automation
from replenish.clock import Clock
from replenish.consent import service as consent
from replenish.consent.schemas import ConsentDocument, NotificationChannel
from replenish.constants import (
    ANSWER_PAGE_PATH,
    OPEN_ORDER_STATUSES,
    AlarmStatus,
    AlertStatus,
    ConsentMode,
    OrderStatus,
)
from replenish.customers.locks import lock_customer
from replenish.db import transaction
from replenish.devices import service as devices
from replenish.devices.models import Slot
from replenish.errors import DomainError, InvalidRequest, NotFound, TooManyRequests
from replenish.health import service as health
from replenish.ingest import service as ingest
from replenish.notifications import service as notifications
from replenish.notifications.schemas import PushSubscriptionCreate
from replenish.orders import service as orders
from replenish.orders.models import Order
from replenish.privacy import service as privacy
from replenish.web import answers as answer_pages
from replenish.web import sign_up as sign_up_pages
from replenish.web.charts import HISTORY, ChartOrder, slot_chart
from replenish.web.rendering import STATIC_DIR, templates
from replenish.web.session import (
    COOKIE_NAME,
    CSRF_FIELD,
    CsrfRejected,
    SignInRequired,
    check_csrf,
    check_same_origin,
    csrf_token,
    require_principal,
    session_secret,
    signed_in,
)

PREFIX = "/app"
router = APIRouter(prefix=PREFIX, include_in_schema=False)
WebPrincipal = Annotated[Principal, Depends(require_principal)]
# The order's actions offered on its page, and the status each leads to.
ACTIONS = {"approve": OrderStatus.PLACED, "decline": OrderStatus.DECLINED, "cancel": OrderStatus.CANCELLED}
ACTION_PAST = {"approve": "approved", "decline": "declined", "cancel": "cancelled", "acknowledge": "acknowledged"}


class PageNotFound(Exception):
    """Answered with the app's 404 page: missing and another customer's look the same."""


# Pages carry a customer's data: not kept in caches (nor shown from one after signing out), never framed by
# another site (a one-click Approve under someone else's page), and nothing loaded from anywhere else.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "Referrer-Policy": "same-origin",
}


def install(app: FastAPI) -> None:
    """Mount the web app on the API's application: its pages, its static files, and how its errors look."""
    # The static files first: the pages' router ends with a catch-all that answers the app's 404 page.
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC_DIR), name="web-static")
    app.include_router(sign_up_pages.router)  # before the pages' catch-all under the same /app prefix
    app.include_router(router)
    app.include_router(answer_pages.router)

    @app.middleware("http")
    async def _page_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        path = request.url.path
        if (path == PREFIX or path.startswith(f"{PREFIX}/")) and not path.startswith(f"{PREFIX}/static/"):
            response.headers.update(PAGE_HEADERS)
        elif path.startswith(f"{ANSWER_PAGE_PATH}/"):
            # The link's token is in the address: same-origin keeps it from any other site as a referrer (and
            # unlike no-referrer, lets the page's own form send its Origin, which the POST checks).
            response.headers.update(PAGE_HEADERS)
        return response

    @app.exception_handler(SignInRequired)
    async def _sign_in_first(request: Request, exc: SignInRequired) -> Response:
        return RedirectResponse(f"{PREFIX}/sign-in?next={quote(exc.next_path)}", status_code=status.HTTP_303_SEE_OTHER)

    @app.exception_handler(PageNotFound)
    async def _not_found(request: Request, exc: PageNotFound) -> Response:
        return _page(request, "not_found.html", {"title": "Not found"}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(CsrfRejected)
    async def _csrf(request: Request, exc: CsrfRejected) -> Response:
        context = {"title": "Form expired", "message": "This form has expired: go back, reload the page and try again."}
        return _page(request, "message.html", context, status_code=status.HTTP_403_FORBIDDEN)


def _page(request: Request, name: str, context: dict[str, Any], *, status_code: int = 200) -> HTMLResponse:
    principal = context.get("principal") or signed_in(request)
    secret = session_secret(request)
    return templates.TemplateResponse(
        request,
        name,
        {
            "principal": principal,
            "csrf_field": CSRF_FIELD,
            "csrf": csrf_token(secret) if secret else "",
            "live_page": "",
            "live_seconds": request.app.state.web_live_seconds,
        }
        | context,
        status_code=status_code,
    )


def _now(request: Request) -> datetime:
    clock: Clock = request.app.state.clock
    return clock.now()


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=status.HTTP_303_SEE_OTHER)


@router.get("", response_class=HTMLResponse)
def overview(request: Request, principal: WebPrincipal) -> HTMLResponse:
    """Every device with its slots: level now, the forecast empty date with its band, the next order, health."""
    now = _now(request)
    with Session(request.app.state.engine) as session:
        found = devices.list_devices(session=session, customer_id=principal.scope(None), limit=200)
        described = devices.describe_many(session=session, devices=found)
        placed = orders.list_orders(session=session, customer_id=principal.scope(None), limit=500)
        by_slot: dict[str, list[Order]] = {}
        for order in placed:
            by_slot.setdefault(order.slot_id, []).append(order)
        history = devices.level_history(
            session=session, slot_ids=[slot.id for device in described for slot in device.slots], since=now - HISTORY
        )
        cards = []
        for device in described:
            slots = []
            for slot in device.slots:
                slot_orders = by_slot.get(slot.id, [])
                slots.append(
                    {
                        "slot": slot,
                        "forecast": slot.forecast or {},
                        "next_order": next((o for o in slot_orders if o.status in OPEN_ORDER_STATUSES), None),
                        "chart": slot_chart(
                            title=f"{device.name} {slot.name}: level and forecast",
                            readings=[(ts, level / slot.capacity) for ts, level in history[slot.id]],
                            forecast=slot.forecast,
                            orders=[ChartOrder(created_at=o.created_at, status=o.status) for o in slot_orders],
                            lead_time_days=slot.lead_time_days,
                            now=now,
                        ),
                    }
                )
            cards.append({"device": device, "slots": slots})
    context = {"title": "Supplies", "principal": principal, "cards": cards, "now": now, "live_page": "overview"}
    return _page(request, "overview.html", context)


@router.get("/orders", response_class=HTMLResponse)
def order_list(request: Request, principal: WebPrincipal) -> HTMLResponse:
    """Orders awaiting approval first, then the history, newest first."""
    with Session(request.app.state.engine) as session:
        found = orders.list_orders(session=session, customer_id=principal.scope(None), limit=500)
    waiting = [order for order in found if order.status == OrderStatus.AWAITING_APPROVAL]
    history = [order for order in found if order.status != OrderStatus.AWAITING_APPROVAL]
    context = {"title": "Orders", "principal": principal, "waiting": waiting, "history": history, "live_page": "orders"}
    return _page(request, "orders.html", context)


def _own_order(session: Session, principal: Principal, order_id: str) -> Order:
    """The order if it is the principal's to see; missing and another customer's answer the same 404 page."""
    try:
        return orders.get(session=session, order_id=order_id, customer_id=principal.visible_customer)
    except NotFound:
        raise PageNotFound from None


@router.get("/orders/{order_id}", response_class=HTMLResponse)
def order_page(request: Request, order_id: str, principal: WebPrincipal, error: str | None = None) -> HTMLResponse:
    """One order and why: the readings, the forecast, the policy and the consent version behind it."""
    with Session(request.app.state.engine) as session:
        order = _own_order(session, principal, order_id)
        explanation = orders.explain(session=session, order=order)
        history = orders.history(session=session, order_id=order.id)
        slot = session.get(Slot, order.slot_id)
    # Awaiting approval: approve or decline (declining is its cancel); later, cancel while it may still be.
    offered = ("approve", "decline") if order.status == OrderStatus.AWAITING_APPROVAL else ("cancel",)
    actions = [name for name in offered if orders.can_become(OrderStatus(order.status), ACTIONS[name])]
    context = {
        "title": f"Order {order.product_sku}",
        "principal": principal,
        "order": order,
        "explanation": explanation,
        "history": history,
        "actions": actions,
        "slot": slot,
        "now": _now(request),
        "error": f"It could not be {ACTION_PAST[error]}: it is {order.status.replace('_', ' ')} now."
        if error in ACTION_PAST
        else None,
    }
    return _page(request, "order.html", context)


@router.post("/orders/{order_id}/{action}")
def order_action(
    request: Request,
    order_id: str,
    action: str,
    principal: WebPrincipal,
    csrf: Annotated[str | None, Form(alias=CSRF_FIELD)] = None,
    back: Annotated[str | None, Form()] = None,
) -> Response:
    """Approve, decline or cancel: the same transition the API's routes make, by the signed-in customer."""
    check_csrf(request, csrf)
    if action not in ACTIONS:
        raise PageNotFound
    with transaction(request.app.state.engine) as session:
        _own_order(session, principal, order_id)
        try:
            orders.transition(
                session=session, order_id=order_id, to=ACTIONS[action], actor=principal.actor, now=_now(request)
            )
        except DomainError:
            session.rollback()
            return _redirect(f"{PREFIX}/orders/{order_id}?error={action}")
    return _redirect(back if back in (f"{PREFIX}/orders", PREFIX) else f"{PREFIX}/orders/{order_id}")


@router.post("/devices/{device_id}/slots/{slot_name}/order")
def order_now(
    request: Request,
    device_id: str,
    slot_name: str,
    principal: WebPrincipal,
    csrf: Annotated[str | None, Form(alias=CSRF_FIELD)] = None,
) -> Response:
    """Order a slot now (the API's order now, by the signed-in customer): to the order's page, new or open."""
    check_csrf(request, csrf)
    with transaction(request.app.state.engine) as session:
        try:
            device = devices.get(session=session, device_id=device_id, customer_id=principal.visible_customer)
            slot = devices.get_slot(session=session, device_id=device_id, slot_name=slot_name)
        except NotFound:
            raise PageNotFound from None
        outcome = automation.order_now(
            session=session, slot=slot, device=device, now=_now(request), actor=principal.actor
        )
        assert outcome is not None
        order_id = outcome.order.id
    return _redirect(f"{PREFIX}/orders/{order_id}")


@router.get("/sw.js", include_in_schema=False)
def service_worker() -> FileResponse:
    """The service worker, served from /app/ so that its scope is the whole app."""
    return FileResponse(STATIC_DIR / "sw.js", media_type="text/javascript")


@router.post("/push/subscribe")
async def push_subscribe(request: Request, principal: WebPrincipal) -> dict[str, str]:
    """This browser's push subscription (the toggle on the consent page), and the webpush channel in the consent
    when it is not there yet (a new version)."""
    check_csrf(request, request.headers.get("x-csrf-token"))
    customer_id = _customer_of(principal)
    try:
        body = PushSubscriptionCreate.model_validate_json(await request.body())
    except ValidationError as exc:
        raise InvalidRequest(f"not a push subscription: {exc.errors()[0]['msg']}") from None
    now = _now(request)
    with transaction(request.app.state.engine) as session:
        notifications.subscribe(
            session=session,
            customer_id=customer_id,
            subscription=body,
            user_agent=request.headers.get("user-agent"),
            now=now,
        )
        # Read under the customer's lock: a consent saved in another tab at the same moment is not lost, and the
        # channel is added once.
        lock_customer(session=session, customer_id=customer_id)
        _, document = consent.current_document(session=session, customer_id=customer_id)
        if not any(channel.type == "webpush" for channel in document.notification_channels):
            channels = [*document.notification_channels, NotificationChannel(type="webpush")]
            consent.record(
                session=session,
                customer_id=customer_id,
                document=document.model_copy(update={"notification_channels": channels}),
                actor=principal.actor,
                now=now,
            )
    return {"status": "subscribed"}


@router.post("/push/unsubscribe")
async def push_unsubscribe(request: Request, principal: WebPrincipal) -> dict[str, str]:
    check_csrf(request, request.headers.get("x-csrf-token"))
    try:
        endpoint = str((await request.json())["endpoint"])
    except (ValueError, KeyError, TypeError):
        raise InvalidRequest("send the subscription's endpoint", field="endpoint") from None
    with transaction(request.app.state.engine) as session:
        notifications.forget_subscription(session=session, endpoint=endpoint, customer_id=_customer_of(principal))
    return {"status": "unsubscribed"}


@router.get("/live")
def live(request: Request, principal: WebPrincipal) -> dict[str, list[str]]:
    """What the pages follow without a reload: the orders awaiting approval and the open alerts, by id."""
    with Session(request.app.state.engine) as session:
        waiting = orders.list_orders(
            session=session, customer_id=principal.scope(None), status=OrderStatus.AWAITING_APPROVAL, limit=500
        )
        open_ = alerts.list_alerts(
            session=session, customer_id=principal.scope(None), status=AlertStatus.OPEN, limit=500
        )
    return {"waiting_orders": [order.id for order in waiting], "open_alerts": [alert.id for alert in open_]}


@router.get("/alerts", response_class=HTMLResponse)
def alert_list(request: Request, principal: WebPrincipal) -> HTMLResponse:
    """Open incidents first, with who has been asked so far; then the closed ones."""
    with Session(request.app.state.engine) as session:
        found = alerts.list_alerts(session=session, customer_id=principal.scope(None), limit=200)
        names = {
            device.id: device.name
            for device in devices.list_devices(session=session, customer_id=principal.scope(None), limit=500)
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
    return _page(request, "alerts.html", context)


def _own_alert(session: Session, principal: Principal, alert_id: str) -> Alert:
    """The alert if it is the principal's to see; missing and another customer's answer the same 404 page."""
    try:
        return alerts.get(session=session, alert_id=alert_id, customer_id=principal.visible_customer)
    except NotFound:
        raise PageNotFound from None


@router.get("/alerts/{alert_id}", response_class=HTMLResponse)
def alert_page(request: Request, alert_id: str, principal: WebPrincipal, error: str | None = None) -> HTMLResponse:
    """One alert: the event that raised it, and its escalation timeline (who was asked when, who answered)."""
    with Session(request.app.state.engine) as session:
        alert = _own_alert(session, principal, alert_id)
        steps = alerts.steps(session=session, alert_id=alert.id)
        delivered = alerts.delivered_at(session=session, steps=steps)
        explanation = alerts.explain(session=session, alert=alert)
        device = devices.get(session=session, device_id=alert.device_id)
    context = {
        "title": f"Alert: {alert.kind.replace('_', ' ')}",
        "principal": principal,
        "alert": alert,
        "device": device,
        "steps": steps,
        "delivered": delivered,
        "explanation": explanation,
        "error": f"It could not be acknowledged: it is {alert.status} now." if error == "acknowledge" else None,
    }
    return _page(request, "alert.html", context)


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
    with transaction(request.app.state.engine) as session:
        _own_alert(session, principal, alert_id)
        try:
            alerts.acknowledge(session=session, alert_id=alert_id, actor=principal.actor, now=_now(request))
        except DomainError:
            session.rollback()
            return _redirect(f"{PREFIX}/alerts/{alert_id}?error=acknowledge")
    return _redirect(back if back == f"{PREFIX}/alerts" else f"{PREFIX}/alerts/{alert_id}")


async def _form(request: Request) -> dict[str, str]:
    """The posted form's text fields (a form with dynamic field names: one per device and slot)."""
    return {key: value for key, value in (await request.form()).items() if isinstance(value, str)}


FormData = Annotated[dict[str, str], Depends(_form)]
MODE_CHOICES = [(mode.value, mode.value.replace("_", " ")) for mode in ConsentMode]


def _customer_of(principal: Principal) -> str:
    if principal.customer_id is None:
        raise PageNotFound  # operators manage a customer's consent through the API, on the customer's behalf
    return principal.customer_id


def _consent_page(
    request: Request,
    principal: Principal,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
) -> HTMLResponse:
    customer_id = _customer_of(principal)
    with Session(request.app.state.engine) as session:
        versions = consent.history(session=session, customer_id=customer_id)
        described = devices.describe_many(
            session=session, devices=devices.list_devices(session=session, customer_id=customer_id, limit=500)
        )
        browsers = notifications.push_subscriptions(session=session, customer_id=customer_id)
    document = ConsentDocument.model_validate(versions[-1].document)
    changes = []
    for before, after in zip([None, *versions[:-1]], versions, strict=True):
        changed = sorted(
            key for key, value in after.document.items() if before is None or before.document.get(key) != value
        )
        changes.append({"version": after, "changed": changed})
    context = {
        "title": "Consent",
        "principal": principal,
        "version": versions[-1].version,
        "document": document,
        "devices": described,
        "modes": MODE_CHOICES,
        "history": list(reversed(changes)),
        "errors": errors or {},
        "values": values or {},
        "push_key": request.app.state.push_public_key,
        "webpush_browsers": len(browsers),
    }
    return _page(request, "consent.html", context)


@router.get("/consent", response_class=HTMLResponse)
def consent_page(request: Request, principal: WebPrincipal) -> HTMLResponse:
    """What the platform may do, per customer, device and slot; limits; pause windows; and every earlier version."""
    return _consent_page(request, principal)


def _save_consent(
    request: Request, principal: Principal, change: Callable[[dict[str, Any]], None], values: dict[str, str]
) -> Response:
    """Apply a change to the current document and record it as the next version; invalid input is shown again
    next to its field, and nothing is recorded."""
    check_csrf(request, values.get(CSRF_FIELD))
    customer_id = _customer_of(principal)
    with transaction(request.app.state.engine) as session:
        version, current = consent.current_document(session=session, customer_id=customer_id)
        data = current.model_dump(mode="json")
        try:
            if values.get("version") != str(version):
                # Removing "the second contact" of an older page would remove someone else: start from what is.
                raise _FieldError("form", "Your consent changed meanwhile (in another tab?): here it is now.")
            change(data)
            document = ConsentDocument.model_validate(data)
            consent.record(
                session=session, customer_id=customer_id, document=document, actor=principal.actor, now=_now(request)
            )
        except (ValidationError, _FieldError, DomainError) as exc:
            session.rollback()
            return _consent_page(request, principal, errors=_field_errors(exc), values=values)
    return _redirect(f"{PREFIX}/consent?saved=1")


class _FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _field_errors(exc: Exception) -> dict[str, str]:
    """Errors by the form field they concern."""
    if isinstance(exc, _FieldError):
        return {exc.field: str(exc)}
    if isinstance(exc, ValidationError):
        found: dict[str, str] = {}
        for error in exc.errors():
            location = [str(part) for part in error["loc"]]
            field = {"pause_windows": "pause", "emergency_contacts": "contact_address"}.get(
                location[0] if location else "", location[0] if location else "form"
            )
            if field == "notification_channels":  # the list itself, or a channel's quiet hours (what is edited)
                field = f"quiet_{location[1]}" if len(location) > 1 else "channels"
            found.setdefault(field, error["msg"].removeprefix("Value error, "))
        return found
    return {"form": str(exc)}


@router.post("/consent/modes")
def save_modes(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """The default mode, and a mode per device and per slot ('' inherits from the level above)."""

    def change(data: dict[str, Any]) -> None:
        data["default_mode"] = form.get("default_mode", data["default_mode"])
        data["device_modes"] = {
            key.removeprefix("device:"): value for key, value in form.items() if key.startswith("device:") and value
        }
        data["slot_modes"] = {
            key.removeprefix("slot:"): value for key, value in form.items() if key.startswith("slot:") and value
        }

    return _save_consent(request, principal, change, form)


@router.post("/consent/limits")
def save_limits(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """The monthly spending cap and the largest quantity an automatic order may ask for (blank: no limit)."""

    def change(data: dict[str, Any]) -> None:
        data["monthly_spending_cap"] = form.get("monthly_spending_cap", "").strip() or None
        data["max_quantity_per_order"] = form.get("max_quantity_per_order", "").strip() or None

    return _save_consent(request, principal, change, form)


@router.post("/consent/answers")
def save_answers(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """What an unanswered request does at its deadline, when the reminder goes out, and the cancel window."""

    def change(data: dict[str, Any]) -> None:
        for name in ("on_no_answer", "approval_reminder_hours", "cancel_window_minutes", "digest_time"):
            data[name] = form.get(name, "").strip() or data.get(name)
        data["daily_digest"] = form.get("daily_digest") == "on"
        for index, channel in enumerate(data["notification_channels"]):
            start = form.get(f"quiet_start_{index}", "").strip()
            end = form.get(f"quiet_end_{index}", "").strip()
            if bool(start) != bool(end):
                raise _FieldError(f"quiet_{index}", "Give both times, or neither for no quiet hours.")
            channel["quiet_hours"] = {"start": start, "end": end} if start else None

    return _save_consent(request, principal, change, form)


@router.post("/consent/pauses")
def add_pause(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """A pause window: nothing is ordered for what it covers, from its first day to its last, both included."""

    def change(data: dict[str, Any]) -> None:
        start, end = form.get("start", "").strip(), form.get("end", "").strip()
        if not start:
            raise _FieldError("pause_start", "Choose the first day you are away.")
        if not end:
            raise _FieldError("pause_end", "Choose the last day you are away.")
        target = form.get("target", "")
        window = {"start": start, "end": end, "targets": [target] if target else [], "note": form.get("note") or None}
        data["pause_windows"] = [*data["pause_windows"], window]

    return _save_consent(request, principal, change, form)


def _without(key: str, index: int, *, field: str, gone: str) -> Callable[[dict[str, Any]], None]:
    """A consent change removing the index-th entry of a list (the form's version makes sure it is the one shown)."""

    def change(data: dict[str, Any]) -> None:
        if not 0 <= index < len(data[key]):
            raise _FieldError(field, gone)
        data[key] = [entry for number, entry in enumerate(data[key]) if number != index]

    return change


@router.post("/consent/pauses/{index}/remove")
def remove_pause(request: Request, index: int, principal: WebPrincipal, form: FormData) -> Response:
    change = _without("pause_windows", index, field="pause", gone="That pause window has already been removed.")
    return _save_consent(request, principal, change, form)


FLEET_RATE_WINDOWS = (timedelta(minutes=5), timedelta(hours=1))
FLEET_COUNT_MOST = 100_000


@router.get("/fleet", response_class=HTMLResponse)
def fleet_page(request: Request, principal: WebPrincipal) -> HTMLResponse:
    """Operators: devices offline or low on battery (their open health alarms), dead letters with their reasons,
    and the ingest rate."""
    if not principal.is_operator:
        raise PageNotFound
    now = _now(request)
    with Session(request.app.state.engine) as session:
        open_alarms = [
            alarm
            for status in (AlarmStatus.ACTIVE, AlarmStatus.ACKNOWLEDGED)
            for alarm in health.list_alarms(session=session, status=status, limit=500)
        ]
        dead = ingest.list_dead_letters(session=session, limit=50)
        reasons = ingest.dead_letters_by_reason(session=session, since=now - timedelta(days=1))
        overflow = ingest.dead_letter_overflow(session=session, since=now - timedelta(days=1))
        rates = [
            (window, ingest.messages_received(session=session, since=now - window, most=FLEET_COUNT_MOST))
            for window in FLEET_RATE_WINDOWS
        ]
    context = {
        "title": "Fleet",
        "principal": principal,
        "alarms": open_alarms,
        "dead_letters": dead,
        "reasons": sorted(reasons.items(), key=lambda item: -item[1]),
        "overflow": overflow,
        "rates": rates,
        "count_most": FLEET_COUNT_MOST,
    }
    return _page(request, "fleet.html", context)


@router.get("/data", response_class=HTMLResponse)
def data_page(request: Request, principal: WebPrincipal) -> HTMLResponse:
    """Everything stored about you as one download, and deleting your account with everything about it."""
    _customer_of(principal)
    return _page(request, "data.html", {"title": "Your data", "principal": principal, "errors": {}})


@router.get("/data/export")
def data_export(request: Request, principal: WebPrincipal) -> Response:
    """The API's export (the same document, the same audit record), as a download."""
    customer_id = _customer_of(principal)
    engine, now = request.app.state.engine, _now(request)
    with transaction(engine) as session:
        privacy.record_export(session=session, customer_id=customer_id, actor=principal.actor, now=now)
    return StreamingResponse(
        privacy.export(engine=engine, customer_id=customer_id, now=now),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{privacy.export_filename(customer_id)}"'},
    )


@router.post("/data/delete")
def data_delete(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """The API's deletion: the e-mail typed out and the password, then everything goes; the session with it."""
    check_csrf(request, form.get(CSRF_FIELD))
    customer_id = _customer_of(principal)
    now = _now(request)
    with transaction(request.app.state.engine) as session:
        refused = privacy.check_deletion(
            session=session,
            customer_id=customer_id,
            principal=principal,
            confirm=form.get("confirm", ""),
            password=form.get("password", ""),
            now=now,
        )
        if refused is None:
            privacy.delete_customer(session=session, customer_id=customer_id, actor=principal.actor, now=now)
    if refused is not None:  # the wrong password is counted (committed) all the same
        field = "password" if refused.field == "password" or isinstance(refused, TooManyRequests) else "confirm"
        message = (
            str(refused).capitalize() + "."
            if isinstance(refused, TooManyRequests)
            else {
                "confirm": "Type the e-mail address of your account exactly.",
                "password": "That is not your password.",
            }[field]
        )
        context = {
            "title": "Your data",
            "principal": principal,
            "errors": {field: message},
            "confirm": form.get("confirm", ""),
        }
        return _page(request, "data.html", context)
    response = _redirect(f"{PREFIX}/sign-in?deleted=1")
    response.delete_cookie(COOKIE_NAME, path=PREFIX)
    return response


@router.post("/consent/channels")
def add_channel(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """Another channel for the customer's own notifications: e-mail, a webhook, or the log."""

    def change(data: dict[str, Any]) -> None:
        channel = {
            "type": form.get("channel_type", "email"),
            "address": form.get("channel_address", "").strip() or None,
        }
        try:
            NotificationChannel.model_validate(channel)
        except ValidationError as exc:
            raise _FieldError("channel_address", exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
        if any(
            (known["type"], known.get("address")) == (channel["type"], channel["address"])
            for known in data["notification_channels"]
        ):
            raise _FieldError("channel_address", "You are told there already.")
        data["notification_channels"] = [*data["notification_channels"], channel]

    return _save_consent(request, principal, change, form)


@router.post("/consent/channels/{index}/remove")
def remove_channel(request: Request, index: int, principal: WebPrincipal, form: FormData) -> Response:
    change = _without("notification_channels", index, field="channels", gone="That channel has already been removed.")
    return _save_consent(request, principal, change, form)


@router.post("/consent/contacts")
def add_contact(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """An emergency contact, asked after those before them when a fall or help request is not acknowledged."""

    def change(data: dict[str, Any]) -> None:
        name = form.get("contact_name", "").strip()
        if not name:
            raise _FieldError("contact_name", "Enter the contact's name.")
        address = form.get("contact_address", "").strip() or None
        contact = {"name": name, "channel": form.get("contact_channel", "email"), "address": address}
        data["emergency_contacts"] = [*data["emergency_contacts"], contact]

    return _save_consent(request, principal, change, form)


@router.post("/consent/contacts/{index}/remove")
def remove_contact(request: Request, index: int, principal: WebPrincipal, form: FormData) -> Response:
    change = _without("emergency_contacts", index, field="contacts", gone="That contact has already been removed.")
    return _save_consent(request, principal, change, form)


@router.post("/consent/escalation")
def save_escalation(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """How long the wearer has to cancel a fall, how long each contact has to answer, and emergency services."""

    def change(data: dict[str, Any]) -> None:
        data["fall_cancel_window_seconds"] = form.get("fall_cancel_window_seconds", "").strip()
        data["escalation_timeout_seconds"] = form.get("escalation_timeout_seconds", "").strip()
        data["emergency_services_allowed"] = form.get("emergency_services_allowed") == "yes"

    return _save_consent(request, principal, change, form)


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_page(request: Request, next: str = PREFIX) -> Response:
    if signed_in(request) is not None:
        return _redirect(_safe_next(next))
    return _page(request, "sign_in.html", {"title": "Sign in", "next": _safe_next(next), "email": ""})


@router.post("/sign-in", response_class=HTMLResponse)
def sign_in(
    request: Request,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = PREFIX,
) -> Response:
    """The API's sign-in (same rate limit, audit and token lifetime), the token kept in an HttpOnly cookie."""
    check_same_origin(request)
    errors: dict[str, str] = {}
    if not email.strip():
        errors["email"] = "Enter the e-mail address you signed up with."
    if not password:
        errors["password"] = "Enter your password."
    issued = None
    if not errors:
        try:
            with transaction(request.app.state.engine) as session:
                issued = auth.sign_in(
                    session=session,
                    email=email,
                    password=password,
                    now=_now(request),
                    lifetime=request.app.state.session_lifetime,
                )
        except TooManyRequests as exc:
            errors["email"] = str(exc).capitalize() + "."
        else:
            if issued is None:
                errors["password"] = "That e-mail and password do not match an account."
    if issued is None:
        context = {"title": "Sign in", "next": _safe_next(next), "email": email, "errors": errors}
        # 200, not 401: the form is shown again with its errors, and a browser logs every 4xx as a console error.
        return _page(request, "sign_in.html", context)
    token, secret = issued
    previous = signed_in(request)
    if previous is not None:  # signing in again in the same browser: the old session ends, not just its cookie
        with transaction(request.app.state.engine) as session:
            auth.revoke_token(
                session=session, account_id=previous.account_id, token_id=previous.token_id, now=_now(request)
            )
    response = _redirect(_safe_next(next))
    max_age = int((token.expires_at - _now(request)).total_seconds()) if token.expires_at else None
    response.set_cookie(
        COOKIE_NAME,
        secret,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=PREFIX,
    )
    return response


@router.post("/sign-out")
def sign_out(request: Request, csrf: Annotated[str | None, Form(alias=CSRF_FIELD)] = None) -> Response:
    check_csrf(request, csrf)
    principal = signed_in(request)
    if principal is not None:
        with transaction(request.app.state.engine) as session:
            auth.revoke_token(
                session=session, account_id=principal.account_id, token_id=principal.token_id, now=_now(request)
            )
    response = _redirect(f"{PREFIX}/sign-in")
    response.delete_cookie(COOKIE_NAME, path=PREFIX)
    return response


def _safe_next(path: str) -> str:
    """Only a page of this app: never a redirect to another site, nor out of /app."""
    inside = path == PREFIX or path.startswith(f"{PREFIX}/") or path.startswith(f"{PREFIX}?")
    return path if inside and ".." not in path and "//" not in path and "\\" not in path else PREFIX


@router.get("/{rest:path}", response_class=HTMLResponse)
def unknown_page(rest: str) -> HTMLResponse:
    raise PageNotFound

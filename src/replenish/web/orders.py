"""The orders pages: the list (awaiting approval first), one order with why it was made, and its actions (approve,
decline, cancel) through the same transitions as the API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session

from replenish.api.state import api_state
from replenish.auth.service import Principal
from replenish.constants import Capability, OrderFeedback, OrderStatus
from replenish.db import transaction
from replenish.devices.models import Slot
from replenish.errors import Conflict, DomainError
from replenish.orders import service as orders
from replenish.orders.models import Order
from replenish.web.pages import PREFIX, PageNotFound, WebPrincipal, not_found_page, now_of, redirect_to, render_page
from replenish.web.session import CSRF_FIELD, check_csrf

router = APIRouter(prefix=PREFIX, include_in_schema=False)
# The order's actions offered on its page, and the status each leads to.
ACTIONS = {"approve": OrderStatus.PLACED, "decline": OrderStatus.DECLINED, "cancel": OrderStatus.CANCELLED}
FEEDBACK_ERROR = (
    "Nothing was changed: a reason is given only when declining or cancelling, and is too early or not needed."
)
ACTION_PAST = {"approve": "approved", "decline": "declined", "cancel": "cancelled", "acknowledge": "acknowledged"}


@router.get("/orders", response_class=HTMLResponse)
def order_list(request: Request, principal: WebPrincipal) -> HTMLResponse:
    """Orders awaiting approval first, then the history, newest first."""
    with Session(api_state(request).engine) as session:
        found = orders.list_orders(
            session=session, customer_id=principal.scope(None), device_ids=principal.visible_devices, limit=500
        )
        shipments = [
            orders.view_shipment(session=session, shipment=shipment, device_ids=principal.visible_devices)
            for shipment in orders.list_shipments(
                session=session, customer_id=principal.scope(None), device_ids=principal.visible_devices, limit=20
            )
        ]
    waiting = [order for order in found if order.status == OrderStatus.AWAITING_APPROVAL]
    history = [order for order in found if order.status != OrderStatus.AWAITING_APPROVAL]
    context = {
        "title": "Orders",
        "principal": principal,
        "waiting": waiting,
        "history": history,
        "shipments": shipments,
        "live_page": "orders",
    }
    return render_page(request, "orders.html", context)


def _own_order(session: Session, principal: Principal, order_id: str) -> Order:
    """The order if it is the principal's to see; missing and another customer's answer the same 404 page."""
    with not_found_page():
        return orders.get(
            session=session,
            order_id=order_id,
            customer_id=principal.visible_customer,
            device_ids=principal.visible_devices,
        )


@router.get("/orders/{order_id}", response_class=HTMLResponse)
def order_page(request: Request, order_id: str, principal: WebPrincipal, error: str | None = None) -> HTMLResponse:
    """One order and why: the readings, the forecast, the policy and the consent version behind it."""
    with Session(api_state(request).engine) as session:
        order = _own_order(session, principal, order_id)
        explanation = orders.explain(session=session, order=order)
        history = orders.history(session=session, order_id=order.id)
        slot = session.get(Slot, order.slot_id)
        lines = orders.shipment_lines(session=session, shipment_id=order.shipment_id) if order.shipment_id else []
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
        "shipment_lines": len(lines),
        "now": now_of(request),
        "error": FEEDBACK_ERROR
        if error == "feedback"
        else f"It could not be {ACTION_PAST[error]}: it is {order.status.replace('_', ' ')} now."
        if error in ACTION_PAST
        else None,
    }
    return render_page(request, "order.html", context)


@router.post("/orders/{order_id}/{action}")
def order_action(
    request: Request,
    order_id: str,
    action: str,
    principal: WebPrincipal,
    csrf: Annotated[str | None, Form(alias=CSRF_FIELD)] = None,
    back: Annotated[str | None, Form()] = None,
    feedback: Annotated[str | None, Form()] = None,
) -> Response:
    """Approve, decline or cancel: the same transition the API's routes make, by the signed-in customer. A decline
    or cancel may say why (``feedback``: too_early, not_needed)."""
    check_csrf(request, csrf)
    if action not in ACTIONS:
        raise PageNotFound
    if feedback and (feedback not in set(OrderFeedback) or ACTIONS[action] == OrderStatus.PLACED):
        return redirect_to(f"{PREFIX}/orders/{order_id}?error=feedback")
    with transaction(api_state(request).engine) as session:
        found = _own_order(session, principal, order_id)
        found = orders.lock_for_change(session=session, order_id=found.id, to=ACTIONS[action]) or found
        principal.check_order_change(
            order_id=found.id, status=found.status, price=found.total_price, to=ACTIONS[action]
        )
        try:
            orders.transition(
                session=session,
                order_id=order_id,
                to=ACTIONS[action],
                actor=principal.actor,
                now=now_of(request),
                feedback=OrderFeedback(feedback) if feedback else None,
            )
        except DomainError:
            session.rollback()
            return redirect_to(f"{PREFIX}/orders/{order_id}?error={action}")
    return redirect_to(back if back in (f"{PREFIX}/orders", PREFIX) else f"{PREFIX}/orders/{order_id}")


@router.get("/shipments/{shipment_id}", response_class=HTMLResponse)
def shipment_page(
    request: Request, shipment_id: str, principal: WebPrincipal, error: str | None = None
) -> HTMLResponse:
    """One box: its lines, why each is in it, their prices, and a button to take one out."""
    with Session(api_state(request).engine) as session:
        with not_found_page():
            shipment = orders.get_shipment(
                session=session,
                shipment_id=shipment_id,
                customer_id=principal.visible_customer,
                device_ids=principal.visible_devices,
            )
        view = orders.view_shipment(session=session, shipment=shipment, device_ids=principal.visible_devices)
    context = {
        "title": "Shipment",
        "principal": principal,
        "shipment": view,
        "now": now_of(request),
        "error": "That line could not be taken out: it has shipped." if error == "remove" else None,
        "live_page": "orders",
    }
    return render_page(request, "shipment.html", context)


@router.post("/shipments/{shipment_id}/lines/{order_id}/remove")
def remove_line(
    request: Request,
    shipment_id: str,
    order_id: str,
    principal: WebPrincipal,
    csrf: Annotated[str | None, Form(alias=CSRF_FIELD)] = None,
) -> Response:
    """Take one line out: declined or cancelled, as the API's remove does; the other lines go on."""
    check_csrf(request, csrf)
    with transaction(api_state(request).engine) as session, not_found_page():
        orders.get_shipment(
            session=session,
            shipment_id=shipment_id,
            customer_id=principal.visible_customer,
            device_ids=principal.visible_devices,
        )
        principal.require(Capability.ORDER, subject_type="shipment", subject_id=shipment_id)
        try:
            orders.remove_line(
                session=session,
                shipment_id=shipment_id,
                order_id=order_id,
                actor=principal.actor,
                now=now_of(request),
                reason=None,
                device_ids=principal.visible_devices,
            )
        except Conflict:
            session.rollback()
            return redirect_to(f"{PREFIX}/shipments/{shipment_id}?error=remove")
    return redirect_to(f"{PREFIX}/shipments/{shipment_id}")

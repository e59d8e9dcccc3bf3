"""The supplies page (the app's home, /app): every device with its slots, their levels, forecasts and next orders;
ordering a slot now from it, and choosing a slot's product and substitutes from the catalogue."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup
from pydantic import ValidationError
from sqlmodel import Session, col, select

from replenish.api.state import api_state
from replenish.automation import service as automation
from replenish.catalogue import service as catalogue
from replenish.consent import service as consent
from replenish.constants import OPEN_ORDER_STATUSES, Capability, OrderStatus
from replenish.db import transaction
from replenish.devices import service as devices
from replenish.devices.models import Device, Slot
from replenish.devices.schemas import SlotUpdate
from replenish.errors import InvalidRequest
from replenish.insights import service as insights
from replenish.insights.service import SlotInsight
from replenish.orders import service as orders
from replenish.orders.models import Order
from replenish.outcomes import service as outcomes
from replenish.web.charts import HISTORY, ChartOrder, slot_chart, use_chart
from replenish.web.pages import PREFIX, WebPrincipal, not_found_page, now_of, redirect_to, render_page
from replenish.web.session import CSRF_FIELD, check_csrf

router = APIRouter(prefix=PREFIX, include_in_schema=False)
# How many of a slot's ended cycles the page shows against their forecasts.
OUTCOMES_SHOWN = 5


@router.get("", response_class=HTMLResponse)
def overview(request: Request, principal: WebPrincipal) -> HTMLResponse:
    """Every device with its slots: level now, the forecast empty date with its band, the next order, health."""
    now = now_of(request)
    with Session(api_state(request).engine) as session:
        # For live.js to compare its first poll with: a forecast stored while the page was drawn, before that poll,
        # would otherwise never be drawn. Read first: one stored after it is drawn again, which is harmless.
        customer_id = principal.scope(None)
        forecasts_at = devices.latest_forecast_at(session=session, customer_id=customer_id) if customer_id else None
        found = devices.list_devices(
            session=session, customer_id=principal.scope(None), device_ids=principal.visible_devices, limit=200
        )
        described = devices.describe_many(session=session, devices=found)
        placed = orders.list_orders(
            session=session, customer_id=principal.scope(None), device_ids=principal.visible_devices, limit=500
        )
        by_slot: dict[str, list[Order]] = {}
        for order in placed:
            by_slot.setdefault(order.slot_id, []).append(order)
        catalogue_products = catalogue.current(session=session)
        slot_ids = [slot.id for device in described for slot in device.slots]
        history = devices.level_history(session=session, slot_ids=slot_ids, since=now - HISTORY)
        ended = outcomes.list_for_slots(session=session, slot_ids=slot_ids, per_slot=OUTCOMES_SHOWN)
        # A customer's own page: an operator's lists every customer's devices, too many to read weeks of each.
        insights = (
            _insights(session=session, device_ids=[device.id for device in described], now=now)
            if principal.customer_id
            else {}
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
                        "outcomes": ended.get(slot.id, []),
                        "insight": insights.get(slot.id),
                        "use_chart": _use_chart(insights.get(slot.id), device_name=device.name, slot_name=slot.name),
                        "products": devices.slot_products(
                            session=session, device=device, slot=slot, products=catalogue_products
                        ),
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
    context = {
        "title": "Supplies",
        "principal": principal,
        "cards": cards,
        "now": now,
        "live_page": "overview",
        "forecasts_at": forecasts_at,
    }
    return render_page(request, "overview.html", context)


def _insights(*, session: Session, device_ids: list[str], now: datetime) -> dict[str, SlotInsight]:
    """Each slot's insights (use per week, a marked change, cost a month, hints), as its customer's consent asks."""
    rows = list(
        session.exec(
            select(Slot, Device)
            .join(Device, col(Device.id) == col(Slot.device_id))
            .where(col(Device.id).in_(device_ids))
        ).all()
    )
    documents = {
        customer_id: consent.current_document(session=session, customer_id=customer_id)[1]
        for customer_id in {device.customer_id for _, device in rows}
    }
    return insights.slot_insights(session=session, slots=rows, documents=documents, now=now)


def _use_chart(insight: SlotInsight | None, *, device_name: str, slot_name: str) -> Markup | None:
    if insight is None or not any(week.covered for week in insight.usage.weeks):
        return None
    unit = "of a fill" if insight.unit in ("fraction", "") else insight.unit
    scale = 100.0 if unit == "of a fill" else insight.capacity
    return use_chart(
        title=f"{device_name} {slot_name}: use per week",
        weeks=[(week.start, week.used * scale, week.covered >= WHOLE_WEEK) for week in insight.usage.weeks],
        unit_label="% of a fill" if unit == "of a fill" else unit,
        # Beside the scale's top, where there is room for a short unit only ("%", "l"; not "capsules").
        axis_unit="%" if unit == "of a fill" else (f" {unit}" if len(unit) <= 3 else ""),
    )


# A week counts as covered when readings span this much of it.
WHOLE_WEEK = 0.95


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
    with transaction(api_state(request).engine) as session:
        with not_found_page():
            device = devices.get(
                session=session,
                device_id=device_id,
                customer_id=principal.visible_customer,
                device_ids=principal.visible_devices,
            )
            slot = devices.get_slot(session=session, device_id=device_id, slot_name=slot_name)
        principal.require(Capability.ORDER, subject_type="device", subject_id=device.id)
        outcome = automation.order_now(
            session=session, slot=slot, device=device, now=now_of(request), actor=principal.actor
        )
        assert outcome is not None
        if outcome.created and outcome.order.status == OrderStatus.PLACED:
            principal.check_spend(outcome.order.total_price, subject_type="slot", subject_id=slot.id)
        order_id = outcome.order.id
    return redirect_to(f"{PREFIX}/orders/{order_id}")


@router.post("/devices/{device_id}/slots/{slot_name}/product")
def choose_product(
    request: Request,
    device_id: str,
    slot_name: str,
    principal: WebPrincipal,
    product_sku: Annotated[str, Form()] = "",
    substitute_skus: Annotated[list[str] | None, Form()] = None,
    order_up_to_days: Annotated[str, Form()] = "",
    csrf: Annotated[str | None, Form(alias=CSRF_FIELD)] = None,
) -> Response:
    """The slot's product, substitutes and order size (days of use; empty: its fixed quantity), as the supplies
    page's form chose them; a choice that does not fit is a page that says why, and changes nothing."""
    check_csrf(request, csrf)
    checked = substitute_skus or []
    try:
        with transaction(api_state(request).engine) as session:
            with not_found_page():
                device = devices.get(
                    session=session,
                    device_id=device_id,
                    customer_id=principal.visible_customer,
                    device_ids=principal.visible_devices,
                )
                slot = devices.get_slot(session=session, device_id=device_id, slot_name=slot_name)
            principal.require(Capability.MANAGE_DEVICES, subject_type="device", subject_id=device.id)
            chosen = product_sku or slot.product_sku
            # Those already allowed keep their place in the order of preference; new ones follow.
            wanted = [sku for sku in slot.substitute_skus if sku in checked and sku != chosen]
            wanted += [sku for sku in checked if sku not in wanted and sku != chosen]
            devices.update_slot(
                session=session,
                device=device,
                slot=slot,
                # The product only when it changes: the device maker's SKU stays, listed or not.
                request=SlotUpdate.model_validate(
                    {
                        "substitute_skus": wanted,
                        "order_up_to_days": order_up_to_days.strip() or None,
                        **({"product_sku": chosen} if chosen != slot.product_sku else {}),
                    }
                ),
                now=now_of(request),
            )
    except (InvalidRequest, ValidationError) as exc:
        reason = exc.message if isinstance(exc, InvalidRequest) else _first_error(exc)
        context = {"title": "Not saved", "message": f"The product for {slot_name} was not changed: {reason}."}
        return render_page(request, "message.html", context, status_code=422)
    return redirect_to(f"{PREFIX}#device-{device_id}")


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = " ".join(str(part) for part in error["loc"]).replace("_", " ")
    return f"{field}: {error['msg'].lower()}" if field else str(error["msg"])

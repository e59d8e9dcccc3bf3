"""What every page polls for live updates (static/live.js): the ids of the orders awaiting approval and of the open
alerts, whose counts show in the navigation and whose changes redraw the supplies, orders and alerts pages; and when
the forecasts last changed, which redraws the supplies page."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlmodel import Session

from replenish.alerts import service as alerts
from replenish.api.state import api_state
from replenish.constants import AlertStatus, OrderStatus
from replenish.devices import service as devices
from replenish.orders import service as orders
from replenish.web.pages import PREFIX, WebPrincipal

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/live")
def live(request: Request, principal: WebPrincipal) -> dict[str, Any]:
    """What the pages follow without a reload: the orders awaiting approval and the open alerts, by id, and the
    moment of the newest forecast."""
    with Session(api_state(request).engine) as session:
        waiting = orders.list_orders(
            session=session,
            customer_id=principal.scope(None),
            device_ids=principal.visible_devices,
            status=OrderStatus.AWAITING_APPROVAL,
            limit=500,
        )
        open_ = alerts.list_alerts(
            session=session,
            customer_id=principal.scope(None),
            device_ids=principal.visible_devices,
            status=AlertStatus.OPEN,
            limit=500,
        )
        # A customer's: an operator's page of every customer's slots would ask for a scan of every forecast.
        customer_id = principal.scope(None)
        forecasts_at = devices.latest_forecast_at(session=session, customer_id=customer_id) if customer_id else None
    return {
        "waiting_orders": [order.id for order in waiting],
        "open_alerts": [alert.id for alert in open_],
        "forecasts_at": forecasts_at.isoformat() if forecasts_at else None,
    }

from __future__ import annotations

from fastapi import APIRouter
from sqlmodel import Session

from replenish.api.deps import ClockDep, CurrentOperator, CurrentPrincipal, EngineDep, Limit, Offset, ReadSession
from replenish.auth.service import Principal
from replenish.constants import OrderStatus
from replenish.db import transaction
from replenish.orders import service
from replenish.orders.models import Order
from replenish.orders.schemas import ActionRequest, FulfilmentUpdate, OrderDetail, OrderEventRead, OrderRead

router = APIRouter(prefix="/orders", tags=["orders"])


def _detail(session: Session, order: Order) -> OrderDetail:
    return OrderDetail(
        **OrderRead.model_validate(order).model_dump(),
        explanation=service.explain(session=session, order=order),
        history=[OrderEventRead.model_validate(e) for e in service.history(session=session, order_id=order.id)],
    )


@router.get("", response_model=list[OrderRead], summary="List orders, newest first")
def list_orders(
    session: ReadSession,
    principal: CurrentPrincipal,
    customer_id: str | None = None,
    device_id: str | None = None,
    status: OrderStatus | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[OrderRead]:
    found = service.list_orders(
        session=session,
        customer_id=principal.scope(customer_id),
        device_id=device_id,
        status=status,
        limit=limit,
        offset=offset,
    )
    return [OrderRead.model_validate(order) for order in found]


@router.get("/{order_id}", response_model=OrderDetail, summary="An order, the decision behind it, and its history")
def get_order(order_id: str, session: ReadSession, principal: CurrentPrincipal) -> OrderDetail:
    order = service.get(session=session, order_id=order_id)
    principal.check_access(order.customer_id, entity="order", key=order_id)
    return _detail(session, order)


def _transition(
    engine: EngineDep, clock: ClockDep, principal: Principal, order_id: str, to: OrderStatus, reason: str | None
) -> OrderDetail:
    with transaction(engine) as session:
        principal.check_access(
            service.get(session=session, order_id=order_id).customer_id, entity="order", key=order_id
        )
        order = service.transition(
            session=session, order_id=order_id, to=to, actor=principal.actor, now=clock.now(), reason=reason
        )
        return _detail(session, order)


@router.post(
    "/{order_id}/approve",
    response_model=OrderDetail,
    summary="Approve an order awaiting approval, or release a held one",
)
def approve(
    order_id: str, principal: CurrentPrincipal, engine: EngineDep, clock: ClockDep, body: ActionRequest | None = None
) -> OrderDetail:
    """The order is placed and handed to fulfilment (a held one: fulfilment is told it may go on). Approving twice
    is harmless; a declined order answers 409."""
    return _transition(engine, clock, principal, order_id, OrderStatus.PLACED, body.reason if body else None)


@router.post("/{order_id}/decline", response_model=OrderDetail, summary="Decline an order awaiting approval")
def decline(
    order_id: str, principal: CurrentPrincipal, engine: EngineDep, clock: ClockDep, body: ActionRequest | None = None
) -> OrderDetail:
    return _transition(engine, clock, principal, order_id, OrderStatus.DECLINED, body.reason if body else None)


@router.post("/{order_id}/cancel", response_model=OrderDetail, summary="Cancel an order not yet shipped")
def cancel(
    order_id: str, principal: CurrentPrincipal, engine: EngineDep, clock: ClockDep, body: ActionRequest | None = None
) -> OrderDetail:
    return _transition(engine, clock, principal, order_id, OrderStatus.CANCELLED, body.reason if body else None)


@router.post(
    "/{order_id}/fulfilment", response_model=OrderDetail, summary="Fulfilment progress: confirmed, shipped, delivered"
)
def fulfilment(
    order_id: str, body: FulfilmentUpdate, operator: CurrentOperator, engine: EngineDep, clock: ClockDep
) -> OrderDetail:
    """Operators only (the fulfilment partner signs in with an operator's API token)."""
    return _transition(engine, clock, operator, order_id, OrderStatus(body.status), body.reason)

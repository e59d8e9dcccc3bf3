from __future__ import annotations

from fastapi import APIRouter
from sqlmodel import Session

from replenish.api.deps import ClockDep, EngineDep, Limit, Offset, ReadSession
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
    customer_id: str | None = None,
    device_id: str | None = None,
    status: OrderStatus | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[OrderRead]:
    found = service.list_orders(
        session=session, customer_id=customer_id, device_id=device_id, status=status, limit=limit, offset=offset
    )
    return [OrderRead.model_validate(order) for order in found]


@router.get("/{order_id}", response_model=OrderDetail, summary="An order, the decision behind it, and its history")
def get_order(order_id: str, session: ReadSession) -> OrderDetail:
    return _detail(session, service.get(session=session, order_id=order_id))


def _transition(
    engine: EngineDep, clock: ClockDep, order_id: str, to: OrderStatus, actor: str, reason: str | None
) -> OrderDetail:
    with transaction(engine) as session:
        order = service.transition(
            session=session, order_id=order_id, to=to, actor=actor, now=clock.now(), reason=reason
        )
        return _detail(session, order)


@router.post("/{order_id}/approve", response_model=OrderDetail, summary="Approve an order awaiting approval")
def approve(order_id: str, engine: EngineDep, clock: ClockDep, body: ActionRequest | None = None) -> OrderDetail:
    """The order is placed and handed to fulfilment. Approving twice is harmless; a declined order answers 409."""
    return _transition(engine, clock, order_id, OrderStatus.PLACED, "customer", body.reason if body else None)


@router.post("/{order_id}/decline", response_model=OrderDetail, summary="Decline an order awaiting approval")
def decline(order_id: str, engine: EngineDep, clock: ClockDep, body: ActionRequest | None = None) -> OrderDetail:
    return _transition(engine, clock, order_id, OrderStatus.DECLINED, "customer", body.reason if body else None)


@router.post("/{order_id}/cancel", response_model=OrderDetail, summary="Cancel an order not yet shipped")
def cancel(order_id: str, engine: EngineDep, clock: ClockDep, body: ActionRequest | None = None) -> OrderDetail:
    return _transition(engine, clock, order_id, OrderStatus.CANCELLED, "customer", body.reason if body else None)


@router.post(
    "/{order_id}/fulfilment", response_model=OrderDetail, summary="Fulfilment progress: confirmed, shipped, delivered"
)
def fulfilment(order_id: str, body: FulfilmentUpdate, engine: EngineDep, clock: ClockDep) -> OrderDetail:
    return _transition(engine, clock, order_id, OrderStatus(body.status), "fulfilment", body.reason)

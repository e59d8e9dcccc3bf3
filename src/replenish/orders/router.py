from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response, status
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from replenish.answers import service as answers
from replenish.api.deps import ClockDep, CurrentOperator, CurrentPrincipal, EngineDep, Limit, Offset, ReadSession
from replenish.api.state import api_state
from replenish.audit import service as audit
from replenish.auth.service import Principal
from replenish.automation import service as automation
from replenish.clock import Clock
from replenish.constants import AuditAction, Capability, OrderStatus
from replenish.db import transaction
from replenish.devices import service as devices
from replenish.errors import InvalidRequest, SignatureRejected
from replenish.orders import service, signatures
from replenish.orders.models import Order
from replenish.orders.schemas import (
    ActionRequest,
    FulfilmentUpdate,
    OrderDetail,
    OrderEventRead,
    OrderNowRequest,
    OrderRead,
    PartnerEvent,
    RemoveLine,
    ShipmentRead,
)
from replenish.orders.signatures import SIGNATURE_HEADER, TIMESTAMP_HEADER

log = logging.getLogger(__name__)

router = APIRouter(prefix="/orders", tags=["orders"])
# Fulfilment partners' signed webhooks: no bearer token, a signature instead.
fulfilment_router = APIRouter(prefix="/fulfilment", tags=["orders"])
# Ordering a slot now lives with the slot it orders for.
slot_orders_router = APIRouter(prefix="/devices", tags=["orders"])
shipments_router = APIRouter(prefix="/shipments", tags=["orders"])


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
        device_ids=principal.visible_devices,
        device_id=device_id,
        status=status,
        limit=limit,
        offset=offset,
    )
    return [OrderRead.model_validate(order) for order in found]


@router.get("/{order_id}", response_model=OrderDetail, summary="An order, the decision behind it, and its history")
def get_order(order_id: str, session: ReadSession, principal: CurrentPrincipal) -> OrderDetail:
    return _detail(
        session,
        service.get(
            session=session,
            order_id=order_id,
            customer_id=principal.visible_customer,
            device_ids=principal.visible_devices,
        ),
    )


def _transition(
    engine: EngineDep,
    clock: ClockDep,
    principal: Principal,
    order_id: str,
    to: OrderStatus,
    body: ActionRequest | None,
) -> OrderDetail:
    with transaction(engine) as session:
        found = service.get(
            session=session,
            order_id=order_id,
            customer_id=principal.visible_customer,
            device_ids=principal.visible_devices,
        )
        found = service.lock_for_change(session=session, order_id=found.id, to=to) or found
        principal.check_order_change(order_id=found.id, status=found.status, price=found.total_price, to=to)
        order = service.transition(
            session=session,
            order_id=order_id,
            to=to,
            actor=principal.actor,
            now=clock.now(),
            reason=body.reason if body else None,
            feedback=body.feedback if body else None,
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
    is harmless; a declined order answers 409. A household member approves only an order whose price is within
    their limit (403 naming the role otherwise); a carer does not approve."""
    return _transition(engine, clock, principal, order_id, OrderStatus.PLACED, body)


@router.post("/{order_id}/decline", response_model=OrderDetail, summary="Decline an order awaiting approval")
def decline(
    order_id: str, principal: CurrentPrincipal, engine: EngineDep, clock: ClockDep, body: ActionRequest | None = None
) -> OrderDetail:
    return _transition(engine, clock, principal, order_id, OrderStatus.DECLINED, body)


@router.post("/{order_id}/cancel", response_model=OrderDetail, summary="Cancel an order not yet shipped")
def cancel(
    order_id: str, principal: CurrentPrincipal, engine: EngineDep, clock: ClockDep, body: ActionRequest | None = None
) -> OrderDetail:
    return _transition(engine, clock, principal, order_id, OrderStatus.CANCELLED, body)


@router.post(
    "/{order_id}/fulfilment", response_model=OrderDetail, summary="Fulfilment progress: confirmed, shipped, delivered"
)
def fulfilment(
    order_id: str, body: FulfilmentUpdate, operator: CurrentOperator, engine: EngineDep, clock: ClockDep
) -> OrderDetail:
    """Operators only (a fulfilment partner signs in with an operator's API token, or uses its signed webhook,
    `POST /fulfilment/{partner}/events`). The customer is told when it ships (with `arriving_at`, default the
    slot's lead time from now) and when it is delivered."""
    with transaction(engine) as session:
        order = answers.report_progress(
            session=session,
            order_id=order_id,
            status=OrderStatus(body.status),
            actor=operator.actor,
            now=clock.now(),
            reason=body.reason,
            arriving_at=body.arriving_at,
        )
        return _detail(session, order)


@fulfilment_router.post(
    "/{partner}/events",
    response_model=OrderRead,
    summary="A fulfilment partner reports an order's progress (signed webhook)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PartnerEvent.model_json_schema()}},
        }
    },
    responses={401: {"description": "Unknown partner, missing or wrong signature, or a timestamp out of range."}},
)
async def partner_event(
    partner: str,
    request: Request,
    engine: EngineDep,
    clock: ClockDep,
    timestamp: Annotated[str | None, Header(alias=TIMESTAMP_HEADER)] = None,
    signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
) -> OrderRead:
    """No bearer token: the partner signs each request. `X-Replenish-Timestamp` is the Unix time in seconds;
    `X-Replenish-Signature` is `sha256=` and the hex HMAC-SHA256, keyed with the partner's secret
    (REPLENISH_FULFILMENT_PARTNER_SECRETS), of the timestamp, a dot and the raw body. A request older (or newer)
    than REPLENISH_FULFILMENT_SIGNATURE_TOLERANCE_SECONDS is refused: a captured one cannot be replayed later.
    A refusal answers 401 with the reason, changes nothing, is logged and audited. An unknown order answers 404,
    a move its status does not allow 409; repeating the status an order is in answers 200 and changes nothing."""
    body = await request.body()
    return await run_in_threadpool(_partner_event, request, engine, clock, partner, timestamp, signature, body)


def _partner_event(
    request: Request,
    engine: Engine,
    clock: Clock,
    partner: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
) -> OrderRead:
    now = clock.now()
    try:
        signatures.verify(
            secrets=api_state(request).fulfilment_secrets,
            partner=partner,
            timestamp=timestamp,
            signature=signature,
            body=body,
            now=now,
            tolerance_seconds=api_state(request).fulfilment_tolerance_seconds,
        )
    except signatures.SignatureRefused as refused:
        log.warning("fulfilment webhook of %r refused: %s", partner, refused)
        with transaction(engine) as session:
            audit.record(
                session=session,
                at=now,
                actor=f"fulfilment partner {partner[:64]!r}",
                action=AuditAction.FULFILMENT_REFUSED,
                subject_type="fulfilment_webhook",
                subject_id=partner[:64],
                detail={"reason": str(refused)},
            )
        raise SignatureRejected(str(refused)) from None
    try:
        event = PartnerEvent.model_validate_json(body)
    except ValidationError as invalid:
        first = invalid.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequest(f"{field or 'body'}: {first['msg']}", field=field) from None
    with transaction(engine) as session:
        order = answers.report_progress(
            session=session,
            order_id=event.order_id,
            status=OrderStatus(event.status),
            actor=f"fulfilment partner {partner}",
            now=now,
            reason=event.reason,
            arriving_at=event.arriving_at,
        )
        return OrderRead.model_validate(order)


@slot_orders_router.post(
    "/{device_id}/slots/{slot_name}/order",
    response_model=OrderDetail,
    status_code=status.HTTP_201_CREATED,
    summary="Order a slot's consumable now",
    responses={200: {"description": "The slot already has an open order: that order, and nothing new."}},
)
def order_now(
    device_id: str,
    slot_name: str,
    principal: CurrentPrincipal,
    engine: EngineDep,
    clock: ClockDep,
    response: Response,
    body: OrderNowRequest | None = None,
) -> OrderDetail:
    """The customer orders now, whatever the forecast says (201). Within the consent's spending cap and quantity
    limit it is placed, announced with the consent's cancel window, and handed to fulfilment after it; over a limit
    it becomes an approval request, as an automatic order would. While the slot has an open order (awaiting
    approval, placed, confirmed, shipped or held) the answer is that order (200) and nothing new is made: pressing
    twice orders once. Automation then counts the slot's current cycle as decided."""
    with transaction(engine) as session:
        device = devices.get(
            session=session,
            device_id=device_id,
            customer_id=principal.visible_customer,
            device_ids=principal.visible_devices,
        )
        principal.require(Capability.ORDER, subject_type="device", subject_id=device.id)
        slot = devices.get_slot(session=session, device_id=device_id, slot_name=slot_name)
        outcome = automation.order_now(
            session=session,
            slot=slot,
            device=device,
            now=clock.now(),
            actor=principal.actor,
            quantity=body.quantity if body else None,
        )
        assert outcome is not None  # only a device's button can be refused by consent
        if outcome.created and outcome.order.status == OrderStatus.PLACED:
            # A member places orders up to their limit: above it, nothing was made (the transaction rolls back).
            principal.check_spend(outcome.order.total_price, subject_type="slot", subject_id=slot.id)
        if not outcome.created:
            response.status_code = status.HTTP_200_OK
        return _detail(session, outcome.order)


@shipments_router.get("", response_model=list[ShipmentRead], summary="List shipments with their lines, newest first")
def list_shipments(
    session: ReadSession,
    principal: CurrentPrincipal,
    customer_id: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[ShipmentRead]:
    """A shipment is one box: the order lines that go to fulfilment together, each with why it is in it."""
    found = service.list_shipments(
        session=session,
        customer_id=principal.scope(customer_id),
        device_ids=principal.visible_devices,
        limit=limit,
        offset=offset,
    )
    return [
        service.view_shipment(session=session, shipment=shipment, device_ids=principal.visible_devices)
        for shipment in found
    ]


@shipments_router.get("/{shipment_id}", response_model=ShipmentRead, summary="A shipment and its lines")
def get_shipment(shipment_id: str, session: ReadSession, principal: CurrentPrincipal) -> ShipmentRead:
    shipment = service.get_shipment(
        session=session,
        shipment_id=shipment_id,
        customer_id=principal.visible_customer,
        device_ids=principal.visible_devices,
    )
    return service.view_shipment(session=session, shipment=shipment, device_ids=principal.visible_devices)


@shipments_router.post(
    "/{shipment_id}/lines/{order_id}/remove",
    response_model=ShipmentRead,
    summary="Take one line out of a shipment",
)
def remove_line(
    shipment_id: str,
    order_id: str,
    principal: CurrentPrincipal,
    engine: EngineDep,
    clock: ClockDep,
    body: RemoveLine | None = None,
) -> ShipmentRead:
    """The line is declined (awaiting approval) or cancelled (placed: withdrawn before it reaches fulfilment, or
    fulfilment is told); the other lines go on. Removing it twice is harmless; a line already shipped answers 409."""
    with transaction(engine) as session:
        shipment = service.get_shipment(
            session=session,
            shipment_id=shipment_id,
            customer_id=principal.visible_customer,
            device_ids=principal.visible_devices,
        )
        principal.require(Capability.ORDER, subject_type="shipment", subject_id=shipment.id)
        service.remove_line(
            session=session,
            shipment_id=shipment.id,
            order_id=order_id,
            actor=principal.actor,
            now=clock.now(),
            reason=body.reason if body else None,
            device_ids=principal.visible_devices,
        )
        return service.view_shipment(session=session, shipment=shipment, device_ids=principal.visible_devices)

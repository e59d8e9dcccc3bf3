from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from replenish.api.deps import ClockDep, CurrentPrincipal, EngineDep, Limit, Offset, ReadSession, Timestamp, requires
from replenish.auth.service import Principal
from replenish.constants import Capability
from replenish.customers.models import Customer
from replenish.db import transaction
from replenish.devices import service
from replenish.devices.schemas import (
    DeviceCreate,
    DeviceCredentials,
    DeviceRead,
    DeviceRegistered,
    EventRead,
    ReadingRead,
    SlotProducts,
    SlotUpdate,
)
from replenish.errors import Forbidden, InvalidRequest

router = APIRouter(prefix="/devices", tags=["devices"])
# Registering a device or changing one is the household's owner's (a member or carer: 403).
DeviceManager = Annotated[Principal, requires(Capability.MANAGE_DEVICES)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DeviceRegistered, summary="Register a device")
def register_device(
    body: DeviceCreate, principal: DeviceManager, engine: EngineDep, clock: ClockDep
) -> DeviceRegistered:
    """Registers a device and its slots for the caller (an operator names the customer). Telemetry for
    unregistered devices or slots becomes dead letters. Device ids are global, as they are the devices' MQTT
    topics: an id already registered answers 409. The answer carries the device's MQTT credentials (username: the
    device id), shown this once: the broker lets the device publish only under devices/{its id}/ and subscribe only
    to its own commands."""
    if not principal.is_operator and any(slot.unit_price is not None for slot in body.slots):
        raise Forbidden("prices come from the catalogue: only an operator sets a slot's unit_price")
    customer_id = body.customer_id or principal.customer_id
    if customer_id is None:
        raise InvalidRequest("an operator must say whose device it is", field="customer_id")
    with transaction(engine) as session:
        if session.get(Customer, customer_id) is None or not principal.may_access(customer_id):
            raise InvalidRequest(f"customer {customer_id!r} does not exist", field="customer_id")
        device, secret = service.register(
            session=session,
            request=body.model_copy(update={"customer_id": customer_id}),
            actor=principal.actor,
            now=clock.now(),
        )
        return DeviceRegistered(
            **service.describe(session=session, device=device).model_dump(),
            credentials=DeviceCredentials(mqtt_username=device.id, mqtt_password=secret),
        )


@router.post(
    "/{device_id}/credentials",
    response_model=DeviceCredentials,
    summary="Issue the device a new MQTT secret (the old one stops working)",
)
def rotate_credentials(
    device_id: str, principal: CurrentPrincipal, engine: EngineDep, clock: ClockDep
) -> DeviceCredentials:
    """For a lost or leaked secret: the new one is shown this once; the device must be given it. The broker refuses
    the old one from now on and ends a connection made with it within seconds (embedded broker: every
    REPLENISH_BROKER_CREDENTIALS_CHECK_SECONDS; Mosquitto: at its next reload, docs/mqtt.md)."""
    with transaction(engine) as session:
        device = service.get(
            session=session,
            device_id=device_id,
            customer_id=principal.visible_customer,
            device_ids=principal.visible_devices,
        )
        principal.require(Capability.MANAGE_DEVICES, subject_type="device", subject_id=device.id)
        secret = service.rotate_credentials(session=session, device=device, actor=principal.actor, now=clock.now())
        return DeviceCredentials(mqtt_username=device.id, mqtt_password=secret)


@router.patch("/{device_id}/slots/{slot_name}", response_model=DeviceRead, summary="Change a slot's settings")
def update_slot(
    device_id: str, slot_name: str, body: SlotUpdate, principal: CurrentPrincipal, engine: EngineDep, clock: ClockDep
) -> DeviceRead:
    """Changes what a slot orders (product_sku), how long a delivery takes (lead_time_days) and how sure the
    platform must be that a delivery arrives in time (service_level). The next evaluation uses them."""
    if not principal.is_operator and "unit_price" in body.model_fields_set:
        raise Forbidden("prices come from the catalogue: only an operator sets a slot's unit_price")
    with transaction(engine) as session:
        device = service.get(
            session=session,
            device_id=device_id,
            customer_id=principal.visible_customer,
            device_ids=principal.visible_devices,
        )
        principal.require(Capability.MANAGE_DEVICES, subject_type="device", subject_id=device.id)
        slot = service.get_slot(session=session, device_id=device_id, slot_name=slot_name)
        service.update_slot(session=session, device=device, slot=slot, request=body, now=clock.now())
        return service.describe(session=session, device=device)


@router.get(
    "/{device_id}/slots/{slot_name}/products",
    response_model=SlotProducts,
    summary="The products that fit a slot, and which it orders",
)
def slot_products(device_id: str, slot_name: str, session: ReadSession, principal: CurrentPrincipal) -> SlotProducts:
    """The catalogue's products for the slot (its device kind, its name, its unit), the one it orders and the
    allowed substitutes. Choose with `PATCH /devices/{id}/slots/{name}` (`product_sku`, `substitute_skus`)."""
    device = service.get(
        session=session,
        device_id=device_id,
        customer_id=principal.visible_customer,
        device_ids=principal.visible_devices,
    )
    slot = service.get_slot(session=session, device_id=device_id, slot_name=slot_name)
    return service.slot_products(session=session, device=device, slot=slot)


@router.get("", response_model=list[DeviceRead], summary="List devices")
def list_devices(
    session: ReadSession,
    principal: CurrentPrincipal,
    customer_id: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[DeviceRead]:
    """The caller's devices (a member: every device but the wearables, and those shared with them; a carer: only
    those shared with them); an operator sees every customer's, or one customer's with `customer_id`."""
    devices = service.list_devices(
        session=session,
        customer_id=principal.scope(customer_id),
        device_ids=principal.visible_devices,
        limit=limit,
        offset=offset,
    )
    return service.describe_many(session=session, devices=devices)


@router.get("/{device_id}", response_model=DeviceRead, summary="A device with its latest levels and forecasts")
def get_device(device_id: str, session: ReadSession, principal: CurrentPrincipal) -> DeviceRead:
    return service.describe(
        session=session,
        device=service.get(
            session=session,
            device_id=device_id,
            customer_id=principal.visible_customer,
            device_ids=principal.visible_devices,
        ),
    )


@router.get(
    "/{device_id}/slots/{slot_name}/readings",
    response_model=list[ReadingRead],
    summary="A slot's readings, newest first",
)
def slot_readings(
    device_id: str,
    slot_name: str,
    session: ReadSession,
    principal: CurrentPrincipal,
    since: Timestamp | None = Query(None, description="Only readings at or after this time (ISO 8601 with offset)."),
    before: Timestamp | None = Query(
        None,
        description="Only readings before this time (ISO 8601 with offset): pass the oldest ts of a page to get the "
        "next page.",
    ),
    limit: Limit = 1000,
) -> list[ReadingRead]:
    service.get(
        session=session,
        device_id=device_id,
        customer_id=principal.visible_customer,
        device_ids=principal.visible_devices,
    )
    slot = service.get_slot(session=session, device_id=device_id, slot_name=slot_name)
    return service.readings(session=session, slot=slot, since=since, before=before, limit=limit)


@router.get("/{device_id}/events", response_model=list[EventRead], summary="A device's events, newest first")
def device_events(
    device_id: str,
    session: ReadSession,
    principal: CurrentPrincipal,
    type: str | None = Query(None, description="Only events of this type, e.g. fall_detected."),
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[EventRead]:
    """Every event the device sent, including types the platform does not act on."""
    service.get(
        session=session,
        device_id=device_id,
        customer_id=principal.visible_customer,
        device_ids=principal.visible_devices,
    )
    return service.events(session=session, device_id=device_id, event_type=type, limit=limit, offset=offset)

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query, status

from replenish.api.deps import ClockDep, EngineDep, Limit, Offset, ReadSession
from replenish.customers.models import Customer
from replenish.db import transaction
from replenish.devices import service
from replenish.devices.schemas import DeviceCreate, DeviceRead, EventRead, ReadingRead, SlotUpdate
from replenish.errors import InvalidRequest

router = APIRouter(prefix="/devices", tags=["devices"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DeviceRead, summary="Register a device")
def register_device(body: DeviceCreate, engine: EngineDep, clock: ClockDep) -> DeviceRead:
    """Registers a device and its slots. Telemetry for unregistered devices or slots becomes dead letters."""
    with transaction(engine) as session:
        if session.get(Customer, body.customer_id) is None:
            raise InvalidRequest(f"customer {body.customer_id!r} does not exist", field="customer_id")
        device = service.register(session=session, request=body, now=clock.now())
        return service.describe(session=session, device=device)


@router.patch("/{device_id}/slots/{slot_name}", response_model=DeviceRead, summary="Change a slot's settings")
def update_slot(device_id: str, slot_name: str, body: SlotUpdate, engine: EngineDep) -> DeviceRead:
    """Changes what a slot orders (product_sku), how long a delivery takes (lead_time_days) and how sure the
    platform must be that a delivery arrives in time (service_level). The next evaluation uses them."""
    with transaction(engine) as session:
        slot = service.get_slot(session=session, device_id=device_id, slot_name=slot_name)
        service.update_slot(session=session, slot=slot, request=body)
        return service.describe(session=session, device=service.get(session=session, device_id=device_id))


@router.get("", response_model=list[DeviceRead], summary="List devices")
def list_devices(
    session: ReadSession, customer_id: str | None = None, limit: Limit = 100, offset: Offset = 0
) -> list[DeviceRead]:
    devices = service.list_devices(session=session, customer_id=customer_id, limit=limit, offset=offset)
    return service.describe_many(session=session, devices=devices)


@router.get("/{device_id}", response_model=DeviceRead, summary="A device with its latest levels and forecasts")
def get_device(device_id: str, session: ReadSession) -> DeviceRead:
    return service.describe(session=session, device=service.get(session=session, device_id=device_id))


@router.get(
    "/{device_id}/slots/{slot_name}/readings",
    response_model=list[ReadingRead],
    summary="A slot's readings, newest first",
)
def slot_readings(
    device_id: str,
    slot_name: str,
    session: ReadSession,
    since: datetime | None = Query(None, description="Only readings at or after this time (ISO 8601 with offset)."),
    before: datetime | None = Query(
        None, description="Only readings before this time: pass the oldest ts of a page to get the next page."
    ),
    limit: Limit = 1000,
) -> list[ReadingRead]:
    for name, value in (("since", since), ("before", before)):
        if value is not None and value.tzinfo is None:
            raise InvalidRequest(f"{name} must carry a UTC offset, e.g. 2026-11-24T10:00:00Z", field=name)
    slot = service.get_slot(session=session, device_id=device_id, slot_name=slot_name)
    return service.readings(session=session, slot=slot, since=since, before=before, limit=limit)


@router.get("/{device_id}/events", response_model=list[EventRead], summary="A device's events, newest first")
def device_events(
    device_id: str,
    session: ReadSession,
    type: str | None = Query(None, description="Only events of this type, e.g. fall_detected."),
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[EventRead]:
    """Every event the device sent, including types the platform does not act on."""
    service.get(session=session, device_id=device_id)
    return service.events(session=session, device_id=device_id, event_type=type, limit=limit, offset=offset)

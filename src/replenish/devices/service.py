from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, delete, func, literal, or_, update
from sqlmodel import Session, col, select

from replenish.audit import service as audit
from replenish.catalogue import service as catalogue
from replenish.catalogue.models import Product, ProductVersion
from replenish.columns import UTCDateTime, table_of
from replenish.config import SERVICE_CLIENT_ID_PREFIX
from replenish.constants import AuditAction, Channel
from replenish.db import get_or_raise
from replenish.devices import credentials
from replenish.devices.models import Device, Slot, SlotForecast, SlotWindow
from replenish.devices.schemas import (
    DeviceCreate,
    DeviceRead,
    EventRead,
    ReadingRead,
    SlotProducts,
    SlotRead,
    SlotUpdate,
)
from replenish.errors import Conflict, InvalidRequest, NotFound
from replenish.ingest.models import DeviceMessage, Reading


def register(*, session: Session, request: DeviceCreate, actor: str, now: datetime) -> tuple[Device, str]:
    """The new device and its MQTT secret (returned this once; only its hash is stored)."""
    if request.id.startswith(SERVICE_CLIENT_ID_PREFIX):
        raise InvalidRequest(
            f"device ids starting with {SERVICE_CLIENT_ID_PREFIX!r} are the platform's own MQTT names: pick another",
            field="id",
        )
    if request.customer_id is None:  # the router fills in the caller's own
        raise InvalidRequest("an operator must say whose device it is", field="customer_id")
    if session.get(Device, request.id) is not None:
        raise Conflict(f"device {request.id!r} is registered already", field="id")
    secret = credentials.new_secret()
    device = Device(
        id=request.id,
        customer_id=request.customer_id,
        kind=request.kind,
        name=request.name,
        created_at=now,
        mqtt_password_hash=credentials.hash_secret(secret),
    )
    session.add(device)
    for slot in request.slots:
        # Due at once: its forecast says "insufficient data" until it has reported enough.
        session.add(Slot(device_id=device.id, created_at=now, due_at=now, **slot.model_dump()))
    session.flush()
    audit.record(
        session=session,
        at=now,
        actor=actor,
        action=AuditAction.DEVICE_REGISTERED,
        customer_id=device.customer_id,
        subject_type="device",
        subject_id=device.id,
        detail={"kind": device.kind, "slots": [slot.name for slot in request.slots]},
    )
    return device, secret


def rotate_credentials(*, session: Session, device: Device, actor: str, now: datetime) -> str:
    """A new MQTT secret for the device. The brokers refuse the old one and end connections made with it."""
    secret = credentials.new_secret()
    device.mqtt_password_hash = credentials.hash_secret(secret)
    session.add(device)
    audit.record(
        session=session,
        at=now,
        actor=actor,
        action=AuditAction.DEVICE_CREDENTIALS_ROTATED,
        customer_id=device.customer_id,
        subject_type="device",
        subject_id=device.id,
    )
    return secret


def mqtt_password_hash(*, session: Session, device_id: str) -> str | None:
    return session.exec(select(Device.mqtt_password_hash).where(Device.id == device_id)).first()


def mqtt_password_hashes(*, session: Session, device_ids: Collection[str]) -> dict[str, str]:
    """The stored secret hash of each of these devices that exists and has one."""
    ids = sorted(device_ids)
    found: dict[str, str] = {}
    for start in range(0, len(ids), _IN_CLAUSE_CHUNK):
        chunk = ids[start : start + _IN_CLAUSE_CHUNK]
        rows = session.exec(select(Device.id, Device.mqtt_password_hash).where(col(Device.id).in_(chunk))).all()
        found.update({device_id: hashed for device_id, hashed in rows if hashed is not None})
    return found


_IN_CLAUSE_CHUNK = 500


def get(
    *, session: Session, device_id: str, customer_id: str | None = None, device_ids: Collection[str] | None = None
) -> Device:
    """The device; given ``customer_id``, only if it is that customer's (another's answers as a missing one); given
    ``device_ids`` (what a member or carer sees), only if it is one of them."""
    return get_or_raise(session, Device, device_id, entity="device", customer_id=customer_id, device_ids=device_ids)


def get_slot(*, session: Session, device_id: str, slot_name: str) -> Slot:
    slot = session.exec(select(Slot).where(Slot.device_id == device_id, Slot.name == slot_name)).first()
    if slot is None:
        raise NotFound("slot", f"{device_id}/{slot_name}")
    return slot


# Null means something for these: order_up_to_days null goes back to the fixed order_quantity.
NULLABLE_SLOT_FIELDS = frozenset({"order_up_to_days"})


def update_slot(*, session: Session, device: Device, slot: Slot, request: SlotUpdate, now: datetime) -> Slot:
    changes = request.model_dump(exclude_unset=True)
    for name, value in changes.items():
        if value is None and name not in NULLABLE_SLOT_FIELDS:
            raise InvalidRequest(f"{name} cannot be null", field=name)
    shape = catalogue.SlotShape(device_kind=device.kind, slot_name=slot.name, unit=slot.unit)
    if changes.get("product_sku", slot.product_sku) != slot.product_sku:  # sending the slot back unchanged is fine
        catalogue.check_choice(
            session=session, sku=changes["product_sku"], slot=shape, field="product_sku", listed_only=False
        )
    if "product_sku" in changes or "substitute_skus" in changes:
        chosen = changes.get("product_sku", slot.product_sku)
        substitutes = changes.get("substitute_skus", slot.substitute_skus)
        if len(set(substitutes)) != len(substitutes) or chosen in substitutes:
            raise InvalidRequest("each substitute once, and not the product itself", field="substitute_skus")
        for sku in substitutes:
            catalogue.check_choice(session=session, sku=sku, slot=shape, field="substitute_skus", listed_only=True)
    for name, value in changes.items():
        setattr(slot, name, value)
    session.add(slot)
    session.flush()
    mark_slots_due(session=session, at=now, slot_ids=[slot.id])  # a new lead time or service level decides anew
    return slot


def latest_forecast_at(*, session: Session, customer_id: str) -> datetime | None:
    """When any of the customer's slots was last forecast: a page showing forecasts is out of date once this
    moves."""
    query = (
        select(func.max(SlotForecast.computed_at))
        .join(Slot, col(Slot.id) == col(SlotForecast.slot_id))
        .join(Device, col(Device.id) == col(Slot.device_id))
        .where(col(Device.customer_id) == customer_id)
    )
    latest: datetime | None = session.exec(query).one()
    return latest


def slot_products(
    *,
    session: Session,
    device: Device | DeviceRead,
    slot: Slot | SlotRead,
    products: Sequence[tuple[Product, ProductVersion]] | None = None,
) -> SlotProducts:
    """What fits the slot; ``products``: the catalogue already read (catalogue.current), for many slots."""
    shape = catalogue.SlotShape(device_kind=device.kind, slot_name=slot.name, unit=slot.unit)
    if products is None:
        fitting = catalogue.eligible(session=session, slot=shape)
    else:
        fitting = catalogue.fitting(products, shape)
    by_sku = {product.sku: catalogue.read(version) for product, version in fitting}
    return SlotProducts(
        product_sku=slot.product_sku,
        chosen=by_sku.get(slot.product_sku),
        substitutes=[by_sku[sku] for sku in slot.substitute_skus if sku in by_sku],
        eligible=list(by_sku.values()),
    )


def due_no_later_than(at: datetime | ColumnElement[datetime]) -> ColumnElement[datetime]:
    """A slot's due moment brought forward to ``at``, never pushed back: the SQL for an UPDATE's SET."""
    due_at = table_of(Slot).c.due_at
    moment = literal(at, UTCDateTime) if isinstance(at, datetime) else at
    return case((or_(due_at.is_(None), due_at > moment), moment), else_=due_at)


def due_after_reading(*, level: ColumnElement[float], at: ColumnElement[datetime]) -> ColumnElement[datetime]:
    """A slot's due moment after a reading that becomes visible at ``at`` and leaves ``level`` (the slot's unit)
    its newest: the SQL for ingest's UPDATE. Unchanged when the screen the slot's last full evaluation stored lets
    the reading wait (automation.engine.Screen.lets_wait, the backtest's cadence, here in SQL: the reading is seen
    by the evaluation the slot is due for anyway); otherwise brought forward to ``at`` (due_no_later_than).

    Anything else that marks the slot due clears its screen (mark_slots_due), so only readings ever wait; a reading
    that cannot wait leaves the slot due until it is evaluated, whatever readings follow. Evaluated on the row as
    the UPDATE finds it, under its lock: never on a screen an evaluation has replaced meanwhile."""
    table = table_of(Slot)
    fraction = level / func.nullif(table.c.capacity, 0)  # PostgreSQL may divide before it checks the capacity
    screen_ends = case(
        (or_(table.c.screen_low.is_(None), fraction >= table.c.screen_low), table.c.screen_until),
        else_=table.c.screen_until_dropped,
    )
    can_wait = and_(
        table.c.screen_until.is_not(None),
        table.c.screen_until_dropped.is_not(None),
        table.c.evaluate_by > at,
        level.is_not(None),
        table.c.capacity != 0,
        or_(table.c.screen_high.is_(None), fraction < table.c.screen_high),
        screen_ends > at,
    )
    return case((can_wait, table.c.due_at), else_=due_no_later_than(at))


MARK_CHUNK = 10_000


def mark_slots_due(
    *, session: Session, at: datetime, slot_ids: Collection[str] | None = None, customer_id: str | None = None
) -> None:
    """Something that can change these slots' forecasts or decisions happened at ``at`` (consent, an order's
    status, a slot's settings): the evaluator looks at them again from then. Ingest marks the slots it stores
    readings for itself, in the same statement that stores their latest level."""
    table = table_of(Slot)
    chosen = select(table.c.id)
    if slot_ids is not None:
        chosen = chosen.where(table.c.id.in_(sorted(slot_ids)))
    if customer_id is not None:
        chosen = chosen.where(
            table.c.device_id.in_(select(Device.id).where(Device.customer_id == customer_id).scalar_subquery())
        )
    # Locked in id order first, as every writer of several slots takes them: no deadlock with ingest.
    ids = list(session.execute(chosen.order_by(table.c.id).with_for_update()).scalars())
    if not ids:
        return
    # No screen: the next evaluation is a full one. In chunks: a statement takes at most 65,535 parameters on
    # PostgreSQL, and `replenish forecasts rebuild` marks every slot.
    for start in range(0, len(ids), MARK_CHUNK):
        session.execute(
            update(table)
            .where(table.c.id.in_(ids[start : start + MARK_CHUNK]))
            .values(due_at=due_no_later_than(at), due_marks=table.c.due_marks + 1, screen_until=None)
        )


def list_devices(
    *,
    session: Session,
    customer_id: str | None = None,
    device_ids: Collection[str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Device]:
    query = select(Device)
    if customer_id:
        query = query.where(Device.customer_id == customer_id)
    if device_ids is not None:
        query = query.where(col(Device.id).in_(list(device_ids)))
    return list(session.exec(query.order_by(col(Device.id)).offset(offset).limit(limit)))


def describe(*, session: Session, device: Device) -> DeviceRead:
    return describe_many(session=session, devices=[device])[0]


def describe_many(*, session: Session, devices: list[Device]) -> list[DeviceRead]:
    """Devices with their slots and latest forecasts, in two queries whatever the number of devices."""
    slots_by_device: dict[str, list[Slot]] = {device.id: [] for device in devices}
    for slot in session.exec(
        select(Slot).where(col(Slot.device_id).in_(list(slots_by_device))).order_by(col(Slot.name))
    ):
        slots_by_device[slot.device_id].append(slot)
    slot_ids = [slot.id for slots in slots_by_device.values() for slot in slots]
    forecasts = {
        stored.slot_id: stored
        for stored in session.exec(select(SlotForecast).where(col(SlotForecast.slot_id).in_(slot_ids)))
    }
    return [
        DeviceRead(
            **device.model_dump(),
            slots=[
                SlotRead(
                    **slot.model_dump(),
                    forecast=forecasts[slot.id].forecast if slot.id in forecasts else None,
                    forecast_computed_at=forecasts[slot.id].computed_at if slot.id in forecasts else None,
                )
                for slot in slots_by_device[device.id]
            ],
        )
        for device in devices
    ]


def readings(
    *, session: Session, slot: Slot, since: datetime | None = None, before: datetime | None = None, limit: int = 1000
) -> list[ReadingRead]:
    query = select(Reading).where(Reading.slot_id == slot.id)
    if since is not None:
        query = query.where(Reading.ts >= since)
    if before is not None:
        query = query.where(Reading.ts < before)
    rows = session.exec(query.order_by(col(Reading.ts).desc()).limit(limit))
    return [ReadingRead(ts=row.ts, level=row.level, message_id=row.message_id) for row in rows]


def level_history(
    *, session: Session, slot_ids: Collection[str], since: datetime, most: int = 600
) -> dict[str, list[tuple[datetime, float]]]:
    """Each slot's readings since a moment, oldest first, in one query; thinned to at most `most` per slot (every
    n-th, the newest always kept), which is as many as a chart can show."""
    found: dict[str, list[tuple[datetime, float]]] = {slot_id: [] for slot_id in slot_ids}
    rows = session.exec(
        select(Reading.slot_id, Reading.ts, Reading.level)
        .where(col(Reading.slot_id).in_(list(found)), Reading.ts >= since)
        .order_by(col(Reading.slot_id), col(Reading.ts))
    )
    for slot_id, ts, level in rows:
        found[slot_id].append((ts, level))
    for slot_id, points in found.items():
        if len(points) > most:
            step = -(-len(points) // most)
            found[slot_id] = points[-1::-step][::-1]
    return found


def events(
    *, session: Session, device_id: str, event_type: str | None = None, limit: int = 100, offset: int = 0
) -> list[EventRead]:
    """Every stored event of the device, known types or not, newest first."""
    query = select(DeviceMessage).where(DeviceMessage.device_id == device_id, DeviceMessage.channel == Channel.EVENTS)
    if event_type:
        query = query.where(DeviceMessage.event_type == event_type)
    rows = session.exec(
        query.order_by(col(DeviceMessage.ts).desc(), col(DeviceMessage.id).desc()).offset(offset).limit(limit)
    )
    return [
        EventRead(
            message_id=row.id or 0,
            seq=row.seq,
            ts=row.ts,
            received_at=row.received_at,
            type=row.event_type or "",
            payload=row.payload,
        )
        for row in rows
    ]


def forget_windows(*, session: Session, slot_ids: Collection[str] | Select[Any] | None = None) -> None:
    """Drop stored reading windows (SlotWindow): all, or those of ``slot_ids`` (a list or a subquery of slot ids).
    After readings were deleted, or to rebuild them from the readings table: the next evaluation of each slot reads
    its whole history window."""
    table = table_of(SlotWindow)
    statement = delete(table)
    if slot_ids is not None:
        statement = statement.where(table.c.slot_id.in_(slot_ids))
    session.execute(statement)

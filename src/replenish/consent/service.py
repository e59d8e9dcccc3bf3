from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from replenish.consent.models import ConsentVersion
from replenish.consent.schemas import ConsentDocument
from replenish.constants import ConsentMode
from replenish.devices.models import Device, Slot
from replenish.errors import InvalidRequest, NotFound


def mode_for_slot(document: ConsentDocument, *, device_id: str, slot_name: str) -> ConsentMode:
    slot_mode = document.slot_modes.get(f"{device_id}/{slot_name}")
    if slot_mode is not None:
        return slot_mode
    return document.device_modes.get(device_id, document.default_mode)


def current(*, session: Session, customer_id: str) -> ConsentVersion:
    version = session.exec(
        select(ConsentVersion)
        .where(ConsentVersion.customer_id == customer_id)
        .order_by(col(ConsentVersion.version).desc())
        .limit(1)
    ).first()
    if version is None:
        raise NotFound("consent of customer", customer_id)
    return version


def current_document(*, session: Session, customer_id: str) -> tuple[int, ConsentDocument]:
    version = current(session=session, customer_id=customer_id)
    return version.version, ConsentDocument.model_validate(version.document)


def history(*, session: Session, customer_id: str) -> list[ConsentVersion]:
    return list(
        session.exec(
            select(ConsentVersion)
            .where(ConsentVersion.customer_id == customer_id)
            .order_by(col(ConsentVersion.version))
        )
    )


def record(
    *, session: Session, customer_id: str, document: ConsentDocument, actor: str, now: datetime
) -> ConsentVersion:
    """Append a new version. Earlier versions are never changed: every decision can point at its own."""
    _check_targets(session=session, customer_id=customer_id, document=document)
    latest = session.exec(
        select(ConsentVersion.version)
        .where(ConsentVersion.customer_id == customer_id)
        .order_by(col(ConsentVersion.version).desc())
        .limit(1)
    ).first()
    version = ConsentVersion(
        customer_id=customer_id,
        version=(latest or 0) + 1,
        created_at=now,
        created_by=actor,
        document=document.model_dump(mode="json"),
    )
    session.add(version)
    session.flush()
    return version


def _check_targets(*, session: Session, customer_id: str, document: ConsentDocument) -> None:
    owned_devices = set(session.exec(select(Device.id).where(Device.customer_id == customer_id)))
    for device_id in document.device_modes:
        if device_id not in owned_devices:
            raise InvalidRequest(f"device {device_id!r} is not one of this customer's devices", field="device_modes")
    if not document.slot_modes:
        return
    owned_slots = {
        f"{device_id}/{name}"
        for device_id, name in session.exec(
            select(Slot.device_id, Slot.name).where(col(Slot.device_id).in_(owned_devices))
        )
    }
    for key in document.slot_modes:
        if key not in owned_slots:
            raise InvalidRequest(
                f"slot {key!r} is not 'device_id/slot_name' of one of this customer's slots",
                field="slot_modes",
            )

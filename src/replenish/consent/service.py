from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, func, select

from replenish.audit import service as audit
from replenish.auth.models import Account, DeviceShare
from replenish.consent.models import ConsentVersion
from replenish.consent.schemas import ConsentDocument
from replenish.constants import AuditAction, ConsentMode, DeviceKind, HouseholdRole, NoticeKind, OrderStatus
from replenish.customers.locks import lock_customer
from replenish.customers.models import Customer
from replenish.devices import service as devices
from replenish.devices.models import Device, Slot
from replenish.errors import InvalidRequest, NotFound
from replenish.notifications import service as notifications
from replenish.orders import service as orders
from replenish.orders.models import Order

# Modes under which the platform may create orders for a slot; a change to any other takes ordering away.
ORDERING_MODES = frozenset({ConsentMode.AUTO_ORDER, ConsentMode.ASK_FIRST})
# Orders not yet shipped: a revocation can still stop them.
REVOCABLE_STATUSES = (OrderStatus.AWAITING_APPROVAL, OrderStatus.PLACED, OrderStatus.CONFIRMED, OrderStatus.HELD)


def lock_customers(*, session: Session, customer_ids: list[str]) -> dict[str, ConsentVersion]:
    """lock_customer for many customers at once, in id order (the order every writer that takes several uses),
    with their current consent versions."""
    ordered = sorted(customer_ids)
    session.exec(
        select(Customer.id).where(col(Customer.id).in_(ordered)).order_by(col(Customer.id)).with_for_update()
    ).all()
    newest = (
        select(ConsentVersion.customer_id, func.max(ConsentVersion.version).label("version"))
        .where(col(ConsentVersion.customer_id).in_(ordered))
        .group_by(col(ConsentVersion.customer_id))
        .subquery()
    )
    versions = session.exec(
        select(ConsentVersion).join(
            newest,
            (col(ConsentVersion.customer_id) == newest.c.customer_id)
            & (col(ConsentVersion.version) == newest.c.version),
        )
    )
    return {version.customer_id: version for version in versions}


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


def document_of(*, session: Session, customer_id: str, version: int) -> ConsentDocument | None:
    found = session.exec(
        select(ConsentVersion).where(ConsentVersion.customer_id == customer_id, ConsentVersion.version == version)
    ).first()
    return ConsentDocument.model_validate(found.document) if found is not None else None


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
    """Append a new version. Earlier versions are never changed: every decision can point at its own.

    A version that takes ordering away from a slot (to notify_only or off) acts on that slot's open orders not yet
    shipped at once: cancelled with the reason, or held for the customer to decide, as ``on_revoke`` says.
    """
    lock_customer(session=session, customer_id=customer_id)
    _check_targets(session=session, customer_id=customer_id, document=document)
    latest = session.exec(
        select(ConsentVersion)
        .where(ConsentVersion.customer_id == customer_id)
        .order_by(col(ConsentVersion.version).desc())
        .limit(1)
    ).first()
    version = ConsentVersion(
        customer_id=customer_id,
        version=(latest.version if latest else 0) + 1,
        created_at=now,
        created_by=actor,
        document=document.model_dump(mode="json"),
    )
    session.add(version)
    session.flush()
    previous = ConsentDocument.model_validate(latest.document).model_dump(mode="json") if latest else {}
    audit.record(
        session=session,
        at=now,
        actor=actor,
        action=AuditAction.CONSENT_CHANGED,
        customer_id=customer_id,
        subject_type="consent",
        subject_id=f"{customer_id}/{version.version}",
        detail={
            "version": version.version,
            "changed": sorted(key for key, value in version.document.items() if previous.get(key) != value),
        },
    )
    if latest is not None:
        _revoke(
            session=session,
            customer_id=customer_id,
            before=ConsentDocument.model_validate(latest.document),
            after=document,
            version=version.version,
            actor=actor,
            now=now,
        )
    devices.mark_slots_due(session=session, at=now, customer_id=customer_id)  # every slot decides by it from now
    return version


def _revoke(
    *,
    session: Session,
    customer_id: str,
    before: ConsentDocument,
    after: ConsentDocument,
    version: int,
    actor: str,
    now: datetime,
) -> None:
    open_orders = session.exec(
        select(Order, Slot.name)
        .join(Slot, col(Slot.id) == col(Order.slot_id))
        .where(Order.customer_id == customer_id, col(Order.status).in_(REVOCABLE_STATUSES))
        .order_by(col(Order.created_at))
        .with_for_update(of=Order)
    ).all()
    for order, slot_name in open_orders:
        was = before.mode_for(device_id=order.device_id, slot_name=slot_name)
        now_mode = after.mode_for(device_id=order.device_id, slot_name=slot_name)
        if was not in ORDERING_MODES or now_mode in ORDERING_MODES:
            continue
        reason = f"consent version {version} changed {order.device_id}/{slot_name} from {was} to {now_mode}"
        if after.on_revoke == "cancel":
            orders.transition(
                session=session, order_id=order.id, to=OrderStatus.CANCELLED, actor=actor, now=now, reason=reason
            )
        elif order.status in (OrderStatus.PLACED, OrderStatus.CONFIRMED):
            # Fulfilment is told to hold it; the customer releases it (approve) or cancels it.
            orders.transition(
                session=session, order_id=order.id, to=OrderStatus.HELD, actor=actor, now=now, reason=reason
            )
            notifications.notify_customer(
                session=session,
                customer_id=customer_id,
                document=after,
                consent_version=version,
                subject=f"Order held: {order.product_sku} for {order.device_id}/{slot_name}",
                body=f"{reason}. The order is on hold: approve it to let it go on, or cancel it.",
                now=now,
                kind=NoticeKind.ORDER_CHANGED,
                order_id=order.id,
                app_path=f"/app/orders/{order.id}",
            )
        elif order.status == OrderStatus.AWAITING_APPROVAL:
            orders.note(session=session, order=order, actor=actor, now=now, reason=f"still awaiting approval: {reason}")


def customers_allowing_fleet_learning(*, session: Session) -> list[str]:
    """Customers whose current consent lets their anonymised rates help forecast other customers' devices."""
    newest = (
        select(ConsentVersion.customer_id, func.max(ConsentVersion.version).label("version"))
        .group_by(col(ConsentVersion.customer_id))
        .subquery()
    )
    rows = session.exec(
        select(ConsentVersion.customer_id, ConsentVersion.document).join(
            newest,
            (col(ConsentVersion.customer_id) == newest.c.customer_id)
            & (col(ConsentVersion.version) == newest.c.version),
        )
    )
    return [customer_id for customer_id, document in rows if document.get("fleet_learning_allowed", False)]


def _check_contacts(*, session: Session, customer_id: str, document: ConsentDocument, owned_devices: set[str]) -> None:
    """A contact's wearables are the household's; a contact who is a person of the household sees each of them (the
    web app shows them the incident), so that nobody is asked about an incident they cannot open."""
    wearables = set(
        session.exec(select(Device.id).where(Device.customer_id == customer_id, Device.kind == DeviceKind.WEARABLE))
    )
    for contact in document.emergency_contacts:
        for device_id in contact.device_ids:
            if device_id not in owned_devices:
                raise InvalidRequest(
                    f"{contact.name}: device {device_id!r} is not one of this customer's devices",
                    field="emergency_contacts",
                )
        if contact.account_id is None:
            continue
        account = session.get(Account, contact.account_id)
        if account is None or account.customer_id != customer_id:
            raise InvalidRequest(
                f"{contact.name}: account {contact.account_id!r} is not one of the household's people",
                field="emergency_contacts",
            )
        if account.household_role in (None, HouseholdRole.OWNER):
            continue
        shared = set(session.exec(select(DeviceShare.device_id).where(DeviceShare.account_id == account.id)))
        unseen = sorted((set(contact.device_ids) or wearables) - shared)
        if unseen:
            raise InvalidRequest(
                f"{contact.name} does not see {', '.join(unseen)}: share it with them first (the Household page)",
                field="emergency_contacts",
            )


def _check_targets(*, session: Session, customer_id: str, document: ConsentDocument) -> None:
    owned_devices = set(session.exec(select(Device.id).where(Device.customer_id == customer_id)))
    for device_id in document.device_modes:
        if device_id not in owned_devices:
            raise InvalidRequest(f"device {device_id!r} is not one of this customer's devices", field="device_modes")
    _check_contacts(session=session, customer_id=customer_id, document=document, owned_devices=owned_devices)
    pause_targets = [target for window in document.pause_windows for target in window.targets]
    if not document.slot_modes and not document.slot_price_caps and not pause_targets:
        return
    owned_slots = {
        f"{device_id}/{name}"
        for device_id, name in session.exec(
            select(Slot.device_id, Slot.name).where(col(Slot.device_id).in_(owned_devices))
        )
    }
    for field, keys in (("slot_modes", document.slot_modes), ("slot_price_caps", document.slot_price_caps)):
        for key in keys:
            if key not in owned_slots:
                raise InvalidRequest(
                    f"slot {key!r} is not 'device_id/slot_name' of one of this customer's slots", field=field
                )
    for target in pause_targets:
        if target not in owned_slots and target not in owned_devices:
            raise InvalidRequest(
                f"pause target {target!r} is neither a device id nor 'device_id/slot_name' of this customer's",
                field="pause_windows",
            )

"""What an order asks for: the chosen product or a substitute, whole packs covering the use over a number of days,
at the catalogue's price, kept as decided; and the slot's price cap. Real database, readings through real ingest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from replenish.automation.models import Decision
from replenish.automation.service import evaluate_all
from replenish.catalogue import service as catalogue
from replenish.catalogue.models import ProductVersion
from replenish.catalogue.schemas import ProductFields
from replenish.consent import service as consent
from replenish.consent.schemas import ConsentDocument
from replenish.constants import ConsentMode, OrderStatus
from replenish.customers import service as customers
from replenish.db import transaction
from replenish.devices import service as devices
from replenish.devices.models import Slot
from replenish.devices.schemas import DeviceCreate, SlotCreate
from replenish.errors import InvalidRequest
from replenish.ingest.schemas import IncomingMessage
from replenish.ingest.service import ingest_batch
from replenish.orders.models import Order

T0 = datetime(2026, 3, 2, tzinfo=UTC)
# 2 % of a cartridge a day.
RATE = 0.02


def _product(sku: str, *, price: str, pack_size: float = 1.0, available: bool = True) -> ProductFields:
    return ProductFields(
        name=f"Ink {sku}",
        pack_size=pack_size,
        unit="fraction",
        price=Decimal(price),
        currency="EUR",
        device_kinds=["printer"],
        slot_names=["black"],
        available=available,
    )


AUTO = ConsentDocument(default_mode=ConsentMode.AUTO_ORDER)


class Printer:
    def __init__(self, engine: Engine, *, document: ConsentDocument, **slot: object) -> None:
        """A printer with an auto-ordering black slot (settings ``slot``); then ``document`` is the consent."""
        self.engine = engine
        self.seq = 0
        with transaction(engine) as session:
            for sku, price in (("INK", "20.00"), ("INK-ALT", "18.00"), ("INK-XL", "35.00")):
                catalogue.put(session=session, sku=sku, fields=_product(sku, price=price), actor="op", now=T0)
            self.customer = customers.create(
                session=session,
                name="Ada",
                email="ada@example.com",
                consent_document=AUTO,
                actor="test",
                now=T0,
            ).id
            devices.register(
                session=session,
                actor="test",
                request=DeviceCreate(
                    id="printer-1",
                    customer_id=self.customer,
                    kind="printer",
                    name="P",
                    slots=[SlotCreate(name="black", product_sku="INK", lead_time_days=3, **slot)],  # type: ignore[arg-type]
                ),
                now=T0,
            )
            consent.record(session=session, customer_id=self.customer, document=document, actor="test", now=T0)

    def set_product(self, sku: str, **changes: object) -> None:
        with transaction(self.engine) as session:
            fields = _product(sku, price="20.00").model_copy(update=changes)
            catalogue.put(session=session, sku=sku, fields=fields, actor="op", now=T0)

    def set_slot(self, **changes: object) -> None:
        with transaction(self.engine) as session:
            slot = session.exec(select(Slot)).one()
            for name, value in changes.items():
                setattr(slot, name, value)
            session.add(slot)

    def run_until_ordered(self) -> Order:
        """Sixteen days of readings every 6 hours, falling from 40 %, then one evaluation: by then the slot may
        run out within its lead time plus margin, so it orders (or asks)."""
        messages = []
        for step in range(16 * 4 + 1):
            at = T0 + timedelta(hours=6 * step)
            self.seq += 1
            level = 0.4 - RATE * step / 4
            payload = json.dumps({"seq": self.seq, "ts": at.isoformat(), "levels": {"black": round(level, 5)}})
            messages.append(IncomingMessage("devices/printer-1/telemetry", payload.encode(), received_at=at))
        with transaction(self.engine) as session:
            assert ingest_batch(session=session, messages=messages).stored == len(messages)
        assert evaluate_all(engine=self.engine, now=at, margin_days=1.0).errors == 0
        with Session(self.engine) as session:
            order = session.exec(select(Order)).one()
        return order

    def reason(self, order: Order) -> str:
        with Session(self.engine) as session:
            decision = session.get(Decision, order.decision_id)
            assert decision is not None
            return decision.reason

    def version(self, order: Order) -> ProductVersion:
        with Session(self.engine) as session:
            version = session.get(ProductVersion, order.product_version_id)
            assert version is not None
            return version


def test_an_order_up_to_covers_the_use_over_its_days_in_whole_packs_at_the_catalogue_price(engine: Engine):
    printer = Printer(engine, document=AUTO, order_up_to_days=60)
    order = printer.run_until_ordered()
    # 60 days at about 2 % a day is about 1.2 cartridges: two whole packs.
    assert order.status == OrderStatus.PLACED
    assert order.quantity == 2
    assert order.product_sku == "INK"
    assert order.unit_price == Decimal("20.00")
    assert order.total_price == Decimal("40.00")
    assert printer.version(order).price == Decimal("20.00")
    assert "2 x 1 fraction cover" in printer.reason(order)
    assert "over 60 days" in printer.reason(order)


def test_a_fixed_quantity_stays_possible_and_is_priced_from_the_catalogue(engine: Engine):
    printer = Printer(engine, document=AUTO, order_quantity=3)
    order = printer.run_until_ordered()
    assert (order.quantity, order.total_price) == (3, Decimal("60.00"))
    assert "cover" not in printer.reason(order)


def test_an_order_up_to_stays_within_the_consents_quantity_limit(engine: Engine):
    document = ConsentDocument(default_mode=ConsentMode.AUTO_ORDER, max_quantity_per_order=1)
    printer = Printer(engine, document=document, order_up_to_days=60)
    order = printer.run_until_ordered()
    assert (order.status, order.quantity) == (OrderStatus.PLACED, 1)
    assert "cut to the consent's maximum of 1 per order" in printer.reason(order)


def test_an_order_over_the_slots_price_cap_asks_first_with_the_reason(engine: Engine):
    document = ConsentDocument(
        default_mode=ConsentMode.AUTO_ORDER, slot_price_caps={"printer-1/black": Decimal("39.99")}
    )
    printer = Printer(engine, document=document, order_up_to_days=60)
    order = printer.run_until_ordered()
    assert order.status == OrderStatus.AWAITING_APPROVAL
    assert "asks first: 40.00 is over the slot's price cap of 39.99" in printer.reason(order)


def test_a_cap_the_order_stays_within_lets_it_be_placed(engine: Engine):
    document = ConsentDocument(
        default_mode=ConsentMode.AUTO_ORDER, slot_price_caps={"printer-1/black": Decimal("40.00")}
    )
    order = Printer(engine, document=document, order_up_to_days=60).run_until_ordered()
    assert order.status == OrderStatus.PLACED


def test_an_unavailable_product_orders_the_first_available_substitute(engine: Engine):
    printer = Printer(engine, document=AUTO)
    printer.set_slot(substitute_skus=["INK-XL", "INK-ALT"])
    printer.set_product("INK", available=False)
    printer.set_product("INK-XL", available=False)
    order = printer.run_until_ordered()
    assert order.status == OrderStatus.PLACED
    assert (order.product_sku, order.unit_price) == ("INK-ALT", Decimal("18.00"))
    assert printer.version(order).sku == "INK-ALT"
    assert "Ink INK (INK) is unavailable: substitute Ink INK-ALT (INK-ALT) instead" in printer.reason(order)


@pytest.mark.parametrize("substitutes", [[], ["INK-ALT"]])
def test_with_nothing_available_the_order_asks_first(engine: Engine, substitutes: list[str]):
    printer = Printer(engine, document=AUTO)
    printer.set_slot(substitute_skus=substitutes)
    printer.set_product("INK", available=False)
    printer.set_product("INK-ALT", available=False)
    order = printer.run_until_ordered()
    assert (order.status, order.product_sku) == (OrderStatus.AWAITING_APPROVAL, "INK")
    expected = "and its substitutes are unavailable" if substitutes else "is unavailable and no substitute is allowed"
    assert expected in printer.reason(order)


def test_an_order_keeps_the_price_and_version_it_was_decided_at(engine: Engine):
    printer = Printer(engine, document=ConsentDocument(default_mode=ConsentMode.ASK_FIRST))
    order = printer.run_until_ordered()
    printer.set_product("INK", price=Decimal("25.00"))
    with Session(engine) as session:
        kept = session.get(Order, order.id)
        assert kept is not None
        assert kept.unit_price == Decimal("20.00")
    assert printer.version(order).version == 1
    with Session(engine) as session:
        assert catalogue.get(session=session, sku="INK")[1].version == 2


def test_a_free_sku_is_ordered_as_named_at_the_slots_price(engine: Engine):
    printer = Printer(engine, document=AUTO, order_up_to_days=60, unit_price=Decimal("7.50"))
    printer.set_slot(product_sku="OWN-INK")
    order = printer.run_until_ordered()
    # One unit of a free SKU is one fill of the slot.
    assert (order.product_sku, order.product_version_id, order.quantity) == ("OWN-INK", None, 2)
    assert order.total_price == Decimal("15.00")


def test_a_price_cap_must_name_one_of_the_customers_slots(engine: Engine):
    printer = Printer(engine, document=AUTO)
    with transaction(engine) as session, pytest.raises(InvalidRequest, match="'printer-1/cyan' is not") as refused:
        consent.record(
            session=session,
            customer_id=printer.customer,
            document=ConsentDocument(slot_price_caps={"printer-1/cyan": Decimal("10")}),
            actor="test",
            now=T0,
        )
    assert refused.value.field == "slot_price_caps"
    with pytest.raises(ValueError, match="greater than 0"):
        ConsentDocument.model_validate({"slot_price_caps": {"printer-1/black": "0"}})

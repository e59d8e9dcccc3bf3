"""One box instead of several parcels: the slots due within the pull-forward horizon join the ordering slot's
shipment, each a line with its own decision, consent and limits; fulfilment gets one payload per shipment; a line
can be taken out alone. Real database, readings through real ingest, the real outbox."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from replenish.automation import service as automation
from replenish.automation.models import Decision
from replenish.automation.service import evaluate_all
from replenish.consent import service as consent
from replenish.consent.schemas import ConsentDocument
from replenish.constants import ConsentMode, OrderStatus, OutboxKind
from replenish.customers import service as customers
from replenish.db import transaction
from replenish.devices import service as devices
from replenish.devices.models import Device, Slot
from replenish.devices.schemas import DeviceCreate, SlotCreate
from replenish.errors import Conflict, NotFound
from replenish.ingest.schemas import IncomingMessage
from replenish.ingest.service import ingest_batch
from replenish.notifications.models import Notification
from replenish.orders import service as orders
from replenish.orders.models import Order
from replenish.outbox import service as outbox
from replenish.outbox.models import OutboxMessage

T0 = datetime(2026, 3, 2, tzinfo=UTC)
RATE = 0.02  # of a cartridge a day
DAYS = 16
# Black runs out on day 21, five days after the evaluation: due now (lead time 3, margin 1 and the forecast's band),
# with room left for the cancel window. Cyan five days later; magenta in about a month.
START_LEVELS = {"black": 0.42, "cyan": 0.52, "magenta": 0.9}


class Printer:
    def __init__(self, engine: Engine, **document: object) -> None:
        self.engine = engine
        with transaction(engine) as session:
            self.customer = customers.create(
                session=session,
                name="Ada",
                email="ada@example.com",
                consent_document=ConsentDocument(default_mode=ConsentMode.AUTO_ORDER),
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
                    name="Office printer",
                    slots=[
                        SlotCreate(name=name, product_sku=f"INK-{name}", lead_time_days=3, unit_price=Decimal("20"))
                        for name in START_LEVELS
                    ],
                ),
                now=T0,
            )
            consent.record(
                session=session,
                customer_id=self.customer,
                document=ConsentDocument.model_validate({"default_mode": "auto_order", **document}),
                actor="test",
                now=T0,
            )
        self.now = T0 + timedelta(days=DAYS)

    def run(self, minimum_basket: Decimal | None = None, *, since_day: int = 0, until_day: int = DAYS) -> list[Order]:
        """Readings every 6 hours (by default the first sixteen days), then one evaluation at the last: on day 16
        black is due, the others are not."""
        messages = []
        for step in range(since_day * 4, until_day * 4 + 1):
            at = T0 + timedelta(hours=6 * step)
            levels = {name: round(start - RATE * step / 4, 5) for name, start in START_LEVELS.items()}
            payload = json.dumps({"seq": step + 1, "ts": at.isoformat(), "levels": levels})
            messages.append(IncomingMessage("devices/printer-1/telemetry", payload.encode(), received_at=at))
        with transaction(self.engine) as session:
            ingest_batch(session=session, messages=messages)
        self.now = T0 + timedelta(days=until_day)
        report = evaluate_all(engine=self.engine, now=self.now, margin_days=1.0, minimum_basket=minimum_basket)
        assert report.errors == 0
        return self.orders()

    def orders(self) -> list[Order]:
        with Session(self.engine) as session:
            return list(session.exec(select(Order).order_by(col(Order.created_at), col(Order.id))))

    def reason(self, order: Order) -> str:
        with Session(self.engine) as session:
            decision = session.get(Decision, order.decision_id)
            assert decision is not None
            return decision.reason

    def hand_offs(self) -> list[OutboxMessage]:
        with Session(self.engine) as session:
            query = select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.SHIPMENT_PLACED)
            return list(session.exec(query.order_by(col(OutboxMessage.id))))


def by_slot(printer: Printer, found: list[Order]) -> dict[str, Order]:
    with Session(printer.engine) as session:
        names = {slot.id: slot.name for slot in session.exec(select(Slot))}
    return {names[order.slot_id]: order for order in found}


def test_a_slot_due_within_the_horizon_joins_the_ordering_slot_s_shipment(engine: Engine):
    printer = Printer(engine)
    lines = by_slot(printer, printer.run())
    assert set(lines) == {"black", "cyan"}, "magenta is two months away"
    assert lines["black"].shipment_id == lines["cyan"].shipment_id
    assert all(order.status == OrderStatus.PLACED for order in lines.values())
    # Cyan runs out five days after black; at the service level's early end, about as much.
    assert re.fullmatch(
        r"pulled forward: cyan may run out by 2026-03-2\d \d\d:\d\d UTC, [456] days after black; it comes in the same "
        r"shipment; consent mode auto_order",
        printer.reason(lines["cyan"]),
    ), printer.reason(lines["cyan"])
    assert "pulled forward" not in printer.reason(lines["black"])
    [hand_off] = printer.hand_offs()
    assert hand_off.idempotency_key == f"shipment:{lines['black'].shipment_id}:placed"
    assert [line["order_id"] for line in hand_off.payload["lines"]] == [lines["black"].id, lines["cyan"].id]
    assert lines["black"].hand_off_at == lines["cyan"].hand_off_at == hand_off.available_at
    with Session(engine) as session:
        [black_told] = session.exec(select(Notification).where(Notification.order_id == lines["black"].id)).all()
        [cyan_told] = session.exec(select(Notification).where(Notification.order_id == lines["cyan"].id)).all()
    # Each announcement is written once the box is complete: it names the others.
    assert black_told.body.endswith("It comes in one box with Office printer cyan."), black_told.body
    assert cyan_told.body.endswith("It comes in one box with Office printer black."), cyan_told.body


def test_without_a_horizon_each_slot_orders_alone(engine: Engine):
    printer = Printer(engine, pull_forward_days=0)
    assert set(by_slot(printer, printer.run())) == {"black"}


@pytest.mark.parametrize(("mode", "joins_as"), [("ask_first", "awaiting_approval"), ("notify_only", None)])
def test_each_line_follows_its_own_slot_s_consent(engine: Engine, mode: str, joins_as: str | None):
    printer = Printer(engine, slot_modes={"printer-1/cyan": mode})
    lines = by_slot(printer, printer.run())
    assert lines["black"].status == OrderStatus.PLACED
    if joins_as is None:
        assert "cyan" not in lines, "a slot that may only notify never joins a shipment"
    else:
        assert lines["cyan"].status == joins_as and lines["cyan"].shipment_id == lines["black"].shipment_id
        [hand_off] = printer.hand_offs()
        assert [line["order_id"] for line in hand_off.payload["lines"]] == [lines["black"].id]
        with transaction(engine) as session:  # a line awaiting approval is declined when taken out
            removed = orders.remove_line(
                session=session,
                shipment_id=lines["cyan"].shipment_id or "",
                order_id=lines["cyan"].id,
                actor="ada",
                now=printer.now,
                reason=None,
            )
            assert removed.status == OrderStatus.DECLINED


def test_the_spending_cap_counts_every_line(engine: Engine):
    printer = Printer(engine, monthly_spending_cap="30")
    lines = by_slot(printer, printer.run())
    assert lines["black"].status == OrderStatus.PLACED
    assert lines["cyan"].status == OrderStatus.AWAITING_APPROVAL
    assert "20.00 on top of 20.00 spent this month exceeds the cap of 30" in printer.reason(lines["cyan"])


def test_a_line_taken_out_in_the_cancel_window_never_reaches_fulfilment_and_the_rest_goes(engine: Engine):
    printer = Printer(engine)
    lines = by_slot(printer, printer.run())
    shipment_id = lines["black"].shipment_id or ""
    with transaction(engine) as session:
        orders.remove_line(
            session=session,
            shipment_id=shipment_id,
            order_id=lines["cyan"].id,
            actor="customer:ada@example.com",
            now=printer.now,
            reason=None,
        )
    [hand_off] = printer.hand_offs()
    assert [line["order_id"] for line in hand_off.payload["lines"]] == [lines["black"].id]
    with Session(engine) as session:
        view = orders.view_shipment(
            session=session, shipment=orders.get_shipment(session=session, shipment_id=shipment_id)
        )
    assert [(line.slot_name, line.order.status, line.removable) for line in view.lines] == [
        ("black", "placed", True),
        ("cyan", "cancelled", False),
    ]
    assert view.total_price == Decimal("20.00"), "what is still in it"
    with transaction(engine) as session:  # taking it out again is harmless
        orders.remove_line(
            session=session, shipment_id=shipment_id, order_id=lines["cyan"].id, actor="x", now=printer.now, reason=None
        )


def test_a_line_approved_after_its_shipment_left_goes_in_a_follow_up_shipment(engine: Engine):
    printer = Printer(engine, slot_modes={"printer-1/cyan": "ask_first"})
    lines = by_slot(printer, printer.run())
    [hand_off] = printer.hand_offs()
    with transaction(engine) as session:  # a dispatcher takes the shipment
        assert hand_off.id is not None
        assert outbox.claim(session=session, message_id=hand_off.id, now=printer.now, until=printer.now, by="x")
    later = printer.now + timedelta(hours=1)
    with transaction(engine) as session:
        orders.transition(
            session=session, order_id=lines["cyan"].id, to=OrderStatus.PLACED, actor="customer", now=later
        )
    first, follow_up = printer.hand_offs()
    assert [line["order_id"] for line in first.payload["lines"]] == [lines["black"].id], "what left stays as it was"
    assert [line["order_id"] for line in follow_up.payload["lines"]] == [lines["cyan"].id]
    with Session(engine) as session:
        moved = session.get(Order, lines["cyan"].id)
        assert moved is not None and moved.shipment_id not in (None, lines["black"].shipment_id)
        assert follow_up.idempotency_key == f"shipment:{moved.shipment_id}:placed"
        assert follow_up.available_at == later


def test_a_line_of_another_shipment_cannot_be_removed_through_this_one(engine: Engine):
    printer = Printer(engine)
    lines = by_slot(printer, printer.run())
    with transaction(engine) as session, pytest.raises(NotFound, match="line"):
        orders.remove_line(
            session=session, shipment_id="0" * 32, order_id=lines["cyan"].id, actor="x", now=printer.now, reason=None
        )
    with transaction(engine) as session:
        orders.transition(
            session=session, order_id=lines["cyan"].id, to=OrderStatus.CONFIRMED, actor="fulfilment", now=printer.now
        )
        orders.transition(
            session=session, order_id=lines["cyan"].id, to=OrderStatus.SHIPPED, actor="fulfilment", now=printer.now
        )
    with transaction(engine) as session, pytest.raises(Conflict):
        orders.remove_line(
            session=session,
            shipment_id=lines["cyan"].shipment_id or "",
            order_id=lines["cyan"].id,
            actor="x",
            now=printer.now,
            reason=None,
        )


def test_an_order_made_while_a_shipment_waits_for_its_hand_off_joins_it(engine: Engine):
    printer = Printer(engine, pull_forward_days=0)
    black = by_slot(printer, printer.run())["black"]
    [hand_off] = printer.hand_offs()
    assert hand_off.available_at > printer.now, "black waits its cancel window"
    with transaction(engine) as session:  # half an hour later Ada orders cyan herself
        slot = session.exec(select(Slot).where(Slot.name == "cyan")).one()
        device = session.exec(select(Device)).one()
        done = automation.order_now(
            session=session, slot=slot, device=device, now=printer.now + timedelta(minutes=30), actor="customer"
        )
        assert done is not None
        cyan = done.order
    assert cyan.shipment_id == black.shipment_id, "one box"
    [hand_off] = printer.hand_offs()
    assert [line["order_id"] for line in hand_off.payload["lines"]] == [black.id, cyan.id]
    assert cyan.hand_off_at == hand_off.available_at, "it leaves with the box, at the moment promised for black"


def test_a_shipment_under_the_minimum_basket_takes_the_next_due_slots_first(engine: Engine):
    printer = Printer(engine)
    lines = by_slot(printer, printer.run(minimum_basket=Decimal("50")))
    assert set(lines) == {"black", "cyan", "magenta"}, "magenta, next due, fills the basket"
    assert len({order.shipment_id for order in lines.values()}) == 1
    assert "to reach the minimum basket of 50 (it was 40.00)" in printer.reason(lines["magenta"])
    [hand_off] = printer.hand_offs()
    assert hand_off.available_at == lines["black"].hand_off_at <= printer.now + timedelta(hours=2), "no waiting"


def test_a_shipment_still_under_the_minimum_waits_as_long_as_the_forecasts_allow(engine: Engine):
    printer = Printer(engine)
    lines = by_slot(printer, printer.run(minimum_basket=Decimal("100")))
    assert set(lines) == {"black", "cyan", "magenta"}
    [hand_off] = printer.hand_offs()
    with Session(engine) as session:
        decision = session.get(Decision, lines["black"].decision_id)
        assert decision is not None
        latest = datetime.fromisoformat(decision.forecast["empty_at_early"]) - timedelta(days=3)
        history = orders.history(session=session, order_id=lines["black"].id)
    assert hand_off.available_at == latest > printer.now + timedelta(hours=2), "black's latest useful moment"
    assert all(order.hand_off_at == latest for order in printer.orders())
    with Session(engine) as session:
        [told] = session.exec(select(Notification).where(Notification.order_id == lines["black"].id)).all()
    assert f"cancel until {latest:%a %d %b %H:%M} (UTC)" in told.body, "announced once the shipment waits: its moment"
    assert "under the minimum basket of 100: it waits as long as the forecasts allow" in (history[-1].reason or "")


def test_a_pulled_forward_line_taken_out_leaves_the_slot_to_order_at_its_own_time(engine: Engine):
    printer = Printer(engine)
    cyan = by_slot(printer, printer.run())["cyan"]
    with transaction(engine) as session:
        orders.remove_line(
            session=session,
            shipment_id=cyan.shipment_id or "",
            order_id=cyan.id,
            actor="ada",
            now=printer.now,
            reason=None,
        )
    # Five days on, cyan's own order moment has come: it orders, in a shipment of its own.
    found = by_slot(printer, [o for o in printer.run(since_day=DAYS + 1, until_day=DAYS + 5) if o.id != cyan.id])
    assert found["cyan"].status == OrderStatus.PLACED
    assert found["cyan"].shipment_id != cyan.shipment_id
    assert "pulled forward" not in printer.reason(found["cyan"])

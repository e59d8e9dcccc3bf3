"""Automation over a real database: one decision per depletion cycle, however the history looks when it ticks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from replenish.automation.service import evaluate_all
from replenish.consent.schemas import ConsentDocument
from replenish.constants import ConsentMode
from replenish.customers import service as customers
from replenish.db import transaction
from replenish.devices import service as devices
from replenish.devices.models import Slot as DeviceSlot
from replenish.devices.schemas import DeviceCreate, SlotCreate
from replenish.ingest.schemas import IncomingMessage
from replenish.ingest.service import ingest_batch
from replenish.orders.models import Order

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Slot:
    """One auto-ordering ink slot; readings go in through the real ingest service."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.seq = 0
        with transaction(engine) as session:
            customer = customers.create(
                session=session,
                name="Ada",
                email="ada@example.com",
                consent_document=ConsentDocument(default_mode=ConsentMode.AUTO_ORDER),
                actor="test",
                now=T0,
            )
            devices.register(
                session=session,
                actor="test",
                request=DeviceCreate(
                    id="printer-1",
                    customer_id=customer.id,
                    kind="printer",
                    name="P",
                    slots=[SlotCreate(name="black", product_sku="INK", lead_time_days=3)],
                ),
                now=T0,
            )

    def report(self, at: datetime, level: float) -> None:
        self.seq += 1
        payload = json.dumps({"seq": self.seq, "ts": at.isoformat(), "levels": {"black": round(level, 5)}})
        with transaction(self.engine) as session:
            result = ingest_batch(
                session=session,
                messages=[IncomingMessage("devices/printer-1/telemetry", payload.encode(), received_at=at)],
            )
        assert result.stored == 1

    def evaluate(self, at: datetime) -> None:
        report = evaluate_all(engine=self.engine, now=at, margin_days=1.0)
        assert report.errors == 0

    def orders(self) -> list[Order]:
        with Session(self.engine) as session:
            return list(session.exec(select(Order)))


@pytest.fixture
def slot(engine: Engine) -> Slot:
    return Slot(engine)


def test_a_cycle_longer_than_the_history_window_is_ordered_once(slot: Slot):
    # A light user: 0.5% a day for 200 days. The forecast reads only the last 120 days, so the first reading it
    # sees moves every tick; the cycle must not.
    moment = T0
    while moment <= T0 + timedelta(days=200):
        slot.report(moment, max(1.0 - 0.005 * (moment - T0).days, 0.0))
        if moment >= T0 + timedelta(days=185):
            slot.evaluate(moment)
        moment += timedelta(hours=12)
    assert len(slot.orders()) == 1


@pytest.mark.parametrize(
    ("every_hours", "low", "silent"),
    [
        pytest.param(12, (55.5,), (), id="a-glitch"),
        pytest.param(12, (55.5,), (55.6, 58.0), id="a-glitch-then-silence"),
        pytest.param(24, (57.0, 58.0, 59.0), (), id="a-dip-of-three-daily-readings"),
    ],
)
def test_what_starts_the_history_window_is_no_refill(
    slot: Slot, every_hours: int, low: tuple[float, ...], silent: tuple[float, ...]
):
    # 1% a day. Around day 97, 42 days after the readings in ``low`` (0.3 below the real level; the dip: empty),
    # the history window begins with them, without the readings before that showed them for a glitch or a dip: the
    # next reading, back at the real level, looks like a refill of weeks ago. The cycle ordered about day 94 must
    # not become a new one that orders again.
    moment, evaluations = T0, T0 + timedelta(days=90)
    while moment <= T0 + timedelta(days=100):
        day = (moment - T0) / timedelta(days=1)
        level = max(1.0 - 0.01 * day, 0.0)
        if not (silent and silent[0] <= day < silent[1]):
            dip = every_hours == 24
            slot.report(moment, (0.0 if dip else level - 0.3) if day in low else level)
        while evaluations <= moment:
            slot.evaluate(evaluations)
            evaluations += timedelta(hours=12)
        moment += timedelta(hours=every_hours)
    [order] = slot.orders()
    assert order.created_at < T0 + timedelta(days=97)


def test_a_new_slots_refill_after_its_first_few_readings_starts_a_cycle(slot: Slot):
    # Its readings all fit in the history window: nothing at its start is an edge to mistake.
    levels = [0.5, 0.45, 0.4, 1.0, 0.99]
    for step, level in enumerate(levels):
        slot.report(T0 + step * timedelta(hours=6), level)
        slot.evaluate(T0 + step * timedelta(hours=6))
    with Session(slot.engine) as session:
        [row] = session.exec(select(DeviceSlot))
    assert row.cycle_started_at == T0 + 3 * timedelta(hours=6)


def test_a_late_reading_from_before_a_refill_does_not_start_another_cycle(slot: Slot):
    def deplete(start: datetime, level: float, rate: float, days: float) -> datetime:
        moment = start
        while moment <= start + timedelta(days=days):
            slot.report(moment, level - rate * (moment - start) / timedelta(days=1))
            slot.evaluate(moment)
            moment += timedelta(hours=6)
        return moment

    deplete(T0, 0.5, 0.05, 8)
    assert len(slot.orders()) == 1
    refill = T0 + timedelta(days=9)
    end = deplete(refill, 1.0, 0.2, 4.5)
    assert len(slot.orders()) == 2, "the refill started a new cycle, which ran low in its turn"

    # The device's buffered report from just before the refill arrives now.
    slot.report(refill - timedelta(hours=1), 0.99)
    slot.evaluate(end)
    slot.evaluate(end + timedelta(hours=6))
    assert len(slot.orders()) == 2


def _until_the_first_order(slot: Slot) -> tuple[datetime, int]:
    """Half a cartridge used at 0.05 a day, read every 6 hours, until the slot orders. Returns the next reading's
    moment and step."""
    moment, step = T0, 0
    while not slot.orders():
        slot.report(moment, 0.5 - 0.05 * step / 4)
        slot.evaluate(moment)
        moment, step = moment + timedelta(hours=6), step + 1
        assert step < 60
    return moment, step


def test_a_refill_while_an_order_is_on_its_way_gets_its_own_order(slot: Slot):
    moment, _ = _until_the_first_order(slot)
    first_order = moment - timedelta(hours=6)
    # The customer restocks elsewhere (to 0.6) the next morning, then uses it 2.4 times as fast as before.
    for step in range(12):
        slot.report(moment, 0.6 - 0.12 * step / 4)
        slot.evaluate(moment)
        moment += timedelta(hours=6)
    orders = slot.orders()
    assert len(orders) == 2, "the new cycle runs low before the first delivery was due, and gets its own order"
    second_order = max(order.created_at for order in orders)
    assert second_order < first_order + timedelta(days=3 + 1)


@pytest.mark.parametrize("glitch", [(1.0, 1.0, 1.0), (0.6, 0.6)], ids=["full-three-times", "0.6-twice"])
@pytest.mark.parametrize("then", ["empty", "the-true-level"])
def test_a_glitch_right_after_an_order_does_not_order_again(slot: Slot, glitch: tuple[float, ...], then: str):
    moment, step = _until_the_first_order(slot)
    ordered_at = moment - timedelta(hours=6)
    # The sensor reads high for a few readings running (a refill to the forecast), then low again: empty, or the
    # level the slot really has, going on down, until the first delivery is due.
    for level in glitch:
        slot.report(moment, level)
        slot.evaluate(moment)
        moment, step = moment + timedelta(hours=6), step + 1
    while moment < ordered_at + timedelta(days=3 + 1):
        slot.report(moment, 0.0 if then == "empty" else max(0.5 - 0.05 * step / 4, 0.0))
        slot.evaluate(moment)
        moment, step = moment + timedelta(hours=6), step + 1
    assert len(slot.orders()) == 1, "the first order is still on its way"


def test_a_pass_stops_between_slots_when_the_process_stops(slot: Slot):
    slot.report(T0, 0.5)
    report = evaluate_all(engine=slot.engine, now=T0, margin_days=1.0, should_stop=lambda: True)
    assert report.interrupted and report.slots == 0, "nothing more is started once the process stops"
    report = evaluate_all(engine=slot.engine, now=T0, margin_days=1.0)
    assert not report.interrupted and report.slots == 1

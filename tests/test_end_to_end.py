"""The spine, end to end: a simulated printer publishes through the real embedded broker, the platform forecasts in
simulated time (a manual clock), and exactly one order is placed for the ink that runs out first."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlmodel import Session, col, select

from replenish.clock import ManualClock
from replenish.config import MqttEndpoint
from replenish.constants import OutboxKind
from replenish.ingest.models import Reading
from replenish.outbox.models import OutboxMessage
from replenish.runtime import Platform
from replenish.simulation.devices import PrinterModel
from replenish.simulation.runner import run_device
from support.api import api_client, create_customer, operator_token, register_device
from support.mqtt import DEVICE_SECRETS, Publisher
from support.platform import START, make_settings, running_platform

pytestmark = pytest.mark.both_stacks

DAYS = 20
TICK = timedelta(hours=6)


def as_device(platform: Platform, device_id: str, publisher: Publisher | None = None) -> MqttEndpoint:
    """The platform's broker, signed in as a registered device with the secret it was issued (on Mosquitto, on the
    devices' listener the publisher knows)."""
    port = publisher.devices_port() if publisher else platform.settings.mqtt_endpoint.port
    return replace(platform.settings.mqtt_endpoint, port=port, username=device_id, password=DEVICE_SECRETS[device_id])


def _printer() -> PrinterModel:
    return PrinterModel(
        "printer-e2e",
        start=START,
        seed=42,
        report_interval=timedelta(hours=1),
        initial_levels={"black": 0.55, "cyan": 0.95, "magenta": 0.9, "yellow": 0.92},
    )


def _replay(platform: Platform, clock: ManualClock, until: timedelta) -> None:
    """Tick the automation job every 6 simulated hours, as the scheduler would, seeing only the past."""
    moment = START
    while moment <= START + until:
        clock.set(moment)
        report = platform.jobs.evaluate()
        assert report.errors == 0
        moment += TICK


@pytest.mark.slow
def test_printer_simulator_gets_exactly_one_order_for_the_ink_that_runs_out_first(platform, api, publisher, clock):
    customer_id = create_customer(api, mode="auto_order")
    model = _printer()
    slots = [
        {"name": s.name, "unit": s.unit, "capacity": s.capacity, "product_sku": f"INK-{s.name}", "lead_time_days": 3}
        for s in model.slots
    ]
    register_device(api, customer_id=customer_id, device_id=model.device_id, slots=slots)

    published = run_device(
        model, as_device(platform, model.device_id, publisher), speed=float("inf"), duration=timedelta(days=DAYS)
    )
    # Every telemetry message plus the retained "online" and the clean "offline" status.
    assert platform.ingestor.wait_for(handled=published + 2, timeout=30), platform.ingestor.totals
    assert platform.ingestor.totals.dead_letters == 0

    _replay(platform, clock, timedelta(days=DAYS))

    orders = api.get("/orders", params={"customer_id": customer_id}).json()
    assert len(orders) == 1, orders
    order = api.get(f"/orders/{orders[0]['id']}").json()
    assert order["status"] == "placed"
    assert order["product_sku"] == "INK-black"
    explanation = order["explanation"]
    assert explanation["slot_name"] == "black"
    assert explanation["consent_mode"] == "auto_order"
    assert explanation["consent_version"] == 1
    assert explanation["readings"], "the order names the readings its forecast used"
    assert all(r["ts"] <= order["created_at"] for r in explanation["readings"]), "no look-ahead"

    # It was placed in time: an order placed then, delivered after the 3-day lead time, arrives before black is empty.
    with Session(platform.engine) as session:
        empty_at = session.exec(
            select(Reading.ts)
            .where(Reading.slot_id == order["slot_id"], Reading.level <= 0.0)
            .order_by(col(Reading.ts))
        ).first()
    assert empty_at is not None, "the trace should run black dry"
    placed_at = clock.now().fromisoformat(order["created_at"].replace("Z", "+00:00"))
    assert placed_at + timedelta(days=3) <= empty_at
    # ...and not absurdly early: within 8 days of running out.
    assert empty_at - placed_at <= timedelta(days=8)

    # The fulfilment sink receives it through the outbox, as the one line of its shipment.
    platform.jobs.dispatch()
    with Session(platform.engine) as session:
        sent = session.exec(select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.SHIPMENT_PLACED)).all()
    assert [m.idempotency_key for m in sent] == [f"shipment:{order['shipment_id']}:placed"]
    assert [line["order_id"] for line in sent[0].payload["lines"]] == [order["id"]]
    assert sent[0].delivered_at is not None


def test_duplicate_telemetry_and_a_restart_never_create_a_second_order(tmp_path, clock):
    settings = make_settings(tmp_path)
    with running_platform(settings, clock) as first:
        with api_client(first, operator_token(first)) as api:
            customer_id = create_customer(api, mode="auto_order")
            register_device(api, customer_id=customer_id, device_id="printer-e2e")
        device = as_device(first, "printer-e2e")
        published = run_device(_printer(), device, speed=float("inf"), duration=timedelta(days=DAYS))
        assert first.ingestor.wait_for(handled=published + 2, timeout=30)
        _replay(first, clock, timedelta(days=DAYS // 2 + 4))
        # The device sends its whole history again (a reconnect storm): all duplicates.
        again = run_device(_printer(), device, speed=float("inf"), duration=timedelta(days=DAYS))
        assert first.ingestor.wait_for(handled=published + again + 4, timeout=30)
        assert first.ingestor.totals.duplicates == again

    with running_platform(settings, clock) as second:
        _replay(second, clock, timedelta(days=DAYS))
        with api_client(second, operator_token(second)) as api:
            orders = api.get("/orders").json()
        assert len(orders) == 1
        assert orders[0]["product_sku"] == "INK-BLACK"

"""Consent as the customer sets it, through the real API, acting on real orders: revocation, spending limits,
pause windows and fleet learning."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from replenish.automation.engine import DECIDED_STEP, FAR_STEP
from replenish.constants import OutboxKind
from replenish.outbox.models import OutboxMessage
from replenish.runtime import Platform
from support.api import INK_SLOTS, create_customer, customer_api, register_device, set_consent
from support.mqtt import publish_depletion
from support.platform import START, report_running_low

# Both stacks only where the broker or the database is what the test is about: a revocation locks the customer's open
# orders.

DAYS = 8


def run_low(platform: Platform, publisher, clock, *, device_id: str = "printer-1", slots=("black",)) -> int:
    """The slots run low (support.platform.report_running_low) and the clock moves to the end of their readings."""
    sent = report_running_low(platform, publisher, device_id=device_id, slots=slots, days=DAYS)
    clock.set(START + timedelta(days=DAYS))
    return sent


def publish_more(platform: Platform, publisher, *, already: int, **depletion: Any) -> int:
    """Publish after earlier messages, and wait until the ingestor has handled all of them."""
    total = already + publish_depletion(publisher, **depletion)
    assert platform.ingestor.wait_for(handled=total, timeout=20)
    return total


def fulfilment_keys(platform: Platform) -> list[str]:
    with Session(platform.engine) as session:
        return [
            m.idempotency_key
            for m in session.exec(
                select(OutboxMessage).where(OutboxMessage.kind != OutboxKind.NOTIFICATION).order_by(OutboxMessage.id)
            )
        ]


def cancellations(platform: Platform) -> list[str]:
    with Session(platform.engine) as session:
        return [
            m.idempotency_key
            for m in session.exec(select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.ORDER_CANCELLED))
        ]


def priced(price: str | None, quantity: int = 1) -> list[dict[str, Any]]:
    return [slot | {"unit_price": price, "order_quantity": quantity} for slot in INK_SLOTS]


@pytest.fixture
def customer(api: httpx.Client) -> str:
    customer_id = create_customer(api, mode="auto_order")
    register_device(api, customer_id=customer_id, device_id="printer-1", slots=priced("30.00"))
    return customer_id


@pytest.mark.both_stacks
def test_a_revocation_cancels_open_orders_at_once_and_the_next_decision_uses_the_new_version(
    platform, api, publisher, clock, customer
):
    sent = run_low(platform, publisher, clock, slots=("black",))
    platform.jobs.evaluate()
    platform.jobs.dispatch()  # fulfilment has it (black is inside its lead time: no cancel window)
    [order] = api.get("/orders").json()
    assert (order["status"], order["consent_version"]) == ("placed", 1)

    with customer_api(platform, "ada@example.com") as ada:
        changed = ada.put(f"/customers/{customer}/consent", json={"default_mode": "notify_only"})
    assert changed.status_code == 200 and changed.json()["version"] == 2
    cancelled = api.get(f"/orders/{order['id']}").json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["consent_version"] == 1, "an order keeps the version it ran under"
    last = cancelled["history"][-1]
    assert last["actor"] == "customer:ada@example.com"
    assert last["reason"] == "consent version 2 changed printer-1/black from auto_order to notify_only"
    assert cancellations(platform) == [f"order:{order['id']}:cancelled"], "fulfilment is told"

    # The very next decision, on another slot, runs under version 2: a notification, no order.
    publish_more(
        platform,
        publisher,
        already=sent,
        device_id="printer-1",
        slot="cyan",
        start=START,
        start_level=0.5,
        rate_per_day=0.05,
        days=DAYS,
        first_seq=1000,
    )
    platform.jobs.evaluate()
    assert len(api.get("/orders").json()) == 1
    [notification] = [n for n in api.get("/notifications").json() if n["kind"] == "low"]
    assert "cyan" in notification["subject"] and notification["consent_version"] == 2


def test_a_revocation_can_hold_open_orders_for_the_customer_to_decide(platform, api, publisher, clock, customer):
    run_low(platform, publisher, clock)
    platform.jobs.evaluate()
    platform.jobs.dispatch()
    [order] = api.get("/orders").json()
    set_consent(api, customer, {"default_mode": "off", "on_revoke": "hold"})
    held = api.get(f"/orders/{order['id']}").json()
    assert held["status"] == "held"
    assert held["history"][-1]["reason"] == "consent version 2 changed printer-1/black from auto_order to off"
    assert cancellations(platform) == []
    assert fulfilment_keys(platform)[-1] == f"order:{order['id']}:held:2", "fulfilment is told to hold it"
    [notice] = [n for n in api.get("/notifications").json() if n["kind"] == "order_changed"]
    assert notice["subject"].startswith("Order held") and "approve it" in notice["body"]
    assert notice["consent_version"] == 2
    # A change that keeps ordering away touches nothing more.
    set_consent(api, customer, {"default_mode": "off", "on_revoke": "hold", "timezone": "Europe/Paris"})
    assert len(api.get(f"/orders/{order['id']}").json()["history"]) == len(held["history"])
    # The customer decides: released, it goes on, and fulfilment hears so.
    with customer_api(platform, "ada@example.com") as ada:
        released = ada.post(f"/orders/{order['id']}/approve").json()
    assert released["status"] == "placed"
    assert fulfilment_keys(platform)[-1] == f"order:{order['id']}:released:3"


def test_an_order_over_the_monthly_cap_asks_first(platform, api, publisher, clock, customer):
    set_consent(api, customer, {"default_mode": "auto_order", "monthly_spending_cap": "50"})
    run_low(platform, publisher, clock, slots=("black", "cyan"))
    platform.jobs.evaluate()
    orders = sorted(api.get("/orders").json(), key=lambda o: o["created_at"] + o["id"])
    by_status = {o["status"]: o for o in orders}
    assert set(by_status) == {"placed", "awaiting_approval"}, orders
    assert by_status["placed"]["total_price"] == "30.00"
    asks = api.get(f"/orders/{by_status['awaiting_approval']['id']}").json()
    assert "30.00 on top of 30.00 spent this month exceeds the cap of 50" in asks["explanation"]["reason"]
    # The customer may still say yes: the cap limits the platform, not the customer.
    with customer_api(platform, "ada@example.com") as ada:
        assert ada.post(f"/orders/{asks['id']}/approve").json()["status"] == "placed"


def test_an_order_for_more_than_the_maximum_quantity_or_at_an_unknown_price_asks_first(platform, api, publisher, clock):
    customer_id = create_customer(api, mode="auto_order")
    register_device(api, customer_id=customer_id, device_id="printer-1", slots=priced("10.00", quantity=3))
    register_device(api, customer_id=customer_id, device_id="printer-2", slots=priced(None))
    set_consent(
        api, customer_id, {"default_mode": "auto_order", "max_quantity_per_order": 2, "monthly_spending_cap": "500"}
    )
    sent = run_low(platform, publisher, clock, device_id="printer-1")
    publish_more(
        platform,
        publisher,
        already=sent,
        device_id="printer-2",
        slot="black",
        start=START,
        start_level=0.5,
        rate_per_day=0.05,
        days=DAYS,
    )
    platform.jobs.evaluate()
    reasons = {
        o["device_id"]: api.get(f"/orders/{o['id']}").json()["explanation"]["reason"]
        for o in api.get("/orders", params={"status": "awaiting_approval"}).json()
    }
    assert "3 units exceed the maximum of 2 per order" in reasons["printer-1"]
    assert "the price is unknown" in reasons["printer-2"]


def test_nothing_is_ordered_during_a_pause_and_the_forecast_counts_the_absence(
    platform, api, publisher, clock, customer
):
    sent = run_low(platform, publisher, clock)  # now START + 8 days, 2026-11-10: two days of black left
    black = "printer-1/black"
    set_consent(
        api,
        customer,
        {
            "default_mode": "auto_order",
            "pause_windows": [{"start": "2026-11-10", "end": "2026-11-20", "targets": [black], "note": "away"}],
        },
    )
    platform.jobs.evaluate()
    assert api.get("/orders").json() == [], "away: nothing is ordered"
    slot = next(s for s in api.get("/devices/printer-1").json()["slots"] if s["name"] == "black")
    # The window starts at midnight: 2.5 days of ink were left then, and none is used until the return at
    # midnight on 2026-11-21.
    assert slot["forecast"]["empty_at"] == "2026-11-23T08:00:00+00:00"

    clock.set(START + timedelta(days=19, hours=12))  # 2026-11-21 20:00, back home
    publish_more(
        platform,
        publisher,
        already=sent,
        device_id="printer-1",
        slot="black",
        start=clock.now() - timedelta(hours=12),
        start_level=0.1,
        rate_per_day=0.05,
        days=0.5,
        first_seq=500,
    )
    platform.jobs.evaluate()
    [order] = api.get("/orders").json()
    assert order["status"] == "placed" and order["consent_version"] == 2


def test_a_customers_rates_help_the_fleet_only_with_consent(platform, api, publisher, clock):
    lenders = []
    for number in range(3):
        customer_id = create_customer(api, email=f"lender{number}@example.com", mode="off")
        register_device(api, customer_id=customer_id, device_id=f"printer-{number}")
        lenders.append(customer_id)
    newcomer = create_customer(api, email="new@example.com", mode="off")
    register_device(api, customer_id=newcomer, device_id="printer-new")
    sent = sum(
        publish_depletion(
            publisher,
            device_id=f"printer-{number}",
            slot="black",
            start=START,
            start_level=0.9,
            rate_per_day=0.04,
            days=DAYS,
        )
        for number in range(3)
    )
    newcomers = publish_depletion(
        publisher,
        device_id="printer-new",
        slot="black",
        start=START + timedelta(days=DAYS - 0.25),
        start_level=0.8,
        rate_per_day=0.04,
        days=0.25,
    )
    sent += newcomers
    assert platform.ingestor.wait_for(handled=sent, timeout=20)
    clock.set(START + timedelta(days=DAYS))
    newcomers_readings = itertools.count(newcomers + 1)

    def newcomers_prior() -> float | None:
        platform.jobs.evaluate()  # the lenders' forecasts (a consent change makes them due again)
        # The newcomer's next reading once the evaluator has read the fleet's rates again, and once no screen lets
        # the reading wait: it is forecast with the fleet's rates of then.
        clock.advance(max(platform.jobs.fleet.refresh, FAR_STEP, DECIDED_STEP))
        publisher.send(
            "devices/printer-new/telemetry",
            {"seq": next(newcomers_readings), "ts": clock.now().isoformat(), "levels": {"black": 0.78}},
        )
        nonlocal sent
        sent += 1
        assert platform.ingestor.wait_for(handled=sent, timeout=20)
        platform.jobs.evaluate()
        black = next(s for s in api.get("/devices/printer-new").json()["slots"] if s["name"] == "black")
        return black["forecast"]["prior_rate_per_day"]

    assert newcomers_prior() is None, "nobody has agreed to share"
    for customer_id in lenders:
        set_consent(api, customer_id, {"default_mode": "off", "fleet_learning_allowed": True})
    assert newcomers_prior() == pytest.approx(0.04, rel=0.05)
    set_consent(api, lenders[0], {"default_mode": "off", "fleet_learning_allowed": False})
    assert newcomers_prior() is None, "two lenders are too few for a prior"


def test_a_released_order_goes_back_to_where_it_was_and_fulfilment_may_still_ship_a_held_one(
    platform, api, publisher, clock, customer
):
    run_low(platform, publisher, clock, slots=("black", "cyan"))
    platform.jobs.evaluate()
    platform.jobs.dispatch()
    first, second = sorted(api.get("/orders").json(), key=lambda o: o["id"])
    api.post(f"/orders/{first['id']}/fulfilment", json={"status": "confirmed"}).raise_for_status()
    set_consent(api, customer, {"default_mode": "off", "on_revoke": "hold"})
    assert {api.get(f"/orders/{o['id']}").json()["status"] for o in (first, second)} == {"held"}
    with customer_api(platform, "ada@example.com") as ada:
        assert ada.post(f"/orders/{first['id']}/approve").json()["status"] == "confirmed"
    # The partner shipped the other before it saw the hold: it may say so.
    shipped = api.post(f"/orders/{second['id']}/fulfilment", json={"status": "shipped"})
    assert shipped.status_code == 200 and shipped.json()["status"] == "shipped"

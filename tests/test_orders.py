"""Consent decides what an order becomes; the customer approves, declines or cancels through the API."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlmodel import Session, select

from replenish.constants import OutboxKind
from replenish.outbox.models import OutboxMessage
from replenish.runtime import Platform
from support.api import create_customer, customer_api, register_device, set_consent
from support.mqtt import publish_depletion
from support.platform import START, report_running_low

# Both stacks only where the broker or the database is what the test is about: an approval and a cancellation take row
# locks on PostgreSQL.

DAYS = 8


@pytest.fixture
def customer(api: httpx.Client) -> str:
    customer_id = create_customer(api, mode="ask_first")
    register_device(api, customer_id=customer_id, device_id="printer-1")
    return customer_id


def run_low(platform: Platform, publisher, clock, *, slot: str = "black", device_id: str = "printer-1") -> None:
    """The slot runs low (support.platform.report_running_low) and the clock moves to the end of its readings."""
    report_running_low(platform, publisher, device_id=device_id, slots=(slot,), days=DAYS)
    clock.set(START + timedelta(days=DAYS))


def outbox_keys(platform: Platform) -> list[str]:
    with Session(platform.engine) as session:
        return [
            m.idempotency_key
            for m in session.exec(select(OutboxMessage).where(OutboxMessage.kind != OutboxKind.NOTIFICATION))
        ]


@pytest.mark.both_stacks
def test_ask_first_waits_for_approval_then_places(platform, api, publisher, clock, customer):
    run_low(platform, publisher, clock)
    platform.jobs.evaluate()
    [order] = api.get("/orders").json()
    assert order["status"] == "awaiting_approval"
    assert outbox_keys(platform) == [], "nothing goes to fulfilment before the customer says yes"
    assert api.get("/orders", params={"status": "awaiting_approval"}).json()[0]["id"] == order["id"]

    with customer_api(platform, "ada@example.com") as ada:
        approved = ada.post(f"/orders/{order['id']}/approve").json()
    assert approved["status"] == "placed"
    assert [(e["from_status"], e["to_status"], e["actor"]) for e in approved["history"]] == [
        (None, "awaiting_approval", "automation"),
        ("awaiting_approval", "placed", "customer:ada@example.com"),
    ]
    # The line goes to fulfilment in its shipment's one payload.
    assert outbox_keys(platform) == [f"shipment:{order['shipment_id']}:placed"]
    # A repeated click is harmless and sends nothing twice.
    assert api.post(f"/orders/{order['id']}/approve").status_code == 200
    assert outbox_keys(platform) == [f"shipment:{order['shipment_id']}:placed"]

    # Fulfilment reports progress; a delivered order cannot be cancelled.
    for status in ("confirmed", "shipped", "delivered"):
        response = api.post(f"/orders/{order['id']}/fulfilment", json={"status": status})
        assert response.json()["status"] == status
    response = api.post(f"/orders/{order['id']}/cancel")
    assert response.status_code == 409
    assert "delivered" in response.json()["detail"]


def test_decline_is_final_and_the_cycle_is_not_asked_again(platform, api, publisher, clock, customer):
    run_low(platform, publisher, clock)
    platform.jobs.evaluate()
    [order] = api.get("/orders").json()
    declined = api.post(f"/orders/{order['id']}/decline", json={"reason": "bought some at the shop"})
    assert declined.json()["status"] == "declined"
    assert declined.json()["history"][-1]["reason"] == "bought some at the shop"
    assert api.post(f"/orders/{order['id']}/approve").status_code == 409

    clock.advance(timedelta(hours=6))
    platform.jobs.evaluate()
    assert len(api.get("/orders").json()) == 1, "one decision per depletion cycle, even after a decline"
    assert outbox_keys(platform) == []


@pytest.mark.both_stacks
def test_cancel_a_placed_order_tells_fulfilment(platform, api, publisher, clock, customer):
    set_consent(api, customer, {"default_mode": "auto_order"})
    run_low(platform, publisher, clock)
    platform.jobs.evaluate()
    [order] = api.get("/orders").json()
    assert order["status"] == "placed"
    assert order["consent_version"] == 2
    platform.jobs.dispatch()  # black is inside its lead time: no cancel window, fulfilment has it at once
    cancelled = api.post(f"/orders/{order['id']}/cancel", json={"reason": "changed my mind"}).json()
    assert cancelled["status"] == "cancelled"
    assert outbox_keys(platform) == [f"shipment:{order['shipment_id']}:placed", f"order:{order['id']}:cancelled"]


def test_notify_only_records_a_notification_and_no_order(platform, api, publisher, clock, customer):
    set_consent(api, customer, {"default_mode": "off", "slot_modes": {"printer-1/black": "notify_only"}})
    run_low(platform, publisher, clock)
    platform.jobs.evaluate()
    platform.jobs.evaluate()
    assert api.get("/orders").json() == []
    [notification] = api.get("/notifications", params={"customer_id": customer}).json()
    assert "black" in notification["subject"]
    assert notification["consent_version"] == 2
    assert notification["decision_id"]
    why = api.get(f"/notifications/{notification['id']}").json()["explanation"]
    assert (why["action"], why["consent_mode"], why["consent_version"]) == ("notify", "notify_only", 2)
    assert why["forecast"]["status"] == "ok" and len(why["readings"]) == 33 and why["policy"]["lead_time_days"] == 3
    platform.jobs.dispatch()
    assert api.get("/notifications").json()[0]["sent_at"] is not None


def test_off_does_nothing(platform, api, publisher, clock, customer):
    set_consent(api, customer, {"default_mode": "auto_order", "device_modes": {"printer-1": "off"}})
    run_low(platform, publisher, clock)
    platform.jobs.evaluate()
    assert api.get("/orders").json() == []
    assert api.get("/notifications").json() == []
    black = next(s for s in api.get("/devices/printer-1").json()["slots"] if s["name"] == "black")
    assert black["forecast"]["status"] == "ok", "the forecast is still shown"


def test_no_order_while_there_is_plenty_left(platform, api, publisher, clock, customer):
    set_consent(api, customer, {"default_mode": "auto_order"})
    sent = publish_depletion(
        publisher, device_id="printer-1", slot="black", start=START, start_level=0.9, rate_per_day=0.02, days=5
    )
    assert platform.ingestor.wait_for(handled=sent, timeout=10)
    clock.set(START + timedelta(days=5))
    platform.jobs.evaluate()
    assert api.get("/orders").json() == []
    black = next(s for s in api.get("/devices/printer-1").json()["slots"] if s["name"] == "black")
    empty_at = black["forecast"]["empty_at"]
    assert empty_at.startswith("2026-12-17") or empty_at.startswith("2026-12-16"), empty_at


def test_a_refill_starts_a_new_cycle_with_a_new_order(platform, api, publisher, clock, customer):
    set_consent(api, customer, {"default_mode": "auto_order"})
    run_low(platform, publisher, clock)
    platform.jobs.evaluate()
    [first] = api.get("/orders").json()
    api.post(f"/orders/{first['id']}/fulfilment", json={"status": "confirmed"})
    # The cartridge is replaced and runs down again.
    refill_start = START + timedelta(days=DAYS, hours=6)
    sent = publish_depletion(
        publisher,
        device_id="printer-1",
        slot="black",
        start=refill_start,
        start_level=1.0,
        rate_per_day=0.1,
        days=7,
        first_seq=1000,
    )
    assert platform.ingestor.wait_for(handled=sent + 33, timeout=10)
    clock.set(refill_start + timedelta(days=7))
    platform.jobs.evaluate()
    orders = api.get("/orders").json()
    assert len(orders) == 2
    second = api.get(f"/orders/{orders[0]['id']}").json()
    assert second["explanation"]["cycle_started_at"] == refill_start.isoformat().replace("+00:00", "Z")


def test_unknown_order_is_404_and_bad_status_is_422(api):
    assert api.get("/orders/nope").status_code == 404
    assert api.post("/orders/nope/approve").status_code == 404
    response = api.get("/orders", params={"status": "lost"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "status"]

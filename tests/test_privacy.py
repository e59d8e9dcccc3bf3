"""Data rights through the real API and database: export everything, delete everything, keep telemetry only as long
as consented."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlmodel import Session, func, select

from replenish.db import transaction
from replenish.devices.models import Slot, SlotForecast, SlotWindow
from replenish.devices.service import mark_slots_due
from replenish.ingest.models import DeviceMessage
from replenish.runtime import Platform
from support.api import PASSWORD, create_customer, customer_api, iso, register_device, set_consent
from support.mqtt import publish_depletion
from support.platform import START

# Both stacks only where the broker or the database is what the test is about: deletion across tables (foreign keys
# are enforced differently) and retention by time.

DAYS = 8


def two_customers(platform: Platform, api, publisher, clock) -> tuple[str, str]:
    """Ada (auto-order, an order placed, a fall alert) and Bob (a printer with readings)."""
    ada = create_customer(api, email="ada@example.com", mode="auto_order")
    bob = create_customer(api, email="bob@example.com", mode="off")
    register_device(api, customer_id=ada, device_id="ada-printer")
    register_device(api, customer_id=ada, device_id="ada-pendant", kind="wearable", slots=[])
    register_device(api, customer_id=bob, device_id="bob-printer")
    sent = 0
    for device_id in ("ada-printer", "bob-printer"):
        sent += publish_depletion(
            publisher, device_id=device_id, slot="black", start=START, start_level=0.5, rate_per_day=0.05, days=DAYS
        )
    # Her fall reaches a contact at once: an escalation step, and the channel it tried.
    set_consent(
        api,
        ada,
        {
            "default_mode": "auto_order",
            "fall_cancel_window_seconds": 0,
            "emergency_contacts": [{"name": "Bea", "channel": "log"}],
        },
    )
    publisher.send("devices/ada-pendant/events", {"seq": 1, "ts": iso(START), "type": "fall_detected"})
    assert platform.ingestor.wait_for(handled=sent + 1, timeout=20)
    clock.set(START + timedelta(days=DAYS))
    platform.jobs.evaluate()
    return ada, bob


def count(platform: Platform, table: str) -> int:
    with Session(platform.engine) as session:
        return int(session.exec(text(f"SELECT count(*) FROM {table}")).one()[0])  # type: ignore[call-overload]


def test_a_customer_exports_everything_about_them_and_nothing_else(platform, api, publisher, clock):
    ada_id, _ = two_customers(platform, api, publisher, clock)
    with customer_api(platform, "ada@example.com") as ada:
        response = ada.get(f"/customers/{ada_id}/export")
    assert response.status_code == 200
    assert response.headers["content-disposition"] == f'attachment; filename="replenish-{ada_id}.json"'
    export = response.json()
    assert export["format"] == "replenish-export/1"
    assert export["customer"]["email"] == "ada@example.com"
    assert {d["id"] for d in export["devices"]} == {"ada-printer", "ada-pendant"}
    assert len(export["readings"]) == DAYS * 4 + 1
    assert len(export["messages"]) == DAYS * 4 + 2  # the telemetry and the fall
    assert [o["status"] for o in export["orders"]] == ["placed"]
    assert [a["kind"] for a in export["alerts"]] == ["fall"]
    assert [a["channel"] for a in export["alert_escalation_attempts"]] == ["log"]
    assert all("token_hash" not in a for a in export["alert_escalation_attempts"])
    assert len(export["consent_versions"]) == 2 and export["decisions"] and export["notifications"]
    assert {e["action"] for e in export["audit_events"]} >= {"auth.sign_in", "automation.decision"}
    assert export["accounts"][0]["email"] == "ada@example.com"
    assert "password_hash" not in response.text and "token_hash" not in response.text and "$argon2" not in response.text
    assert "bob" not in response.text
    assert api.get("/audit", params={"action": "customer.exported"}).json()[0]["customer_id"] == ada_id


@pytest.mark.both_stacks
def test_deleting_an_account_cancels_open_orders_and_removes_everything_but_anonymous_audit(
    platform, api, publisher, clock
):
    ada_id, bob_id = two_customers(platform, api, publisher, clock)
    [order] = api.get("/orders", params={"customer_id": ada_id}).json()
    platform.jobs.dispatch()  # fulfilment has the order
    bob_readings = len(api.get("/devices/bob-printer/slots/black/readings").json())
    ada = customer_api(platform, "ada@example.com")

    refused = ada.request("DELETE", f"/customers/{ada_id}", json={"confirm": "someone@example.com"})
    assert refused.status_code == 422 and refused.json()["field"] == "confirm"
    no_password = ada.request("DELETE", f"/customers/{ada_id}", json={"confirm": "ada@example.com"})
    assert no_password.status_code == 403, "a token alone cannot delete an account"
    assert ada.get("/devices").status_code == 200, "a refused deletion removes nothing"

    removed = ada.request("DELETE", f"/customers/{ada_id}", json={"confirm": "Ada@Example.com", "password": PASSWORD})
    assert removed.status_code == 200, removed.text
    counts = removed.json()
    assert counts["customers"] == 1 and counts["devices"] == 2 and counts["readings"] == DAYS * 4 + 1
    assert counts["orders"] == 1 and counts["alerts"] == 1 and counts["accounts"] == 1
    assert counts["alert_escalations"] == 1 and counts["alert_escalation_attempts"] == 1

    assert ada.get("/auth/me").status_code == 401, "the account is gone, and its tokens with it"
    assert api.get(f"/customers/{ada_id}").status_code == 404
    assert api.get(f"/orders/{order['id']}").status_code == 404
    # Fulfilment still hears that the placed order is off.
    with Session(platform.engine) as session:
        keys = [row[0] for row in session.exec(text("SELECT idempotency_key FROM outbox"))]  # type: ignore[call-overload]
    assert f"order:{order['id']}:cancelled" in keys
    # Nothing left that names her; the audit log keeps what happened, without her address.
    with Session(platform.engine) as session:
        for table in ("customers", "accounts", "audit_events", "consent_versions", "notifications", "outbox"):
            rows = session.exec(text(f"SELECT * FROM {table}")).all()  # type: ignore[call-overload]
            assert "ada@example.com" not in repr(rows), table
    deleted = api.get("/audit", params={"action": "customer.deleted"}).json()
    assert deleted[0]["subject_id"] == ada_id and deleted[0]["actor"] == "customer:deleted"
    # Bob is untouched, and the printer's id can be registered again, by someone else.
    assert len(api.get("/devices/bob-printer/slots/black/readings").json()) == bob_readings
    assert api.get(f"/customers/{bob_id}").status_code == 200
    register_device(api, customer_id=bob_id, device_id="ada-printer")


def windows_of(platform: Platform, device_id: str) -> int:
    with Session(platform.engine) as session:
        query = select(func.count()).select_from(SlotWindow).join(Slot).where(Slot.device_id == device_id)
        return session.exec(query).one()


def black_forecast(platform: Platform) -> dict[str, object]:
    with Session(platform.engine) as session:
        query = select(SlotForecast).join(Slot).where(Slot.device_id == "ada-printer", Slot.name == "black")
        return session.exec(query).one().forecast


@pytest.mark.both_stacks
def test_telemetry_received_longer_ago_than_the_consented_retention_is_deleted(platform, api, publisher, clock):
    ada_id, _ = two_customers(platform, api, publisher, clock)  # all received at START; now START + 8 days
    # Four more days of readings, received now (their timestamps say START: a device's clock proves nothing).
    sent = 2 * (DAYS * 4 + 1) + 1
    sent += publish_depletion(
        publisher,
        device_id="ada-printer",
        slot="cyan",
        start=START,
        start_level=0.9,
        rate_per_day=0.05,
        days=4,
        first_seq=1000,
    )
    assert platform.ingestor.wait_for(handled=sent, timeout=20)
    set_consent(api, ada_id, {"default_mode": "auto_order", "telemetry_retention_days": 3})
    platform.jobs.evaluate()  # the evaluator keeps each slot's reading window (SlotWindow)
    assert windows_of(platform, "ada-printer") > 0 and windows_of(platform, "bob-printer") > 0
    bob_windows = windows_of(platform, "bob-printer")
    before = count(platform, "readings")
    removed = platform.jobs.retention()
    # Ada's black readings, received eight days ago, go; the cyan ones just received stay; Bob keeps his year.
    assert removed["readings"] == DAYS * 4 + 1
    assert count(platform, "readings") == before - (DAYS * 4 + 1)
    assert len(api.get("/devices/ada-printer/slots/cyan/readings").json()) == 4 * 4 + 1
    assert api.get("/devices/ada-printer/slots/black/readings").json() == []
    # The windows that held Ada's deleted readings go too: her slots are read whole at their next evaluation.
    assert windows_of(platform, "ada-printer") == 0 and windows_of(platform, "bob-printer") == bob_windows
    assert black_forecast(platform)["readings_used"] > 0
    with transaction(platform.engine) as session:
        mark_slots_due(session=session, at=clock.now())
    platform.jobs.evaluate()
    assert black_forecast(platform)["readings_used"] == 0, "no forecast from deleted readings"
    with Session(platform.engine) as session:

        def oldest(device_id: str) -> object:
            query = select(func.min(DeviceMessage.received_at)).where(DeviceMessage.device_id == device_id)
            return session.exec(query).one()

        assert oldest("ada-printer") >= clock.now() - timedelta(days=3)
        assert oldest("ada-pendant") == START, "the fall that raised an alert is kept with the alert"
    assert len(api.get("/alerts", params={"customer_id": ada_id}).json()) == 1
    assert api.get("/devices/ada-pendant/events").json()[0]["type"] == "fall_detected"
    assert platform.jobs.retention() == {"readings": 0, "messages": 0, "dead_letters": 0}, "nothing twice"


def test_sign_up_and_delete_leave_no_account_behind(platform, api):
    anonymous_signup = {"name": "Cy", "email": "cy@example.com", "password": PASSWORD}
    created = api.post("/customers", json=anonymous_signup).json()
    with customer_api(platform, "cy@example.com") as cy:
        deletion = {"confirm": "cy@example.com", "password": PASSWORD}
        assert cy.request("DELETE", f"/customers/{created['id']}", json=deletion).status_code == 200
    assert count(platform, "accounts") == 1, "only the operator's"
    again = api.post("/customers", json=anonymous_signup)
    assert again.status_code == 201, "the e-mail is free again"

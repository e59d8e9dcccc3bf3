"""The HTTP API: resources, clear 4xx answers that name the field, consent versions, OpenAPI."""

from __future__ import annotations

from datetime import timedelta

import pytest

from support.api import INK_SLOTS, create_customer, iso, register_device, set_consent
from support.platform import START

# Both stacks only where the broker or the database is what the test is about: paging by time is SQL that each
# database orders its own way.


def test_customers_are_created_listed_and_unique_by_email(api):
    customer_id = create_customer(api, email="Grace@Example.com")
    assert api.get(f"/customers/{customer_id}").json()["email"] == "grace@example.com"
    assert [c["id"] for c in api.get("/customers").json()] == [customer_id]
    again = api.post("/customers", json={"name": "Grace", "email": "grace@example.com"})
    assert again.status_code == 409
    assert again.json()["field"] == "email"
    bad = api.post("/customers", json={"name": "", "email": "not-an-email"})
    assert bad.status_code == 422
    assert {tuple(e["loc"]) for e in bad.json()["detail"]} == {("body", "name"), ("body", "email")}
    assert api.get("/customers/nobody").status_code == 404


def test_device_registration_validates_every_field(api):
    customer_id = create_customer(api)
    cases = [
        ({"id": "has space"}, ("body", "id")),
        ({"id": "x" * 65}, ("body", "id")),
        ({"kind": "toaster"}, ("body", "kind")),
        ({"slots": [{**INK_SLOTS[0], "capacity": 0}]}, ("body", "slots", 0, "capacity")),
        ({"slots": [{**INK_SLOTS[0], "lead_time_days": -1}]}, ("body", "slots", 0, "lead_time_days")),
        ({"slots": [{"name": "black"}]}, ("body", "slots", 0, "product_sku")),
        ({"colour": "red"}, ("body", "colour")),
    ]
    for change, location in cases:
        body = {"id": "printer-1", "customer_id": customer_id, "kind": "printer", "name": "P", "slots": INK_SLOTS}
        response = api.post("/devices", json={**body, **change})
        assert response.status_code == 422, change
        assert location in [tuple(e["loc"]) for e in response.json()["detail"]], response.json()

    twice = api.post(
        "/devices",
        json={"id": "p", "customer_id": customer_id, "kind": "printer", "name": "P", "slots": INK_SLOTS[:1] * 2},
    )
    assert twice.status_code == 422
    assert "repeated: black" in twice.text

    missing_owner = api.post("/devices", json={"id": "p", "customer_id": "ghost", "kind": "printer", "name": "P"})
    assert missing_owner.status_code == 422
    assert missing_owner.json()["field"] == "customer_id"
    register_device(api, customer_id=customer_id, device_id="printer-1")
    duplicate = api.post(
        "/devices", json={"id": "printer-1", "customer_id": customer_id, "kind": "printer", "name": "P"}
    )
    assert duplicate.status_code == 409
    assert duplicate.json()["field"] == "id"


def test_devices_list_and_detail(api):
    ada = create_customer(api, email="ada@example.com")
    bob = create_customer(api, email="bob@example.com")
    register_device(api, customer_id=ada, device_id="printer-a")
    register_device(
        api,
        customer_id=bob,
        device_id="fridge-b",
        kind="fridge",
        slots=[{"name": "milk", "unit": "litre", "capacity": 2.0, "product_sku": "MILK", "lead_time_days": 1}],
    )
    assert [d["id"] for d in api.get("/devices", params={"customer_id": ada}).json()] == ["printer-a"]
    fridge = api.get("/devices/fridge-b").json()
    assert fridge["slots"][0] | {"id": None} == {
        "id": None,
        "name": "milk",
        "unit": "litre",
        "capacity": 2.0,
        "product_sku": "MILK",
        "substitute_skus": [],
        "lead_time_days": 1.0,
        "service_level": 0.97,
        "order_quantity": 1,
        "order_up_to_days": None,
        "unit_price": None,
        "level": None,
        "level_at": None,
        "forecast": None,
        "forecast_computed_at": None,
    }
    assert api.get("/devices/nothing").status_code == 404
    assert api.get("/devices/fridge-b/slots/eggs/readings").status_code == 404
    naive = api.get("/devices/fridge-b/slots/milk/readings", params={"since": "2026-11-01T00:00:00"})
    assert naive.status_code == 422
    assert naive.json()["detail"][0]["loc"] == ["query", "since"]


def test_consent_is_versioned_and_append_only(api):
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="printer-1")
    first = api.get(f"/customers/{customer_id}/consent").json()
    assert first["version"] == 1
    document = first["document"]
    assert (document["default_mode"], document["device_modes"], document["slot_modes"]) == ("ask_first", {}, {})
    # Privacy by default: nothing is shared for fleet learning, telemetry is kept a year, notifications go to the log.
    assert document["fleet_learning_allowed"] is False
    assert document["telemetry_retention_days"] == 365
    assert document["notification_channels"] == [{"type": "log", "address": None, "quiet_hours": None}]

    second = set_consent(
        api, customer_id, {"default_mode": "notify_only", "slot_modes": {"printer-1/black": "auto_order"}}
    )
    assert second["version"] == 2
    third = set_consent(api, customer_id, {"default_mode": "off"})
    assert third["version"] == 3
    versions = api.get(f"/customers/{customer_id}/consent/versions").json()
    assert [v["version"] for v in versions] == [1, 2, 3]
    assert versions[1]["document"]["slot_modes"] == {"printer-1/black": "auto_order"}
    assert api.get(f"/customers/{customer_id}/consent").json()["version"] == 3


def test_consent_rejects_what_it_cannot_mean(api):
    customer_id = create_customer(api)
    other = create_customer(api, email="other@example.com")
    register_device(api, customer_id=other, device_id="not-mine")
    register_device(api, customer_id=customer_id, device_id="printer-1")
    cases = [
        ({"default_mode": "sometimes"}, "default_mode"),
        ({"slot_modes": {"printer-1/rainbow": "auto_order"}}, "slot_modes"),
        ({"device_modes": {"not-mine": "auto_order"}}, "device_modes"),
        ({"slot_modes": {"not-mine/black": "auto_order"}}, "slot_modes"),
        ({"surprise": True}, "surprise"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"pause_windows": [{"start": "2026-12-26", "end": "2026-12-12"}]}, "pause_windows"),
        ({"pause_windows": [{"start": "2026-12-12", "end": "2026-12-26", "targets": ["not-mine"]}]}, "pause_windows"),
        ({"monthly_spending_cap": -5}, "monthly_spending_cap"),
        ({"max_quantity_per_order": 0}, "max_quantity_per_order"),
        ({"notification_channels": [{"type": "webhook"}]}, "notification_channels"),
        ({"notification_channels": [{"type": "email", "address": "not-an-address"}]}, "notification_channels"),
        ({"emergency_contacts": [{"name": "Kim", "channel": "email", "address": "kim@"}]}, "emergency_contacts"),
        ({"telemetry_retention_days": 0}, "telemetry_retention_days"),
        ({"on_revoke": "shrug"}, "on_revoke"),
    ]
    for document, field in cases:
        response = api.put(f"/customers/{customer_id}/consent", json=document)
        assert response.status_code == 422, document
        body = response.json()
        named = body.get("field") or [part for e in body["detail"] for part in e["loc"]]
        assert field in named, body
    assert api.get(f"/customers/{customer_id}/consent").json()["version"] == 1, "a refused change writes nothing"
    assert api.put("/customers/ghost/consent", json={}).status_code == 404


def test_openapi_documents_every_route(platform, api):
    import httpx

    spec = httpx.get(f"{platform.api_url}/openapi.json").json()
    paths = set(spec["paths"])
    for expected in (
        "/api/v1/customers",
        "/api/v1/customers/{customer_id}/consent",
        "/api/v1/devices",
        "/api/v1/devices/{device_id}",
        "/api/v1/devices/{device_id}/slots/{slot_name}/readings",
        "/api/v1/orders",
        "/api/v1/orders/{order_id}/approve",
        "/api/v1/orders/{order_id}/decline",
        "/api/v1/orders/{order_id}/cancel",
        "/api/v1/alerts",
        "/api/v1/alerts/{alert_id}/acknowledge",
        "/api/v1/dead-letters",
        "/healthz",
        "/readyz",
    ):
        assert expected in paths
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            assert operation.get("summary"), f"{path} has no summary"
    assert httpx.get(f"{platform.api_url}/readyz").json() == {
        "status": "ok",
        "database": "ok",
        "broker": "ok",
        "failed": [],
    }


@pytest.mark.both_stacks
def test_readings_page_by_time(platform, api, publisher):
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="printer-1")
    for seq in range(5):
        publisher.send(
            "devices/printer-1/telemetry",
            {"seq": seq, "ts": iso(START + timedelta(hours=seq)), "levels": {"black": (9 - seq) / 10}},
        )
    assert platform.ingestor.wait_for(handled=5, timeout=10)
    url = "/devices/printer-1/slots/black/readings"
    first = api.get(url, params={"limit": 2}).json()
    assert [r["level"] for r in first] == [0.5, 0.6]
    second = api.get(url, params={"limit": 2, "before": first[-1]["ts"]}).json()
    assert [r["level"] for r in second] == [0.7, 0.8]
    assert api.get(url, params={"before": "2026-11-02T10:00:00"}).json()["detail"][0]["loc"] == ["query", "before"]


def test_a_slot_s_service_level_and_lead_time_can_be_changed(api):
    customer = create_customer(api, email="ada@example.com")
    register_device(api, customer_id=customer, device_id="printer-a")
    changed = api.patch("/devices/printer-a/slots/black", json={"service_level": 0.99, "lead_time_days": 5})
    assert changed.status_code == 200, changed.text
    black = next(slot for slot in changed.json()["slots"] if slot["name"] == "black")
    assert (black["service_level"], black["lead_time_days"]) == (0.99, 5.0)
    assert api.get("/devices/printer-a").json() == changed.json()
    for body, field in (({"service_level": 1.0}, "service_level"), ({"lead_time_days": None}, "lead_time_days")):
        refused = api.patch("/devices/printer-a/slots/black", json=body)
        assert refused.status_code == 422, refused.text
        assert field in refused.text
    assert api.patch("/devices/printer-a/slots/nothing", json={"service_level": 0.9}).status_code == 404
    assert api.patch("/devices/printer-a/slots/black", json={"colour": "red"}).status_code == 422

"""Wearable events raise alerts at once (no scheduler tick); acknowledging tells the device."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from replenish.runtime import Platform
from support.api import create_customer, iso, register_device
from support.mqtt import CommandListener

# Both stacks only where the broker or the database is what the test is about: a fall through each broker, and a batch
# that holds a fall and its cancel on each database.


@pytest.fixture
def wearable(api: httpx.Client) -> str:
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
    return customer_id


@pytest.mark.both_stacks
def test_fall_raises_an_alert_without_waiting_for_a_tick(platform: Platform, api, publisher, clock, wearable):
    publisher.send(
        "devices/pendant-1/events", {"seq": 1, "ts": iso(clock.now()), "type": "fall_detected", "confidence": 0.93}
    )
    assert platform.ingestor.wait_for(handled=1, timeout=10)
    # No job has run: the alert comes from the ingest path itself.
    [alert] = api.get("/alerts", params={"customer_id": wearable}).json()
    assert alert["kind"] == "fall"
    assert alert["severity"] == "critical"
    assert alert["status"] == "open"
    assert alert["device_id"] == "pendant-1"
    assert alert["consent_version"] == 1
    why = api.get(f"/alerts/{alert['id']}").json()["explanation"]
    assert why["trigger"]["payload"] == {
        "seq": 1,
        "ts": why["trigger"]["payload"]["ts"],
        "type": "fall_detected",
        "confidence": 0.93,
    }
    assert why["consent_version"] == 1 and why["rule"].startswith("a fall_detected event opens a critical fall alert")
    [notification] = api.get("/notifications").json()
    assert notification["alert_id"] == alert["id"]


def test_repeated_falls_join_the_open_alert(platform, api, publisher, wearable):
    for seq in (1, 2, 3):
        publisher.send("devices/pendant-1/events", {"seq": seq, "type": "fall_detected"})
    assert platform.ingestor.wait_for(handled=3, timeout=10)
    [alert] = api.get("/alerts").json()
    assert alert["event_count"] == 3
    assert len(api.get("/notifications").json()) == 1


def test_the_wearer_cancels_a_false_alarm(platform, api, publisher, wearable):
    publisher.send("devices/pendant-1/events", {"seq": 1, "type": "fall_detected"})
    publisher.send("devices/pendant-1/events", {"seq": 2, "type": "fall_cancelled"})
    assert platform.ingestor.wait_for(handled=2, timeout=10)
    [alert] = api.get("/alerts").json()
    assert alert["status"] == "cancelled"
    assert alert["closed_reason"] == "cancelled by the wearer"
    assert api.get("/alerts", params={"status": "open"}).json() == []


def test_a_help_request_is_an_incident_and_a_low_battery_is_not(platform, api, publisher, wearable):
    publisher.send("devices/pendant-1/events", {"seq": 1, "type": "help_requested"})
    publisher.send("devices/pendant-1/events", {"seq": 2, "type": "battery_low", "battery": 0.1})
    assert platform.ingestor.wait_for(handled=2, timeout=10)
    kinds = {a["kind"]: a["severity"] for a in api.get("/alerts").json()}
    assert kinds == {"help_requested": "critical"}, "a low battery is a device health alarm (tests/test_health.py)"
    assert api.get("/devices/pendant-1").json()["battery"] == 0.1


def test_acknowledging_publishes_alert_acknowledged_to_the_device(platform, api, publisher, wearable):
    listener = CommandListener(platform.settings.mqtt_endpoint)
    try:
        publisher.send("devices/pendant-1/events", {"seq": 1, "type": "fall_detected"})
        assert platform.ingestor.wait_for(handled=1, timeout=10)
        [alert] = api.get("/alerts").json()
        acknowledged = api.post(f"/alerts/{alert['id']}/acknowledge", json={"by": "daughter"}).json()
        assert acknowledged["status"] == "acknowledged"
        assert acknowledged["acknowledged_by"] == "daughter (via operator:operator@example.com)"
        platform.jobs.dispatch()
        [(topic, command)] = listener.wait_for(1)
        assert topic == "devices/pendant-1/commands"
        assert command["type"] == "alert_acknowledged"
        assert command["alert_id"] == alert["id"]
        assert "ts" in command
        # Acknowledging again changes nothing and sends nothing more.
        assert api.post(f"/alerts/{alert['id']}/acknowledge").status_code == 200
        platform.jobs.dispatch()
        assert len(listener.wait_for(2, timeout=1)) == 1
    finally:
        listener.close()


def test_a_cancelled_alert_cannot_be_acknowledged(platform, api, publisher, wearable):
    publisher.send("devices/pendant-1/events", {"seq": 1, "type": "fall_detected"})
    publisher.send("devices/pendant-1/events", {"seq": 2, "type": "fall_cancelled"})
    assert platform.ingestor.wait_for(handled=2, timeout=10)
    [alert] = api.get("/alerts").json()
    response = api.post(f"/alerts/{alert['id']}/acknowledge")
    assert response.status_code == 409
    assert api.post("/alerts/missing/acknowledge").status_code == 404


def test_a_fall_after_an_acknowledged_one_is_a_new_alert(platform, api, publisher, clock, wearable):
    publisher.send("devices/pendant-1/events", {"seq": 1, "type": "fall_detected"})
    assert platform.ingestor.wait_for(handled=1, timeout=10)
    [first] = api.get("/alerts").json()
    api.post(f"/alerts/{first['id']}/acknowledge").raise_for_status()
    clock.advance(timedelta(days=7))
    publisher.send("devices/pendant-1/events", {"seq": 2, "type": "fall_detected"})
    assert platform.ingestor.wait_for(handled=2, timeout=10)
    alerts = api.get("/alerts").json()
    assert [a["status"] for a in alerts] == ["open", "acknowledged"]
    assert len(api.get("/notifications").json()) == 2, "the second fall reaches someone too"

    resolved = api.post(f"/alerts/{first['id']}/resolve", json={"reason": "she is fine"}).json()
    assert (resolved["status"], resolved["closed_reason"]) == ("resolved", "she is fine")
    assert api.post(f"/alerts/{first['id']}/resolve").status_code == 200
    assert api.post(f"/alerts/{first['id']}/acknowledge").status_code == 409


@pytest.mark.both_stacks
def test_a_cancel_that_overtakes_its_fall_in_one_batch_still_cancels_it(platform, api, wearable, clock):
    # QoS 1 does not promise order; within one stored batch the device's seq decides.
    import json

    from replenish.db import transaction
    from replenish.ingest.schemas import IncomingMessage
    from replenish.ingest.service import ingest_batch

    def event(seq: int, kind: str) -> IncomingMessage:
        payload = json.dumps({"seq": seq, "type": kind}).encode()
        return IncomingMessage("devices/pendant-1/events", payload, received_at=clock.now())

    with transaction(platform.engine) as session:
        ingest_batch(session=session, messages=[event(2, "fall_cancelled"), event(1, "fall_detected")])
    [alert] = api.get("/alerts").json()
    assert alert["status"] == "cancelled"


def test_event_types_are_identifiers_of_at_most_256_characters(platform, api, publisher, wearable):
    publisher.send("devices/pendant-1/events", {"seq": 1, "type": "x" * 256})
    publisher.send("devices/pendant-1/events", {"seq": 2, "type": "x" * 257})
    assert platform.ingestor.wait_for(handled=2, timeout=10)
    assert [e["seq"] for e in api.get("/devices/pendant-1/events").json()] == [1]
    [letter] = api.get("/dead-letters").json()
    assert "type" in letter["reason"]

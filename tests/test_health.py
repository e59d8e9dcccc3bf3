"""Device health alarms through the real path: MQTT status, telemetry and events in, the health job, the API out.
Raising needs the condition to hold (debounce) and clearing needs it gone for longer (hysteresis): a flapping device
raises one alarm, not fifty."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from replenish.clock import ManualClock
from replenish.health.rules import HEARTBEAT_WINDOWS, HealthPolicy
from replenish.runtime import Platform
from support.api import create_customer, iso, register_device, set_consent
from support.mqtt import Publisher

# Both stacks only where the broker or the database is what the test is about: each broker delivers a last will its
# own way.

POLICY = HealthPolicy()


@pytest.fixture
def customer(api: httpx.Client) -> str:
    customer_id = create_customer(api, email="ada@example.com")
    register_device(api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
    register_device(
        api,
        customer_id=customer_id,
        device_id="fridge-1",
        kind="fridge",
        slots=[{"name": "milk", "unit": "l", "capacity": 2.0, "product_sku": "MILK", "lead_time_days": 1}],
    )
    return customer_id


class Device:
    def __init__(self, platform: Platform, publisher: Publisher, device_id: str) -> None:
        self.platform, self.publisher, self.device_id = platform, publisher, device_id
        self.seq = 0

    def _send(self, channel: str, payload: Any, **options: Any) -> None:
        """Publish, then wait until the ingestor has handled it. The count is read before sending: the message may
        well be handled before send() returns."""
        assert self.platform.ingestor is not None
        handled = self.platform.ingestor.totals.handled
        self.publisher.send(f"devices/{self.device_id}/{channel}", payload, **options)
        assert self.platform.ingestor.wait_for(handled=handled + 1, timeout=10)

    def status(self, word: str) -> None:
        self._send("status", word, retain=True)

    def telemetry(self, **body: Any) -> None:
        self.seq += 1
        self._send("telemetry", {"seq": self.seq, "ts": iso(self.platform.clock.now()), "levels": {}} | body)

    def event(self, kind: str, **body: Any) -> None:
        self.seq += 1
        self._send("events", {"seq": self.seq, "type": kind} | body)


def alarms(api: httpx.Client, **params: str) -> list[dict[str, Any]]:
    return api.get("/alarms", params=params).json()


def health_notifications(api: httpx.Client) -> list[str]:
    return [n["subject"] for n in api.get("/notifications").json() if n.get("alarm_id")]


@pytest.mark.both_stacks
def test_a_last_will_raises_an_offline_alarm_after_the_debounce_and_it_clears_once_steady(
    platform, api, publisher, clock: ManualClock, customer
):
    pendant = Device(platform, publisher, "pendant-1")
    pendant.status("online")
    pendant.status("offline")  # what the broker publishes as the last will
    platform.jobs.health()
    assert alarms(api) == [], "a reconnect within the debounce is a blip"
    clock.advance(POLICY.offline_debounce)
    platform.jobs.health()
    [alarm] = alarms(api)
    assert (alarm["kind"], alarm["severity"], alarm["status"], alarm["device_id"]) == (
        "offline",
        "major",
        "active",
        "pendant-1",
    )
    assert alarm["detail"]["status"] == "offline"

    pendant.status("online")
    pendant.telemetry(battery=0.9)
    clock.advance(POLICY.clear_after - timedelta(seconds=1))
    platform.jobs.health()
    assert alarms(api)[0]["status"] == "active", "not yet steady"
    clock.advance(timedelta(seconds=1))
    platform.jobs.health()
    [cleared] = alarms(api)
    assert cleared["status"] == "cleared" and cleared["cleared_at"] is not None
    subjects = health_notifications(api)
    assert len(subjects) == 2 and subjects[0].startswith("wearable pendant-1: resolved")


def test_a_flapping_device_raises_one_alarm_not_fifty(platform, api, publisher, clock: ManualClock, customer):
    pendant = Device(platform, publisher, "pendant-1")
    for _ in range(25):
        pendant.status("offline")
        clock.advance(POLICY.offline_debounce)
        platform.jobs.health()
        pendant.status("online")
        clock.advance(timedelta(seconds=30))
        platform.jobs.health()
    [alarm] = alarms(api)
    assert alarm["status"] == "active" and alarm["occurrences"] == 25
    assert len(health_notifications(api)) == 1, "one notification, for one alarm"
    clock.advance(POLICY.clear_after)
    platform.jobs.health()
    assert [a["status"] for a in alarms(api)] == ["cleared"]


def test_a_device_silent_beyond_its_kinds_heartbeat_is_offline(platform, api, publisher, clock, customer):
    pendant = Device(platform, publisher, "pendant-1")
    pendant.telemetry()
    clock.advance(HEARTBEAT_WINDOWS["wearable"] - timedelta(seconds=1))
    platform.jobs.health()
    assert [a for a in alarms(api) if a["device_id"] == "pendant-1"] == []
    clock.advance(timedelta(seconds=1))
    platform.jobs.health()
    assert [a["kind"] for a in alarms(api, device_id="pendant-1")] == ["offline"]
    assert alarms(api, device_id="fridge-1") == [], "its heartbeat window is longer"


def test_battery_alarms_have_hysteresis(platform, api, publisher, clock, customer):
    pendant = Device(platform, publisher, "pendant-1")
    for battery, expected in [
        (0.3, []),
        (0.14, ["active"]),
        (0.2, ["active"]),
        (0.16, ["active"]),
        (0.25, ["cleared"]),
    ]:
        pendant.telemetry(battery=battery)
        platform.jobs.health()
        assert [a["status"] for a in alarms(api, kind="battery_low")] == expected, battery
        clock.advance(timedelta(minutes=1))
    assert api.get("/devices/pendant-1").json()["battery"] == 0.25


def test_a_battery_low_event_raises_the_alarm_even_without_a_value(platform, api, publisher, clock, customer):
    pendant = Device(platform, publisher, "pendant-1")
    pendant.telemetry(battery=0.5)
    clock.advance(timedelta(minutes=1))
    pendant.event("battery_low")
    platform.jobs.health()
    [alarm] = alarms(api, kind="battery_low")
    assert (alarm["severity"], alarm["status"]) == ("warning", "active")
    clock.advance(timedelta(minutes=1))
    pendant.telemetry(battery=0.9)  # charged
    platform.jobs.health()
    assert alarms(api, kind="battery_low")[0]["status"] == "cleared"


def test_telemetry_with_a_battery_that_is_not_a_fraction_is_still_stored(platform, api, publisher, customer):
    pendant = Device(platform, publisher, "pendant-1")
    pendant.telemetry(battery="full")
    pendant.telemetry(battery=7)
    assert api.get("/dead-letters").json() == []
    assert api.get("/devices/pendant-1").json()["battery"] is None


def repeat_level(fridge: Device, clock: ManualClock, *, level: float, times: int, every: timedelta) -> None:
    for _ in range(times):
        fridge.telemetry(levels={"milk": level})
        clock.advance(every)


def test_a_sensor_that_repeats_one_value_for_days_raises_a_minor_alarm_that_nobody_is_sent(
    platform, api, publisher, clock, customer
):
    fridge = Device(platform, publisher, "fridge-1")
    fridge.telemetry(levels={"milk": 1.8})
    every = POLICY.stuck_for / (POLICY.stuck_readings - 1)
    repeat_level(fridge, clock, level=1.25, times=POLICY.stuck_readings, every=every)
    platform.jobs.health()
    [alarm] = alarms(api, kind="stuck_sensor")
    assert (alarm["slot_name"], alarm["severity"], alarm["detail"]["readings"]) == (
        "milk",
        "minor",
        POLICY.stuck_readings,
    )
    about_it = [n for n in api.get("/notifications").json() if n["alarm_id"] == alarm["id"]]
    assert about_it == [], "minor: shown, not sent"
    acknowledged = api.post(f"/alarms/{alarm['id']}/acknowledge").json()
    assert acknowledged["status"] == "acknowledged"
    assert acknowledged["acknowledged_by"] == "operator:operator@example.com"
    fridge.telemetry(levels={"milk": 1.2})
    platform.jobs.health()
    [after] = alarms(api, kind="stuck_sensor")
    assert after["status"] == "cleared" and after["acknowledged_at"] == acknowledged["acknowledged_at"]


def test_a_pause_window_explains_an_unchanging_level(platform, api, publisher, clock, customer):
    start = clock.now()
    set_consent(
        api,
        customer,
        {"default_mode": "notify_only", "pause_windows": [{"start": str(start.date()), "end": str(start.date())}]},
    )
    fridge = Device(platform, publisher, "fridge-1")
    every = POLICY.stuck_for / (POLICY.stuck_readings - 1)
    repeat_level(fridge, clock, level=1.25, times=POLICY.stuck_readings, every=every)
    platform.jobs.health()
    assert alarms(api, kind="stuck_sensor") == [], "the customer was away during the stretch"

"""Channels people answer: SMS and voice calls through the provider's API (a local fake of Twilio's), their delivery
receipts, chat through apprise, and falling back to a contact's next channel at once when one fails. Contacts per
wearable, and a carer of the household as a contact. Real platform, real broker, real HTTP on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest

from replenish.auth import service as auth
from replenish.auth.models import DeviceShare
from replenish.clock import ManualClock
from replenish.constants import AccountRole, HouseholdRole
from replenish.db import transaction
from replenish.orders import signatures
from replenish.runtime import Platform
from support.api import (
    PASSWORD,
    api_client,
    create_customer,
    customer_api,
    operator_token,
    register_device,
    set_consent,
)
from support.mqtt import Publisher
from support.platform import START, make_settings, running_platform
from support.servers import WebhookReceiver
from support.telephony import FakeTwilio

BEA_PHONE, BAD_PHONE = "+4915112345678", "+4915199999999"


@dataclass
class World:
    platform: Platform
    clock: ManualClock
    api: httpx.Client
    twilio: FakeTwilio
    hook: WebhookReceiver
    publisher: Publisher
    customer_id: str

    def tick(self) -> None:
        assert self.platform.jobs is not None
        self.platform.jobs.escalate()
        self.platform.jobs.dispatch()

    def help(self, device_id: str = "pendant-1", seq: int = 1) -> dict[str, Any]:
        assert self.platform.ingestor is not None
        before = self.platform.ingestor.totals.handled
        self.publisher.send(f"devices/{device_id}/events", {"seq": seq, "type": "help_requested"})
        assert self.platform.ingestor.wait_for(handled=before + 1, timeout=10)
        self.tick()
        [alert] = [a for a in self.api.get("/alerts").json() if a["device_id"] == device_id and a["status"] == "open"]
        return alert

    def steps(self, alert_id: str) -> list[dict[str, Any]]:
        escalation: list[dict[str, Any]] = self.api.get(f"/alerts/{alert_id}").json()["escalation"]
        return escalation


@pytest.fixture
def world(tmp_path, clock: ManualClock) -> Iterator[World]:
    twilio, hook = FakeTwilio(refuse={BAD_PHONE}), WebhookReceiver(path="/bea")
    try:
        with running_platform(make_settings(tmp_path, **twilio.settings()), clock) as platform:
            api = api_client(platform, operator_token(platform))
            customer_id = create_customer(api, email="ada@example.com")
            register_device(api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
            publisher = Publisher(platform.settings.mqtt_endpoint)
            try:
                yield World(platform, clock, api, twilio, hook, publisher, customer_id)
            finally:
                publisher.close()
    finally:
        twilio.close()
        hook.close()


def make_carer(world: World, email: str, *, device_id: str) -> str:
    """A carer account the wearable is shared with, as an accepted invitation makes it (tests/test_households.py
    drives the invitation itself)."""
    with transaction(world.platform.engine) as session:
        carer = auth.create_account(
            session=session,
            email=email,
            password=PASSWORD,
            role=AccountRole.CUSTOMER,
            customer_id=world.customer_id,
            now=START,
            household_role=HouseholdRole.CARER,
        )
        session.add(DeviceShare(account_id=carer.id, device_id=device_id, created_at=START))
        return carer.id


def contacts(world: World, *people: dict[str, Any]) -> None:
    set_consent(
        world.api,
        world.customer_id,
        {"emergency_contacts": list(people), "escalation_timeout_seconds": 120, "fall_cancel_window_seconds": 60},
    )


def test_an_sms_is_sent_through_the_provider_and_its_delivery_receipt_confirms_it(world: World):
    contacts(world, {"name": "Bea", "channel": "sms", "address": BEA_PHONE})
    alert = world.help()
    [text] = world.twilio.wait_for(1)
    assert text["kind"] == "sms" and text["To"] == BEA_PHONE and text["From"] == "+15005550006"
    assert "Acknowledge: http" in text["Body"] and "has asked for help" in text["Body"]
    assert text["StatusCallback"].endswith("/api/v1/providers/twilio/status")
    # A forged receipt changes nothing, whatever its signature holds.
    assert world.twilio.receipt(text, "undelivered", token="not the token").status_code == 401
    forged = httpx.post(
        text["StatusCallback"],
        data={"MessageSid": text["sid"], "MessageStatus": "undelivered"},
        headers={"X-Twilio-Signature": "sécurité".encode()},  # not ASCII: no digest of ours
    )
    assert forged.status_code == 401
    assert world.twilio.receipt(text, "sent").status_code == 204  # interim: nothing known yet
    assert world.twilio.receipt(text, "delivered").status_code == 204
    world.tick()
    [step] = world.steps(alert["id"])
    assert [(a["channel"], a["outcome"]) for a in step["attempts"]] == [("sms", "delivered")]
    # Still delivered, whatever the clock: a receipt that came is never timed out.
    world.clock.advance(timedelta(seconds=60))
    world.tick()
    assert len(world.twilio.sent) == 1


def test_a_refused_number_falls_back_to_the_next_channel_at_once(world: World):
    contacts(
        world,
        {
            "name": "Bea",
            "channel": "sms",
            "address": BAD_PHONE,
            "fallbacks": [
                {"channel": "voice", "address": BAD_PHONE},
                {"channel": "webhook", "address": world.hook.url},
            ],
        },
    )
    alert = world.help()
    world.twilio.wait_for(1)
    for _ in range(3):  # each tick: the failure is seen, the next channel is queued and sent; no clock moves
        world.tick()
    [to_bea] = world.hook.wait_for(1)
    assert "has asked for help" in to_bea["body"] and to_bea["acknowledge_url"]
    [step] = world.steps(alert["id"])
    attempts = [(a["channel"], a["outcome"]) for a in step["attempts"]]
    assert (
        attempts[0][0] == "sms" and "it could not be sent" in attempts[0][1] and "not a valid phone" in attempts[0][1]
    )
    assert attempts[1][0] == "voice" and "not a valid phone" in attempts[1][1]
    assert attempts[2] == ("webhook", "delivered")
    assert [s["kind"] for s in world.twilio.sent] == ["sms", "call"]
    # The link of the channel that reached her acknowledges the step.
    token = to_bea["acknowledge_url"].rsplit("/", 1)[1]
    assert httpx.post(f"{world.platform.api_url}/api/v1/acknowledgements/{token}").status_code == 200
    assert world.api.get(f"/alerts/{alert['id']}").json()["status"] == "acknowledged"


def test_a_failed_receipt_or_none_in_time_falls_back_to_the_next_channel(world: World):
    contacts(
        world,
        {
            "name": "Bea",
            "channel": "sms",
            "address": BEA_PHONE,
            "fallbacks": [{"channel": "voice", "address": BEA_PHONE}],
        },
        {"name": "Carl", "channel": "webhook", "address": world.hook.url},
    )
    alert = world.help()
    [text] = world.twilio.wait_for(1)
    assert world.twilio.receipt(text, "undelivered").status_code == 204
    world.tick()
    world.tick()
    [_, call] = world.twilio.wait_for(2)
    assert call["kind"] == "call" and call["To"] == BEA_PHONE and "has asked for help" in call["Twiml"]
    assert "http" not in call["Twiml"], "a link read aloud helps nobody"
    # The call is never answered, and no receipt comes: after the receipt timeout the call counts as failed, and
    # with no channel left Bea keeps the rest of her turn (some carriers send no receipts); then Carl is asked.
    world.clock.advance(timedelta(seconds=30))
    world.tick()
    [bea] = world.steps(alert["id"])
    assert bea["attempts"][1]["outcome"] == "no delivery receipt within 30 s"
    assert world.hook.requests == []
    world.clock.advance(timedelta(seconds=90))
    world.tick()
    world.tick()
    [to_carl] = world.hook.wait_for(1)
    assert "step 2" in to_carl["body"]
    bea, carl = world.steps(alert["id"])
    assert [a["outcome"] for a in bea["attempts"]] == [
        "the provider reported undelivered",
        "no delivery receipt within 30 s",
    ]
    assert (carl["target_name"], carl["attempts"][0]["outcome"]) == ("Carl", "delivered")


def test_an_apprise_service_that_would_reach_anywhere_is_refused_by_the_consent(world: World):
    answer = world.api.put(
        f"/customers/{world.customer_id}/consent",
        json={"emergency_contacts": [{"name": "Syslog", "channel": "apprise", "address": "rsyslog://10.0.0.1/local5"}]},
    )
    assert answer.status_code == 422 and "rsyslog:// is not a service a contact may be reached by" in answer.text


def test_chat_through_apprise(world: World):
    chat = WebhookReceiver(path="/chat")
    try:
        address = chat.url.replace("http://", "json://")
        contacts(world, {"name": "Family chat", "channel": "apprise", "address": address})
        alert = world.help()
        world.tick()
        [message] = chat.wait_for(1)
        assert "alert for the wearer" in message["title"] and "has asked for help" in message["message"]
        assert "/ack/" in message["message"]
        world.tick()
        [step] = world.steps(alert["id"])
        assert step["attempts"][0]["outcome"] == "delivered"
    finally:
        chat.close()


def test_contacts_per_wearable_and_a_carer_who_acknowledges_in_the_app(world: World, tmp_path):
    register_device(world.api, customer_id=world.customer_id, device_id="pendant-2", kind="wearable", slots=[])
    owner = customer_api(world.platform, "ada@example.com")
    carer_id = make_carer(world, "carl@example.com", device_id="pendant-2")
    unseen = owner.put(
        f"/customers/{world.customer_id}/consent",
        json={
            "emergency_contacts": [
                {
                    "name": "Carl",
                    "channel": "webhook",
                    "address": world.hook.url,
                    "account_id": carer_id,
                    "device_ids": ["pendant-1"],
                }
            ]
        },
    )
    assert (
        unseen.status_code == 422 and "Carl does not see pendant-1: share it with them first" in unseen.json()["detail"]
    )
    contacts(
        world,
        {
            "name": "Carl",
            "channel": "webhook",
            "address": world.hook.url,
            "account_id": carer_id,
            "device_ids": ["pendant-2"],
        },
        {"name": "Bea", "channel": "sms", "address": BEA_PHONE, "device_ids": ["pendant-1"]},
    )
    first = world.help("pendant-1")
    assert [s["target_name"] for s in world.steps(first["id"])] == ["Bea"], "pendant-2's contact is not asked"
    second = world.help("pendant-2", seq=1)
    [to_carl] = world.hook.wait_for(1)
    assert to_carl["alert_id"] == second["id"]
    carl = customer_api(world.platform, "carl@example.com")
    acknowledged = carl.post(f"/alerts/{second['id']}/acknowledge")
    assert acknowledged.status_code == 200 and acknowledged.json()["acknowledged_by"] == "carer:carl@example.com"
    [step] = world.steps(second["id"])
    assert step["account_id"] == carer_id and step["acknowledged_at"] is not None
    assert carl.get(f"/alerts/{second['id']}").json()["escalation"][0]["address"] is None, (
        "a carer sees whom, not where"
    )
    assert carl.get(f"/alerts/{first['id']}").status_code == 404


def test_the_monitoring_centre_gets_the_signed_incident_and_acknowledges_it(tmp_path, clock: ManualClock):
    centre = WebhookReceiver(path="/centre")
    try:
        settings = make_settings(tmp_path, monitoring_centre_url=centre.url, monitoring_centre_secret="centre-secret")
        with running_platform(settings, clock) as platform:
            api = api_client(platform, operator_token(platform))
            customer_id = create_customer(api, email="ada@example.com")
            register_device(api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
            set_consent(api, customer_id, {"emergency_services_allowed": True})  # no contacts: the centre first
            publisher = Publisher(platform.settings.mqtt_endpoint)
            try:
                where = {"latitude": 52.5163, "longitude": 13.3777, "room": "kitchen"}
                publisher.send("devices/pendant-1/events", {"seq": 1, "type": "help_requested", "location": where})
                assert platform.ingestor is not None and platform.ingestor.wait_for(handled=1, timeout=10)
            finally:
                publisher.close()
            assert platform.jobs is not None
            platform.jobs.dispatch()
            [incident] = centre.wait_for(1)
            [(headers, raw, _)] = centre.requests
            body = json.dumps(raw, separators=(",", ":")).encode()
            timestamp = int(headers["X-Replenish-Timestamp"])
            assert headers["X-Replenish-Signature"] == signatures.sign("centre-secret", timestamp=timestamp, body=body)
            assert incident["type"] == "emergency" and incident["kind"] == "help_requested"
            assert incident["household"] == "Ada" and incident["device"] == {
                "id": "pendant-1",
                "name": "wearable pendant-1",
            }
            assert incident["location"] == where and "mlat=52.516300" in incident["map_url"]
            assert "Where: in the kitchen" in incident["message"]
            acknowledged = httpx.post(incident["acknowledge_url"].replace("/ack/", "/api/v1/acknowledgements/"))
            assert acknowledged.status_code == 200, acknowledged.text
            [alert] = api.get("/alerts").json()
            assert alert["status"] == "acknowledged"
            assert alert["acknowledged_by"] == "emergency services (emergency services)"
    finally:
        centre.close()


def test_without_a_monitoring_centre_the_call_request_falls_back_to_the_operators_log(
    world: World, caplog: pytest.LogCaptureFixture
):
    set_consent(world.api, world.customer_id, {"emergency_services_allowed": True})
    caplog.set_level("WARNING", logger="replenish.alerts.service")
    alert = world.help()
    world.tick()
    world.tick()
    [step] = world.steps(alert["id"])
    assert [(a["channel"], a["outcome"]) for a in step["attempts"]] == [
        (
            "monitoring_centre",
            "it could not be sent: no monitoring centre is configured (REPLENISH_MONITORING_CENTRE_URL)",
        ),
        ("log", "delivered"),
    ]
    assert any("CALL EMERGENCY SERVICES" in record.getMessage() for record in caplog.records)


def test_a_silent_wearable_opens_an_incident_for_its_carer_that_closes_when_it_is_back(world: World):
    carer_id = make_carer(world, "carl@example.com", device_id="pendant-1")
    set_consent(
        world.api,
        world.customer_id,
        {
            "wearable_silence_minutes": 5,
            "emergency_contacts": [
                {"name": "Carl", "channel": "webhook", "address": world.hook.url, "account_id": carer_id}
            ],
        },
    )
    assert world.platform.jobs is not None and world.platform.ingestor is not None

    def status(word: str, handled: int) -> None:
        world.publisher.send("devices/pendant-1/status", word, retain=True)
        world.publisher.send("devices/pendant-1/telemetry", {"seq": handled, "levels": {}, "battery": 0.9})
        assert world.platform.ingestor.wait_for(handled=handled * 2, timeout=10)

    status("online", 1)
    world.clock.advance(timedelta(minutes=10))
    world.platform.jobs.health()
    assert world.api.get("/alerts").json() == [], "heard from: not silent"
    world.publisher.send("devices/pendant-1/status", "offline", retain=True)  # its last will
    assert world.platform.ingestor.wait_for(handled=3, timeout=10)
    world.clock.advance(timedelta(minutes=2))
    world.platform.jobs.health()  # the offline alarm
    world.clock.advance(timedelta(minutes=4))
    world.platform.jobs.health()
    assert world.api.get("/alerts").json() == [], "offline for 4 minutes of the 5 the consent allows"
    world.clock.advance(timedelta(minutes=1))
    world.platform.jobs.health()
    [alert] = world.api.get("/alerts").json()
    assert (alert["kind"], alert["severity"], alert["status"]) == ("silence", "warning", "open")
    world.tick()
    [to_carl] = world.hook.wait_for(1)
    assert "pendant-1 has been silent" in to_carl["body"] and "could not report a fall" in to_carl["body"]
    carl = customer_api(world.platform, "carl@example.com")
    assert carl.post(f"/alerts/{alert['id']}/acknowledge").status_code == 200
    # Back: online and heard from, for as long as an offline alarm takes to clear.
    status("online", 2)
    world.clock.advance(timedelta(minutes=6))
    world.platform.jobs.health()
    closed = world.api.get(f"/alerts/{alert['id']}").json()
    assert closed["status"] == "resolved" and closed["closed_reason"] == "the wearable is back"
    assert closed["explanation"]["alarm"]["kind"] == "offline"


def test_the_monitoring_centre_stands_down_when_someone_else_has_it(tmp_path, clock: ManualClock):
    centre = WebhookReceiver(path="/centre")
    try:
        settings = make_settings(tmp_path, monitoring_centre_url=centre.url)
        with running_platform(settings, clock) as platform:
            api = api_client(platform, operator_token(platform))
            customer_id = create_customer(api, email="ada@example.com")
            register_device(api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
            set_consent(api, customer_id, {"emergency_services_allowed": True})
            publisher = Publisher(platform.settings.mqtt_endpoint)
            try:
                publisher.send("devices/pendant-1/events", {"seq": 1, "type": "help_requested"})
                assert platform.ingestor is not None and platform.ingestor.wait_for(handled=1, timeout=10)
            finally:
                publisher.close()
            assert platform.jobs is not None
            platform.jobs.dispatch()
            [incident] = centre.wait_for(1)
            platform.jobs.escalate()  # the centre took it: the attempt is settled as delivered
            [alert] = api.get("/alerts").json()
            owner = customer_api(platform, "ada@example.com")
            assert owner.post(f"/alerts/{alert['id']}/acknowledge").status_code == 200
            platform.jobs.dispatch()
            _, stand_down = centre.wait_for(2)
            assert stand_down["type"] == "stand_down" and stand_down["alert_id"] == incident["alert_id"]
            assert "customer:ada@example.com has acknowledged" in stand_down["reason"]
    finally:
        centre.close()

"""A fall escalates until someone answers: the cancel window, then the wearer's emergency contacts in order, each given
the escalation timeout, then emergency services if consented. Real channels: webhooks to an HTTP receiver, e-mail to a
real SMTP server (aiosmtpd). The manual clock runs the minutes; the jobs are ticked as the scheduler would."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from replenish.clock import ManualClock
from replenish.config import MqttEndpoint
from replenish.constants import OutboxKind
from replenish.outbox.models import OutboxMessage
from replenish.runtime import Platform
from support import wait_until
from support.api import api_client, create_customer, operator_token, register_device, set_consent
from support.brokers import free_port
from support.mqtt import CommandListener, Publisher, connected, publish
from support.platform import START, make_settings, running_platform
from support.servers import Mailbox, WebhookReceiver
from test_cli import environment, poll, process, signed_up_customer

# Both stacks only where the broker or the database is what the test is about: the whole chain, a race between an
# acknowledgement and a cancel, and two dispatchers claiming one outbox.

CANCEL = timedelta(seconds=60)
TIMEOUT = timedelta(seconds=120)


class Contacts:
    def __init__(self) -> None:
        self.bea = WebhookReceiver(path="/bea")
        self.carl = WebhookReceiver(path="/carl")

    def close(self) -> None:
        self.bea.close()
        self.carl.close()


@pytest.fixture
def contacts() -> Iterator[Contacts]:
    running = Contacts()
    yield running
    running.close()


def consent_with(contacts: Contacts, **overrides: Any) -> dict[str, Any]:
    return {
        "default_mode": "notify_only",
        "emergency_contacts": [
            {"name": "Bea", "channel": "webhook", "address": contacts.bea.url},
            {"name": "Carl", "channel": "webhook", "address": contacts.carl.url},
        ],
        "emergency_services_allowed": True,
        "fall_cancel_window_seconds": int(CANCEL.total_seconds()),
        "escalation_timeout_seconds": int(TIMEOUT.total_seconds()),
        **overrides,
    }


@pytest.fixture
def wearer(api: httpx.Client, contacts: Contacts) -> str:
    customer_id = create_customer(api, email="ada@example.com")
    register_device(api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
    set_consent(api, customer_id, consent_with(contacts))
    return customer_id


def tick(platform: Platform) -> None:
    """One pass of what the scheduler role runs: the escalator, then the outbox."""
    assert platform.jobs is not None
    platform.jobs.escalate()
    platform.jobs.dispatch()


def event(publisher: Publisher, platform: Platform, seq: int, kind: str) -> None:
    before = platform.ingestor.totals.handled if platform.ingestor else 0
    publisher.send("devices/pendant-1/events", {"seq": seq, "type": kind})
    assert platform.ingestor is not None and platform.ingestor.wait_for(handled=before + 1, timeout=10)


def only_alert(api: httpx.Client) -> dict[str, Any]:
    [alert] = api.get("/alerts").json()
    return api.get(f"/alerts/{alert['id']}").json()


@pytest.mark.both_stacks
def test_a_fall_nobody_cancels_reaches_contact_1_then_contact_2_then_emergency_services(
    platform, api, publisher, clock, contacts, wearer
):
    event(publisher, platform, 1, "fall_detected")
    alert = only_alert(api)
    assert alert["status"] == "open" and alert["escalation_level"] == 0
    assert alert["cancel_until"] == alert["next_escalation_at"]
    tick(platform)
    assert contacts.bea.requests == [], "nobody is asked while the wearer may still cancel"

    clock.advance(CANCEL)
    tick(platform)
    [to_bea] = contacts.bea.wait_for(1)
    assert to_bea["alert_id"] == alert["id"] and "step 1" in to_bea["body"]
    assert to_bea["acknowledge_url"].startswith(f"{platform.settings.resolved_public_url}/ack/")
    assert contacts.carl.requests == []

    clock.advance(TIMEOUT - timedelta(seconds=1))
    tick(platform)
    assert contacts.carl.requests == [], "Bea still has a second to answer"
    clock.advance(timedelta(seconds=1))
    tick(platform)
    [to_carl] = contacts.carl.wait_for(1)
    assert "step 2" in to_carl["body"]

    clock.advance(TIMEOUT)
    tick(platform)
    clock.advance(TIMEOUT)
    tick(platform)
    alert = only_alert(api)
    assert [(s["level"], s["target_kind"], s["target_name"]) for s in alert["escalation"]] == [
        (1, "contact", "Bea"),
        (2, "contact", "Carl"),
        (3, "emergency_services", "emergency services"),
    ]
    assert alert["escalation_exhausted_at"] is not None and alert["next_escalation_at"] is None
    assert alert["status"] == "open", "still open: operators must act"
    # Each contact was asked once, however many ticks ran.
    for _ in range(3):
        clock.advance(TIMEOUT)
        tick(platform)
    assert len(contacts.bea.requests) == 1 and len(contacts.carl.requests) == 1


def test_a_fall_cancelled_inside_the_window_notifies_nobody(platform, api, publisher, clock, contacts, wearer):
    event(publisher, platform, 1, "fall_detected")
    clock.advance(CANCEL - timedelta(seconds=1))
    event(publisher, platform, 2, "fall_cancelled")
    for _ in range(4):
        clock.advance(TIMEOUT)
        tick(platform)
    alert = only_alert(api)
    assert (alert["status"], alert["escalation"], alert["next_escalation_at"]) == ("cancelled", [], None)
    assert contacts.bea.requests == [] and contacts.carl.requests == []


def test_a_cancel_after_the_window_tells_the_contacts_already_asked(platform, api, publisher, clock, contacts, wearer):
    event(publisher, platform, 1, "fall_detected")
    clock.advance(CANCEL)
    tick(platform)
    event(publisher, platform, 2, "fall_cancelled")
    tick(platform)
    clock.advance(TIMEOUT)
    tick(platform)
    bodies = [body["subject"] for body in contacts.bea.wait_for(2)]
    assert bodies[0].startswith("Urgent") and bodies[1].startswith("False alarm")
    assert contacts.carl.requests == []


def test_a_help_request_skips_the_cancel_window(platform, api, publisher, clock, contacts, wearer):
    event(publisher, platform, 1, "help_requested")
    platform.jobs.dispatch()  # no escalator tick: the first step was taken as the event was stored
    [to_bea] = contacts.bea.wait_for(1)
    assert "asked for help" in to_bea["body"]
    assert only_alert(api)["escalation_level"] == 1


def test_a_help_request_during_a_falls_cancel_window_ends_the_wait(platform, api, publisher, clock, contacts, wearer):
    event(publisher, platform, 1, "fall_detected")
    clock.advance(timedelta(seconds=5))
    event(publisher, platform, 2, "help_requested")
    platform.jobs.dispatch()
    contacts.bea.wait_for(1)
    alert = only_alert(api)
    assert (alert["kind"], alert["event_count"], alert["escalation_level"]) == ("help_requested", 2, 1)
    # "I'm OK" cannot call off an explicit request for help.
    event(publisher, platform, 3, "fall_cancelled")
    assert only_alert(api)["status"] == "open"


def test_after_a_chain_ran_out_a_new_fall_is_a_new_incident_that_reaches_people(
    platform, api, publisher, clock, contacts, wearer
):
    event(publisher, platform, 1, "help_requested")
    for _ in range(4):
        clock.advance(TIMEOUT)
        tick(platform)
    [exhausted] = api.get("/alerts").json()
    assert exhausted["escalation_exhausted_at"] is not None and exhausted["status"] == "open"
    clock.advance(timedelta(hours=6))
    event(publisher, platform, 2, "fall_detected")
    clock.advance(CANCEL)
    tick(platform)
    newest, older = api.get("/alerts").json()
    assert older["id"] == exhausted["id"] and older["event_count"] == 1, "not hidden in the old incident"
    assert newest["escalation_level"] == 1
    assert len(contacts.bea.wait_for(2)) == 2, "Bea is asked about the new fall"


def test_a_contact_added_mid_escalation_is_asked_next_and_nobody_twice(
    platform, api, publisher, clock, contacts, wearer
):
    event(publisher, platform, 1, "help_requested")
    tick(platform)
    contacts.bea.wait_for(1)
    dora = WebhookReceiver(path="/dora")
    try:
        document = consent_with(contacts)
        document["emergency_contacts"].insert(0, {"name": "Dora", "channel": "webhook", "address": dora.url})
        set_consent(api, wearer, document)
        clock.advance(TIMEOUT)
        tick(platform)
        assert len(dora.wait_for(1)) == 1, "the new first contact, not asked yet, comes next"
        clock.advance(TIMEOUT)
        tick(platform)
        contacts.carl.wait_for(1)
        steps = [s["target_name"] for s in only_alert(api)["escalation"]]
        assert steps == ["Bea", "Dora", "Carl"]
        assert len(contacts.bea.requests) == 1
    finally:
        dora.close()


@pytest.mark.both_stacks
def test_an_acknowledgement_that_read_the_incident_before_a_cancel_does_not_overwrite_it(
    platform, api, publisher, clock, contacts, wearer
):
    from sqlalchemy.orm.exc import StaleDataError

    from replenish.alerts import service as alerts

    event(publisher, platform, 1, "fall_detected")
    alert_id = only_alert(api)["id"]
    with Session(platform.engine) as stale, stale.no_autoflush:
        # An operator's acknowledgement has read the incident (open) and decided, but not yet written ...
        alerts.acknowledge(session=stale, alert_id=alert_id, actor="operator", now=clock.now())
        event(publisher, platform, 2, "fall_cancelled")  # ... when the ingestor commits the wearer's cancel.
        with pytest.raises(StaleDataError):
            stale.flush()
    alert = only_alert(api)
    assert (alert["status"], alert["acknowledged_by"]) == ("cancelled", None)


def test_repeated_falls_join_the_open_incident_and_ask_nobody_twice(platform, api, publisher, clock, contacts, wearer):
    event(publisher, platform, 1, "fall_detected")
    clock.advance(CANCEL)
    tick(platform)
    event(publisher, platform, 2, "fall_detected")
    event(publisher, platform, 3, "fall_detected")
    tick(platform)
    assert only_alert(api)["event_count"] == 3
    assert len(contacts.bea.wait_for(1)) == 1


def test_a_contact_acknowledges_through_their_link_and_the_wearer_is_told(
    platform, api, publisher, clock, contacts, wearer
):
    listener = CommandListener(platform.settings.mqtt_endpoint)
    try:
        event(publisher, platform, 1, "fall_detected")
        clock.advance(CANCEL)
        tick(platform)
        clock.advance(TIMEOUT)
        tick(platform)
        to_carl = contacts.carl.wait_for(1)[0]
        token = to_carl["acknowledge_url"].rsplit("/", 1)[1]
        anonymous = api_client(platform, None)
        view = anonymous.get(f"/acknowledgements/{token}").json()
        assert (view["you"], view["level"], view["status"]) == ("Carl", 2, "open")

        done = anonymous.post(f"/acknowledgements/{token}").json()
        assert (done["status"], done["acknowledged_by"]) == ("acknowledged", "Carl (emergency contact 2)")
        tick(platform)
        [(topic, command)] = listener.wait_for(1)
        assert (topic, command["type"], command["alert_id"]) == (
            "devices/pendant-1/commands",
            "alert_acknowledged",
            view["alert_id"],
        )
        # Bea, asked before, hears that Carl has it; the chain stops.
        assert contacts.bea.wait_for(2)[1]["subject"] == "Someone is handling it"
        for _ in range(3):
            clock.advance(TIMEOUT)
            tick(platform)
        alert = only_alert(api)
        assert [s["acknowledged_at"] is not None for s in alert["escalation"]] == [False, True]
        assert len(contacts.carl.requests) == 1 and len(contacts.bea.requests) == 2
        assert anonymous.post(f"/acknowledgements/{token}").status_code == 200, "again: no change"
    finally:
        listener.close()


def test_a_link_is_good_for_its_own_alert_only(platform, api, publisher, clock, contacts, wearer):
    anonymous = api_client(platform, None)
    assert anonymous.get("/acknowledgements/made-up").status_code == 404
    assert anonymous.post("/acknowledgements/made-up").status_code == 404
    event(publisher, platform, 1, "help_requested")
    platform.jobs.dispatch()
    token = contacts.bea.wait_for(1)[0]["acknowledge_url"].rsplit("/", 1)[1]
    assert anonymous.post(f"/acknowledgements/{token[:-1]}").status_code == 404
    page = httpx.get(f"{platform.api_url}/ack/{token}")
    assert page.status_code == 200 and "I am handling it" in page.text and "<form" in page.text
    submitted = httpx.post(f"{platform.api_url}/ack/{token}")
    assert submitted.status_code == 200 and "Thank you" in submitted.text
    assert only_alert(api)["acknowledged_by"] == "Bea (emergency contact 1)"
    assert httpx.get(f"{platform.api_url}/ack/nothing").status_code == 404


def test_contacts_by_e_mail_over_smtp(tmp_path: Path, clock: ManualClock, mailbox: Mailbox, contacts: Contacts):
    settings = make_settings(tmp_path, smtp_host="127.0.0.1", smtp_port=mailbox.port, smtp_sender="alerts@example.com")
    with running_platform(settings, clock) as platform, api_client(platform, operator_token(platform)) as api:
        customer_id = create_customer(api, email="ada@example.com")
        register_device(api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
        set_consent(
            api,
            customer_id,
            consent_with(
                contacts,
                emergency_contacts=[{"name": "Dora", "channel": "email", "address": "dora@example.com"}],
                notification_channels=[{"type": "email", "address": "ada@example.com"}],
            ),
        )
        publisher = Publisher(settings.mqtt_endpoint)
        try:
            event(publisher, platform, 1, "help_requested")
        finally:
            publisher.close()
        platform.jobs.dispatch()
        assert wait_until(lambda: len(mailbox.messages) == 2)
        by_recipient = {message["To"]: message for message in mailbox.messages}
        to_dora = by_recipient["dora@example.com"]
        assert to_dora["From"] == "alerts@example.com" and to_dora["Subject"].startswith("Urgent")
        text = to_dora.get_content()
        assert "asked for help" in text and f"{platform.settings.resolved_public_url}/ack/" in text
        assert by_recipient["ada@example.com"]["Subject"] == "help requested alert from wearable pendant-1"
        # The Message-ID is the notification's idempotency key: a retry would carry the same one.
        with Session(platform.engine) as session:
            keys = set(session.exec(select(OutboxMessage.idempotency_key)).all())
        assert {
            message["Message-ID"].strip("<>").split("@")[0].replace(".", ":") for message in mailbox.messages
        } <= keys


def test_a_webhook_into_a_private_network_is_refused_by_default(tmp_path: Path, clock: ManualClock, contacts: Contacts):
    settings = make_settings(tmp_path, webhook_allow_private_networks=False)
    with running_platform(settings, clock) as platform, api_client(platform, operator_token(platform)) as api:
        customer_id = create_customer(api, email="ada@example.com")
        register_device(api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
        set_consent(api, customer_id, consent_with(contacts))
        publisher = Publisher(settings.mqtt_endpoint)
        try:
            event(publisher, platform, 1, "help_requested")
        finally:
            publisher.close()
        platform.jobs.dispatch()
        threading.Event().wait(0.3)
        assert contacts.bea.requests == [], "127.0.0.1 is the platform's own network"
        with Session(platform.engine) as session:
            [failed] = session.exec(
                select(OutboxMessage).where(
                    OutboxMessage.kind == OutboxKind.NOTIFICATION,
                    OutboxMessage.delivered_at == None,  # noqa: E711
                )
            ).all()
        assert "non-public address" in (failed.last_error or "")


def test_the_first_contact_is_asked_within_milliseconds_when_the_dispatcher_runs_by_itself(
    tmp_path: Path, contacts: Contacts
):
    """With the jobs running (not ticked by the test): the urgent notification wakes the dispatch loop at once."""
    clock = ManualClock(START)
    settings = make_settings(tmp_path, dispatch_interval_seconds=30.0)
    with running_platform(settings, clock) as platform, api_client(platform, operator_token(platform)) as api:
        customer_id = create_customer(api, email="ada@example.com")
        register_device(api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
        set_consent(api, customer_id, consent_with(contacts))
        from replenish.outbox.dispatcher import DispatchLoop

        assert platform.jobs is not None
        loop = DispatchLoop(platform.jobs.dispatcher, interval_seconds=30.0)
        loop.start()
        publisher = Publisher(settings.mqtt_endpoint)
        try:
            loop_idle = threading.Event()
            loop_idle.wait(0.5)  # the loop's first pass is over; it now sleeps for 30 s unless woken
            publisher.send("devices/pendant-1/events", {"seq": 1, "type": "help_requested"})
            assert len(contacts.bea.wait_for(1, timeout=5)) == 1, "woken, not after the 30 s poll"
        finally:
            publisher.close()
            loop.stop()


@pytest.mark.slow
def test_killed_mid_escalation_and_started_again_the_chain_goes_on_at_the_right_time_with_no_repeats(
    tmp_path: Path, contacts: Contacts
):
    """The platform as `replenish up` runs it, on the wall clock: kill -9 after contact 1 was asked, start it again,
    and contact 2 is asked when contact 1's timeout ends (not a timeout after the restart), contact 1 not again."""
    timeout_seconds = 10
    broker_port, api_port = free_port(), free_port()
    env = environment(
        tmp_path,
        REPLENISH_BROKER_PORT=str(broker_port),
        REPLENISH_API_PORT=str(api_port),
        REPLENISH_WEBHOOK_ALLOW_PRIVATE_NETWORKS="true",
        REPLENISH_ESCALATION_INTERVAL_SECONDS="0.2",
        REPLENISH_DISPATCH_INTERVAL_SECONDS="0.2",
    )
    base = f"http://127.0.0.1:{api_port}/api/v1"

    def wait_ready() -> None:
        poll(lambda: httpx.get(f"http://127.0.0.1:{api_port}/readyz").status_code, lambda code: code == 200, 60)

    with process(["up"], env, tmp_path / "first.log") as first:
        wait_ready()
        ada = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {signed_up_customer(env, base)}"})
        registered = ada.post("/devices", json={"id": "pendant-1", "kind": "wearable", "name": "Pendant", "slots": []})
        registered.raise_for_status()
        secret = registered.json()["credentials"]["mqtt_password"]
        customer_id = registered.json()["customer_id"]
        consent = consent_with(contacts, fall_cancel_window_seconds=0, escalation_timeout_seconds=timeout_seconds)
        ada.put(f"/customers/{customer_id}/consent", json=consent).raise_for_status()

        with connected(MqttEndpoint(host="127.0.0.1", port=broker_port), "pendant-1", secret) as pendant:
            fell_at = time.monotonic()
            publish(pendant, "devices/pendant-1/events", {"seq": 1, "type": "fall_detected"})
        assert contacts.bea.wait_for(1, timeout=10), (tmp_path / "first.log").read_text()
        # Once Bea's delivery is on record (a crash between the POST and that record would send it again, with the
        # same Idempotency-Key: delivery is at least once), kill it.
        poll(
            lambda: [n["sent_at"] for n in ada.get("/notifications").json() if n["address"] == contacts.bea.url],
            lambda sent: sent and all(sent),
            10,
        )
        first.kill()  # SIGKILL: no clean shutdown of anything
        first.wait(10)
    time.sleep(3)  # down for a while: a chain that restarted its clock at the restart would be late

    with process(["up"], env, tmp_path / "second.log"):
        wait_ready()
        assert contacts.carl.wait_for(1, timeout=30), (tmp_path / "second.log").read_text()
        carl_asked_after = contacts.carl.requests[0][2] - fell_at
        threading.Event().wait(1.0)
        [alert] = ada.get("/alerts").json()
        detail = ada.get(f"/alerts/{alert['id']}").json()
    assert timeout_seconds - 0.5 <= carl_asked_after <= timeout_seconds + 2, carl_asked_after
    assert len(contacts.bea.requests) == 1, "Bea was asked once"
    assert [step["target_name"] for step in detail["escalation"]] == ["Bea", "Carl"]


def test_the_scheduler_delivers_every_kind_of_outbox_message(platform: Platform):
    """Each domain registers the handler for its kinds (runtime.py): a kind without one would wait forever."""
    assert platform.jobs is not None
    assert platform.jobs.dispatcher.kinds == set(OutboxKind)


@pytest.mark.both_stacks
def test_two_dispatchers_never_deliver_one_message_twice(platform, api, clock, contacts, wearer):
    """The ingest role and the scheduler role each run a dispatcher; claims on the outbox keep them apart."""
    from replenish.db import transaction
    from replenish.notifications import service as notifications
    from replenish.notifications.delivery import NotificationHandler
    from replenish.outbox.dispatcher import Dispatcher
    from replenish.runtime import make_channels

    with transaction(platform.engine) as session:
        for number in range(40):
            notifications.send(
                session=session,
                customer_id=wearer,
                channel="webhook",
                address=contacts.bea.url,
                subject=f"number {number}",
                body="-",
                consent_version=1,
                now=clock.now(),
            )
    assert platform.jobs is not None
    handler = NotificationHandler(
        channels=make_channels(platform.settings, platform.engine), public_url=platform.settings.resolved_public_url
    )
    second = Dispatcher(engine=platform.engine, clock=clock, handlers={OutboxKind.NOTIFICATION: handler})
    start = threading.Barrier(2)

    def run(dispatcher: Dispatcher) -> None:
        start.wait()
        while dispatcher.dispatch_due(limit=5).delivered:
            pass

    threads = [threading.Thread(target=run, args=(d,)) for d in (platform.jobs.dispatcher, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    keys = [headers["Idempotency-Key"] for headers, _, _ in contacts.bea.requests]
    assert len(keys) == 40 and len(set(keys)) == 40


def test_a_slow_endpoint_does_not_hold_up_a_falls_notification(platform, api, clock, contacts, wearer):
    from replenish.db import transaction
    from replenish.notifications import service as notifications
    from replenish.outbox.dispatcher import DispatchLoop

    slow = WebhookReceiver(path="/slow", delay=3.0)
    assert platform.jobs is not None
    loop = DispatchLoop(platform.jobs.dispatcher, interval_seconds=30.0)
    loop.start()
    try:

        def send(address: str, urgent: bool) -> None:
            with transaction(platform.engine) as session:
                notifications.send(
                    session=session,
                    customer_id=wearer,
                    channel="webhook",
                    address=address,
                    subject="-",
                    body="-",
                    consent_version=1,
                    now=clock.now(),
                    urgent=urgent,
                )

        for _ in range(3):
            send(slow.url, urgent=True)  # another customer's endpoint, hanging
        threading.Event().wait(0.3)
        started = time.monotonic()
        send(contacts.bea.url, urgent=True)
        assert contacts.bea.wait_for(1, timeout=5)
        assert time.monotonic() - started < 1.5, "it waited for the slow deliveries"
    finally:
        loop.stop()
        slow.close()


def test_a_help_request_with_a_location_reaches_each_contact_with_the_place_and_a_map_link(
    platform, api, publisher, clock, contacts, wearer
):
    location = {"latitude": 52.5163, "longitude": 13.3777, "accuracy": 12, "room": "bathroom"}
    before = platform.ingestor.totals.handled
    publisher.send("devices/pendant-1/events", {"seq": 1, "type": "help_requested", "location": location})
    assert platform.ingestor.wait_for(handled=before + 1, timeout=10)
    alert = only_alert(api)
    assert alert["location"] == location | {
        "map_url": "https://www.openstreetmap.org/?mlat=52.516300&mlon=13.377700#map=18/52.516300/13.377700"
    }
    [opening] = [n for n in api.get("/notifications").json() if "alert from" in n["subject"]]
    assert (
        "Where: in the bathroom, at 52.516300, 13.377700 (within 12 m): https://www.openstreetmap.org/"
        in (opening["body"])
    )
    tick(platform)  # a help request asks the first contact at once
    [to_bea] = contacts.bea.wait_for(1)
    assert "Where: in the bathroom" in to_bea["body"] and "mlat=52.516300&mlon=13.377700" in to_bea["body"]
    # The wearer moves: the next event's place is the one the next contact hears.
    publisher.send("devices/pendant-1/events", {"seq": 2, "type": "help_requested", "location": {"room": "hall"}})
    assert platform.ingestor.wait_for(handled=before + 2, timeout=10)
    clock.advance(TIMEOUT)
    tick(platform)
    [to_carl] = contacts.carl.wait_for(1)
    assert "Where: in the hall." in to_carl["body"] and "openstreetmap" not in to_carl["body"]


def test_a_fall_with_a_location_out_of_range_is_still_an_incident_and_the_location_is_noted(
    platform, api, publisher, clock, contacts, wearer
):
    before = platform.ingestor.totals.handled
    payload = {"seq": 7, "type": "fall_detected", "confidence": 0.93, "location": {"latitude": 91, "longitude": 10}}
    publisher.send("devices/pendant-1/events", payload)
    assert platform.ingestor.wait_for(handled=before + 1, timeout=10)
    alert = only_alert(api)
    assert alert["status"] == "open" and alert["location"] is None and alert["confidence"] == 0.93
    [opening] = [n for n in api.get("/notifications").json() if "alert from" in n["subject"]]
    assert "(detection confidence 93%)" in opening["body"] and "The device sent no location." in opening["body"]
    [note] = api.get("/dead-letters", params={"device_id": "pendant-1"}).json()
    assert note["reason"] == (
        "location.latitude: Input should be less than or equal to 90: the location was dropped, the event was kept"
    )
    [stored] = api.get("/devices/pendant-1/events").json()
    assert stored["seq"] == 7, "the event itself was stored once"

"""Telemetry, events and status through a real broker into a real database (contract §1), on both stacks."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlmodel import Session, col, func, select

from replenish.clock import ManualClock
from replenish.constants import DEAD_LETTER_KEEP_BYTES
from replenish.ingest.consumer import MqttIngestor
from replenish.ingest.models import DeadLetter, DeviceMessage, Reading
from replenish.runtime import Platform, Roles
from support import wait_until
from support.api import api_client, create_customer, dead_letters_with_payloads, iso, operator_token, register_device
from support.brokers import SERVICE_PASSWORD, running_mosquitto, write_auth_files
from support.mqtt import DEVICE_SECRETS, Publisher
from support.platform import START, make_settings, running_platform

pytestmark = pytest.mark.both_stacks


@pytest.fixture
def printer(api: httpx.Client) -> str:
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="printer-1")
    return customer_id


def count(platform: Platform, model: type) -> int:
    with Session(platform.engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def test_telemetry_is_stored_and_sets_the_latest_level(platform, api, publisher, printer):
    publisher.send("devices/printer-1/telemetry", {"seq": 1, "ts": iso(START), "levels": {"black": 0.5, "cyan": 0.8}})
    later = START + timedelta(hours=1)
    publisher.send("devices/printer-1/telemetry", {"seq": 2, "ts": iso(later), "levels": {"black": 0.45}})
    assert platform.ingestor.wait_for(handled=2, timeout=10)

    slots = {slot["name"]: slot for slot in api.get("/devices/printer-1").json()["slots"]}
    assert slots["black"]["level"] == 0.45
    assert slots["black"]["level_at"] == "2026-11-02T09:00:00Z"
    assert slots["cyan"]["level"] == 0.8
    assert slots["magenta"]["level"] is None
    readings = api.get("/devices/printer-1/slots/black/readings").json()
    assert [r["level"] for r in readings] == [0.45, 0.5]


def test_a_repeated_device_seq_is_stored_once(platform, api, publisher, printer):
    message = {"seq": 7, "ts": iso(START), "levels": {"black": 0.5}}
    publisher.send("devices/printer-1/telemetry", message)
    publisher.send("devices/printer-1/telemetry", message)
    assert platform.ingestor.wait_for(handled=2, timeout=10)
    # A later redelivery, in another batch, is still a duplicate; the seq is per device across channels.
    publisher.send("devices/printer-1/telemetry", {**message, "levels": {"black": 0.1}})
    publisher.send("devices/printer-1/events", {"seq": 7, "type": "battery_low"})
    assert platform.ingestor.wait_for(handled=4, timeout=10)

    assert count(platform, DeviceMessage) == 1
    assert count(platform, Reading) == 1
    assert platform.ingestor.totals.duplicates == 3
    assert api.get("/devices/printer-1").json()["slots"][0]["level"] == 0.5


def test_out_of_order_messages_keep_the_newest_level(platform, api, publisher, printer):
    publisher.send(
        "devices/printer-1/telemetry", {"seq": 2, "ts": iso(START + timedelta(hours=2)), "levels": {"black": 0.4}}
    )
    publisher.send("devices/printer-1/telemetry", {"seq": 1, "ts": iso(START), "levels": {"black": 0.6}})
    assert platform.ingestor.wait_for(handled=2, timeout=10)
    black = next(s for s in api.get("/devices/printer-1").json()["slots"] if s["name"] == "black")
    assert black["level"] == 0.4
    assert count(platform, Reading) == 2


def test_timestamps_in_epoch_seconds_and_absent_ones(platform, api, publisher, printer, clock: ManualClock):
    epoch = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    publisher.send("devices/printer-1/telemetry", {"seq": 1, "ts": epoch.timestamp(), "levels": {"black": 0.5}})
    publisher.send(
        "devices/printer-1/telemetry", {"seq": 2, "ts": "2026-11-24T12:00:00+02:00", "levels": {"black": 0.4}}
    )
    publisher.send("devices/printer-1/telemetry", {"seq": 3, "levels": {"black": 0.3}})
    assert platform.ingestor.wait_for(handled=3, timeout=10)
    with Session(platform.engine) as session:
        stamps = [m.ts for m in session.exec(select(DeviceMessage).order_by(col(DeviceMessage.seq)))]
    assert stamps == [epoch, epoch, clock.now()]


BAD_MESSAGES = [
    ("devices/printer-1/telemetry", b"{not json", "not JSON"),
    ("devices/printer-1/telemetry", b"[1, 2]", "must be a JSON object"),
    ("devices/printer-1/telemetry", b'"hello"', "must be a JSON object"),
    ("devices/printer-1/telemetry", b"\xff\xfe", "not UTF-8"),
    ("devices/printer-9/telemetry", b'{"seq": 1, "levels": {"black": 0.5}}', "unknown device 'printer-9'"),
    ("devices/printer-1/telemetry", b'{"seq": 1, "levels": {"rainbow": 0.5}}', "unknown slot 'rainbow'"),
    ("devices/printer-1/telemetry", b'{"seq": 1, "levels": {"black": 1.5}}', "outside 0..1"),
    ("devices/printer-1/telemetry", b'{"seq": 1, "levels": {"black": -0.1}}', "outside 0..1"),
    ("devices/printer-1/telemetry", b'{"seq": 1, "levels": {"black": "half"}}', "levels.black"),
    ("devices/printer-1/telemetry", b'{"seq": 1, "levels": {"black": NaN}}', "not JSON"),
    ("devices/printer-1/telemetry", b'{"seq": "one", "levels": {"black": 0.5}}', "seq"),
    ("devices/printer-1/telemetry", b'{"seq": true, "levels": {"black": 0.5}}', "seq"),
    ("devices/printer-1/telemetry", b'{"seq": 1, "levels": [0.5]}', "levels"),
    ("devices/printer-1/telemetry", b'{"seq": 1}', "levels"),
    ("devices/printer-1/telemetry", b'{"seq": 1, "ts": "2026-11-24T10:00:00", "levels": {"black": 0.5}}', "offset"),
    ("devices/printer-1/telemetry", b'{"seq": 1, "ts": "yesterday", "levels": {"black": 0.5}}', "not ISO 8601"),
    ("devices/printer-1/events", b'{"seq": 1}', "type"),
    ("devices/printer-1/events", b'{"seq": 1, "type": "fall_detected", "confidence": 3}', "confidence"),
    ("devices/printer-1/status", b'"sleeping"', "status must be"),
    ("devices/printer-1/telemetry", b'{"seq": 1, "levels": {"black": 0.5}, "pad": "' + b"x" * 17000 + b'"}', "exceeds"),
    ("devices/bad.id/telemetry", b'{"seq": 1, "levels": {"black": 0.5}}', "does not match"),
]


def test_bad_messages_become_dead_letters_and_good_ones_keep_flowing(platform, api, publisher, printer):
    for index, (topic, payload, _) in enumerate(BAD_MESSAGES):
        publisher.send(topic, payload)
        publisher.send("devices/printer-1/telemetry", {"seq": 100 + index, "levels": {"black": 0.5}})
    assert platform.ingestor.wait_for(handled=2 * len(BAD_MESSAGES), timeout=20)

    assert count(platform, DeviceMessage) == len(BAD_MESSAGES)
    letters = dead_letters_with_payloads(api)
    assert len(letters) == len(BAD_MESSAGES)
    by_content = {(letter["topic"], letter["payload_base64"]): letter for letter in letters}
    for topic, payload, reason in BAD_MESSAGES:
        letter = by_content[(topic, base64.b64encode(payload[:DEAD_LETTER_KEEP_BYTES]).decode())]
        assert reason in letter["reason"], (reason, letter["reason"])
        assert letter["payload_size"] == len(payload)


def test_status_and_last_will(platform, api, publisher, printer):
    publisher.send("devices/printer-1/status", b'"online"', retain=True)
    assert platform.ingestor.wait_for(handled=1, timeout=10)
    assert api.get("/devices/printer-1").json()["online"] is True
    publisher.send("devices/printer-1/status", b'"offline"', retain=True)
    assert platform.ingestor.wait_for(handled=2, timeout=10)
    device = api.get("/devices/printer-1").json()
    assert device["online"] is False
    assert device["status_changed_at"] is not None


def test_unknown_event_types_are_stored_not_fatal(platform, api, publisher, printer):
    publisher.send("devices/printer-1/events", {"seq": 1, "type": "paper_jam", "tray": 2})
    publisher.send("devices/printer-1/telemetry", {"seq": 2, "levels": {"black": 0.3}})
    assert platform.ingestor.wait_for(handled=2, timeout=10)
    with Session(platform.engine) as session:
        event = session.exec(select(DeviceMessage).where(DeviceMessage.seq == 1)).one()
    assert event.event_type == "paper_jam"
    assert event.payload["tray"] == 2
    assert api.get("/alerts").json() == []
    assert count(platform, DeadLetter) == 0


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="make test installs mosquitto-clients")
def test_a_client_we_did_not_write_mosquitto_pub(platform, api, publisher, printer):
    base = [
        "mosquitto_pub",
        "-h",
        platform.settings.mqtt_endpoint.host,
        "-p",
        str(publisher.devices_port()),
        "-i",
        "printer-1",
        "-u",
        "printer-1",
        "-P",
        DEVICE_SECRETS["printer-1"],
        "-q",
        "1",
        "-t",
        "devices/printer-1/telemetry",
    ]
    subprocess.run(
        [*base, "-m", '{"seq": 1, "ts": "2026-11-24T10:00:00Z", "levels": {"black": 0.42}}'], check=True, timeout=10
    )
    subprocess.run([*base, "-m", '{"seq": 2, "levels": {"black": '], check=True, timeout=10)
    assert platform.ingestor.wait_for(handled=2, timeout=10)
    readings = api.get("/devices/printer-1/slots/black/readings").json()
    assert [(r["ts"], r["level"]) for r in readings] == [("2026-11-24T10:00:00Z", 0.42)]
    letters = api.get("/dead-letters").json()
    assert len(letters) == 1 and "not JSON" in letters[0]["reason"]


def test_heartbeat_with_no_levels_is_accepted(platform, api, publisher, printer):
    publisher.send("devices/printer-1/telemetry", {"seq": 1, "levels": {}, "battery": 0.8})
    assert platform.ingestor.wait_for(handled=1, timeout=10)
    assert count(platform, DeviceMessage) == 1
    assert count(platform, DeadLetter) == 0
    assert api.get("/devices/printer-1").json()["last_seen_at"] is not None


def test_an_ingestor_restarted_mid_stream_loses_nothing_and_stores_nothing_twice(tmp_path, clock):
    """On Mosquitto, the production broker: a stopped ingestor's persistent session keeps what arrives meanwhile,
    and the next ingestor of that session stores it, once. (tests/test_ingest_crash.py kills the process instead,
    on both brokers.)"""
    with running_mosquitto(tmp_path) as broker:
        settings = make_settings(tmp_path, mqtt_url=broker.url, broker_service_password=SERVICE_PASSWORD)
        with running_platform(settings, clock, roles=Roles(ingest=True, scheduler=True, api=True)) as platform:
            with api_client(platform, operator_token(platform)) as api:
                register_device(api, customer_id=create_customer(api), device_id="printer-1")
            # The device signs in on the device listener once Mosquitto has its hash, as in production.
            database_url = settings.resolved_database_url
            write_auth_files(broker.auth_dir, service_password=SERVICE_PASSWORD, database_url=database_url)
            broker.reload()
            device = Publisher(settings.mqtt_endpoint, device_port=broker.device_port)
            first = platform.ingestor
            for seq in range(300):
                device.send("devices/printer-1/telemetry", {"seq": seq, "levels": {"black": 0.5}})
                if seq == 100:
                    first.stop()
            device.close()
            second = MqttIngestor(
                engine=platform.engine,
                endpoint=settings.mqtt_endpoint,
                clock=clock,
                client_id=settings.mqtt_client_id,  # the same persistent session
                batch_wait_seconds=0.005,
            )
            second.start()
            try:
                # What the first had stored but not yet acknowledged comes again and is recognised as a duplicate.
                stored_by_both = lambda: first.totals.stored + second.totals.stored  # noqa: E731
                assert wait_until(lambda: stored_by_both() >= 300, timeout=20), second.totals
                assert stored_by_both() == 300
                assert count(platform, DeviceMessage) == 300
            finally:
                second.stop()


def test_a_reading_from_a_clock_far_ahead_does_not_become_the_latest_level(platform, api, publisher, printer):
    publisher.send("devices/printer-1/telemetry", {"seq": 1, "ts": iso(START), "levels": {"black": 0.5}})
    publisher.send("devices/printer-1/telemetry", {"seq": 2, "ts": "2099-01-01T00:00:00Z", "levels": {"black": 0.9}})
    publisher.send("devices/printer-1/telemetry", {"seq": 3, "ts": iso(START), "levels": {"black": 0.45}})
    assert platform.ingestor.wait_for(handled=3, timeout=10)
    black = next(s for s in api.get("/devices/printer-1").json()["slots"] if s["name"] == "black")
    assert (black["level"], black["level_at"]) == (0.45, iso(START))
    assert len(api.get("/devices/printer-1/slots/black/readings").json()) == 3, "stored all the same"


TELEMETRY = "devices/printer-1/telemetry"
EVENTS = "devices/printer-1/events"
# Found by tests/test_bad_input.py. The first five were stored on SQLite; on PostgreSQL each failed its whole batch at
# commit (jsonb and text refuse U+0000, unpaired surrogates and Infinity), then became a dead letter as an "internal
# error" after every message of the batch had been retried one by one. The next four raised out of the parser
# (RecursionError, OverflowError): "internal error" dead letters as well. The last, U+0000 in a topic (which the
# embedded broker passes on), could not even be written as a dead letter on PostgreSQL: retried forever, its lane
# stopped.
UNSTORABLE = [
    (TELEMETRY, b'{"seq": 1, "levels": {}, "note": "\\u0000"}', "payload cannot be stored: text '\\x00'"),
    (EVENTS, b'{"seq": 1, "type": "fall\\u0000"}', "payload cannot be stored: text 'fall\\x00'"),
    (TELEMETRY, b'{"seq": 1, "levels": {}, "\\udfff": 1}', "payload cannot be stored: text '\\udfff'"),
    (TELEMETRY, b'{"seq": 1, "levels": {}, "battery": 1e400}', "payload cannot be stored: number 1e400"),
    (TELEMETRY, b'{"seq": 1, "levels": {}, "x": ' + b"[" * 40 + b"]" * 40 + b"}", "payload cannot be stored: JSON"),
    (TELEMETRY, b'{"seq": 1, "levels": {}, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "payload cannot be stored: JSON"),
    ("devices/printer-1/status", b"[" * 5000 + b"]" * 5000, 'status must be "online" or "offline"'),
    (TELEMETRY, b'{"seq": 1, "levels": {}, "ts": "0001-01-01T00:00:00+01:00"}', "invalid telemetry payload: ts"),
    (EVENTS, b'{"seq": 1, "type": "x", "ts": "9999-12-31T23:59:59-01:00"}', "invalid events payload: ts"),
    ("devices/a\x00b/telemetry", b"{}", "device_id 'a\\x00b' does not match"),
]


def test_what_no_database_keeps_is_a_dead_letter_with_its_own_reason(platform, publisher, printer, stack):
    # Mosquitto disconnects a client that publishes to a topic with U+0000; only the embedded broker passes it on.
    cases = [case for case in UNSTORABLE if stack.name == "embedded" or "\x00" not in case[0]]
    for topic, payload, _ in cases:
        publisher.send(topic, payload)
    publisher.send(TELEMETRY, {"seq": 7, "levels": {"black": 0.5}})
    assert platform.ingestor.wait_for(handled=len(cases) + 1, timeout=20)
    with Session(platform.engine) as session:
        letters = session.exec(select(DeadLetter)).all()
        assert session.exec(select(DeviceMessage.seq)).all() == [7]
    # The events lane stores apart from the telemetry lane: matched by content, not order.
    by_content = {(letter.topic, letter.payload): letter.reason for letter in letters}
    assert len(letters) == len(by_content) == len(cases)
    for topic, payload, reason in cases:
        # A topic keeps its text, with U+0000 shown as U+FFFD (as paho shows bytes that are not UTF-8).
        kept = payload[:DEAD_LETTER_KEEP_BYTES]
        assert by_content[(topic.replace("\x00", "\ufffd"), kept)].startswith(reason), reason


def test_a_stopping_ingestor_takes_nothing_new(platform, api, publisher, printer):
    ingestor = platform.ingestor
    ingestor.stopping.set()  # as stop() does first
    publisher.send("devices/printer-1/telemetry", {"seq": 1, "levels": {"black": 0.5}})
    time.sleep(1.0)
    assert count(platform, DeviceMessage) == 0, "not taken"
    assert all(lane.queue.empty() for lane in ingestor._lanes)
    ingestor.stop()
    # Not acknowledged either: the broker delivers it again to the session, here to its next holder.
    from replenish.ingest.consumer import MqttIngestor

    successor = MqttIngestor(
        engine=platform.engine,
        endpoint=platform.settings.mqtt_endpoint,
        clock=platform.clock,
        client_id=platform.settings.mqtt_client_id,
    )
    successor.start()
    try:
        assert successor.wait_for(handled=1, timeout=10)
        assert count(platform, DeviceMessage) == 1
    finally:
        successor.stop()

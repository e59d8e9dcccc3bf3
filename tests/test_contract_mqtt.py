"""Contract tests for the MQTT interfaces (docs/mqtt.md, sections 1 device → platform and 2 platform → device).

Written from the contract alone, not from the ingest code: every test acts through the real embedded broker and
asserts what the HTTP API shows (or, where the API has no view of it, the stored rows).

Most tests share one platform per module (``rig``): each test uses its own freshly registered devices, so the tests
do not see each other's data, and a shared running platform keeps the whole file fast. Tests that restart parts of
the platform, or that feed it values likely to break an ingestor, get a platform of their own.

Readings of the contract where it is not explicit (each is also noted at its test):

* ``seq`` is required on telemetry and events: "seq is a per-device integer that grows with every message the device
  sends (any topic)" states it for every message, and without it a QoS 1 redelivery could not be recognised; only
  ``ts`` is said to be optional. The status topic carries a bare JSON string, so it has no ``seq``.
* A lower ``seq`` the platform has not seen yet is not a duplicate (messages on different topics can overtake each
  other); only a repeated ``(device_id, seq)`` is.
* Levels run from 0 to the slot's capacity, both ends included; anything outside, or not a JSON number (a bool is
  not a number), is "level out of range" / "wrong types".
* A message that does not fit is dead-lettered as a whole: a telemetry message with one good and one unknown slot
  stores neither reading.
* The status payload is the JSON string ``"online"`` or ``"offline"`` ("All payloads are UTF-8 JSON"); a bare
  ``online`` without quotes is not JSON, so it is a dead letter like any other junk, and junk never changes the
  device's state.
* ``NaN``/``Infinity`` are not JSON (RFC 8259) and are not in any range.
* The ``ts`` of the platform's commands is an ISO 8601 timestamp with an offset, like the devices' ``ts``.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select
from sqlmodel import Session, SQLModel

import replenish.models  # noqa: F401  (registers every table with SQLModel.metadata)
from replenish.clock import ManualClock
from replenish.config import MqttEndpoint
from replenish.constants import DEAD_LETTER_KEEP_BYTES
from replenish.mqtt.client import disconnect_and_stop
from replenish.runtime import Platform, Roles
from support import wait_until
from support.api import api_client, create_customer, dead_letters_with_payloads, iso, operator_token, register_device
from support.brokers import free_port
from support.mqtt import DEVICE_SECRETS, Publisher
from support.platform import make_settings, running_platform

WAIT = 5.0
LIMIT = 16 * 1024
TEN = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)

FRIDGE_SLOTS = [
    {"name": "ink", "unit": "fraction", "capacity": 1.0, "product_sku": "INK-BLACK"},
    {"name": "milk", "unit": "litre", "capacity": 2.0, "product_sku": "MILK-2L"},
    {"name": "eggs", "unit": "count", "capacity": 12, "product_sku": "EGGS-12"},
]


# --------------------------------------------------------------------------------------------------------------------
# The shared platform
# --------------------------------------------------------------------------------------------------------------------


class Rig:
    """One running platform for the module, with the bookkeeping to wait for each message to be handled."""

    def __init__(self, platform: Platform, api: httpx.Client, publisher: Publisher, clock: ManualClock) -> None:
        self.platform = platform
        self.api = api
        self.publisher = publisher
        self.clock = clock
        self.customer_id = create_customer(api, email="contract@example.com")
        self.expected = 0
        self._ids = count(1)

    # devices -------------------------------------------------------------------------------------------------------

    def new_id(self, prefix: str = "dev") -> str:
        return f"{prefix}-{next(self._ids)}"

    def printer(self) -> str:
        device_id = self.new_id("printer")
        register_device(self.api, customer_id=self.customer_id, device_id=device_id, kind="printer")
        return device_id

    def fridge(self) -> str:
        device_id = self.new_id("fridge")
        register_device(self.api, customer_id=self.customer_id, device_id=device_id, kind="fridge", slots=FRIDGE_SLOTS)
        return device_id

    def wearable(self) -> str:
        device_id = self.new_id("pendant")
        register_device(self.api, customer_id=self.customer_id, device_id=device_id, kind="wearable", slots=[])
        return device_id

    # messages ------------------------------------------------------------------------------------------------------

    def send(self, topic: str, payload: Any, *, retain: bool = False) -> None:
        """Publish one message (a dict/str/number is JSON-encoded, bytes go as they are) and wait until handled."""
        self.publisher.send(topic, payload, retain=retain)
        self.settle(1)

    def settle(self, n: int) -> None:
        """Wait until ``n`` more messages were handled: stored, duplicates, dead letters or status updates."""
        target = self.expected + n
        if self.platform.ingestor.wait_for(handled=target, timeout=WAIT):
            self.expected = target
            return
        # Resynchronise, so that a message the platform dropped silently fails this test and not the next ones.
        reached = self.expected
        while reached < target and self.platform.ingestor.wait_for(handled=reached + 1, timeout=0.1):
            reached += 1
        self.expected = reached
        pytest.fail(
            f"the platform accounted for only {reached - (target - n)} of {n} message(s) within {WAIT:g} s "
            "(neither stored, nor a duplicate, nor a dead letter, nor a status update)"
        )

    # what the platform shows ---------------------------------------------------------------------------------------

    def device(self, device_id: str) -> dict[str, Any]:
        response = self.api.get(f"/devices/{device_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def readings(self, device_id: str, slot: str) -> list[dict[str, Any]]:
        response = self.api.get(f"/devices/{device_id}/slots/{slot}/readings")
        assert response.status_code == 200, response.text
        return response.json()

    def dead_letters(self, topic: str) -> list[dict[str, Any]]:
        return dead_letters_with_payloads(self.api, topic=topic)

    def stored(self, device_id: str) -> list[dict[str, Any]]:
        return stored_messages(self.platform, device_id)


def stored_messages(platform: Platform, device_id: str) -> list[dict[str, Any]]:
    """The device's stored messages. The API has no view of raw events, so this reads the rows."""
    table = SQLModel.metadata.tables["device_messages"]
    with Session(platform.engine) as session:
        rows = session.execute(select(table).where(table.c.device_id == device_id).order_by(table.c.id))
        return [dict(row._mapping) for row in rows]


def assert_dead_letter(letters: list[dict[str, Any]], raw: bytes) -> dict[str, Any]:
    """Exactly one dead letter for the topic, keeping the raw bytes and a reason."""
    assert len(letters) == 1, f"expected one dead letter, got {letters}"
    [letter] = letters
    assert base64.b64decode(letter["payload_base64"]) == raw[:DEAD_LETTER_KEEP_BYTES]
    assert letter["payload_size"] == len(raw)
    assert isinstance(letter["reason"], str)
    assert letter["reason"].strip(), "a dead letter must say why"
    return letter


def encode(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


def as_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    assert moment.tzinfo is not None, f"{value!r} has no offset"
    return moment


def aware(moment: datetime) -> datetime:
    """A stored datetime as UTC (SQLite may hand back naive UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    # After every timestamp the tests send: a reading from the future is not taken as the latest level.
    clock = ManualClock(TEN + timedelta(days=2))
    with (
        running_platform(make_settings(tmp_path_factory.mktemp("contract-mqtt")), clock) as platform,
        api_client(platform, operator_token(platform)) as api,
    ):
        publisher = Publisher(platform.settings.mqtt_endpoint)
        try:
            yield Rig(platform, api, publisher, clock)
        finally:
            publisher.close()


class DeviceSubscriber:
    """A device-side MQTT v3.1.1 client subscribed at QoS 1, keeping every message with its QoS."""

    def __init__(self, endpoint: MqttEndpoint, topic: str) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self.granted: list[int] = []
        self._received = threading.Condition()
        subscribed = threading.Event()

        def on_subscribe(client: paho.Client, userdata: Any, mid: int, codes: list[Any], props: Any) -> None:
            self.granted = [code.value for code in codes]
            subscribed.set()

        def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
            with self._received:
                self.messages.append(message)
                self._received.notify_all()

        device_id = topic.split("/")[1]
        client_id = f"{device_id}/subscriber" if device_id in DEVICE_SECRETS else f"replenish-observer-{free_port()}"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        device_id = topic.split("/")[1]
        if device_id in DEVICE_SECRETS:  # the device itself
            self.client.username_pw_set(device_id, DEVICE_SECRETS[device_id])
        else:  # an observer of every device: the platform's service account
            self.client.username_pw_set(endpoint.username, endpoint.password)
        self.client.connect(endpoint.host, endpoint.port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(10), "no SUBACK"
        assert self.granted == [1], f"broker granted {self.granted}, expected QoS 1"

    def wait_for(self, n: int, timeout: float = WAIT) -> list[paho.MQTTMessage]:
        with self._received:
            self._received.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def wait_for_topic(self, topic: str, n: int, timeout: float = WAIT) -> list[paho.MQTTMessage]:
        with self._received:
            self._received.wait_for(lambda: len([m for m in self.messages if m.topic == topic]) >= n, timeout)
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        disconnect_and_stop(self.client)


# --------------------------------------------------------------------------------------------------------------------
# §1 device_id: [A-Za-z0-9_-]{1,64}
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device_id",
    ["Q", ("Az09_-" * 11)[:64], "all_the-CHARS_0123456789-abcXYZ"],
    ids=["one-char", "64-chars", "every-class"],
)
def test_valid_device_id_is_accepted(rig: Rig, device_id: str) -> None:
    assert len(device_id) <= 64
    register_device(rig.api, customer_id=rig.customer_id, device_id=device_id)
    rig.send(f"devices/{device_id}/telemetry", {"seq": 1, "ts": iso(TEN), "levels": {"black": 0.5}})
    [reading] = rig.readings(device_id, "black")
    assert reading["level"] == pytest.approx(0.5)
    assert rig.dead_letters(f"devices/{device_id}/telemetry") == []


@pytest.mark.parametrize(
    "device_id",
    ["a" * 65, "dev.1", "dev 1", "dév-1", "dev:1", "dev@1", ""],
    ids=["65-chars", "dot", "space", "non-ascii", "colon", "at-sign", "empty"],
)
@pytest.mark.parametrize("channel", ["telemetry", "events", "status"])
def test_invalid_device_id_is_a_dead_letter(rig: Rig, device_id: str, channel: str) -> None:
    topic = f"devices/{device_id}/{channel}"
    payload = {
        "telemetry": {"seq": 1, "ts": iso(TEN), "levels": {"black": 0.5}},
        "events": {"seq": 1, "ts": iso(TEN), "type": "help_requested"},
        "status": "online",
    }[channel]
    rig.send(topic, payload)
    assert_dead_letter(rig.dead_letters(topic), encode(payload))


@pytest.mark.parametrize(("device_id", "status"), [("x" * 64, 201), ("x" * 65, 422), ("dev.1", 422), ("", 422)])
def test_registration_applies_the_same_device_id_rule(rig: Rig, device_id: str, status: int) -> None:
    response = rig.api.post(
        "/devices",
        json={"id": device_id, "customer_id": rig.customer_id, "kind": "other", "name": "n", "slots": []},
    )
    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    ("channel", "payload"),
    [
        ("telemetry", {"seq": 1, "ts": iso(TEN), "levels": {"black": 0.5}}),
        ("events", {"seq": 1, "ts": iso(TEN), "type": "fall_detected"}),
        # A deleted device's last will arrives after it is gone: a status has no seq, and is refused all the same.
        ("status", "offline"),
    ],
)
def test_unknown_device_is_a_dead_letter(rig: Rig, channel: str, payload: Any) -> None:
    topic = f"devices/never-registered-{channel}/{channel}"
    rig.send(topic, payload)
    letter = assert_dead_letter(rig.dead_letters(topic), encode(payload))
    assert letter["device_id"] in (f"never-registered-{channel}", None)
    assert "unknown device" in letter["reason"]


def test_device_id_is_case_sensitive(rig: Rig) -> None:
    device_id = rig.printer()
    topic = f"devices/{device_id.upper()}/telemetry"
    payload = {"seq": 1, "ts": iso(TEN), "levels": {"black": 0.5}}
    rig.send(topic, payload)
    assert_dead_letter(rig.dead_letters(topic), encode(payload))
    assert rig.readings(device_id, "black") == []


# --------------------------------------------------------------------------------------------------------------------
# §1 payload: UTF-8 JSON objects of at most 16 KiB
# --------------------------------------------------------------------------------------------------------------------


def padded(payload: dict[str, Any], size: int) -> bytes:
    """The payload as JSON, padded with insignificant whitespace to exactly ``size`` bytes."""
    data = json.dumps(payload).encode()
    assert len(data) < size
    return data[:-1] + b" " * (size - len(data)) + b"}"


def test_payload_of_exactly_16_KiB_is_accepted(rig: Rig) -> None:
    device_id = rig.printer()
    raw = padded({"seq": 1, "ts": iso(TEN), "levels": {"black": 0.25}}, LIMIT)
    assert len(raw) == 16384
    rig.send(f"devices/{device_id}/telemetry", raw)
    [reading] = rig.readings(device_id, "black")
    assert reading["level"] == pytest.approx(0.25)
    assert rig.dead_letters(f"devices/{device_id}/telemetry") == []


def test_payload_of_16_KiB_plus_one_byte_is_a_dead_letter(rig: Rig) -> None:
    device_id = rig.printer()
    topic = f"devices/{device_id}/telemetry"
    raw = padded({"seq": 1, "ts": iso(TEN), "levels": {"black": 0.25}}, LIMIT + 1)
    rig.send(topic, raw)
    assert_dead_letter(rig.dead_letters(topic), raw)
    assert rig.readings(device_id, "black") == []


def test_payload_limit_counts_utf8_bytes_not_characters(rig: Rig) -> None:
    # An unknown event type is stored (see below); here its name makes the payload 16 Ki characters but more bytes.
    device_id = rig.wearable()
    topic = f"devices/{device_id}/events"
    base = json.dumps({"seq": 1, "ts": iso(TEN), "type": ""}, ensure_ascii=False)
    name = "é" * (LIMIT - len(base))
    text = json.dumps({"seq": 1, "ts": iso(TEN), "type": name}, ensure_ascii=False)
    raw = text.encode()
    assert len(text) == LIMIT
    assert len(raw) > LIMIT
    rig.send(topic, raw)
    assert_dead_letter(rig.dead_letters(topic), raw)
    assert rig.stored(device_id) == []


def test_far_oversize_payload_is_a_dead_letter_with_its_first_bytes(rig: Rig) -> None:
    # Up to the brokers' packet limit (docs/mqtt.md: 64 KiB; beyond it the client is disconnected, see
    # tests/test_dead_letters.py), an oversize payload is a dead letter keeping its first 4 KiB and its size.
    device_id = rig.printer()
    topic = f"devices/{device_id}/telemetry"
    raw = padded({"seq": 1, "ts": iso(TEN), "levels": {"black": 0.25}}, 60_000)
    rig.send(topic, raw)
    assert_dead_letter(rig.dead_letters(topic), raw)
    assert rig.readings(device_id, "black") == []


def test_invalid_utf8_is_a_dead_letter_with_the_exact_raw_bytes(rig: Rig) -> None:
    device_id = rig.printer()
    topic = f"devices/{device_id}/telemetry"
    raw = b'{"seq": 1, "ts": "2026-11-24T10:00:00Z", "levels": {"black": 0.5}, "note": "\xff\xfe\xc3"}'
    rig.send(topic, raw)
    assert_dead_letter(rig.dead_letters(topic), raw)
    assert rig.readings(device_id, "black") == []


def test_latin1_payload_is_a_dead_letter(rig: Rig) -> None:
    device_id = rig.wearable()
    topic = f"devices/{device_id}/events"
    raw = '{"seq": 1, "ts": "2026-11-24T10:00:00Z", "type": "chute_détectée"}'.encode("latin-1")
    rig.send(topic, raw)
    assert_dead_letter(rig.dead_letters(topic), raw)
    assert rig.stored(device_id) == []


def test_valid_non_ascii_utf8_is_accepted(rig: Rig) -> None:
    device_id = rig.wearable()
    topic = f"devices/{device_id}/events"
    raw = '{"seq": 1, "ts": "2026-11-24T10:00:00Z", "type": "chute_détectée_跌倒"}'.encode()
    rig.send(topic, raw)
    [message] = rig.stored(device_id)
    assert message["event_type"] == "chute_détectée_跌倒"
    assert rig.dead_letters(topic) == []


@pytest.mark.parametrize(
    "raw",
    [b"[]", b'[{"seq": 1}]', b'"online"', b"42", b"null", b"true", b"", b"   ", b"{", b"not json", b"{'seq': 1}"],
    ids=["array", "array-of-object", "string", "number", "null", "bool", "empty", "blank", "truncated", "text", "py"],
)
@pytest.mark.parametrize("channel", ["telemetry", "events"])
def test_payload_that_is_not_a_json_object_is_a_dead_letter(rig: Rig, channel: str, raw: bytes) -> None:
    device_id = rig.printer()
    topic = f"devices/{device_id}/{channel}"
    rig.send(topic, raw)
    assert_dead_letter(rig.dead_letters(topic), raw)
    assert rig.stored(device_id) == []


# --------------------------------------------------------------------------------------------------------------------
# §1 ts: ISO 8601 with offset, or epoch seconds; receive time when absent
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-11-24T10:00:00Z", TEN),
        ("2026-11-24T10:00:00+00:00", TEN),
        ("2026-11-24T12:00:00+02:00", TEN),
        ("2026-11-24T04:30:00-05:30", TEN),
        ("2026-11-25T00:45:00+14:45", TEN),
        ("2026-11-24T10:00:00.250Z", TEN + timedelta(milliseconds=250)),
        (int(TEN.timestamp()), TEN),
        (TEN.timestamp() + 0.5, TEN + timedelta(milliseconds=500)),
    ],
    ids=["Z", "+00:00", "+02:00", "-05:30", "+14:45-next-day", "fraction-Z", "epoch-int", "epoch-float"],
)
def test_ts_forms_are_accepted(rig: Rig, ts: Any, expected: datetime) -> None:
    device_id = rig.printer()
    rig.send(f"devices/{device_id}/telemetry", {"seq": 1, "ts": ts, "levels": {"black": 0.5}})
    [reading] = rig.readings(device_id, "black")
    assert as_time(reading["ts"]) == expected
    assert as_time(rig.device(device_id)["slots"][0]["level_at"]) == expected


def test_absent_ts_on_telemetry_is_the_receive_time(rig: Rig) -> None:
    device_id = rig.printer()
    received = datetime(2026, 12, 1, 17, 23, 5, tzinfo=UTC)
    rig.clock.set(received)
    rig.send(f"devices/{device_id}/telemetry", {"seq": 1, "levels": {"black": 0.5}})
    [reading] = rig.readings(device_id, "black")
    assert as_time(reading["ts"]) == received


def test_absent_ts_on_an_event_is_the_receive_time(rig: Rig) -> None:
    device_id = rig.wearable()
    received = datetime(2026, 12, 2, 6, 7, 8, tzinfo=UTC)
    rig.clock.set(received)
    rig.send(f"devices/{device_id}/events", {"seq": 1, "type": "battery_low", "battery": 0.1})
    [message] = rig.stored(device_id)
    assert aware(message["ts"]) == received


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-24T10:00:00",
        "2026-11-24",
        "10:00:00Z",
        "2026-02-30T10:00:00Z",
        "2026-11-24T25:00:00Z",
        "24/11/2026 10:00",
        "yesterday",
        "",
        True,
        False,
        {},
        [],
        {"epoch": 1795514400},
    ],
    ids=[
        "no-offset",
        "date-only",
        "time-only",
        "feb-30",
        "hour-25",
        "locale-format",
        "word",
        "empty-string",
        "true",
        "false",
        "object",
        "array",
        "nested",
    ],
)
def test_invalid_ts_is_a_dead_letter(rig: Rig, ts: Any) -> None:
    device_id = rig.printer()
    topic = f"devices/{device_id}/telemetry"
    payload = {"seq": 1, "ts": ts, "levels": {"black": 0.5}}
    rig.send(topic, payload)
    assert_dead_letter(rig.dead_letters(topic), encode(payload))
    assert rig.readings(device_id, "black") == []


# --------------------------------------------------------------------------------------------------------------------
# §1 seq: per-device integer; a repeated (device_id, seq) is stored once
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seq",
    [
        pytest.param("absent", id="absent"),
        pytest.param("42", id="string"),
        pytest.param(4.5, id="fraction"),
        pytest.param(True, id="bool"),
        pytest.param(None, id="null"),
        pytest.param([1], id="array"),
        pytest.param({"n": 1}, id="object"),
    ],
)
@pytest.mark.parametrize("channel", ["telemetry", "events"])
def test_seq_that_is_not_an_integer_is_a_dead_letter(rig: Rig, channel: str, seq: Any) -> None:
    # Reading: seq is required on telemetry and events (see the module docstring).
    device_id = rig.printer()
    topic = f"devices/{device_id}/{channel}"
    payload: dict[str, Any] = (
        {"ts": iso(TEN), "levels": {"black": 0.5}} if channel == "telemetry" else {"ts": iso(TEN), "type": "x"}
    )
    if seq != "absent":
        payload["seq"] = seq
    rig.send(topic, payload)
    assert_dead_letter(rig.dead_letters(topic), encode(payload))
    assert rig.stored(device_id) == []


@pytest.mark.parametrize("first", ["telemetry", "events"])
def test_duplicate_seq_across_topics_is_stored_once(rig: Rig, first: str) -> None:
    device_id = rig.printer()
    telemetry = {"seq": 7, "ts": iso(TEN), "levels": {"black": 0.5}}
    event = {"seq": 7, "ts": iso(TEN), "type": "help_requested"}
    messages = [("telemetry", telemetry), ("events", event)]
    if first == "events":
        messages.reverse()
    for channel, payload in messages:
        rig.send(f"devices/{device_id}/{channel}", payload)
    [stored] = rig.stored(device_id)
    assert stored["seq"] == 7
    assert stored["channel"] == first
    if first == "telemetry":
        assert len(rig.readings(device_id, "black")) == 1
        assert rig.api.get("/alerts", params={"device_id": device_id}).json() == []
    else:
        assert rig.readings(device_id, "black") == []
    # A duplicate delivery is not a contract violation: it is not a dead letter either.
    assert rig.dead_letters(f"devices/{device_id}/telemetry") == []
    assert rig.dead_letters(f"devices/{device_id}/events") == []


def test_duplicate_arriving_later_is_stored_once(rig: Rig) -> None:
    device_id = rig.printer()
    topic = f"devices/{device_id}/telemetry"
    for seq, level in [(1, 0.9), (2, 0.8), (3, 0.7)]:
        rig.send(topic, {"seq": seq, "ts": iso(TEN + timedelta(hours=seq)), "levels": {"black": level}})
    # seq 1 again, much later, with other content: still a duplicate delivery of message 1.
    rig.send(topic, {"seq": 1, "ts": iso(TEN + timedelta(hours=9)), "levels": {"black": 0.1}})
    readings = rig.readings(device_id, "black")
    assert [r["level"] for r in readings] == pytest.approx([0.7, 0.8, 0.9])
    assert rig.device(device_id)["slots"][0]["level"] == pytest.approx(0.7)
    assert sorted(m["seq"] for m in rig.stored(device_id)) == [1, 2, 3]


def test_duplicates_in_one_burst_are_stored_once(rig: Rig) -> None:
    # QoS 1 redeliveries arrive back to back; do not wait for each PUBACK, so both land in one ingest batch.
    device_id = rig.printer()
    data = json.dumps({"seq": 5, "ts": iso(TEN), "levels": {"black": 0.5}}).encode()
    topic = f"devices/{device_id}/telemetry"
    infos = [rig.publisher._client(topic).publish(topic, data, qos=1) for _ in range(3)]
    for info in infos:
        info.wait_for_publish(10)
        assert info.is_published()
    rig.settle(3)
    assert len(rig.readings(device_id, "black")) == 1
    assert len(rig.stored(device_id)) == 1


def test_same_seq_on_different_devices_is_stored_for_each(rig: Rig) -> None:
    first, second = rig.printer(), rig.printer()
    for device_id, level in [(first, 0.4), (second, 0.6)]:
        rig.send(f"devices/{device_id}/telemetry", {"seq": 1, "ts": iso(TEN), "levels": {"black": level}})
    assert [r["level"] for r in rig.readings(first, "black")] == pytest.approx([0.4])
    assert [r["level"] for r in rig.readings(second, "black")] == pytest.approx([0.6])


def test_lower_seq_not_seen_before_is_not_a_duplicate(rig: Rig) -> None:
    # Reading: only a repeated (device_id, seq) is a duplicate; an overtaken message still counts.
    device_id = rig.printer()
    topic = f"devices/{device_id}/telemetry"
    rig.send(topic, {"seq": 10, "ts": iso(TEN + timedelta(hours=1)), "levels": {"black": 0.6}})
    rig.send(topic, {"seq": 9, "ts": iso(TEN), "levels": {"black": 0.7}})
    assert sorted(r["level"] for r in rig.readings(device_id, "black")) == pytest.approx([0.6, 0.7])


def test_seq_zero_and_large_values_are_accepted(rig: Rig) -> None:
    device_id = rig.printer()
    topic = f"devices/{device_id}/telemetry"
    for seq in (0, 2**31, 2**53):
        rig.send(topic, {"seq": seq, "ts": iso(TEN), "levels": {"black": 0.5}})
    assert sorted(m["seq"] for m in rig.stored(device_id)) == [0, 2**31, 2**53]


# --------------------------------------------------------------------------------------------------------------------
# §1 levels: slot name → amount in the slot's unit; any subset of the slots
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slot", "level"),
    [
        ("ink", 0.0),
        ("ink", 1.0),
        ("ink", 0),
        ("ink", 1),
        ("ink", 0.42),
        ("milk", 0),
        ("milk", 1.5),
        ("milk", 2.0),
        ("eggs", 0),
        ("eggs", 6),
        ("eggs", 12),
    ],
    ids=[
        "fraction-0.0",
        "fraction-1.0",
        "fraction-int-0",
        "fraction-int-1",
        "fraction-0.42",
        "litre-0",
        "litre-1.5-of-2",
        "litre-2.0-of-2",
        "count-0",
        "count-6-of-12",
        "count-12-of-12",
    ],
)
def test_level_within_the_slot_capacity_is_stored(rig: Rig, slot: str, level: float) -> None:
    device_id = rig.fridge()
    rig.send(f"devices/{device_id}/telemetry", {"seq": 1, "ts": iso(TEN), "levels": {slot: level}})
    [reading] = rig.readings(device_id, slot)
    assert reading["level"] == pytest.approx(level)
    [shown] = [s for s in rig.device(device_id)["slots"] if s["name"] == slot]
    assert shown["level"] == pytest.approx(level)
    assert rig.dead_letters(f"devices/{device_id}/telemetry") == []


@pytest.mark.parametrize(
    ("slot", "level"),
    [
        ("ink", -0.01),
        ("ink", 1.01),
        ("ink", 1.5),
        ("ink", 42),
        ("milk", 2.5),
        ("milk", 2.0001),
        ("milk", -0.5),
        ("eggs", 13),
        ("eggs", -1),
    ],
    ids=[
        "fraction-negative",
        "fraction-1.01",
        "fraction-1.5",
        "fraction-percent",
        "litre-2.5-of-2",
        "litre-just-over",
        "litre-negative",
        "count-13-of-12",
        "count-negative",
    ],
)
def test_level_out_of_range_is_a_dead_letter(rig: Rig, slot: str, level: float) -> None:
    device_id = rig.fridge()
    topic = f"devices/{device_id}/telemetry"
    payload = {"seq": 1, "ts": iso(TEN), "levels": {slot: level}}
    rig.send(topic, payload)
    assert_dead_letter(rig.dead_letters(topic), encode(payload))
    assert rig.readings(device_id, slot) == []
    [shown] = [s for s in rig.device(device_id)["slots"] if s["name"] == slot]
    assert shown["level"] is None


@pytest.mark.parametrize(
    "level",
    ["0.5", "", True, False, None, {"value": 0.5}, [0.5]],
    ids=["string", "empty-string", "true", "false", "null", "object", "array"],
)
def test_level_of_the_wrong_type_is_a_dead_letter(rig: Rig, level: Any) -> None:
    device_id = rig.printer()
    topic = f"devices/{device_id}/telemetry"
    payload = {"seq": 1, "ts": iso(TEN), "levels": {"black": level}}
    rig.send(topic, payload)
    assert_dead_letter(rig.dead_letters(topic), encode(payload))
    assert rig.readings(device_id, "black") == []


@pytest.mark.parametrize(
    "payload",
    [
        {"seq": 1, "ts": iso(TEN)},
        {"seq": 1, "ts": iso(TEN), "levels": None},
        {"seq": 1, "ts": iso(TEN), "levels": [0.5]},
        {"seq": 1, "ts": iso(TEN), "levels": [["black", 0.5]]},
        {"seq": 1, "ts": iso(TEN), "levels": "black=0.5"},
        {"seq": 1, "ts": iso(TEN), "levels": 0.5},
    ],
    ids=["absent", "null", "array", "pairs", "string", "number"],
)
def test_levels_that_are_not_an_object_are_a_dead_letter(rig: Rig, payload: dict[str, Any]) -> None:
    device_id = rig.printer()
    topic = f"devices/{device_id}/telemetry"
    rig.send(topic, payload)
    assert_dead_letter(rig.dead_letters(topic), encode(payload))
    assert rig.stored(device_id) == []


def test_a_subset_of_slots_updates_only_those_slots(rig: Rig) -> None:
    device_id = rig.printer()
    rig.send(f"devices/{device_id}/telemetry", {"seq": 1, "ts": iso(TEN), "levels": {"black": 0.4, "cyan": 0.8}})
    rig.send(f"devices/{device_id}/telemetry", {"seq": 2, "ts": iso(TEN + timedelta(hours=1)), "levels": {"cyan": 0.7}})
    levels = {slot["name"]: slot["level"] for slot in rig.device(device_id)["slots"]}
    assert levels == {"black": pytest.approx(0.4), "cyan": pytest.approx(0.7), "magenta": None, "yellow": None}
    assert len(rig.readings(device_id, "black")) == 1
    assert len(rig.readings(device_id, "cyan")) == 2
    assert rig.readings(device_id, "magenta") == []


def test_unknown_slot_is_a_dead_letter(rig: Rig) -> None:
    device_id = rig.printer()
    topic = f"devices/{device_id}/telemetry"
    payload = {"seq": 1, "ts": iso(TEN), "levels": {"light-cyan": 0.5}}
    rig.send(topic, payload)
    assert_dead_letter(rig.dead_letters(topic), encode(payload))
    assert rig.stored(device_id) == []


def test_slot_names_are_case_sensitive(rig: Rig) -> None:
    device_id = rig.printer()
    topic = f"devices/{device_id}/telemetry"
    payload = {"seq": 1, "ts": iso(TEN), "levels": {"Black": 0.5}}
    rig.send(topic, payload)
    assert_dead_letter(rig.dead_letters(topic), encode(payload))
    assert rig.readings(device_id, "black") == []


@pytest.mark.parametrize(
    "levels",
    [{"black": 0.5, "light-cyan": 0.5}, {"black": 0.5, "cyan": 1.5}, {"black": 0.5, "cyan": "full"}],
    ids=["unknown-slot", "out-of-range", "wrong-type"],
)
def test_one_bad_level_dead_letters_the_whole_message(rig: Rig, levels: dict[str, Any]) -> None:
    # Reading: a message is dead-lettered as a whole; its good levels are not stored on their own.
    device_id = rig.printer()
    topic = f"devices/{device_id}/telemetry"
    payload = {"seq": 1, "ts": iso(TEN), "levels": levels}
    rig.send(topic, payload)
    assert_dead_letter(rig.dead_letters(topic), encode(payload))
    assert rig.readings(device_id, "black") == []
    assert rig.stored(device_id) == []


def test_levels_of_another_devices_slot_are_a_dead_letter(rig: Rig) -> None:
    printer, fridge = rig.printer(), rig.fridge()
    topic = f"devices/{printer}/telemetry"
    payload = {"seq": 1, "ts": iso(TEN), "levels": {"milk": 1.0}}
    rig.send(topic, payload)
    assert_dead_letter(rig.dead_letters(topic), encode(payload))
    assert rig.readings(fridge, "milk") == []


# --------------------------------------------------------------------------------------------------------------------
# §1 events
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        {"type": "fall_detected"},
        {"type": "fall_detected", "confidence": 0.93},
        {"type": "fall_cancelled"},
        {"type": "help_requested"},
        {"type": "battery_low"},
        {"type": "battery_low", "battery": 0.15},
    ],
    ids=["fall", "fall-confidence", "fall-cancelled", "help", "battery-low", "battery-low-level"],
)
def test_each_listed_event_type_is_stored(rig: Rig, event: dict[str, Any]) -> None:
    device_id = rig.wearable()
    topic = f"devices/{device_id}/events"
    rig.send(topic, {"seq": 3, "ts": iso(TEN), **event})
    [message] = rig.stored(device_id)
    assert message["channel"] == "events"
    assert message["event_type"] == event["type"]
    assert message["seq"] == 3
    assert aware(message["ts"]) == TEN
    assert rig.dead_letters(topic) == []


def test_fall_then_cancel_is_shown_as_a_cancelled_fall_alert(rig: Rig) -> None:
    device_id = rig.wearable()
    topic = f"devices/{device_id}/events"
    rig.send(topic, {"seq": 1, "ts": iso(TEN), "type": "fall_detected", "confidence": 0.8})
    [alert] = rig.api.get("/alerts", params={"device_id": device_id}).json()
    assert (alert["kind"], alert["status"]) == ("fall", "open")
    rig.send(topic, {"seq": 2, "ts": iso(TEN + timedelta(seconds=20)), "type": "fall_cancelled"})
    [alert] = rig.api.get("/alerts", params={"device_id": device_id}).json()
    assert alert["status"] == "cancelled"


@pytest.mark.parametrize(
    "event_type",
    [
        pytest.param("door_opened", id="door_opened"),
        pytest.param("FALL_DETECTED", id="upper-case"),
        pytest.param("fall-detected", id="hyphen"),
        pytest.param("x" * 64, id="64-chars"),
        pytest.param(
            "x" * 200,
            id="200-chars",
        ),
    ],
)
def test_unknown_event_type_is_stored_and_not_fatal(rig: Rig, event_type: str) -> None:
    device_id = rig.wearable()
    topic = f"devices/{device_id}/events"
    rig.send(topic, {"seq": 1, "ts": iso(TEN), "type": event_type, "extra": {"anything": [1, 2]}})
    rig.send(topic, {"seq": 2, "ts": iso(TEN), "type": "help_requested"})
    assert [(m["seq"], m["event_type"]) for m in rig.stored(device_id)] == [(1, event_type), (2, "help_requested")]
    assert rig.dead_letters(topic) == []
    [alert] = rig.api.get("/alerts", params={"device_id": device_id}).json()
    assert alert["kind"] == "help_requested"


def test_unknown_event_type_is_shown_through_the_api(rig: Rig) -> None:
    # Reading: "shown" means a client of the HTTP API can see the event; look at every device-scoped view.
    device_id = rig.wearable()
    rig.send(f"devices/{device_id}/events", {"seq": 1, "ts": iso(TEN), "type": "door_opened_4711"})
    paths = rig.api.get(f"{rig.platform.api_url}/openapi.json").json()["paths"]
    views = [f"/devices/{device_id}", "/alerts", "/notifications"]
    views += [
        path.removeprefix("/api/v1").replace("{device_id}", device_id)
        for path, operations in paths.items()
        if "get" in operations and "event" in path and "{" not in path.replace("{device_id}", "")
    ]
    shown = [
        view
        for view in views
        if "door_opened_4711" in rig.api.get(view, params={"device_id": device_id, "limit": 1000}).text
    ]
    assert shown, f"the event appears in none of {views}"


@pytest.mark.parametrize(
    "event",
    [
        {"type": "fall_detected", "confidence": 0},
        {"type": "fall_detected", "confidence": 1},
        {"type": "fall_detected", "confidence": 0.5},
        {"type": "battery_low", "battery": 0},
        {"type": "battery_low", "battery": 1.0},
    ],
    ids=["confidence-0", "confidence-1", "confidence-0.5", "battery-0", "battery-1"],
)
def test_optional_event_fields_at_their_bounds_are_accepted(rig: Rig, event: dict[str, Any]) -> None:
    device_id = rig.wearable()
    topic = f"devices/{device_id}/events"
    rig.send(topic, {"seq": 1, "ts": iso(TEN), **event})
    [message] = rig.stored(device_id)
    assert message["event_type"] == event["type"]
    assert rig.dead_letters(topic) == []


@pytest.mark.parametrize(
    "event",
    [
        {"type": "fall_detected", "confidence": 1.01},
        {"type": "fall_detected", "confidence": -0.1},
        {"type": "fall_detected", "confidence": 93},
        {"type": "fall_detected", "confidence": "high"},
        {"type": "fall_detected", "confidence": True},
        {"type": "fall_detected", "confidence": [0.9]},
        {"type": "battery_low", "battery": 1.5},
        {"type": "battery_low", "battery": -0.2},
        {"type": "battery_low", "battery": "low"},
        {"type": "battery_low", "battery": False},
    ],
    ids=[
        "confidence-1.01",
        "confidence-negative",
        "confidence-percent",
        "confidence-string",
        "confidence-bool",
        "confidence-array",
        "battery-1.5",
        "battery-negative",
        "battery-string",
        "battery-bool",
    ],
)
def test_optional_event_field_out_of_range_or_wrong_type_is_a_dead_letter(rig: Rig, event: dict[str, Any]) -> None:
    device_id = rig.wearable()
    topic = f"devices/{device_id}/events"
    payload = {"seq": 1, "ts": iso(TEN), **event}
    rig.send(topic, payload)
    assert_dead_letter(rig.dead_letters(topic), encode(payload))
    assert rig.stored(device_id) == []
    assert rig.api.get("/alerts", params={"device_id": device_id}).json() == []


@pytest.mark.parametrize(
    "event",
    [{}, {"type": None}, {"type": 42}, {"type": ["fall_detected"]}, {"type": {"name": "fall_detected"}}],
    ids=["absent", "null", "number", "array", "object"],
)
def test_event_without_a_string_type_is_a_dead_letter(rig: Rig, event: dict[str, Any]) -> None:
    device_id = rig.wearable()
    topic = f"devices/{device_id}/events"
    payload = {"seq": 1, "ts": iso(TEN), **event}
    rig.send(topic, payload)
    assert_dead_letter(rig.dead_letters(topic), encode(payload))
    assert rig.stored(device_id) == []


# --------------------------------------------------------------------------------------------------------------------
# §1 status: "online" / "offline", retained, "offline" as the last will
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw_online", [b'"online"', b' "online"\n'], ids=["plain", "whitespace"])
def test_status_online_and_offline_are_shown_on_the_device(rig: Rig, raw_online: bytes) -> None:
    device_id = rig.wearable()
    topic = f"devices/{device_id}/status"
    assert rig.device(device_id)["online"] is None
    rig.send(topic, raw_online, retain=True)
    assert rig.device(device_id)["online"] is True
    rig.send(topic, b'"offline"', retain=True)
    assert rig.device(device_id)["online"] is False
    rig.send(topic, b'"online"', retain=True)
    assert rig.device(device_id)["online"] is True
    assert rig.dead_letters(topic) == []


def test_status_change_time_is_the_receive_time(rig: Rig) -> None:
    device_id = rig.wearable()
    received = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
    rig.clock.set(received)
    rig.send(f"devices/{device_id}/status", "online", retain=True)
    assert as_time(rig.device(device_id)["status_changed_at"]) == received


def test_status_without_retain_flag_is_still_applied(rig: Rig) -> None:
    device_id = rig.wearable()
    rig.send(f"devices/{device_id}/status", "online", retain=False)
    assert rig.device(device_id)["online"] is True


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'"sleeping"', id="other-word"),
        pytest.param(b'"Online"', id="wrong-case"),
        pytest.param(b'""', id="empty-string"),
        pytest.param(b"1", id="number"),
        pytest.param(b"true", id="bool"),
        pytest.param(b"null", id="null"),
        pytest.param(b'{"status": "online"}', id="object"),
        pytest.param(b'["online"]', id="array"),
        pytest.param(
            b"online",
            id="bare-online",
        ),
        pytest.param(
            b"offline",
            id="bare-offline",
        ),
        pytest.param(b'"\xff"', id="bad-utf8"),
    ],
)
def test_junk_status_is_a_dead_letter_and_keeps_the_device_state(rig: Rig, raw: bytes) -> None:
    device_id = rig.wearable()
    topic = f"devices/{device_id}/status"
    rig.send(topic, b'"online"', retain=True)
    rig.send(topic, raw, retain=True)
    assert_dead_letter(rig.dead_letters(topic), raw)
    assert rig.device(device_id)["online"] is True


def test_status_of_an_unknown_device_is_a_dead_letter(rig: Rig) -> None:
    topic = "devices/never-registered-2/status"
    rig.send(topic, b'"online"', retain=True)
    assert_dead_letter(rig.dead_letters(topic), b'"online"')


def test_last_will_marks_the_device_offline(rig: Rig) -> None:
    device_id = rig.wearable()
    topic = f"devices/{device_id}/status"
    endpoint = rig.platform.settings.mqtt_endpoint
    device = paho.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=paho.MQTTv311)
    device.will_set(topic, b'"offline"', qos=1, retain=True)
    device.username_pw_set(device_id, DEVICE_SECRETS[device_id])
    device.connect(endpoint.host, endpoint.port, keepalive=60)
    device.loop_start()
    try:
        info = device.publish(topic, b'"online"', qos=1, retain=True)
        info.wait_for_publish(10)
        assert info.is_published()
        rig.settle(1)
        assert rig.device(device_id)["online"] is True
    finally:
        device.loop_stop()
        # The device loses power: the connection drops without a DISCONNECT, so the broker sends its last will.
        sock = device.socket()
        assert sock is not None
        sock.close()
    rig.settle(1)
    assert rig.device(device_id)["online"] is False


# --------------------------------------------------------------------------------------------------------------------
# §1 dead letters never stop ingestion
# --------------------------------------------------------------------------------------------------------------------


def test_good_messages_interleaved_with_bad_ones_keep_being_stored(rig: Rig) -> None:
    printer, pendant = rig.printer(), rig.wearable()
    bad: list[tuple[str, bytes]] = [
        (f"devices/{printer}/telemetry", b"\x00\x01binary"),
        (f"devices/{printer}/telemetry", json.dumps({"seq": 100, "levels": {"black": 7}}).encode()),
        (f"devices/{pendant}/events", b"[]"),
        (f"devices/{printer}/telemetry", json.dumps({"seq": 101, "levels": {"nope": 0.1}}).encode()),
        (f"devices/{pendant}/status", b"maybe"),
        ("devices/ghost-device/telemetry", json.dumps({"seq": 1, "levels": {"black": 0.1}}).encode()),
    ]
    sent = 0
    for index, (topic, raw) in enumerate(bad):
        seq = index + 1
        level = round(0.9 - index * 0.1, 2)
        good = {"seq": seq, "ts": iso(TEN + timedelta(minutes=seq)), "levels": {"black": level}}
        rig.publisher.send(f"devices/{printer}/telemetry", good)
        rig.publisher.send(topic, raw)
        sent += 2
    rig.publisher.send(f"devices/{pendant}/events", {"seq": 50, "ts": iso(TEN), "type": "help_requested"})
    rig.settle(sent + 1)
    assert [r["level"] for r in rig.readings(printer, "black")] == pytest.approx([0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    for topic, raw in bad:
        assert raw in {base64.b64decode(letter["payload_base64"]) for letter in rig.dead_letters(topic)}
    assert [m["event_type"] for m in rig.stored(pendant)] == ["help_requested"]


def test_dead_letters_can_be_listed_per_device(rig: Rig) -> None:
    device_id = rig.printer()
    topic = f"devices/{device_id}/telemetry"
    rig.send(topic, b"garbage-1")
    rig.send(topic, b"garbage-2")
    letters = dead_letters_with_payloads(rig.api, device_id=device_id)
    assert {base64.b64decode(letter["payload_base64"]) for letter in letters} == {b"garbage-1", b"garbage-2"}
    assert all(letter["topic"] == topic and letter["device_id"] == device_id for letter in letters)


# --------------------------------------------------------------------------------------------------------------------
# §2 platform → device: devices/{device_id}/commands, QoS 1
# --------------------------------------------------------------------------------------------------------------------


def test_acknowledging_a_fall_alert_publishes_alert_acknowledged_at_qos_1(rig: Rig) -> None:
    device_id = rig.wearable()
    subscriber = DeviceSubscriber(rig.platform.settings.mqtt_endpoint, f"devices/{device_id}/commands")
    try:
        rig.send(
            f"devices/{device_id}/events",
            {"seq": 1, "ts": iso(rig.clock.now()), "type": "fall_detected", "confidence": 0.93},
        )
        [alert] = rig.api.get("/alerts", params={"device_id": device_id}).json()
        assert (alert["kind"], alert["status"]) == ("fall", "open")
        acknowledged_at = rig.clock.advance(timedelta(minutes=3))
        response = rig.api.post(f"/alerts/{alert['id']}/acknowledge", json={"by": "daughter"})
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "acknowledged"
        rig.platform.jobs.dispatch()
        commands = subscriber.wait_for_topic(f"devices/{device_id}/commands", 1)
    finally:
        subscriber.close()
    # What else the broker hands a device is test_a_device_receives_only_its_commands' concern.
    [message] = commands
    assert message.topic == f"devices/{device_id}/commands"
    assert message.qos == 1, "the command must be published at QoS 1"
    command = json.loads(message.payload.decode("utf-8"))
    assert isinstance(command, dict)
    assert command["type"] == "alert_acknowledged"
    assert command["alert_id"] == alert["id"]
    assert as_time(command["ts"]) == acknowledged_at
    assert len(message.payload) <= LIMIT


def test_a_device_receives_only_its_commands(rig: Rig) -> None:
    # §2: the platform talks to a device on devices/{device_id}/commands. Another device's retained status (which the
    # platform itself subscribes to) must not reach it.
    other, device_id = rig.wearable(), rig.wearable()
    rig.send(f"devices/{other}/status", b'"online"', retain=True)
    subscriber = DeviceSubscriber(rig.platform.settings.mqtt_endpoint, f"devices/{device_id}/commands")
    try:
        rig.send(f"devices/{device_id}/events", {"seq": 1, "ts": iso(rig.clock.now()), "type": "fall_detected"})
        [alert] = rig.api.get("/alerts", params={"device_id": device_id}).json()
        assert rig.api.post(f"/alerts/{alert['id']}/acknowledge").status_code == 200
        rig.platform.jobs.dispatch()
        assert subscriber.wait_for_topic(f"devices/{device_id}/commands", 1)
        received = subscriber.wait_for(1)
    finally:
        subscriber.close()
    assert [(m.topic, m.payload) for m in received if m.topic != f"devices/{device_id}/commands"] == []


def test_acknowledgement_goes_to_the_alerting_device_only(rig: Rig) -> None:
    first, second = rig.wearable(), rig.wearable()
    subscriber = DeviceSubscriber(rig.platform.settings.mqtt_endpoint, "devices/+/commands")
    try:
        alerts = {}
        for device_id in (first, second):
            rig.send(f"devices/{device_id}/events", {"seq": 1, "ts": iso(rig.clock.now()), "type": "fall_detected"})
            [alerts[device_id]] = rig.api.get("/alerts", params={"device_id": device_id}).json()
        for device_id in (second, first):
            response = rig.api.post(f"/alerts/{alerts[device_id]['id']}/acknowledge")
            assert response.status_code == 200, response.text
            rig.platform.jobs.dispatch()
            assert subscriber.wait_for_topic(f"devices/{device_id}/commands", 1)
        received = [m for m in subscriber.wait_for(0) if m.topic.endswith("/commands")]
    finally:
        subscriber.close()
    routed = [(m.topic, json.loads(m.payload)["alert_id"]) for m in received]
    assert routed == [
        (f"devices/{second}/commands", alerts[second]["id"]),
        (f"devices/{first}/commands", alerts[first]["id"]),
    ]


# --------------------------------------------------------------------------------------------------------------------
# Tests with a platform of their own
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "must_dead_letter"),
    [
        (b'{"seq": 1, "ts": "2026-11-24T10:00:00Z", "levels": {"black": NaN}}', True),
        (b'{"seq": 1, "ts": "2026-11-24T10:00:00Z", "levels": {"black": Infinity}}', True),
        (b'{"seq": 1, "ts": "2026-11-24T10:00:00Z", "levels": {"black": -Infinity}}', True),
        (b'{"seq": 1, "ts": NaN, "levels": {"black": 0.5}}', True),
        (b'{"seq": 1, "ts": 1e20, "levels": {"black": 0.5}}', True),
        (b'{"seq": 1, "ts": -1e20, "levels": {"black": 0.5}}', True),
        (b'{"seq": 1, "ts": "9999-12-31T23:59:59-12:00", "levels": {"black": 0.5}}', False),
        (b'{"seq": 1e400, "ts": "2026-11-24T10:00:00Z", "levels": {"black": 0.5}}', True),
        (b'{"seq": 1, "ts": "2026-11-24T10:00:00Z", "levels": {"black": 1e400}}', True),
        (b"[" * 8000 + b"]" * 8000, True),
        (b'{"seq": 1, "levels": {"black": ' + b"[" * 5000 + b"]" * 5000 + b"}}", True),
        (b'{"seq": 18446744073709551616, "ts": "2026-11-24T10:00:00Z", "levels": {"black": 0.5}}', False),
        (b'{"seq": -18446744073709551616, "ts": "2026-11-24T10:00:00Z", "levels": {"black": 0.5}}', False),
        (b'{"seq": 1, "ts": "2026-11-24T10:00:00Z", "levels": {"black": 0.5, "\\u0000": 0.1}}', True),
    ],
    ids=[
        "level-NaN",
        "level-Infinity",
        "level-minus-Infinity",
        "ts-NaN",
        "ts-epoch-1e20",
        "ts-epoch-minus-1e20",
        "ts-year-9999-with-offset",
        "seq-1e400",
        "level-1e400",
        "deeply-nested-array",
        "deeply-nested-level",
        "seq-2**64",
        "seq-minus-2**64",
        "slot-NUL",
    ],
)
def test_pathological_payload_never_stops_ingestion(
    platform: Platform, api: httpx.Client, publisher: Publisher, raw: bytes, must_dead_letter: bool
) -> None:
    """Values a broken device could send. Where the contract allows either, it must be stored or dead-lettered."""
    assert len(raw) <= LIMIT
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="p1")
    topic = "devices/p1/telemetry"
    publisher.send(topic, raw)
    publisher.send(topic, {"seq": 2, "ts": iso(TEN), "levels": {"black": 0.3}})
    assert platform.ingestor.wait_for(handled=2, timeout=WAIT), "ingestion stopped after the pathological message"
    readings = api.get("/devices/p1/slots/black/readings").json()
    assert 0.3 in [r["level"] for r in readings], "the next good message was not stored"
    letters = [
        base64.b64decode(letter["payload_base64"]) for letter in dead_letters_with_payloads(api) if letter["topic"]
    ]
    stored = [m for m in stored_messages(platform, "p1") if m["seq"] != 2]
    if must_dead_letter:
        assert letters == [raw[:DEAD_LETTER_KEEP_BYTES]]
        assert stored == []
    else:
        assert (letters == [raw]) != (len(stored) == 1), f"neither or both: dead letters {letters}, stored {stored}"
    for reading in readings:
        assert 0 <= reading["level"] <= 1


def test_retained_status_reaches_a_restarted_ingestor(
    platform: Platform, api: httpx.Client, publisher: Publisher, clock: ManualClock, tmp_path: Path
) -> None:
    # The status is retained so that a platform that (re)connects learns every device's state at once.
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="pendant-r", kind="wearable", slots=[])
    assert platform.ingestor is not None
    platform.ingestor.stop()
    publisher.send("devices/pendant-r/status", b'"online"', retain=True)
    # Same data_dir (same database), same broker, and the service password of the platform that runs the broker.
    settings = make_settings(
        tmp_path,
        broker_port=platform.settings.broker_port,
        broker_service_password=platform.settings.broker_service_password,
    )
    restarted = Platform(settings, roles=Roles(ingest=True), clock=clock)
    restarted.start()
    try:
        assert restarted.ingestor is not None
        assert restarted.ingestor.wait_for(handled=1, timeout=WAIT)
    finally:
        restarted.stop()
    assert api.get("/devices/pendant-r").json()["online"] is True


def test_clearing_the_retained_status_changes_nothing(
    platform: Platform, api: httpx.Client, publisher: Publisher
) -> None:
    # An empty retained publish is how MQTT deletes a retained message (e.g. when a device is retired). It is not a
    # status: the device's state stays, and ingestion goes on.
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="p1")
    publisher.send("devices/p1/status", b'"online"', retain=True)
    assert platform.ingestor.wait_for(handled=1, timeout=WAIT)
    publisher.send("devices/p1/status", b"", retain=True)
    publisher.send("devices/p1/telemetry", {"seq": 1, "ts": iso(TEN), "levels": {"black": 0.3}})
    assert wait_until(lambda: api.get("/devices/p1/slots/black/readings").json() != [])
    assert api.get("/devices/p1").json()["online"] is True

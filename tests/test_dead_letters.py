"""Unbounded payloads, bounded (issue 17, 4): both brokers refuse packets over the contract's maximum, a dead letter
keeps a bounded prefix and the size, each sender has an hourly allowance of dead letters with the rest counted, and
the operator's list carries no bodies."""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from replenish.clock import ManualClock
from replenish.constants import DEAD_LETTER_KEEP_BYTES, MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES
from replenish.runtime import Platform
from support.api import api_client, create_customer, operator_token, register_device
from support.mqtt import DEVICE_SECRETS, Publisher
from support.platform import Stack, make_settings, running_platform


@pytest.fixture
def printer(api: httpx.Client) -> str:
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="printer-1")
    return customer_id


@pytest.mark.both_stacks
def test_a_packet_over_the_maximum_ends_the_connection_and_nothing_is_kept(
    platform: Platform, api: httpx.Client, publisher: Publisher, stack: Stack, printer: str
):
    port = publisher.devices_port()
    closed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="printer-1", protocol=paho.MQTTv311)
    client.username_pw_set("printer-1", DEVICE_SECRETS["printer-1"])
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.on_disconnect = lambda *args: closed.set()
    client.connect(platform.settings.mqtt_endpoint.host, port)
    client.loop_start()
    try:
        assert connected.wait(10)
        client.publish("devices/printer-1/telemetry", b"x" * (MAX_PACKET_BYTES + 1), qos=1)
        assert closed.wait(10), "the broker ends the connection of a client that sends too large a packet"
    finally:
        client.loop_stop()
    # What fits the packet but not the contract is still a dead letter, with its first bytes and its size.
    too_large = b'{"seq": 1, "levels": {}, "pad": "' + b"y" * (MAX_PAYLOAD_BYTES + 100) + b'"}'
    publisher.send("devices/printer-1/telemetry", too_large)
    assert platform.ingestor is not None and platform.ingestor.wait_for(handled=1, timeout=10)
    [letter] = api.get("/dead-letters").json()
    assert letter["payload_size"] == len(too_large) and "exceeds" in letter["reason"]
    detail = api.get(f"/dead-letters/{letter['id']}").json()
    assert detail["payload_kept"] == DEAD_LETTER_KEEP_BYTES
    assert base64.b64decode(detail["payload_base64"]) == too_large[:DEAD_LETTER_KEEP_BYTES]


def test_each_sender_has_an_hourly_allowance_and_the_rest_is_counted(tmp_path: Path, clock: ManualClock):
    settings = make_settings(tmp_path, dead_letters_per_device_hour=3)
    with running_platform(settings, clock) as platform, api_client(platform, operator_token(platform)) as api:
        customer_id = create_customer(api)
        register_device(api, customer_id=customer_id, device_id="printer-1")
        device = Publisher(platform.settings.mqtt_endpoint)
        try:
            for number in range(5):
                device.send("devices/printer-1/telemetry", f"garbage {number}".encode())
            for number in range(4):  # made-up devices share one allowance
                device.send(f"devices/ghost-{number}/telemetry", {"seq": 1, "levels": {}})
            assert platform.ingestor is not None and platform.ingestor.wait_for(handled=9, timeout=10)
        finally:
            device.close()
        letters = api.get("/dead-letters", params={"limit": 100}).json()
        by_sender: dict[Any, int] = {}
        for letter in letters:
            key = letter["device_id"] if letter["device_id"] == "printer-1" else "ghosts"
            by_sender[key] = by_sender.get(key, 0) + 1
        assert by_sender == {"printer-1": 3, "ghosts": 3}
        assert not any("payload_base64" in letter or "payload_text" in letter for letter in letters), "no bodies"
        overflow = {row["sender"]: row["dropped"] for row in api.get("/dead-letters/overflow").json()}
        assert overflow == {"printer-1": 2, "(unregistered)": 1}
        with api_client(platform, None) as anonymous:
            assert anonymous.get("/dead-letters/overflow").status_code == 401
        assert api.get("/dead-letters/999999").status_code == 404

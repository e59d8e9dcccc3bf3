"""The platform tells each device which of its messages it has stored or refused for good (devices/{id}/stored,
docs/mqtt.md "Confirmations"), and the simulators keep and send again what stays unconfirmed. The broker-restart
tests that this makes lossless are in test_broker_restart.py."""

from __future__ import annotations

import json
import threading
from typing import Any

import paho.mqtt.client as paho
import pytest

from replenish.config import MqttEndpoint
from replenish.constants import CONFIRM_MAX_RANGES, MAX_PACKET_BYTES
from replenish.ingest.schemas import confirmation_payloads, seq_ranges
from replenish.simulation.runner import MAX_SENDS, UnconfirmedMessages
from support import wait_until
from support.api import create_customer, register_device
from support.mqtt import DEVICE_SECRETS, connected, publish


class Confirmations:
    """What one client receives on the stored topics it subscribed to."""

    def __init__(self, client: paho.Client, topic: str) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.granted: list[int] = []
        answered = threading.Event()

        def on_subscribe(client: paho.Client, userdata: Any, mid: int, codes: list[Any], props: Any) -> None:
            self.granted = [code.value for code in codes]
            answered.set()

        client.on_message = lambda client, userdata, message: self.received.append(
            (message.topic, json.loads(message.payload))
        )
        client.on_subscribe = on_subscribe
        client.subscribe(topic, qos=0)
        assert answered.wait(10), "no SUBACK"

    def seqs(self, key: str) -> set[int]:
        return {seq for _, document in self.received for first, last in document[key] for seq in range(first, last + 1)}


@pytest.mark.both_stacks
def test_a_device_is_told_what_was_stored_and_what_was_refused_and_nobody_else_is(platform, api, stack):
    register_device(api, customer_id=create_customer(api, email="ada@example.com"), device_id="ada-printer")
    register_device(api, customer_id=create_customer(api, email="bob@example.com"), device_id="bob-printer")
    endpoint = MqttEndpoint("127.0.0.1", stack.publisher(platform).devices_port())
    with (
        connected(endpoint, "ada-printer", DEVICE_SECRETS["ada-printer"]) as ada,
        connected(endpoint, "bob-printer", DEVICE_SECRETS["bob-printer"]) as bob,
    ):
        own = Confirmations(ada, "devices/ada-printer/stored")
        foreign = Confirmations(bob, "devices/ada-printer/stored")
        for payload in [
            {"seq": 1, "levels": {"black": 0.9}},
            {"seq": 2, "levels": {"black": 0.8}},
            {"seq": 3, "levels": {"black": 0.7}},
            {"seq": 2, "levels": {"black": 0.8}},  # sent again: a duplicate, confirmed as stored again
            {"seq": 4, "levels": {"no-such-slot": 0.5}},  # refused for good: unknown slot
            {"seq": 5, "levels": {"black": 7}},  # refused for good: beyond the slot's capacity
            {"levels": {"black": 0.6}},  # no seq: refused, and nothing to confirm it by
            {"seq": 7, "levels": {"black": "full"}},  # invalid, but its seq is readable
        ]:
            publish(ada, "devices/ada-printer/telemetry", payload)
        assert wait_until(lambda: own.seqs("stored") == {1, 2, 3} and own.seqs("refused") == {4, 5, 7}), own.received
        threading.Event().wait(1.0)  # a confirmation of anything else would arrive meanwhile
    assert own.seqs("stored") == {1, 2, 3} and own.seqs("refused") == {4, 5, 7}
    assert {topic for topic, _ in own.received} == {"devices/ada-printer/stored"}
    assert foreign.received == [], "a device never sees another device's confirmations"
    if stack.name == "embedded":
        assert foreign.granted == [128], "the embedded broker refuses the subscription outright"


def test_seq_ranges_join_consecutive_numbers() -> None:
    assert seq_ranges([7, 1, 3, 2, 2, 9, 8]) == [[1, 3], [7, 9]]
    assert seq_ranges([]) == []
    epoch_millis = [1_733_480_000_000, 1_733_480_000_250]
    assert seq_ranges(epoch_millis) == [[epoch_millis[0]] * 2, [epoch_millis[1]] * 2]


def test_a_confirmation_is_split_before_it_reaches_the_packet_limit() -> None:
    largest = 2**63 - 1
    stored = range(largest - 4 * CONFIRM_MAX_RANGES, largest, 2)  # no two consecutive: one range each
    payloads = confirmation_payloads(stored=stored, refused=[5])
    documents = [json.loads(payload) for payload in payloads]
    assert len(payloads) == 3 and all(len(payload) < MAX_PACKET_BYTES - 1024 for payload in payloads)
    assert sum(len(document["stored"]) for document in documents) == len(stored)
    assert [document["refused"] for document in documents] == [[], [], [[5, 5]]]


def test_a_device_keeps_what_is_unconfirmed_and_sends_it_again_when_due() -> None:
    messages = UnconfirmedMessages(limit=5)
    for seq in range(1, 6):
        messages.keep(seq, "devices/d/telemetry", f"m{seq}".encode(), now=100.0)
    messages.confirm({"stored": [[1, 2]], "refused": [[4, 4]]})
    messages.confirm({"stored": "not a list of ranges"})
    messages.confirm(["neither"])
    assert messages.count == 2 and messages.refused == 1
    assert messages.due(now=110.0, after=15.0) == []
    assert messages.due(now=115.0, after=15.0) == [("devices/d/telemetry", b"m3"), ("devices/d/telemetry", b"m5")]
    assert messages.due(now=120.0, after=15.0) == [], "sent again just now: not due again yet"
    assert messages.due(now=144.0, after=15.0) == [] and len(messages.due(now=145.0, after=15.0)) == 2, "30 s later"
    assert messages.due(now=205.0, after=15.0, limit=1) == [("devices/d/telemetry", b"m3")], "60 s later, one at most"
    for seq in range(6, 10):
        messages.keep(seq, "devices/d/telemetry", b"m", now=121.0)
    assert messages.count == 5 and messages.given_up == 1, "beyond the limit, the oldest is given up"
    messages.confirm({"stored": [[0, 2**63 - 1]]})
    assert messages.count == 0 and messages.wait_empty(0)
    # A platform that never confirms a message: it is sent MAX_SENDS times in all, then given up.
    messages.keep(1, "devices/d/telemetry", b"m", now=0.0)
    resent = sum(len(messages.due(now=float(day * 86_400), after=15.0)) for day in range(1, 20))
    assert resent == MAX_SENDS - 1 and messages.count == 0 and messages.given_up == 2

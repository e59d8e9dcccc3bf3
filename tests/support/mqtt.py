"""Devices on MQTT, through a real broker: publishers, a command listener, a connected client."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from replenish.config import MqttEndpoint
from replenish.mqtt.client import disconnect_and_stop
from support.brokers import free_port

# The MQTT secret of every device registered through support.api.register_device, newest registration wins: the
# Publisher signs in with it.
DEVICE_SECRETS: dict[str, str] = {}


class Publisher:
    """Devices publishing at QoS 1, each send waiting for its PUBACK.

    A registered device (support.api.register_device keeps its secret) publishes as itself, signed in with the secret
    the platform issued it. Anything else (an unknown device, a foreign topic) goes out as the platform's service
    account, which may publish anywhere: how a message the contract refuses can reach the ingestor at all.
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        *,
        device_port: int | None = None,
        before_device_connects: Callable[[], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        # Mosquitto has a listener for devices apart from the platform's; the embedded broker has one for both.
        self.device_port = device_port or endpoint.port
        # Mosquitto knows a device once its password file is written again and reloaded (the embedded broker asks
        # the database at each sign-in).
        self.before_device_connects = before_device_connects
        self.clients: dict[str, paho.Client] = {}

    def devices_port(self) -> int:
        """The port where registered devices sign in, once the broker knows them: for clients of other makes."""
        if self.before_device_connects is not None:
            self.before_device_connects()
        return self.device_port

    def _client(self, topic: str) -> paho.Client:
        parts = topic.split("/")
        device_id = parts[1] if len(parts) == 3 and parts[0] == "devices" else ""
        secret = DEVICE_SECRETS.get(device_id)
        who = device_id if secret else ""
        client = self.clients.get(who)
        if client is None:
            # A device's client id is its device id; the service account's start with "replenish".
            client_id = f"{device_id}/publisher" if secret else f"replenish-test-{free_port()}"
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
            if secret:
                client.username_pw_set(device_id, secret)
            else:
                client.username_pw_set(self.endpoint.username, self.endpoint.password)
            client.connect(self.endpoint.host, self.devices_port() if secret else self.endpoint.port)
            client.loop_start()
            self.clients[who] = client
        return client

    def send(self, topic: str, payload: Any, *, retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self._client(topic).publish(topic, data, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"broker did not acknowledge {topic}"

    def close(self) -> None:
        for client in self.clients.values():
            disconnect_and_stop(client)


class CommandListener:
    """Subscribes to devices/+/commands the way a device would."""

    def __init__(self, endpoint: MqttEndpoint) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.received = threading.Condition()
        subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"replenish-test-listener-{free_port()}", protocol=paho.MQTTv311
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.username_pw_set(endpoint.username, endpoint.password)  # the service account: sees every device
        self.client.connect(endpoint.host, endpoint.port)
        self.client.loop_start()
        self.client.subscribe("devices/+/commands", qos=1)
        assert subscribed.wait(10)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self.received:
            self.messages.append((message.topic, json.loads(message.payload)))
            self.received.notify_all()

    def wait_for(self, count: int, timeout: float = 10) -> list[tuple[str, dict[str, Any]]]:
        with self.received:
            self.received.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def close(self) -> None:
        disconnect_and_stop(self.client)


def publish_depletion(
    publisher: Any,
    *,
    device_id: str,
    slot: str,
    start: datetime,
    start_level: float,
    rate_per_day: float,
    days: float,
    every: timedelta = timedelta(hours=6),
    first_seq: int = 1,
) -> int:
    """A slot emptying at a steady rate, one reading every ``every``. Returns how many were sent."""
    sent = 0
    moment = start
    while moment <= start + timedelta(days=days):
        level = max(start_level - rate_per_day * (moment - start) / timedelta(days=1), 0.0)
        publisher.send(
            f"devices/{device_id}/telemetry",
            {"seq": first_seq + sent, "ts": moment.isoformat(), "levels": {slot: round(level, 4)}},
        )
        sent += 1
        moment += every
    return sent


class Refused(Exception):
    pass


@contextmanager
def connected(
    endpoint: MqttEndpoint,
    username: str | None,
    password: str | None,
    *,
    client_id: str | None = None,
    mqtt5: bool = False,
    **will: Any,
) -> Iterator[paho.Client]:
    """A device's MQTT 3.1.1 (or 5) client (client id: its username unless given), connected, or Refused."""
    protocol = paho.MQTTv5 if mqtt5 else paho.MQTTv311
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or username or "", protocol=protocol)
    if username is not None:
        client.username_pw_set(username, password)
    if will:
        client.will_set(will["topic"], will["payload"], qos=1)
    answered = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        outcome["reason"] = reason
        answered.set()

    client.on_connect = on_connect
    client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    try:
        assert answered.wait(10), "no CONNACK"
        if outcome["reason"].is_failure:
            raise Refused(str(outcome["reason"]))
        yield client
    finally:
        disconnect_and_stop(client)


def publish(client: paho.Client, topic: str, payload: dict[str, Any]) -> None:
    info = client.publish(topic, json.dumps(payload).encode(), qos=1)
    info.wait_for_publish(10)

"""paho-mqtt clients of the platform: the one place that knows how we connect."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlmodel import Session

from replenish.config import MqttEndpoint
from replenish.constants import INGEST_SESSION_EXPIRY_NEVER, MQTT_QOS
from replenish.outbox.models import OutboxMessage

log = logging.getLogger(__name__)

CONNECTED_WAIT_SECONDS = 1.0
RECONNECT_MAX_DELAY_SECONDS = 2


def make_client(
    endpoint: MqttEndpoint,
    *,
    client_id: str,
    persistent_session: bool = False,
    manual_ack: bool = False,
    mqtt5: bool = False,
) -> paho.Client:
    """A client; connect it with ``connect_async``, which knows how each protocol asks for a persistent session.

    MQTT 3.1.1 unless ``mqtt5``: the embedded amqtt broker speaks nothing newer, and Mosquitto speaks it too. Shared
    subscriptions ($share/...) are MQTT 5."""
    if mqtt5:
        # MQTT 5 has no clean session flag: clean start and a session expiry interval, given at connect.
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5, manual_ack=manual_ack
        )
    else:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=not persistent_session,
            manual_ack=manual_ack,
        )
    if endpoint.username:
        client.username_pw_set(endpoint.username, endpoint.password)
    # Back within 2 s of the broker's return: until the ingestor has re-subscribed, a broker that does not restore
    # shared subscriptions (Mosquitto 2.0) drops what devices publish, and only their resending recovers it.
    client.reconnect_delay_set(min_delay=1, max_delay=RECONNECT_MAX_DELAY_SECONDS)
    return client


def connect_async(
    client: paho.Client, endpoint: MqttEndpoint, *, persistent_session: bool, keepalive: int = 30
) -> None:
    """Connect in the background (loop_start runs it), resuming the session on every connection when persistent."""
    if client.protocol != paho.MQTTv5:
        client.connect_async(endpoint.host, endpoint.port, keepalive=keepalive)
        return
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
    properties.SessionExpiryInterval = INGEST_SESSION_EXPIRY_NEVER if persistent_session else 0
    # paho's default cleans the session on the first connection: a restarted ingestor would throw away the messages
    # the broker kept for it. False resumes it on every connection.
    client.connect_async(
        endpoint.host, endpoint.port, keepalive=keepalive, clean_start=not persistent_session, properties=properties
    )


def disconnect_and_stop(client: paho.Client) -> None:
    """Disconnect, and stop the client's network thread once it is done.

    paho's loop_stop reads the thread twice, and the thread clears it as it ends, which a disconnect makes it do (an
    open paho bug, eclipse-paho/paho.mqtt.python#872): loop_stop then fails on a thread that is over anyway."""
    client.disconnect()
    try:
        client.loop_stop()
    except AttributeError:
        if getattr(client, "_thread", None) is not None:  # not that race: some other fault
            raise


class CommandPublisher:
    """Publishes platform → device commands (contract §2) at QoS 1 and waits for the broker's PUBACK."""

    def __init__(self, endpoint: MqttEndpoint, *, client_id: str = "replenish-commands") -> None:
        self._client = make_client(endpoint, client_id=client_id)
        self._endpoint = endpoint
        self._connected = threading.Event()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            self._connected.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()

    def start(self) -> None:
        self._client.connect_async(self._endpoint.host, self._endpoint.port)
        self._client.loop_start()

    def stop(self) -> None:
        disconnect_and_stop(self._client)

    def publish(self, topic: str, payload: dict[str, Any], *, timeout: float = 5.0) -> None:
        # Fail fast while the broker is away: the dispatcher retries later, and other deliveries must not wait.
        if not self._connected.wait(CONNECTED_WAIT_SECONDS):
            raise ConnectionError(f"not connected to the MQTT broker at {self._endpoint.url}")
        info = self._client.publish(topic, json.dumps(payload), qos=MQTT_QOS)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"broker did not acknowledge the command on {topic} within {timeout:g} s")


class CommandHandler:
    """Device commands leave through the outbox: this handler (registered for OutboxKind.DEVICE_COMMAND in
    runtime.py) publishes each on the device's commands topic."""

    def __init__(self, publisher: CommandPublisher) -> None:
        self._publisher = publisher

    def deliver(self, message: OutboxMessage) -> None:
        self._publisher.publish(message.payload["topic"], message.payload["command"])

    def record_delivery(self, *, session: Session, message: OutboxMessage, now: datetime) -> None:
        pass  # nothing of the device's to update: an acknowledgement is recorded when the device answers

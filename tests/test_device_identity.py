"""Device identity on the embedded broker: each device signs in with the secret issued at registration, and may
speak only for itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlmodel import Session, select

from brokers import running_mosquitto
from conftest import customer_api
from helpers import DEVICE_SECRETS, create_customer, register_device, wait_until
from replenish.config import MqttEndpoint
from replenish.devices.models import Device
from replenish.ingest.models import DeadLetter, DeviceMessage
from replenish.runtime import Platform

REPLENISH = str(Path(sys.executable).parent / "replenish")


class Refused(Exception):
    pass


@contextmanager
def connected(
    endpoint: MqttEndpoint, username: str | None, password: str | None, *, client_id: str | None = None, **will: Any
) -> Iterator[paho.Client]:
    """A device's MQTT 3.1.1 client (client id: its username unless given), connected, or Refused."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or username or "", protocol=paho.MQTTv311)
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
        client.disconnect()
        client.loop_stop()


def publish(client: paho.Client, topic: str, payload: dict[str, Any]) -> None:
    info = client.publish(topic, json.dumps(payload).encode(), qos=1)
    info.wait_for_publish(10)


def stored_for(platform: Platform, device_id: str) -> int:
    with Session(platform.engine) as session:
        return len(session.exec(select(DeviceMessage).where(DeviceMessage.device_id == device_id)).all())


@pytest.fixture
def two_printers(api) -> tuple[dict[str, Any], dict[str, Any]]:
    ada = create_customer(api, email="ada@example.com")
    bob = create_customer(api, email="bob@example.com")
    return (
        register_device(api, customer_id=ada, device_id="ada-printer"),
        register_device(api, customer_id=bob, device_id="bob-printer"),
    )


def test_registration_issues_a_secret_that_is_stored_only_as_a_hash(platform, api, two_printers):
    ada_printer, _ = two_printers
    credentials = ada_printer["credentials"]
    assert credentials["mqtt_username"] == "ada-printer" and len(credentials["mqtt_password"]) >= 32
    with Session(platform.engine) as session:
        stored = session.get(Device, "ada-printer")
    assert stored is not None and stored.mqtt_password_hash.startswith("$7$")
    assert credentials["mqtt_password"] not in stored.mqtt_password_hash
    assert "credentials" not in api.get("/devices/ada-printer").json(), "shown once, at registration"


@pytest.mark.parametrize(
    ("username", "password"),
    [(None, None), ("ada-printer", "not its secret"), ("ghost-printer", "anything"), ("replenish", "a guess")],
    ids=["anonymous", "wrong secret", "unknown device", "service account guessed"],
)
def test_the_broker_refuses_anyone_without_valid_credentials(platform, two_printers, username, password):
    with pytest.raises(Refused), connected(platform.settings.mqtt_endpoint, username, password):
        pass


def test_a_device_cannot_publish_as_another_device(platform, two_printers):
    endpoint = platform.settings.mqtt_endpoint
    with connected(endpoint, "ada-printer", DEVICE_SECRETS["ada-printer"]) as ada:
        for channel, payload in [
            ("telemetry", {"seq": 1, "levels": {"black": 0.01}}),
            ("events", {"seq": 2, "type": "fall_detected"}),
            ("status", "offline"),
        ]:
            publish(ada, f"devices/bob-printer/{channel}", payload)  # refused by the broker, silently (MQTT 3.1.1)
        publish(ada, "devices/ada-printer/telemetry", {"seq": 3, "levels": {"black": 0.5}})
    # Its own message arrives; the ones under Bob's topics never reach the platform at all, not even as dead letters.
    assert wait_until(lambda: stored_for(platform, "ada-printer") == 1)
    assert stored_for(platform, "bob-printer") == 0
    with Session(platform.engine) as session:
        assert session.exec(select(DeadLetter)).all() == []
    assert platform.ingestor is not None and platform.ingestor.totals.status_updates == 0


def test_a_device_subscribes_only_to_its_own_commands(platform, two_printers):
    granted: dict[str, list[int]] = {}
    done = threading.Event()
    with connected(platform.settings.mqtt_endpoint, "ada-printer", DEVICE_SECRETS["ada-printer"]) as ada:

        def on_subscribe(client: paho.Client, userdata: Any, mid: int, codes: list[Any], props: Any) -> None:
            granted[str(mid)] = [code.value for code in codes]
            if len(granted) == 4:
                done.set()

        ada.on_subscribe = on_subscribe
        for topic in ("devices/ada-printer/commands", "devices/bob-printer/commands", "devices/+/commands", "#"):
            ada.subscribe(topic, qos=1)
        assert done.wait(10)
    assert [granted[key] for key in sorted(granted, key=int)] == [[1], [128], [128], [128]]


def test_rotating_the_secret_locks_the_old_one_out(platform, two_printers):
    endpoint = platform.settings.mqtt_endpoint
    old = DEVICE_SECRETS["ada-printer"]
    with customer_api(platform, "ada@example.com") as ada:
        rotated = ada.post("/devices/ada-printer/credentials")
        assert ada.post("/devices/bob-printer/credentials").status_code == 404
    assert rotated.status_code == 200
    new = rotated.json()["mqtt_password"]
    with pytest.raises(Refused), connected(endpoint, "ada-printer", old):
        pass
    with connected(endpoint, "ada-printer", new) as device:
        publish(device, "devices/ada-printer/telemetry", {"seq": 1, "levels": {"black": 0.5}})
    assert wait_until(lambda: stored_for(platform, "ada-printer") == 1)


def test_a_device_that_publishes_a_burst_and_disconnects_loses_nothing(platform, two_printers):
    # amqtt acknowledges a QoS 1 PUBLISH before its client loop has handled it; our broker drains that loop before
    # it handles the DISCONNECT, so nothing acknowledged is lost.
    with connected(platform.settings.mqtt_endpoint, "ada-printer", DEVICE_SECRETS["ada-printer"]) as device:
        infos = [
            device.publish(
                "devices/ada-printer/telemetry", json.dumps({"seq": n, "levels": {"black": 0.5}}).encode(), qos=1
            )
            for n in range(1, 201)
        ]
        for info in infos:
            info.wait_for_publish(10)
    assert wait_until(lambda: stored_for(platform, "ada-printer") == 200)


def test_no_device_can_take_the_platforms_own_mqtt_user(api):
    customer_id = create_customer(api, email="ada@example.com")
    answer = api.post("/devices", json={"id": "replenish", "customer_id": customer_id, "kind": "printer", "name": "x"})
    assert answer.status_code == 422 and answer.json()["field"] == "id"


def test_a_device_cannot_speak_for_another_through_its_last_will(platform, two_printers):
    endpoint = platform.settings.mqtt_endpoint
    secret = DEVICE_SECRETS["ada-printer"]
    bobs = {"topic": "devices/bob-printer/events", "payload": b'{"seq": 9, "type": "fall_detected"}'}
    with pytest.raises(Refused), connected(endpoint, "ada-printer", secret, **bobs):
        pass
    own = {"topic": "devices/ada-printer/status", "payload": b'"offline"'}
    with connected(endpoint, "ada-printer", secret, **own):
        pass


def test_nobody_takes_over_or_wipes_the_ingestors_session(platform, two_printers):
    endpoint = platform.settings.mqtt_endpoint
    ingestor_session = platform.settings.mqtt_client_id
    for username, password in [("ada-printer", DEVICE_SECRETS["ada-printer"]), (None, None), ("replenish", "guess")]:
        with pytest.raises(Refused), connected(endpoint, username, password, client_id=ingestor_session):
            pass
    # A device's sessions are its own, under no other name.
    secret = DEVICE_SECRETS["ada-printer"]
    for other in ("x", "bob-printer", "bob-printer/ada-printer", "ada-printerx"):
        with pytest.raises(Refused), connected(endpoint, "ada-printer", secret, client_id=other):
            pass
    with connected(endpoint, "ada-printer", secret, client_id="ada-printer/second-connection"):
        pass
    # The ingestor still has its session and its subscriptions: Bob's telemetry is stored.
    with connected(endpoint, "bob-printer", DEVICE_SECRETS["bob-printer"]) as bob:
        publish(bob, "devices/bob-printer/telemetry", {"seq": 1, "levels": {"black": 0.4}})
    assert wait_until(lambda: stored_for(platform, "bob-printer") == 1)


def test_a_device_gets_no_other_devices_retained_status(platform, two_printers):
    endpoint = platform.settings.mqtt_endpoint
    with connected(endpoint, "bob-printer", DEVICE_SECRETS["bob-printer"]) as bob:
        info = bob.publish("devices/bob-printer/status", b'"online"', qos=1, retain=True)
        info.wait_for_publish(10)
    assert wait_until(lambda: platform.ingestor is not None and platform.ingestor.totals.status_updates == 1)
    received: list[str] = []
    subscribed = threading.Event()
    with connected(endpoint, "ada-printer", DEVICE_SECRETS["ada-printer"]) as ada:
        ada.on_message = lambda client, userdata, message: received.append(message.topic)
        ada.on_subscribe = lambda *args: subscribed.set()
        ada.subscribe("devices/ada-printer/commands", qos=1)
        assert subscribed.wait(10)
        threading.Event().wait(1.0)
    assert received == []


def test_on_mosquitto_the_generated_files_confine_each_device_to_its_own_topics(platform, api, two_printers, tmp_path):
    """Mosquitto, the production broker, with the password file and ACL `replenish mosquitto-files` writes."""
    service_password = "the platform's own"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "REPLENISH_DATABASE_URL": platform.settings.resolved_database_url,
        "REPLENISH_BROKER_SERVICE_PASSWORD": service_password,
    }
    auth_dir = tmp_path / "mosquitto-auth"

    def generate() -> None:
        done = subprocess.run(
            [REPLENISH, "mosquitto-files", "--out", str(auth_dir)], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr

    generate()
    assert (
        "$7$" in (auth_dir / "passwd").read_text()
        and DEVICE_SECRETS["ada-printer"] not in (auth_dir / "passwd").read_text()
    )
    overrides = {
        "allow_anonymous": "false",
        "password_file": str(auth_dir / "passwd"),
        "acl_file": str(auth_dir / "acl"),
    }
    (tmp_path / "data").mkdir()
    with running_mosquitto(tmp_path / "data", overrides) as broker:
        endpoint = MqttEndpoint(host="127.0.0.1", port=broker.port)
        for username, password in [(None, None), ("ada-printer", "not its secret"), ("replenish", "a guess")]:
            with pytest.raises(Refused), connected(endpoint, username, password):
                pass
        seen: list[str] = []
        subscribed = threading.Event()
        with connected(endpoint, "replenish", service_password, client_id="replenish-observer") as observer:
            observer.on_message = lambda client, userdata, message: seen.append(message.topic)
            observer.on_subscribe = lambda *args: subscribed.set()
            observer.subscribe("devices/#", qos=1)
            assert subscribed.wait(10)
            with connected(endpoint, "ada-printer", DEVICE_SECRETS["ada-printer"]) as ada:
                publish(ada, "devices/bob-printer/telemetry", {"seq": 1, "levels": {"black": 0.01}})
                publish(ada, "devices/bob-printer/events", {"seq": 2, "type": "fall_detected"})
                publish(ada, "devices/ada-printer/telemetry", {"seq": 3, "levels": {"black": 0.5}})
            assert wait_until(lambda: "devices/ada-printer/telemetry" in seen)
        assert seen == ["devices/ada-printer/telemetry"], "Bob's topics got nothing from Ada"

        # A rotated secret: the files are written again and Mosquitto reloads them on SIGHUP.
        old = DEVICE_SECRETS["ada-printer"]
        new = api.post("/devices/ada-printer/credentials").json()["mqtt_password"]
        generate()
        broker.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: _refused(endpoint, "ada-printer", old), timeout=10)
        with connected(endpoint, "ada-printer", new):
            pass


def _refused(endpoint: MqttEndpoint, username: str, password: str) -> bool:
    try:
        with connected(endpoint, username, password):
            return False
    except Refused:
        return True


def test_a_publish_that_breaks_the_protocol_ends_the_connection(platform, two_printers):
    gone = threading.Event()
    with connected(platform.settings.mqtt_endpoint, "ada-printer", DEVICE_SECRETS["ada-printer"]) as ada:
        ada.on_disconnect = lambda *args: gone.set()
        ada.publish("$SYS/pretend", b"x", qos=0)  # [MQTT-4.7.2-1]: not for clients
        assert gone.wait(10), "the broker closed the connection rather than leave it half alive"


def test_a_device_that_goes_silent_is_disconnected_and_its_last_will_marks_it_offline(platform, api, two_printers):
    endpoint = platform.settings.mqtt_endpoint
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="ada-printer", protocol=paho.MQTTv311)
    client.username_pw_set("ada-printer", DEVICE_SECRETS["ada-printer"])
    client.will_set("devices/ada-printer/status", b'"offline"', qos=1, retain=True)
    client.connect(endpoint.host, endpoint.port, keepalive=1)
    client.loop_start()
    client.publish("devices/ada-printer/status", b'"online"', qos=1, retain=True).wait_for_publish(10)
    assert wait_until(lambda: api.get("/devices/ada-printer").json()["online"] is True)
    client.loop_stop()  # power lost: no more PINGREQs, and no DISCONNECT; the socket stays open
    try:
        assert wait_until(lambda: api.get("/devices/ada-printer").json()["online"] is False, timeout=10)
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()

"""Test helpers that act through the real interfaces: the HTTP API, MQTT and the database."""

from __future__ import annotations

import email
import email.policy
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from replenish.config import MqttEndpoint

INK_SLOTS = [
    {"name": name, "unit": "fraction", "capacity": 1.0, "product_sku": f"INK-{name.upper()}", "lead_time_days": 3}
    for name in ("black", "cyan", "magenta", "yellow")
]


# Every test customer signs in with this password.
PASSWORD = "correct horse battery"
# The MQTT secret of every device registered through register_device, newest registration wins: conftest's
# Publisher signs in with it.
DEVICE_SECRETS: dict[str, str] = {}


def register_through_services(
    database_url: str,
    device_ids: list[str],
    *,
    mode: str = "off",
    kind: str = "printer",
    now: datetime,
) -> str:
    """A customer and its devices (one ink slot, black), written through the service layer in one transaction, as for
    roles that run as processes of their own: no API needed. The customer's id."""
    from replenish.consent.schemas import ConsentDocument
    from replenish.constants import ConsentMode, DeviceKind
    from replenish.customers import service as customers
    from replenish.db import make_engine, transaction
    from replenish.devices import service as devices
    from replenish.devices.schemas import DeviceCreate, SlotCreate

    engine = make_engine(database_url)
    try:
        with transaction(engine) as session:
            customer = customers.create(
                session=session,
                name="Ada",
                email=f"ada-{device_ids[0]}@example.com",
                consent_document=ConsentDocument(default_mode=ConsentMode(mode)),
                actor="test",
                now=now,
            )
            for device_id in device_ids:
                devices.register(
                    session=session,
                    request=DeviceCreate(
                        id=device_id,
                        customer_id=customer.id,
                        kind=DeviceKind(kind),
                        name=device_id,
                        slots=[SlotCreate(name="black", product_sku="INK-BLACK")],
                    ),
                    actor="test",
                    now=now,
                )
            return customer.id
    finally:
        engine.dispose()


def stored(database_url: str) -> tuple[int, int, int]:
    """(messages, readings, dead letters) in the database: what a process apart from the test stored."""
    from sqlalchemy import text

    from replenish.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT count(*) FROM device_messages")).scalar_one()
            readings = connection.execute(text("SELECT count(*) FROM readings")).scalar_one()
            letters = connection.execute(text("SELECT count(*) FROM dead_letters")).scalar_one()
    finally:
        engine.dispose()
    return rows, readings, letters


def create_customer(api: httpx.Client, *, email: str = "ada@example.com", mode: str = "ask_first") -> str:
    response = api.post(
        "/customers",
        json={"name": "Ada", "email": email, "password": PASSWORD, "consent": {"default_mode": mode}},
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def register_device(
    api: httpx.Client,
    *,
    customer_id: str,
    device_id: str,
    kind: str = "printer",
    slots: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    response = api.post(
        "/devices",
        json={
            "id": device_id,
            "customer_id": customer_id,
            "kind": kind,
            "name": f"{kind} {device_id}",
            "slots": INK_SLOTS if slots is None else slots,
        },
    )
    assert response.status_code == 201, response.text
    DEVICE_SECRETS[device_id] = response.json()["credentials"]["mqtt_password"]
    return response.json()


def set_consent(api: httpx.Client, customer_id: str, document: dict[str, Any]) -> dict[str, Any]:
    response = api.put(f"/customers/{customer_id}/consent", json=document)
    assert response.status_code == 200, response.text
    return response.json()


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


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll a condition, for waits the ingestor's handled count cannot express."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


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
        client.disconnect()
        client.loop_stop()


def publish(client: paho.Client, topic: str, payload: dict[str, Any]) -> None:
    info = client.publish(topic, json.dumps(payload).encode(), qos=1)
    info.wait_for_publish(10)


class WebhookReceiver:
    """An HTTP receiver on loopback (a fulfilment partner, a contact's webhook) that answers after ``delay`` seconds
    and fails its first ``failures`` requests with a 503. ``requests``: (headers, JSON body, time.monotonic() of
    arrival) of each."""

    def __init__(self, *, failures: int = 0, path: str = "/hook", delay: float = 0.0) -> None:
        self.failures = failures
        self.requests: list[tuple[dict[str, str], dict[str, Any], float]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(delay)  # a slow endpoint answers late
                with receiver.arrived:
                    receiver.requests.append((dict(self.headers), body, time.monotonic()))
                    failing = len(receiver.requests) <= receiver.failures
                    receiver.arrived.notify_all()
                self.send_response(503 if failing else 202)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The bodies, once at least ``count`` requests arrived (fewer after the timeout)."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= count, timeout)
            return [body for _, body, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """A real SMTP server on loopback (aiosmtpd): every message it accepts, parsed."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        from brokers import free_port

        self.messages: list[email.message.EmailMessage] = []
        self.port = free_port()
        mailbox = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                mailbox.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def to(self, address: str) -> list[email.message.EmailMessage]:
        return [message for message in self.messages if message["To"] == address]

    def close(self) -> None:
        self.controller.stop()


def dead_letters_with_payloads(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    """The dead letters as GET /dead-letters lists them (no payloads), each with its payload from
    GET /dead-letters/{id}."""
    response = api.get("/dead-letters", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return [api.get(f"/dead-letters/{letter['id']}").json() for letter in response.json()]

"""run_device against a real embedded amqtt broker, watched by a separate paho subscriber."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from amqtt.broker import Broker
from paho.mqtt.enums import CallbackAPIVersion

from replenish.config import MqttEndpoint
from replenish.mqtt.client import disconnect_and_stop
from replenish.simulation import runner
from replenish.simulation.devices import PrinterModel, SimMessage, WearableModel
from replenish.simulation.runner import run_device, simulated_now
from support.brokers import free_port

START = datetime(2026, 11, 23, tzinfo=UTC)
WAIT = 5.0  # seconds: the longest any single wait in these tests may take


# -- an embedded broker in a background thread (to be moved into a shared fixture) --------------------


class BrokerThread:
    """amqtt's broker on its own asyncio loop in a daemon thread, on a free 127.0.0.1 port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = MqttEndpoint(host="127.0.0.1", port=self.port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="amqtt-broker", daemon=True)
        self._broker: Broker | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(WAIT)

    async def _start(self) -> None:
        # Broker() must be created inside the running loop (it calls asyncio.get_running_loop()).
        self._broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            }
        )
        await self._broker.start()

    def stop(self) -> None:
        if self._broker is not None:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(WAIT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)
        self._loop.close()


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerThread]:
    thread = BrokerThread()
    thread.start()
    yield thread
    thread.stop()


# -- a subscriber that records what arrives ---------------------------------------------------------


@dataclass(frozen=True)
class Received:
    topic: str
    payload: Any
    retain: bool


class Subscriber:
    def __init__(self, endpoint: MqttEndpoint, topic: str) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-sub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311
        )
        self._client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(endpoint.host, endpoint.port)
        self._client.loop_start()
        assert self._subscribed.wait(WAIT), "subscription not acknowledged"

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(message.topic, json.loads(message.payload), bool(message.retain)))
            self._cond.notify_all()

    def wait_for(self, condition: Callable[[list[Received]], bool]) -> list[Received]:
        with self._cond:
            assert self._cond.wait_for(lambda: condition(self.messages), WAIT), self.messages[-5:]
            return list(self.messages)

    def close(self) -> None:
        disconnect_and_stop(self._client)


def statuses_of(messages: list[Received], device_id: str) -> list[Received]:
    # amqtt 0.12.1 also sends a connecting client the retained messages matching ANY filter another
    # client holds (broker.py, end of client_connected): a subscriber may get messages outside its
    # subscription, and a retained message twice.
    return [m for m in messages if m.topic == f"devices/{device_id}/status"]


def has_status(device_id: str, status: str) -> Callable[[list[Received]], bool]:
    topic = f"devices/{device_id}/status"
    return lambda messages: any(m.topic == topic and m.payload == status for m in messages)


@pytest.fixture
def device_id() -> str:
    return f"printer-{uuid.uuid4().hex[:8]}"


# -- tests -------------------------------------------------------------------------------------------


def test_two_simulated_days_at_infinite_speed_all_arrive_in_order(broker: BrokerThread, device_id: str) -> None:
    expected = PrinterModel(device_id, start=START, seed=11).advance_to(START + timedelta(days=2))
    watcher = Subscriber(broker.endpoint, "devices/#")
    try:
        published = run_device(
            PrinterModel(device_id, start=START, seed=11),
            broker.endpoint,
            speed=float("inf"),
            duration=timedelta(days=2),
            keep_until_stored=False,  # a bare broker: no platform confirms anything
        )
        assert published == len(expected) == 49
        received = watcher.wait_for(has_status(device_id, "offline"))
    finally:
        watcher.close()

    mine = [m for m in received if m.topic.startswith(f"devices/{device_id}/")]
    statuses = [m.payload for m in mine if m.topic.endswith("/status")]
    assert statuses == ["online", "offline"]
    assert mine[0].payload == "online" and mine[-1].payload == "offline"
    telemetry = [m for m in mine if m.topic == f"devices/{device_id}/telemetry"]
    assert [m.payload for m in telemetry] == [m.payload for m in expected]  # all of them, in seq order
    assert not any(m.retain for m in telemetry)

    late = Subscriber(broker.endpoint, f"devices/{device_id}/status")  # sees only what is retained
    try:
        retained = statuses_of(late.wait_for(has_status(device_id, "offline")), device_id)
        assert retained and all(m.payload == "offline" and m.retain for m in retained)
    finally:
        late.close()


def test_online_is_retained_while_running_and_events_are_published(broker: BrokerThread) -> None:
    device_id = f"wearable-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC)
    model = WearableModel(device_id, start=start, fall_at=start + timedelta(minutes=1))
    watcher = Subscriber(broker.endpoint, f"devices/{device_id}/#")
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            run_device(model, broker.endpoint, speed=600, stop=stop, tick_seconds=0.05, keep_until_stored=False)
        )
    )
    thread.start()
    try:
        watcher.wait_for(has_status(device_id, "online"))
        late = Subscriber(broker.endpoint, f"devices/{device_id}/status")
        try:
            retained = statuses_of(late.wait_for(has_status(device_id, "online")), device_id)
            assert retained and all(m.payload == "online" and m.retain for m in retained)
        finally:
            late.close()
        fall = watcher.wait_for(lambda ms: any(m.topic.endswith("/events") for m in ms))
        event = next(m.payload for m in fall if m.topic.endswith("/events"))
        assert event["type"] == "fall_detected" and event["seq"] >= 2
    finally:
        stop.set()
        thread.join(WAIT)
    assert not thread.is_alive() and result and result[0] >= 2
    received = watcher.wait_for(has_status(device_id, "offline"))
    watcher.close()
    seqs = [m.payload["seq"] for m in received if not m.topic.endswith("/status")]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == result[0]


def test_catch_up_replays_history_then_follows_real_time(broker: BrokerThread, device_id: str) -> None:
    start = datetime.now(UTC) - timedelta(days=2)
    watcher = Subscriber(broker.endpoint, f"devices/{device_id}/#")
    stop = threading.Event()
    result: list[int] = []
    model = PrinterModel(device_id, start=start)
    thread = threading.Thread(
        target=lambda: result.append(
            run_device(
                model,
                broker.endpoint,
                speed=float("inf"),
                catch_up=True,
                stop=stop,
                tick_seconds=0.05,
                keep_until_stored=False,
            )
        )
    )
    thread.start()
    try:
        # two days of hourly reports, both ends included, arrive at once; the next is an hour away
        telemetry = f"devices/{device_id}/telemetry"
        watcher.wait_for(lambda ms: sum(m.topic == telemetry for m in ms) == 49)
        assert abs(model.now - datetime.now(UTC)) < timedelta(seconds=5)
    finally:
        stop.set()
        thread.join(WAIT)
        watcher.close()
    assert result == [49]


def test_offline_is_published_even_when_the_model_fails(broker: BrokerThread, device_id: str) -> None:
    class Broken(PrinterModel):
        calls = 0

        def advance_to(self, t: datetime) -> list[SimMessage]:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("simulated crash")
            return super().advance_to(t)

    watcher = Subscriber(broker.endpoint, f"devices/{device_id}/#")
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_device(
                Broken(device_id, start=START),
                broker.endpoint,
                speed=float("inf"),
                duration=timedelta(1),
                keep_until_stored=False,
            )
        received = watcher.wait_for(has_status(device_id, "offline"))
    finally:
        watcher.close()
    chunk_hours = int(runner.FAST_FORWARD_CHUNK / timedelta(hours=1))
    seqs = [m.payload["seq"] for m in received if m.topic == f"devices/{device_id}/telemetry"]
    assert seqs == list(range(1, chunk_hours + 2))  # the first chunk, hourly, both ends included
    assert statuses_of(received, device_id)[-1].payload == "offline"


def test_unreachable_broker_raises_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "CONNECT_TIMEOUT_SECONDS", 0.5)
    model = PrinterModel("nobody-home", start=START)
    with pytest.raises(ConnectionError):
        run_device(model, MqttEndpoint("127.0.0.1", free_port()), speed=float("inf"), duration=timedelta(1))


def test_infinite_speed_needs_an_end() -> None:
    with pytest.raises(ValueError):
        run_device(PrinterModel("p", start=START), MqttEndpoint("127.0.0.1", 1), speed=float("inf"))


def test_simulated_clock() -> None:
    now = START + timedelta(days=10)
    assert simulated_now(START, speed=3600, elapsed_seconds=2, catch_up=False, wall_now=now) == START + timedelta(
        hours=2
    )
    # catch-up: fast while behind the present, then the present itself
    assert simulated_now(START, speed=3600, elapsed_seconds=2, catch_up=True, wall_now=now) == START + timedelta(
        hours=2
    )
    assert simulated_now(START, speed=86400, elapsed_seconds=30, catch_up=True, wall_now=now) == now
    assert simulated_now(START, speed=float("inf"), elapsed_seconds=0, catch_up=True, wall_now=now) == now


def test_the_wearable_logs_alert_acknowledged_when_the_platform_sends_it(
    broker: BrokerThread, caplog: pytest.LogCaptureFixture
) -> None:
    device_id = f"wearable-{uuid.uuid4().hex[:8]}"
    model = WearableModel(device_id, start=datetime.now(UTC))
    watcher = Subscriber(broker.endpoint, f"devices/{device_id}/status")
    stop = threading.Event()
    thread = threading.Thread(
        target=lambda: run_device(
            model, broker.endpoint, speed=1, stop=stop, tick_seconds=0.05, keep_until_stored=False
        )
    )
    caplog.set_level("INFO", logger="replenish.simulation.runner")
    thread.start()
    platform = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"platform-{device_id}")
    try:
        watcher.wait_for(has_status(device_id, "online"))
        platform.connect(broker.endpoint.host, broker.endpoint.port)
        platform.loop_start()
        command = {"type": "alert_acknowledged", "alert_id": "a1", "ts": "2026-12-07T10:00:05+00:00"}
        for _ in range(50):  # the device subscribes to its commands as it connects: send until it has one
            platform.publish(f"devices/{device_id}/commands", json.dumps(command), qos=1).wait_for_publish(WAIT)
            if any("alert_acknowledged (alert a1): help is coming" in r.getMessage() for r in caplog.records):
                break
            threading.Event().wait(0.1)
        assert any(
            r.getMessage() == f"{device_id}: alert_acknowledged (alert a1): help is coming" for r in caplog.records
        )
    finally:
        platform.loop_stop()
        platform.disconnect()
        stop.set()
        thread.join(WAIT)
        watcher.close()

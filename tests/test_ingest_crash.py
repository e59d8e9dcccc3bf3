"""No telemetry lost across an ingestor crash (issue 7): a `replenish ingest` process is killed with SIGKILL in the
middle of a QoS 1 stream and started again; every message is stored exactly once.

What makes it hold: the ingestor's persistent session (the broker queues for it while it is down), QoS 1, and the
PUBACK sent only after the batch is committed (a message stored but not yet acknowledged when the process died comes
again, and its (device_id, seq) is recognised as a duplicate)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from replenish.mqtt.client import disconnect_and_stop
from support.brokers import SERVICE_PASSWORD, free_port, running_mosquitto
from support.platform import register_through_services, stored
from test_cli import REPLENISH, environment, poll, process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

AFTER_KILL = 1500
DEVICES = 10
KILL_AFTER_STORED = 800  # well inside the stream: the publisher is still sending when the ingestor dies


def register_devices(database_url: str) -> list[str]:
    device_ids = [f"printer-{number}" for number in range(DEVICES)]
    register_through_services(database_url, device_ids, now=datetime.now(UTC))
    return device_ids


class StreamPublisher(threading.Thread):
    """Our own publisher: QoS 1, MQTT 3.1.1, the devices round-robin, up to 100 messages awaiting their PUBACK."""

    def __init__(self, port: int, device_ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.device_ids = device_ids
        self.sent = 0
        self.sent_at_kill = 0
        self.killed = threading.Event()
        self.acknowledged = threading.Semaphore(100)
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="replenish-crash-test-publisher", protocol=paho.MQTTv311
        )
        self.client.username_pw_set("replenish", SERVICE_PASSWORD)
        self.client.max_inflight_messages_set(100)
        self.client.on_publish = lambda *args: self.acknowledged.release()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.infos: list[paho.MQTTMessageInfo] = []

    def run(self) -> None:
        # However fast or slow the machine: the stream is still running when the ingestor is killed, and goes on
        # for AFTER_KILL more messages while no ingestor runs.
        number = 0
        while not self.killed.is_set() or number < self.sent_at_kill + AFTER_KILL:
            device_id = self.device_ids[number % DEVICES]
            seq = number // DEVICES + 1
            payload = {"seq": seq, "levels": {"black": round(max(0.0, 1 - seq / 10_000), 4)}}
            self.acknowledged.acquire()
            self.infos.append(self.client.publish(f"devices/{device_id}/telemetry", json.dumps(payload), qos=1))
            number += 1
            self.sent = number
            time.sleep(0.001)  # a fleet's pace, not a flood

    def kill_happened(self) -> int:
        """Mark the kill; how many had been published by then."""
        self.sent_at_kill = self.sent
        self.killed.set()
        return self.sent_at_kill

    def close(self) -> None:
        for info in self.infos:
            info.wait_for_publish(10)
        disconnect_and_stop(self.client)


@contextmanager
def embedded_broker(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """`replenish broker` in its own process: the embedded stack run as separate roles."""
    port = free_port()
    env = environment(tmp_path, REPLENISH_BROKER_PORT=str(port), REPLENISH_BROKER_SERVICE_PASSWORD=SERVICE_PASSWORD)
    log = tmp_path / "broker.log"
    with process(["broker"], env, log):
        poll(lambda: log.read_text(), lambda text: "broker listening" in text, 30)
        yield port, {"REPLENISH_MQTT_URL": f"mqtt://127.0.0.1:{port}"}


def test_an_ingestor_killed_mid_stream_loses_nothing_and_stores_nothing_twice_on_amqtt(tmp_path: Path):
    database_url = f"sqlite:///{tmp_path / 'replenish.db'}"
    subprocess.run(
        [REPLENISH, "db", "upgrade"],
        env=environment(tmp_path, REPLENISH_DATABASE_URL=database_url),
        check=True,
        capture_output=True,
        timeout=60,
    )
    with embedded_broker(tmp_path) as (port, broker_env):
        kill_mid_stream(tmp_path, database_url, port, broker_env)


def test_an_ingestor_killed_mid_stream_loses_nothing_and_stores_nothing_twice(tmp_path: Path, postgres_server):
    database_url = postgres_server.create_migrated_database("ingest_crash")
    broker_dir = tmp_path / "mosquitto"
    broker_dir.mkdir()
    with running_mosquitto(broker_dir) as broker:
        kill_mid_stream(tmp_path, database_url, broker.platform_port, {"REPLENISH_MQTT_URL": broker.url})


def kill_mid_stream(tmp_path: Path, database_url: str, port: int, broker_env: dict[str, str]) -> None:
    device_ids = register_devices(database_url)
    env = environment(
        tmp_path,
        REPLENISH_DATABASE_URL=database_url,
        REPLENISH_BROKER_SERVICE_PASSWORD=SERVICE_PASSWORD,
        REPLENISH_MQTT_CLIENT_ID="replenish-ingest-crash-test",
        **broker_env,
    )
    first_log = tmp_path / "ingest-1.log"
    with process(["ingest"], env, first_log) as first:
        poll(lambda: first_log.read_text(), lambda log: log.count("ingestor subscribed") >= 2, 30)
        publisher = StreamPublisher(port, device_ids)
        publisher.start()
        poll(lambda: stored(database_url)[0], lambda rows: rows >= KILL_AFTER_STORED, 30)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        publisher.kill_happened()
        rows_at_kill = stored(database_url)[0]
    # The stream goes on while no ingestor runs: the broker queues it for the ingestor's persistent session.
    publisher.join(60)
    publisher.close()
    total = publisher.sent
    assert rows_at_kill >= KILL_AFTER_STORED and total >= rows_at_kill + AFTER_KILL, (rows_at_kill, total)
    assert stored(database_url)[0] == rows_at_kill, "nothing stores while the ingestor is dead"
    second_log = tmp_path / "ingest-2.log"
    with process(["ingest"], env, second_log):
        poll(lambda: stored(database_url), lambda counts: counts[0] >= total, 60)
        time.sleep(1)  # anything redelivered late would show as an extra row now
        final = stored(database_url)
    # One reading per message: a message handled twice would have added its reading twice.
    assert final == (total, total, 0), f"messages, readings, dead letters of {total} published: {final}"
    assert "session present: True" in second_log.read_text()

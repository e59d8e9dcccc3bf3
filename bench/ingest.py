#!/usr/bin/env python
"""Benchmark of the MQTT ingest path as it is today: broker -> ingestor -> database.

One run, on one machine, over loopback:

1. starts a broker: the embedded amqtt broker (its own process, as `replenish broker` runs it, or with
   --broker-in-process inside this process, as `replenish up` runs it) or Mosquitto started from a copy of
   deploy/mosquitto/mosquitto.conf;
2. starts one publisher process (paho, QoS 1, MQTT 3.1.1) that plays K devices round-robin;
3. ceiling: a bare paho subscriber in this process (QoS 1, json.loads + field access, nothing else) receives
   N messages from that publisher;
4. ingest: the platform's ingest role (replenish.runtime.Platform, Roles(ingest=True)) in this process, on a
   temporary SQLite database or --database-url, receives the same N messages from the same publisher; one
   customer and K devices are registered through the service layer first. A poller process watches
   max(device_messages.id) to time each commit.

It prints a summary table, a per-phase table and anything the platform or the broker logged at WARNING or
above. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import multiprocessing as mp
import os
import platform as host_platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from bisect import bisect_left
from collections import Counter
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import paho.mqtt.client as paho
from memory import memory_summary, resident_mb
from paho.mqtt.enums import CallbackAPIVersion

from replenish.config import SERVICE_USERNAME

ROOT = Path(__file__).resolve().parents[1]
SLOT_NAMES = ("black", "cyan", "magenta", "yellow", "light_cyan", "light_magenta", "photo_black", "gray")
# Children are spawned, never forked: this process runs threads (paho, the ingest writer, amqtt).
SPAWN = mp.get_context("spawn")
HOST = "127.0.0.1"
# Both brokers let a device publish only as itself; the bench publishes for K devices as the service account.
SERVICE_PASSWORD = secrets.token_urlsafe(16)
# A process at this share of one core or more is the likely bottleneck of its phase (one Python process = one core).
SATURATED_CPU = 85

log = logging.getLogger("bench")


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared with the child processes (keep their imports light: children re-import this module)
# ---------------------------------------------------------------------------------------------------------------
def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def telemetry(seq: int, epoch: float, slots: tuple[str, ...]) -> str:
    """A contract telemetry payload (docs/mqtt.md, section 1) with every slot, levels within 0..1."""
    base = 1.0 - (seq % 1000) / 1000
    levels = {name: round(base * (1 - 0.1 * j), 3) for j, name in enumerate(slots)}
    return json.dumps({"seq": seq, "ts": iso(epoch), "levels": levels})


def cpu_seconds_of(pid: int) -> float | None:
    """utime + stime of another process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------------------
# Publisher process
# ---------------------------------------------------------------------------------------------------------------
def publisher_main(
    conn: Any, host: str, port: int, window: int, username: str | None = None, password: str | None = None
) -> None:
    """One paho client, QoS 1, at most ``window`` publishes awaiting their PUBACK. Jobs arrive on ``conn``.

    It publishes for all K devices, as a gateway would: on the embedded broker, which lets a device publish only
    as itself, it signs in with the platform's service account."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"replenish-bench-publisher-{os.getpid()}", protocol=paho.MQTTv311
    )
    if username:
        client.username_pw_set(username, password)
    client.max_inflight_messages_set(window)
    acked = threading.Condition()
    state = {"acked": 0, "last_ack": 0.0}
    connected = threading.Event()

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            connected.set()

    def on_publish(client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with acked:
            state["acked"] += 1
            state["last_ack"] = time.time()
            acked.notify_all()

    client.on_connect = on_connect
    client.on_publish = on_publish
    try:
        client.connect(host, port, keepalive=60)
    except OSError as exc:
        conn.send({"error": f"publisher could not connect: {exc!r}"})
        return
    client.loop_start()
    try:
        if not connected.wait(10):
            conn.send({"error": "publisher: no CONNACK within 10 s"})
            return
        conn.send({"ready": True})
        while True:
            job = conn.recv()
            if job is None:
                break
            conn.send(_publish_job(client, acked, state, window=window, **job))
    finally:
        client.disconnect()
        client.loop_stop()


def _publish_job(
    client: paho.Client,
    acked: threading.Condition,
    state: dict[str, Any],
    *,
    window: int,
    device_ids: list[str],
    n: int,
    slots: tuple[str, ...],
    rate: float | None,
    timeout: float,
) -> dict[str, Any]:
    topics = [f"devices/{device_id}/telemetry" for device_id in device_ids]
    k = len(topics)
    with acked:
        state["acked"] = 0
        state["last_ack"] = 0.0
    cpu0 = time.process_time()
    deadline = time.monotonic() + timeout
    start = time.perf_counter()
    first: float | None = None
    sent = errors = window_waits = 0
    aborted = ""
    for i in range(n):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        if i - state["acked"] >= window:
            window_waits += 1
            with acked:
                while i - state["acked"] >= window and time.monotonic() < deadline:
                    acked.wait(deadline - time.monotonic())
            if i - state["acked"] >= window:
                aborted = f"broker stopped acknowledging: {state['acked']} PUBACKs for {i} publishes"
                break
        now = time.time()
        info = client.publish(topics[i % k], telemetry(i // k + 1, now, slots), qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            errors += 1
        if first is None:
            first = now
        sent += 1
    last = time.time()
    with acked:
        while state["acked"] < sent and time.monotonic() < deadline:
            acked.wait(max(0.01, deadline - time.monotonic()))
        acks, last_ack = state["acked"], state["last_ack"]
    return {
        "sent": sent,
        "acked": acks,
        "errors": errors,
        "window_waits": window_waits,
        "first": first,
        "last": last,
        "last_ack": last_ack,
        "cpu": time.process_time() - cpu0,
        "aborted": aborted,
    }


# ---------------------------------------------------------------------------------------------------------------
# Commit poller process
# ---------------------------------------------------------------------------------------------------------------
def poller_main(conn: Any, url: str, interval: float, stop: Any, max_seconds: float) -> None:
    """Polls max(device_messages.id) and records when it grew: one (seen_at, max_id) per observed commit."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
    query = text("SELECT max(id) FROM device_messages")
    changes: list[tuple[float, int]] = []
    polls = 0
    cpu0 = time.process_time()
    started = time.time()
    last = -1
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            conn.send({"ready": True})
            while not stop.is_set() and time.time() - started < max_seconds:
                current = connection.execute(query).scalar() or 0
                seen = time.time()
                polls += 1
                if current > last:
                    changes.append((seen, current))
                    last = current
                time.sleep(interval)
    except Exception as exc:
        conn.send({"error": repr(exc)})
        return
    finally:
        engine.dispose()
    elapsed = time.time() - started
    conn.send({"changes": changes, "polls": polls, "elapsed": elapsed, "cpu": time.process_time() - cpu0})


# ---------------------------------------------------------------------------------------------------------------
# Embedded broker in its own process
# ---------------------------------------------------------------------------------------------------------------
def embedded_broker_main(
    port: int, ready: Any, stop: Any, log_path: str, max_seconds: float, db_url: str, service_password: str
) -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.basicConfig(
        filename=log_path, level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from replenish.mqtt.broker import EmbeddedBroker

    broker = EmbeddedBroker(host=HOST, port=port, database_url=db_url, service_password=service_password)
    broker.start()
    ready.set()
    stop.wait(max_seconds)
    broker.stop()


# ---------------------------------------------------------------------------------------------------------------
# Brokers
# ---------------------------------------------------------------------------------------------------------------
def test_brokers_module() -> ModuleType:
    """tests/support/brokers.py: the free-port and Mosquitto-config logic the test suite uses."""
    tests_dir = str(ROOT / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    return importlib.import_module("support.brokers")


@dataclass
class BrokerHandle:
    kind: str
    label: str
    port: int
    pid: int | None  # for CPU accounting; None when it runs in this process
    log_path: Path | None
    username: str | None
    max_inflight: int | None = None  # max_inflight_messages of the broker's config, when it has one
    password: str | None = None

    @property
    def mqtt_url(self) -> str:
        user = f"{self.username}:{self.password}@" if self.username else ""
        return f"mqtt://{user}{HOST}:{self.port}"


def start_mosquitto(stack: ExitStack, workdir: Path) -> BrokerHandle:
    """Mosquitto from a copy of the production config, as tests/support/brokers.py starts it. Everything here (the
    simulated devices too) signs in on the platform listener as the service user: what is measured is the ingest path,
    and the device listener's ACL would only add a pattern match per publish."""
    brokers = test_brokers_module()
    directory = workdir / "mosquitto"
    directory.mkdir()
    run = stack.enter_context(brokers.running_mosquitto(directory, service_password=SERVICE_PASSWORD))
    version = subprocess.run([brokers.mosquitto_binary(), "-h"], capture_output=True, text=True, timeout=10)
    first_line = version.stdout.splitlines()
    label = first_line[0].strip() if first_line else "mosquitto"
    config = (directory / "mosquitto.conf").read_text()
    inflight = re.search(r"^max_inflight_messages\s+(\d+)", config, re.MULTILINE)
    return BrokerHandle(
        "mosquitto",
        f"{label} (deploy/mosquitto/mosquitto.conf)",
        run.platform_port,
        run.process.pid,
        run.log_path,
        SERVICE_USERNAME,
        int(inflight.group(1)) if inflight else 20,  # Mosquitto's default is 20
        SERVICE_PASSWORD,
    )


def start_embedded(
    stack: ExitStack, workdir: Path, *, in_process: bool, max_seconds: float, db_url: str
) -> BrokerHandle:
    port = test_brokers_module().free_port()
    # The platform's service account: the ingestor, and the publisher speaking for every device.
    username = SERVICE_USERNAME
    if in_process:
        from replenish.mqtt.broker import EmbeddedBroker

        broker = EmbeddedBroker(host=HOST, port=port, database_url=db_url, service_password=SERVICE_PASSWORD)
        broker.start()
        stack.callback(broker.stop)
        return BrokerHandle(
            "embedded",
            "amqtt (EmbeddedBroker, in the ingest process)",
            port,
            None,
            None,
            username,
            None,
            SERVICE_PASSWORD,
        )
    log_path = workdir / "amqtt.log"
    ready, stop = SPAWN.Event(), SPAWN.Event()
    process = SPAWN.Process(
        target=embedded_broker_main,
        args=(port, ready, stop, str(log_path), max_seconds, db_url, SERVICE_PASSWORD),
        name="amqtt-broker",
    )
    process.start()

    def shut() -> None:
        stop.set()
        process.join(15)
        if process.is_alive():
            process.terminate()
            process.join(5)

    stack.callback(shut)
    if not ready.wait(20):
        raise RuntimeError("embedded broker did not start within 20 s")
    return BrokerHandle(
        "embedded", "amqtt (EmbeddedBroker, own process)", port, process.pid, log_path, username, None, SERVICE_PASSWORD
    )


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------
def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Latency:
    name: str
    values_ms: list[float]

    def p(self, q: float) -> float:
        return percentile(self.values_ms, q)


@dataclass
class Phase:
    name: str
    expected: int
    delivered: int = 0  # unique messages received (ceiling) or stored (ingest)
    duplicates: int = 0
    publish: dict[str, Any] = field(default_factory=dict)
    first_publish: float | None = None
    last_done: float | None = None  # last message received / last row committed
    steady_rate: float | None = None
    latencies: list[Latency] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core over the phase
    notes: list[str] = field(default_factory=list)
    complete: bool = False

    @property
    def rate(self) -> float | None:
        if self.first_publish is None or self.last_done is None or self.last_done <= self.first_publish:
            return None
        return self.delivered / (self.last_done - self.first_publish)

    @property
    def publish_rate(self) -> float | None:
        pub = self.publish
        if not pub.get("first") or pub.get("last", 0) <= pub["first"]:
            return None
        return pub["sent"] / (pub["last"] - pub["first"])


def steady_rate(times: list[float]) -> float | None:
    """Messages per second between the 10th and the 90th percent of completions (warm-up and tail cut)."""
    if len(times) < 20:
        return None
    lo, hi = int(len(times) * 0.1), int(len(times) * 0.9)
    span = times[hi] - times[lo]
    return (hi - lo) / span if span > 0 else None


class CpuMeter:
    """CPU used by this process and by the other processes of the run, as % of one core over wall time."""

    def __init__(self, others: dict[str, int | None]) -> None:
        self.others = {name: pid for name, pid in others.items() if pid}
        self.wall0 = time.monotonic()
        self.own0 = time.process_time()
        self.others0 = {name: cpu_seconds_of(pid) for name, pid in self.others.items()}

    def read(self) -> dict[str, float]:
        wall = max(1e-9, time.monotonic() - self.wall0)
        result = {"this process": 100 * (time.process_time() - self.own0) / wall}
        for name, pid in self.others.items():
            now, then = cpu_seconds_of(pid), self.others0.get(name)
            if now is not None and then is not None:
                result[name] = 100 * (now - then) / wall
        return result


# ---------------------------------------------------------------------------------------------------------------
# The two phases
# ---------------------------------------------------------------------------------------------------------------
class PublisherHandle:
    def __init__(self, stack: ExitStack, broker: BrokerHandle, window: int) -> None:
        self.conn, child = SPAWN.Pipe()
        self.process = SPAWN.Process(
            target=publisher_main,
            args=(child, HOST, broker.port, window, broker.username, broker.password),
            name="bench-publisher",
        )
        self.process.start()
        stack.callback(self.close)
        if not self.conn.poll(30):
            raise RuntimeError("publisher process did not start within 30 s")
        hello = self.conn.recv()
        if "error" in hello:
            raise RuntimeError(hello["error"])

    def start(self, **job: Any) -> None:
        self.conn.send(job)

    def result(self, timeout: float) -> dict[str, Any]:
        if not self.conn.poll(timeout):
            return {"sent": 0, "acked": 0, "errors": 0, "aborted": "publisher did not report back", "first": None}
        return self.conn.recv()

    def close(self) -> None:
        if self.process.is_alive():
            with suppress(OSError):
                self.conn.send(None)
            self.process.join(15)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


def wait_progress(progress: Any, *, target: int, timeout: float, stall_timeout: float, wait: Any) -> tuple[bool, str]:
    """Wait until progress() >= target; give up after ``timeout`` or ``stall_timeout`` without progress."""
    deadline = time.monotonic() + timeout
    last_value, last_change = -1, time.monotonic()
    while True:
        value = progress()
        if value >= target:
            return True, ""
        now = time.monotonic()
        if value != last_value:
            last_value, last_change = value, now
        elif now - last_change > stall_timeout:
            return False, f"stalled: no progress for {stall_timeout:g} s at {value}/{target}"
        if now > deadline:
            return False, f"timed out after {timeout:g} s at {value}/{target}"
        wait(min(0.1, max(0.01, deadline - now)))


def run_ceiling(
    args: argparse.Namespace,
    broker: BrokerHandle,
    publisher: PublisherHandle,
    device_ids: list[str],
    cpu_pids: dict[str, int | None],
) -> Phase:
    phase = Phase("ceiling: bare paho subscriber", args.messages)
    received: list[tuple[float, str]] = []
    keys: set[tuple[int, str]] = set()
    done = threading.Event()
    subscribed = threading.Event()
    n = args.messages

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        now = time.time()
        body = json.loads(message.payload)
        key = (body["seq"], body["ts"])
        if key in keys:
            phase.duplicates += 1
            return
        keys.add(key)
        received.append((now, key[1]))
        if len(received) >= n:
            done.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"replenish-bench-ceiling-{os.getpid()}", protocol=paho.MQTTv311
    )
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    client.connect(HOST, broker.port, keepalive=60)
    client.loop_start()
    try:
        client.subscribe("devices/+/telemetry", qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("ceiling subscriber: no SUBACK within 10 s")
        meter = CpuMeter(cpu_pids)
        publisher.start(device_ids=device_ids, n=n, slots=args.slot_names, rate=args.rate, timeout=args.timeout)
        phase.complete, why = wait_progress(
            lambda: len(received), target=n, timeout=args.timeout, stall_timeout=args.stall_timeout, wait=done.wait
        )
        if why:
            phase.notes.append(why)
        phase.cpu = meter.read()
    finally:
        client.disconnect()
        client.loop_stop()
    _collect_publish(phase, publisher, args)
    records = list(received)
    phase.delivered = len(records)
    if records:
        phase.last_done = max(t for t, _ in records)
        phase.steady_rate = steady_rate(sorted(t for t, _ in records))
        lat = sorted((t - datetime.fromisoformat(ts).timestamp()) * 1000 for t, ts in records)
        phase.latencies.append(Latency("publish -> received", lat))
    return phase


def _collect_publish(phase: Phase, publisher: PublisherHandle, args: argparse.Namespace) -> None:
    phase.publish = publisher.result(args.timeout + 30)
    phase.first_publish = phase.publish.get("first")
    pub = phase.publish
    if pub.get("aborted"):
        phase.notes.append(f"publisher: {pub['aborted']}")
    if pub.get("errors"):
        phase.notes.append(f"publisher: {pub['errors']} publish() calls returned an error")
    if pub.get("acked", 0) < pub.get("sent", 0):
        phase.notes.append(f"publisher: broker acknowledged {pub['acked']} of {pub['sent']} publishes")


def run_ingest(
    args: argparse.Namespace,
    broker: BrokerHandle,
    publisher: PublisherHandle,
    stack: ExitStack,
    workdir: Path,
    run_id: str,
    device_ids: list[str],
    cpu_pids: dict[str, int | None],
    db_url: str,
) -> tuple[Phase, dict[str, Any]]:
    from sqlalchemy import func, select

    from replenish.clock import SystemClock
    from replenish.config import Settings
    from replenish.consent.schemas import ConsentDocument
    from replenish.customers import service as customers
    from replenish.db import transaction
    from replenish.devices import service as devices
    from replenish.devices.schemas import DeviceCreate, SlotCreate
    from replenish.ingest.consumer import tune_garbage_collection
    from replenish.ingest.models import DeadLetter, DeviceMessage, Reading
    from replenish.runtime import Platform, Roles
    from replenish.schema import create_schema

    n = args.messages
    phase = Phase("ingest: Platform(Roles(ingest=True))", n)
    settings = Settings(
        _env_file=None,
        data_dir=workdir,
        database_url=db_url,
        mqtt_url=broker.mqtt_url,
        mqtt_client_id=f"replenish-bench-ingest-{run_id}",
    )
    info: dict[str, Any] = {
        "batch": f"batch size {settings.ingest_batch_size}, wait {settings.ingest_batch_wait_ms:g} ms",
    }
    platform = Platform(settings, roles=Roles(ingest=True))
    stack.callback(platform.engine.dispose)
    create_schema(platform.engine)
    clock = SystemClock()
    with transaction(platform.engine) as session:
        customer = customers.create(
            session=session,
            name="Bench",
            email=f"bench-{run_id}@example.com",
            consent_document=ConsentDocument(),
            actor="bench",
            now=clock.now(),
        )
        slots = [SlotCreate(name=name, product_sku=f"INK-{name.upper()}") for name in args.slot_names]
        for device_id in device_ids:
            devices.register(
                session=session,
                actor="test",
                request=DeviceCreate(
                    id=device_id, customer_id=customer.id, kind="printer", name=device_id, slots=slots
                ),
                now=clock.now(),
            )
    with platform.engine.connect() as connection:
        base_message = connection.execute(select(func.coalesce(func.max(DeviceMessage.id), 0))).scalar_one()
        base_reading = connection.execute(select(func.coalesce(func.max(Reading.id), 0))).scalar_one()
        base_dead = connection.execute(select(func.coalesce(func.max(DeadLetter.id), 0))).scalar_one()

    platform.start()
    stack.callback(platform.stop)
    tune_garbage_collection()  # as `replenish ingest` does once its platform has started
    ingestor = platform.ingestor
    assert ingestor is not None
    if not ingestor.wait_ready(0):
        raise RuntimeError(f"the ingestor did not subscribe to {broker.mqtt_url} within 15 s")

    poll_conn, child = SPAWN.Pipe()
    stop_poller = SPAWN.Event()
    poller = SPAWN.Process(
        target=poller_main,
        args=(child, db_url, args.poll_ms / 1000, stop_poller, args.timeout + 60),
        name="bench-poller",
    )
    poller.start()

    def shut_poller() -> None:
        stop_poller.set()
        poller.join(10)
        if poller.is_alive():
            poller.terminate()
            poller.join(5)

    stack.callback(shut_poller)
    if not poll_conn.poll(30) or "ready" not in poll_conn.recv():
        raise RuntimeError("commit poller did not start")

    meter = CpuMeter({**cpu_pids, "poller": poller.pid})
    started = time.monotonic()
    publisher.start(device_ids=device_ids, n=n, slots=args.slot_names, rate=args.rate, timeout=args.timeout)

    # The ingestor's in-memory queue: received from the broker, not yet committed, so not yet acknowledged.
    queue_size = getattr(ingestor, "queued", lambda: -1)
    queue_peak = [0, 0.0]
    # Resident memory of this process (the ingestor; the publisher and poller are other processes), every second.
    rss_samples: list[tuple[float, float]] = []

    def progress() -> int:
        size = queue_size()
        if size > queue_peak[0]:
            queue_peak[:] = [size, time.monotonic() - started]
        elapsed = time.monotonic() - started
        if not rss_samples or elapsed - rss_samples[-1][0] >= 1.0:
            rss_samples.append((elapsed, resident_mb()))
        totals = ingestor.totals
        return totals.stored + totals.dead_letters

    phase.complete, why = wait_progress(
        progress,
        target=n,
        timeout=args.timeout,
        stall_timeout=args.stall_timeout,
        wait=time.sleep,
    )
    if why:
        phase.notes.append(why)
    phase.cpu = meter.read()
    time.sleep(3 * args.poll_ms / 1000 + 0.05)  # let the poller see the last commit
    stop_poller.set()
    polled = poll_conn.recv() if poll_conn.poll(15) else {"error": "poller did not report"}
    _collect_publish(phase, publisher, args)

    totals = ingestor.totals
    backlog = queue_size()
    if broker.max_inflight and queue_peak[0] > broker.max_inflight:
        phase.notes.append(
            f"the broker sent the ingestor up to {queue_peak[0]} unacknowledged messages although "
            f"max_inflight_messages is {broker.max_inflight}"
        )
    if queue_peak[0] > 0:
        info["queue_peak"] = (
            f"peak {queue_peak[0]} messages received but not yet committed (nor acknowledged), "
            f"{queue_peak[1]:.1f} s into the phase (sampled every 0.1 s)"
        )
    if len(rss_samples) >= 10:
        info["memory"] = memory_summary(rss_samples, process="the ingest process")
    phase.duplicates = totals.duplicates
    with platform.engine.connect() as connection:
        rows = connection.execute(
            select(DeviceMessage.id, DeviceMessage.ts, DeviceMessage.received_at)
            .where(DeviceMessage.id > base_message)
            .order_by(DeviceMessage.id)
        ).all()
        readings = connection.execute(select(func.count(Reading.id)).where(Reading.id > base_reading)).scalar_one()
        dead = connection.execute(
            select(DeadLetter.reason, func.count()).where(DeadLetter.id > base_dead).group_by(DeadLetter.reason)
        ).all()
    phase.delivered = len(rows)
    info["totals"] = totals
    info["readings"] = readings
    if readings != len(rows) * len(args.slot_names):
        phase.notes.append(f"readings: {readings} rows for {len(rows)} messages x {len(args.slot_names)} slots")
    for reason, count in dead:
        phase.notes.append(f"dead letters: {count} x {reason[:160]}")
    if totals.stored != len(rows):
        phase.notes.append(f"ingestor counted {totals.stored} stored, the table has {len(rows)} new rows")
    if backlog:
        phase.notes.append(f"ingestor queue still held {backlog} received, uncommitted messages at the end")

    if rows:
        received_lat = sorted((r.received_at - r.ts).total_seconds() * 1000 for r in rows)
        phase.latencies.append(Latency("publish -> received", received_lat))
    if "error" in polled:
        phase.notes.append(f"commit poller failed: {polled['error']}")
    elif rows:
        changes = polled["changes"]
        seen_ids = [max_id for _, max_id in changes]
        committed: list[float] = []
        committed_lat: list[float] = []
        for row in rows:
            index = bisect_left(seen_ids, row.id)
            if index < len(changes):
                committed.append(changes[index][0])
                committed_lat.append((changes[index][0] - row.ts.timestamp()) * 1000)
        if committed:
            phase.last_done = max(committed)
            phase.steady_rate = steady_rate(committed)
            phase.latencies.append(Latency("publish -> committed", sorted(committed_lat)))
        if len(committed) < len(rows):
            phase.notes.append(f"commit poller never saw {len(rows) - len(committed)} rows committed")
        commits = sum(1 for _, max_id in changes if max_id > base_message)
        period = polled["elapsed"] / max(1, polled["polls"]) * 1000
        info["poller"] = (
            f"{polled['polls']} polls, one every {period:.1f} ms; {commits} commits seen, "
            f"{len(rows) / max(1, commits):.0f} messages per commit on average"
        )
    return phase, info


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------
class WarningCapture(logging.Handler):
    """Counts WARNING+ records of this process (the platform's) and keeps the first few distinct ones."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.samples: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" [{record.exc_info[1]!r}]"
        text = re.sub(r"\d+", "N", text)[:240]
        self.counts[record.levelname] += 1
        if text in self.samples or len(self.samples) < 15:
            self.samples[text] = self.samples.get(text, 0) + 1


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def versions(broker: BrokerHandle | None) -> str:
    parts = [f"python {host_platform.python_version()}"]
    for dist in ("paho-mqtt", "amqtt", "SQLAlchemy", "sqlmodel"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    import sqlite3

    parts.append(f"sqlite {sqlite3.sqlite_version}")
    if broker is not None and broker.kind == "mosquitto":
        parts.append(broker.label.split(" (")[0])
    parts.append(f"{os.cpu_count()} CPUs")
    return ", ".join(parts)


def broker_log_summary(path: Path | None) -> list[str]:
    if path is None or not path.exists():
        return []
    pattern = re.compile(r"warn|error|drop|denied|exceed|timeout|exception|traceback", re.IGNORECASE)
    # tests/support/brokers.py runs Mosquitto as root on purpose when we are root (it cannot write our temp dir
    # otherwise).
    ignored = "should not be run as root"
    # Only the first line of each log record (they start with a timestamp), not traceback lines.
    lines = [
        line.rstrip()
        for line in path.read_text(errors="replace").splitlines()
        if line[:1].isdigit() and pattern.search(line) and ignored not in line
    ]
    counted = Counter(re.sub(r"\d+", "N", line.split(": ", 1)[-1])[:240] for line in lines)
    return [f"{count} x {text}" for text, count in counted.most_common(10)]


def report(
    args: argparse.Namespace,
    broker: BrokerHandle,
    db_label: str,
    phases: list[Phase],
    info: dict[str, Any],
    capture: WarningCapture,
    payload_bytes: int,
) -> str:
    ceiling = next((p for p in phases if p.name.startswith("ceiling")), None)
    ingest = next((p for p in phases if p.name.startswith("ingest")), None)
    mode = f"paced {args.rate:,.0f}/s" if args.rate else f"max (window {args.window})"
    out = [
        "",
        "Replenish MQTT ingest benchmark",
        f"versions: {versions(broker)}",
        f"broker: {broker.label}; database: {db_label}; ingest {info.get('batch', '')}",
        f"N={args.messages} telemetry messages ({payload_bytes} bytes, {len(args.slot_names)} slots) "
        f"from K={args.devices} devices, QoS 1, MQTT 3.1.1, publish {mode}",
        "",
    ]
    ratio = "-"
    if ceiling and ingest and ceiling.rate and ingest.rate:
        ratio = f"{ingest.rate / ceiling.rate:.3f}"
    committed = next((lat for lat in ingest.latencies if lat.name.endswith("committed")), None) if ingest else None
    summary = [
        broker.kind + (" (in-process)" if broker.pid is None else ""),
        db_label.split(" ")[0],
        str(args.messages),
        str(args.devices),
        mode,
        fmt_rate(ceiling.rate) if ceiling else "-",
        fmt_rate(ingest.rate) if ingest else "-",
        ratio,
        *([fmt_ms(committed.p(q)) for q in (50, 95, 99)] if committed else ["-"] * 3),
        ", ".join(
            f"{p.name.split(':')[0]} {'OK' if p.complete and p.delivered == p.expected else 'INCOMPLETE'}"
            for p in phases
        ),
    ]
    out.append(
        table(
            [
                "broker",
                "database",
                "N",
                "K",
                "publish",
                "ceiling msgs/s",
                "ingest msgs/s",
                "ratio",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "status",
            ],
            [summary],
        )
    )
    out.append("(latency: ingest publish -> committed; ratio: ingest msgs/s / ceiling msgs/s)")
    out.append("")
    rows = []
    for phase in phases:
        base = [
            phase.name,
            f"{phase.delivered}/{phase.expected}",
            str(phase.duplicates),
            fmt_rate(phase.publish_rate),
            fmt_rate(phase.rate),
            fmt_rate(phase.steady_rate),
        ]
        lats = phase.latencies or [Latency("-", [])]
        for index, lat in enumerate(lats):
            lead = base if index == 0 else [""] * len(base)
            rows.append(
                [
                    *lead,
                    lat.name,
                    *(fmt_ms(lat.p(q)) for q in (50, 95, 99)),
                    fmt_ms(lat.values_ms[-1] if lat.values_ms else math.nan),
                ]
            )
    out.append(
        table(
            [
                "phase",
                "delivered",
                "dups",
                "publish msgs/s",
                "msgs/s",
                "steady msgs/s",
                "latency",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "max ms",
            ],
            rows,
        )
    )
    out.append("")
    cpu_rows = [
        [
            p.name.split(":")[0],
            ", ".join(f"{k} {v:.0f}%" for k, v in p.cpu.items()),
            ", ".join(k for k, v in p.cpu.items() if v >= SATURATED_CPU) or "none",
        ]
        for p in phases
    ]
    headers = ["CPU (% of one core over the phase)", "by process", f"saturated (>= {SATURATED_CPU}%)"]
    out.append(table(headers, cpu_rows))
    for phase in phases:
        for note in phase.notes:
            out.append(f"! {phase.name.split(':')[0]}: {note}")
    if "poller" in info:
        out.append(f"commit poller: {info['poller']}")
    if "queue_peak" in info:
        out.append(f"ingestor queue: {info['queue_peak']}")
    if "memory" in info:
        out.append(f"memory: {info['memory']}")
    if "totals" in info:
        t = info["totals"]
        out.append(
            f"ingestor totals: stored {t.stored}, duplicates {t.duplicates}, dead letters {t.dead_letters}, "
            f"status {t.status_updates}; readings stored {info.get('readings')}"
        )
    out.append(f"platform log (this process): {dict(capture.counts) or 'no warnings or errors'}")
    out.extend(f"  {count} x {text}" for text, count in capture.samples.items())
    broker_lines = broker_log_summary(broker.log_path)
    out.append(f"broker log: {'warnings/errors:' if broker_lines else 'no warnings or errors'}")
    out.extend(f"  {line}" for line in broker_lines)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Example: python bench/ingest.py --broker mosquitto; then python bench/ingest.py --broker mosquitto "
        "--rate R with R about 80% of the ingest msgs/s found. See bench/README.md.",
    )
    parser.add_argument(
        "--broker",
        choices=("embedded", "mosquitto"),
        default="embedded",
        help="embedded: amqtt EmbeddedBroker; mosquitto: /usr/sbin/mosquitto with a copy of "
        "deploy/mosquitto/mosquitto.conf (default: embedded)",
    )
    parser.add_argument(
        "--broker-in-process",
        action="store_true",
        help="embedded only: run the broker inside the ingest process, as `replenish up` does "
        "(default: its own process, as `replenish broker` + `replenish ingest`)",
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="sqlite: a temporary file; postgres: a throwaway PostgreSQL cluster started from "
        "deploy/postgres/postgresql.conf as tests/support/brokers.py starts it, fsync on (default: sqlite)",
    )
    parser.add_argument("--database-url", help="SQLAlchemy URL of a dedicated database (instead of --database)")
    parser.add_argument(
        "--soak-minutes",
        type=float,
        help="soak: publish at --rate for this many minutes (N = rate x 60 x minutes, no ceiling phase) and "
        "report the ingest process's memory over the run",
    )
    parser.add_argument("-n", "--messages", type=int, default=20_000, help="telemetry messages N (default 20000)")
    parser.add_argument("-k", "--devices", type=int, default=50, help="devices K, round-robin (default 50)")
    parser.add_argument(
        "--slots",
        type=int,
        default=4,
        choices=range(1, len(SLOT_NAMES) + 1),
        metavar="S",
        help=f"ink slots per device, all reported in each message (1..{len(SLOT_NAMES)}, default 4)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        help="paced mode: publish R messages/s (default: as fast as the broker acknowledges, within --window)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=1000,
        help="most publishes awaiting the broker's PUBACK (default 1000 = 50 devices x paho's 20)",
    )
    parser.add_argument("--no-ceiling", action="store_true", help="skip the bare-subscriber ceiling phase")
    parser.add_argument("--timeout", type=float, default=120, help="longest a phase may take, s (default 120)")
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=20,
        help="give up a phase after this long without progress, s (default 20)",
    )
    parser.add_argument("--poll-ms", type=float, default=5, help="commit poller period, ms (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (database, logs)")
    parser.add_argument("-v", "--verbose", action="store_true", help="stream the platform's INFO log to stderr")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.devices < 1 or args.window < 1:
        parser.error("--messages, --devices and --window must be positive")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    if args.broker_in_process and args.broker != "embedded":
        parser.error("--broker-in-process applies to --broker embedded only")
    if args.soak_minutes is not None:
        if args.rate is None or args.soak_minutes <= 0:
            parser.error("--soak-minutes needs --rate, and a positive number of minutes")
        args.messages = round(args.rate * 60 * args.soak_minutes)
        args.timeout = max(args.timeout, 60 * args.soak_minutes + 120)
        args.no_ceiling = True
    args.slot_names = SLOT_NAMES[: args.slots]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    workdir = Path(tempfile.mkdtemp(prefix="replenish-bench-"))
    capture = WarningCapture()
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    file_handler = logging.FileHandler(workdir / "platform.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    root.addHandler(capture)
    if args.verbose:
        stream = logging.StreamHandler()
        stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(stream)

    run_id = secrets.token_hex(3)
    device_ids = [f"bench{run_id}-{index:04d}" for index in range(args.devices)]
    databases = ExitStack()
    if args.database_url:
        from sqlalchemy.engine import make_url

        db_url = args.database_url
        db_label = make_url(db_url).render_as_string(hide_password=True)
    elif args.database == "postgres":
        # fsync and synchronous_commit stay as deploy/postgres/postgresql.conf has them: a production commit.
        server = databases.enter_context(test_brokers_module().running_postgres(overrides={}))
        db_url = server.create_database("bench")
        version = subprocess.run(
            [test_brokers_module().postgres_bin_dir() / "postgres", "--version"], capture_output=True, text=True
        )
        db_label = f"{version.stdout.strip()} (throwaway cluster, deploy/postgres/postgresql.conf)"
    else:
        db_url = f"sqlite:///{workdir / 'bench.db'}"
        db_label = "sqlite (temporary file, WAL)"
    payload_bytes = len(telemetry(1, time.time(), args.slot_names).encode())

    phases: list[Phase] = []
    info: dict[str, Any] = {}
    broker: BrokerHandle | None = None
    failure: BaseException | None = None
    print(
        f"work directory {workdir}; broker {args.broker}; N={args.messages} K={args.devices} ...",
        file=sys.stderr,
        flush=True,
    )
    try:
        with ExitStack() as stack:
            if args.broker == "mosquitto":
                broker = start_mosquitto(stack, workdir)
            else:
                broker = start_embedded(
                    stack, workdir, in_process=args.broker_in_process, max_seconds=3 * args.timeout + 120, db_url=db_url
                )
            publisher = PublisherHandle(stack, broker, args.window)
            cpu_pids = {"broker": broker.pid, "publisher": publisher.process.pid}
            if not args.no_ceiling:
                print("ceiling phase ...", file=sys.stderr, flush=True)
                phases.append(run_ceiling(args, broker, publisher, device_ids, cpu_pids))
            print("ingest phase ...", file=sys.stderr, flush=True)
            phase, info = run_ingest(args, broker, publisher, stack, workdir, run_id, device_ids, cpu_pids, db_url)
            phases.append(phase)
            print("stopping ...", file=sys.stderr, flush=True)
    except Exception as exc:  # report what was measured before the failure
        failure = exc
        log.exception("benchmark failed")
    if broker is not None:
        print(report(args, broker, db_label, phases, info, capture, payload_bytes))
    if failure is not None:
        print(f"\nFAILED: {failure!r} (log: {workdir / 'platform.log'})")
    root.removeHandler(file_handler)
    file_handler.close()
    databases.close()
    if args.keep or failure is not None:
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    ok = failure is None and all(p.complete and p.delivered == p.expected for p in phases)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

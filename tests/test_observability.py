"""Operability through the real interfaces: messages over the embedded broker, /metrics and /readyz over HTTP,
the log lines a real handler writes."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, select

from replenish.automation.models import Decision
from replenish.clock import ManualClock
from replenish.constants import READINESS_CACHE_SECONDS, DeadLetterReason, OrderStatus, OutboxKind
from replenish.observability.database import DatabaseCollector
from replenish.observability.logging import make_handler
from replenish.outbox.models import OutboxMessage
from replenish.runtime import Platform, Roles
from support import wait_until
from support.api import create_customer, register_device
from support.brokers import free_port
from support.mqtt import Publisher
from support.platform import make_settings, place_an_order, running_platform

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


@pytest.fixture
def platform(tmp_path: Path, clock: ManualClock) -> Iterator[Platform]:
    """All roles, serving metrics on a port of their own (as every compose service does)."""
    with running_platform(make_settings(tmp_path, metrics_port=free_port()), clock) as running:
        yield running


def metrics_url(platform: Platform) -> str:
    assert platform.metrics_server is not None
    return f"http://127.0.0.1:{platform.metrics_server.port}/metrics"


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for sample_name, labels in samples if sample_name == name}


# -- /metrics ------------------------------------------------------------------------------------------------------


def test_metrics_count_stored_and_dead_lettered_messages_by_reason(platform, api, publisher):
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="printer-1")
    before = scrape(metrics_url(platform))

    publisher.send("devices/printer-1/telemetry", {"seq": 1, "levels": {"black": 0.5}})
    publisher.send("devices/printer-1/telemetry", {"seq": 2, "levels": {"black": 0.49}})
    publisher.send("devices/printer-1/telemetry", {"seq": 2, "levels": {"black": 0.49}})  # a redelivery
    publisher.send("devices/printer-1/telemetry", {"seq": 3, "levels": {"glitter-secret": 0.5}})
    publisher.send("devices/printer-1/telemetry", b"not json at all")
    assert platform.ingestor.wait_for(handled=5, timeout=10), platform.ingestor.totals
    after = scrape(metrics_url(platform))

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    messages = "replenish_ingest_messages_total"
    assert moved(messages, lane="telemetry", outcome="stored") == 2
    assert moved(messages, lane="telemetry", outcome="duplicate") == 1
    assert moved(messages, lane="telemetry", outcome="dead_letter") == 2
    assert moved(messages, lane="events", outcome="stored") == 0
    letters = "replenish_ingest_dead_letters_total"
    assert moved(letters, reason="unknown_slot") == 1
    assert moved(letters, reason="malformed") == 1
    assert sum(moved(letters, reason=reason) for reason in DeadLetterReason) == 2
    # The label is a category from a fixed set, never the sender's text.
    assert label_values(after, letters, "reason") == {reason.value for reason in DeadLetterReason}

    assert moved("replenish_ingest_lag_seconds_count", lane="telemetry") == 5
    assert moved("replenish_ingest_lag_seconds_bucket", lane="telemetry", le="+Inf") == 5
    assert moved("replenish_ingest_batch_size_sum", lane="telemetry") == 5
    assert moved("replenish_ingest_batch_size_count", lane="telemetry") >= 1
    assert value(after, "replenish_ingest_queue_depth", lane="telemetry") == 0
    assert value(after, "replenish_build_info", version="0.1.0", role="broker,ingest,scheduler,api") == 1
    assert value(after, "process_cpu_seconds_total") > 0


def test_database_gauges_follow_an_order_through_the_outbox(platform, api, clock):
    empty = scrape(metrics_url(platform))
    assert value(empty, "replenish_database_metrics_up") == 1
    assert label_values(empty, "replenish_orders", "status") == {status.value for status in OrderStatus}
    assert all(value(empty, "replenish_orders", status=status.value) == 0 for status in OrderStatus)

    order, _ = place_an_order(platform, api, clock)
    clock.advance(timedelta(seconds=30))
    placed = scrape(metrics_url(platform))
    assert value(placed, "replenish_orders", status="placed") == 1
    assert value(placed, "replenish_outbox_backlog", kind=OutboxKind.SHIPMENT_PLACED.value) == 1
    assert value(placed, "replenish_outbox_oldest_pending_seconds", kind=OutboxKind.SHIPMENT_PLACED.value) == 30
    assert value(placed, "replenish_escalation_timers_pending") == 0
    assert value(placed, "replenish_alerts", status="open") == 0

    platform.jobs.dispatch()
    clock.advance(DatabaseCollector.CACHE_FOR)  # the database gauges are read at most every 10 s
    delivered = scrape(metrics_url(platform))
    assert value(delivered, "replenish_outbox_backlog", kind=OutboxKind.SHIPMENT_PLACED.value) == 0
    assert value(delivered, "replenish_outbox_oldest_pending_seconds", kind=OutboxKind.SHIPMENT_PLACED.value) == 0
    deliveries = "replenish_outbox_deliveries_total"
    assert value(delivered, deliveries, kind=OutboxKind.SHIPMENT_PLACED.value, outcome="delivered") == 1
    assert value(delivered, deliveries, kind=OutboxKind.SHIPMENT_PLACED.value, outcome="failed") == 0
    assert order["status"] == "placed"


def test_evaluation_metrics_show_the_due_backlog_and_what_the_evaluator_did(platform, api, clock, publisher):
    empty = scrape(metrics_url(platform))
    order, last_seq = place_an_order(platform, api, clock)  # readings over 8 days, then one evaluation pass
    clock.advance(DatabaseCollector.CACHE_FOR)
    evaluated = scrape(metrics_url(platform))

    def moved(outcome: str) -> float:
        return value(evaluated, "replenish_evaluations_total", outcome=outcome) - value(
            empty, "replenish_evaluations_total", outcome=outcome
        )

    assert moved("forecast") >= 1 and moved("decided") == 1 and moved("failed") == 0
    assert value(evaluated, "replenish_evaluation_due_slots") == 0
    assert value(evaluated, "replenish_evaluation_behind_seconds") == 0

    # A new reading that cannot wait (a rise that may be a refill) no evaluator has taken yet: due, and waiting
    # longer with every second.
    publisher.send(
        "devices/printer-1/telemetry",
        {"seq": last_seq + 1, "ts": clock.now().isoformat(), "levels": {"black": 0.95}},
    )
    assert wait_until(lambda: platform.ingestor.totals.stored >= last_seq + 1, timeout=20)
    clock.advance(timedelta(seconds=90))
    waiting = scrape(metrics_url(platform))
    assert value(waiting, "replenish_evaluation_due_slots") == 1
    assert value(waiting, "replenish_evaluation_behind_seconds") == 90
    assert order["status"] == "placed"


def test_a_process_without_the_api_serves_its_metrics_on_its_own_port(tmp_path, clock):
    port = free_port()
    settings = make_settings(tmp_path, metrics_port=port)
    with running_platform(settings, clock, roles=Roles(broker=True, ingest=True)) as platform:
        assert platform.api_server is None and platform.metrics_server is not None
        sender = Publisher(platform.settings.mqtt_endpoint)
        try:
            sender.send("devices/nobody-1/telemetry", {"seq": 1, "levels": {"black": 0.5}})
        finally:
            sender.close()
        assert platform.ingestor.wait_for(handled=1, timeout=10)
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert value(samples, "replenish_ingest_dead_letters_total", reason="unknown_device") == 1
        assert value(samples, "replenish_build_info", version="0.1.0", role="broker,ingest") == 1
        # The database gauges are the API's alone.
        assert not label_values(samples, "replenish_orders", "status")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


# -- /readyz -------------------------------------------------------------------------------------------------------


def test_readyz_answers_200_when_the_database_and_the_broker_answer(platform):
    response = httpx.get(f"{platform.api_url}/readyz", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok", "failed": []}


def test_readyz_answers_503_naming_the_broker_when_it_is_down(tmp_path, clock):
    settings = make_settings(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
    with running_platform(settings, clock, roles=Roles(api=True)) as platform:
        response = httpx.get(f"{platform.api_url}/readyz", timeout=10)
        assert response.status_code == 503
        assert response.json() == {
            "status": "unavailable",
            "database": "ok",
            "broker": "ConnectionRefusedError",
            "failed": ["broker"],
        }
        assert httpx.get(f"{platform.api_url}/healthz", timeout=10).status_code == 200


class CountingBroker:
    """A TCP server that answers every MQTT CONNECT "not authorised", as Mosquitto's platform listener answers the
    API (which holds no broker secret), and counts the connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection:
                self.connections += 1
                if connection.recv(1024)[:1] == b"\x10":
                    connection.sendall(bytes([0x20, 2, 0, 5]))

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def counting_broker() -> Iterator[CountingBroker]:
    broker = CountingBroker()
    yield broker
    broker.close()


def test_a_storm_of_readiness_probes_costs_the_broker_one_connection(tmp_path, clock, counting_broker):
    settings = make_settings(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{counting_broker.port}")
    with running_platform(settings, clock, roles=Roles(api=True)) as platform:
        started = time.monotonic()
        answers = [httpx.get(f"{platform.api_url}/readyz", timeout=10) for _ in range(10)]
        took = time.monotonic() - started
    assert [answer.status_code for answer in answers] == [200] * 10
    assert answers[0].json()["broker"] == "ok", "a CONNACK refusing an anonymous client still proves the broker"
    # One connection per READINESS_CACHE_SECONDS at most (a loaded machine may take longer than that for ten).
    assert counting_broker.connections <= 1 + int(took // READINESS_CACHE_SECONDS), took
    assert counting_broker.connections < 10


# -- logs and the correlation id -----------------------------------------------------------------------------------


@pytest.fixture
def log_lines() -> Iterator[dict[str, io.StringIO]]:
    """What the platform's loggers write through a JSON and a text handler, DEBUG and up."""
    streams = {"json": io.StringIO(), "text": io.StringIO()}
    handlers = [make_handler("json", streams["json"]), make_handler("text", streams["text"])]
    logger = logging.getLogger("replenish")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    for handler in handlers:
        logger.addHandler(handler)
    yield streams
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(level)


def test_one_correlation_id_follows_a_message_to_the_order_it_caused(platform, api, clock, log_lines):
    order, last_seq = place_an_order(platform, api, clock)
    platform.jobs.dispatch()

    records = [json.loads(line) for line in log_lines["json"].getvalue().splitlines()]
    assert records and all({"ts", "level", "logger", "message", "correlation_id"} <= set(r) for r in records)
    [placed] = [r for r in records if r["logger"] == "replenish.orders.service" and order["id"] in r["message"]]
    # The message whose reading was the newest when the platform decided.
    correlation_id = f"printer-1:{last_seq}"
    assert placed["correlation_id"] == correlation_id

    trail = [r for r in records if r["correlation_id"] == correlation_id]
    loggers = [r["logger"] for r in trail]
    assert loggers[0] == "replenish.ingest.service", "first the message is stored"
    assert {"replenish.automation.service", "replenish.orders.service", "replenish.orders.fulfilment"} <= set(loggers)
    [delivered] = [r for r in trail if r["logger"] == "replenish.orders.fulfilment"]
    assert order["id"] in delivered["message"]
    # An earlier message of the same device has an id of its own.
    assert any(r["correlation_id"] == f"printer-1:{last_seq - 1}" for r in records)

    # The rows carry it too, and the order's explanation shows it.
    with Session(platform.engine) as session:
        decision = session.exec(select(Decision)).one()
        [outbox_row] = session.exec(select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.SHIPMENT_PLACED)).all()
    assert decision.correlation_id == outbox_row.correlation_id == correlation_id
    assert api.get(f"/orders/{order['id']}").json()["explanation"]["correlation_id"] == correlation_id

    text = [line for line in log_lines["text"].getvalue().splitlines() if f"order {order['id']}" in line]
    assert text and text[0].endswith(f" [cid={correlation_id}]")


def test_a_dead_letter_is_logged_with_its_category_and_an_id_of_its_own(platform, publisher, log_lines):
    publisher.send("devices/ghost-1/telemetry", {"seq": 7, "levels": {"black": 0.5}})
    assert platform.ingestor.wait_for(handled=1, timeout=10)
    records = [json.loads(line) for line in log_lines["json"].getvalue().splitlines()]
    [letter] = [r for r in records if r["message"].startswith("dead letter")]
    assert "(unknown_device)" in letter["message"] and letter["level"] == "INFO"
    assert letter["correlation_id"].startswith("msg-")


def test_the_command_line_logs_json_lines_when_asked(tmp_path: Path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("REPLENISH_")}
    env |= {"REPLENISH_LOG_FORMAT": "json", "REPLENISH_DATA_DIR": str(tmp_path)}
    replenish = Path(sys.executable).parent / "replenish"
    done = subprocess.run(
        [str(replenish), "db", "upgrade"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert any(r["logger"].startswith("alembic") and r["message"].startswith("Running upgrade") for r in records)
    assert all(r["level"] == "INFO" and r["correlation_id"] is None for r in records)


def test_a_fall_its_alert_notifications_and_escalation_carry_the_events_id(platform, api, publisher, clock, log_lines):
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
    publisher.send("devices/pendant-1/events", {"seq": 5, "type": "fall_detected", "confidence": 0.9})
    assert platform.ingestor.wait_for(handled=1, timeout=10)
    with Session(platform.engine) as session:
        queued = session.exec(select(OutboxMessage)).all()
    assert queued and {message.correlation_id for message in queued} == {"pendant-1:5"}

    clock.advance(timedelta(hours=1))  # past the cancel window: the escalation job takes the next step
    platform.jobs.escalate()
    records = [json.loads(line) for line in log_lines["json"].getvalue().splitlines()]
    trail = [r for r in records if r["correlation_id"] == "pendant-1:5"]
    assert any(r["logger"] == "replenish.alerts.service" and "opened" in r["message"] for r in trail)
    assert any(r["logger"] == "replenish.alerts.service" and r["level"] == "CRITICAL" for r in trail), trail

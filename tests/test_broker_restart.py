"""No acknowledged message lost when the broker restarts (issue 17), on the production stack: Mosquitto from
deploy/mosquitto/mosquitto.conf, PostgreSQL, `replenish ingest` processes.

Mosquitto 2.0 restores the ingestors' persistent sessions after a restart but not their shared subscriptions, so what
devices publish between the broker's start and the ingestors' re-subscription is acknowledged to the device and then
dropped. The guarantee is end to end instead: the platform confirms on devices/{id}/stored what it has stored, and
the devices (here the simulators of src/replenish/simulation) keep and send again what stays unconfirmed
(docs/mqtt.md, "Confirmations")."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from replenish.config import MqttEndpoint
from replenish.constants import DeviceKind
from replenish.simulation.devices import WearableModel
from replenish.simulation.runner import run_device
from support.brokers import SERVICE_PASSWORD, PostgresRun
from support.platform import polled_engine
from test_scale_out import SHARE_GROUP, ProductionStack, Role, production_stack, register_devices, subscribed, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

DEVICES = 20
# 20 devices x 25 messages a second: the 500 msgs/s the issue measures at.
MESSAGES_PER_DEVICE_SECOND = 25
REPORT_INTERVAL = timedelta(minutes=15)
RUN_SECONDS = 6.0
RESTART_AT_SECONDS = 2.0
# Shorter than a real device's 15 s, so that the test does not wait for it.
RESEND_AFTER_SECONDS = 3.0


def counts(database_url: str) -> tuple[int, int, int, int]:
    """(messages, distinct (device, seq), falls stored, fall alerts)."""
    with polled_engine(database_url).connect() as connection:
        return tuple(  # type: ignore[return-value]
            connection.execute(text(query)).scalar_one()
            for query in (
                "SELECT count(*) FROM device_messages",
                "SELECT count(*) FROM (SELECT DISTINCT device_id, seq FROM device_messages) AS d",
                "SELECT count(*) FROM device_messages WHERE event_type = 'fall_detected'",
                "SELECT count(*) FROM alerts WHERE kind = 'fall'",
            )
        )


@pytest.fixture
def production(tmp_path: Path, postgres_server: PostgresRun) -> Iterator[ProductionStack]:
    with production_stack(tmp_path, postgres_server) as stack:
        yield stack


def start_ingest(stack: ProductionStack, name: str, *, shared: bool) -> Role:
    role = stack.roles.start("ingest", name)
    if shared:
        wait_for(lambda: subscribed(role), 30, role.output)
    else:
        wait_for(lambda: role.output().count("ingestor subscribed to devices/") == 2, 30, role.output)
    return role


def run_fleet(stack: ProductionStack, device_ids: list[str], *, during: Any) -> tuple[list[int], int]:
    """The devices publish for RUN_SECONDS, ``during`` runs after RESTART_AT_SECONDS; every device then waits until
    the platform has confirmed everything. (messages each device published, falls among them)."""
    start = datetime.now(UTC) - timedelta(days=30)
    reports = int(RUN_SECONDS * MESSAGES_PER_DEVICE_SECOND)
    # Heartbeats, and one fall each, spread over the run: some fall while the broker is down or the ingestors are
    # not yet back.
    models = [
        WearableModel(
            device_id,
            start=start,
            report_interval=REPORT_INTERVAL,
            fall_at=start + REPORT_INTERVAL * ((number * reports) // DEVICES) + REPORT_INTERVAL / 2,
        )
        for number, device_id in enumerate(device_ids)
    ]
    endpoint = MqttEndpoint.parse(stack.broker.url)
    endpoint = MqttEndpoint(endpoint.host, endpoint.port, username="replenish", password=SERVICE_PASSWORD)
    published: list[int] = [0] * len(models)

    def device(number: int) -> None:
        published[number] = run_device(
            models[number],
            endpoint,
            speed=REPORT_INTERVAL.total_seconds() * MESSAGES_PER_DEVICE_SECOND,
            duration=REPORT_INTERVAL * (reports - 1),
            tick_seconds=0.05,
            client_id=models[number].device_id,
            resend_after=RESEND_AFTER_SECONDS,
            stored_timeout=90,
        )

    threads = [threading.Thread(target=device, args=(number,)) for number in range(len(models))]
    for thread in threads:
        thread.start()
    time.sleep(RESTART_AT_SECONDS)
    during()
    for thread in threads:
        thread.join(150)
    assert not any(thread.is_alive() for thread in threads)
    falls = sum(model.fall_at is not None and model.now >= model.fall_at for model in models)
    return [model.seq - 1 for model in models], falls


def assert_all_stored_once(stack: ProductionStack, sent: list[int], falls: int) -> None:
    total = sum(sent)
    assert total >= DEVICES * RUN_SECONDS * MESSAGES_PER_DEVICE_SECOND * 0.9, sent
    # Confirmed to every device, so stored: nothing more arrives after the devices stopped waiting.
    messages, distinct, stored_falls, alerts = counts(stack.database_url)
    assert (messages, distinct) == (total, total), f"{messages} rows, {distinct} distinct, of {total} sent"
    assert stored_falls == falls == DEVICES
    assert alerts == DEVICES, "every fall became an alert, the ones in the gap too"


@pytest.mark.parametrize("shared", [True, False], ids=["shared-subscription", "plain-subscription"])
def test_a_broker_restart_under_load_loses_nothing_with_ingest_up(production: ProductionStack, shared: bool) -> None:
    if shared:
        production.roles.env["REPLENISH_INGEST_SHARE_GROUP"] = SHARE_GROUP
    device_ids = register_devices(production.database_url, DEVICES, kind=DeviceKind.WEARABLE, now=datetime.now(UTC))
    ingestors = [start_ingest(production, f"ingest-{n}", shared=shared) for n in range(2 if shared else 1)]
    sent, falls = run_fleet(production, device_ids, during=lambda: production.broker.restart(down_for=0.5))
    assert_all_stored_once(production, sent, falls)
    for role in ingestors:
        assert role.process.poll() is None, "the ingestors rode through the restart"
        assert "disconnected from" in role.output()


def test_a_broker_restart_with_ingest_down_across_it_loses_nothing(production: ProductionStack) -> None:
    production.roles.env["REPLENISH_INGEST_SHARE_GROUP"] = SHARE_GROUP
    device_ids = register_devices(production.database_url, DEVICES, kind=DeviceKind.WEARABLE, now=datetime.now(UTC))
    first = start_ingest(production, "ingest-before", shared=True)

    def ingest_down_across_the_restart() -> None:
        first.process.send_signal(2)
        first.process.wait(20)
        production.broker.restart(down_for=0.5)
        time.sleep(1.0)  # devices publish to a broker no ingestor has subscribed to yet
        start_ingest(production, "ingest-after", shared=True)

    sent, falls = run_fleet(production, device_ids, during=ingest_down_across_the_restart)
    assert_all_stored_once(production, sent, falls)

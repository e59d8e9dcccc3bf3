"""Scale-out on the production stack (issue 7): several `replenish ingest` processes share the device stream through an
MQTT 5 shared subscription on Mosquitto, and `replenish scheduler` runs as one leader with a standby, elected by a
PostgreSQL advisory lock. Real processes, killed with SIGKILL, on Mosquitto and PostgreSQL started from deploy/."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from sqlmodel import Session, col, select

from replenish.cluster.leader import LeaderElection
from replenish.cluster.locks import AdvisoryLock
from replenish.config import MqttEndpoint, Settings
from replenish.constants import SCHEDULER_LEADER_LOCK_KEY, DeviceKind
from replenish.health.models import Alarm
from replenish.mqtt.client import disconnect_and_stop
from support.brokers import SERVICE_PASSWORD, MosquittoRun, PostgresRun, free_port, running_mosquitto
from support.platform import polled_engine, register_through_services, stored
from test_cli import REPLENISH, environment

# Odd: with two members taking turns, each device's messages go to both, so both write each device and slot.
DEVICES = 41
PER_PHASE = 2000
SHARE_GROUP = "replenish"


# -- helpers -----------------------------------------------------------------------------------------------------


@dataclass
class Role:
    """One `replenish` process, its log and its metrics port."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        raise AssertionError(f"{self.name}: no sample {name} {labels}")

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: nothing drains, nothing is acknowledged, no lock is released by us
        self.process.wait(10)


class Roles:
    """Starts `replenish` processes and stops (SIGINT, then SIGKILL) whatever is left at the end."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.started: list[Role] = []

    def start(self, role: str, name: str) -> Role:
        port = free_port()
        log = self.tmp_path / f"{name}.log"
        env = {**self.env, "REPLENISH_METRICS_PORT": str(port)}
        with log.open("wb") as out:
            process = subprocess.Popen([REPLENISH, role], env=env, stdout=out, stderr=subprocess.STDOUT)
        started = Role(name=name, process=process, log=log, metrics_port=port)
        self.started.append(started)
        return started

    def stop_all(self) -> None:
        for role in self.started:
            if role.process.poll() is None:
                role.process.send_signal(2)
        for role in self.started:
            try:
                role.process.wait(20)
            except subprocess.TimeoutExpired:
                role.process.kill()


def wait_for(condition, timeout: float, message) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(0.1)


def register_devices(
    database_url: str, count: int, *, kind: DeviceKind = DeviceKind.PRINTER, now: datetime
) -> list[str]:
    ids = [f"{kind.value}-{number:03d}-{uuid.uuid4().hex[:6]}" for number in range(count)]
    register_through_services(database_url, ids, mode="notify_only", kind=kind.value, now=now)
    return ids


class Fleet:
    """Many devices' telemetry at QoS 1 through one connection of the service account, many PUBACKs awaited at once
    (the broker and the ingestors see DEVICES device topics either way)."""

    def __init__(self, url: str, device_ids: list[str]) -> None:
        endpoint = MqttEndpoint.parse(url)
        self.device_ids = device_ids
        self.sent = 0
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"replenish-test-fleet-{free_port()}", protocol=paho.MQTTv311
        )
        self.client.username_pw_set("replenish", SERVICE_PASSWORD)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.connect(endpoint.host, endpoint.port)
        self.client.loop_start()

    def publish(self, count: int, *, published: threading.Event | None = None, at: int = 0) -> None:
        infos = []
        for _ in range(count):
            device_id = self.device_ids[self.sent % len(self.device_ids)]
            seq = self.sent // len(self.device_ids) + 1
            # The device's own clock: what a member resumed late stores is older than what the other stored.
            ts = datetime.now(UTC).isoformat()
            payload = f'{{"seq": {seq}, "ts": "{ts}", "levels": {{"black": {round(1 - seq / 10000, 4)}}}}}'
            infos.append(self.client.publish(f"devices/{device_id}/telemetry", payload, qos=1))
            self.sent += 1
            if published is not None and len(infos) == at:
                published.set()
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()

    def close(self) -> None:
        disconnect_and_stop(self.client)


@dataclass
class ProductionStack:
    """A migrated PostgreSQL database, Mosquitto from the production config, and a way to start roles on both."""

    database_url: str
    broker: MosquittoRun
    roles: Roles

    @property
    def broker_url(self) -> str:
        return self.broker.url


@contextmanager
def production_stack(directory: Path, postgres: PostgresRun, **env: str) -> Iterator[ProductionStack]:
    """The stack in ``directory``; ``env`` adds settings for the roles. Every role started is stopped at the end."""
    database_url = postgres.create_migrated_database(f"stack_{uuid.uuid4().hex}")
    broker_dir = directory / "mosquitto"
    broker_dir.mkdir()
    with running_mosquitto(broker_dir) as broker, ExitStack() as cleanup:
        roles = Roles(
            directory,
            environment(
                directory,
                REPLENISH_DATABASE_URL=database_url,
                REPLENISH_MQTT_URL=broker.url,
                REPLENISH_BROKER_SERVICE_PASSWORD=SERVICE_PASSWORD,
                **env,
            ),
        )
        cleanup.callback(roles.stop_all)
        yield ProductionStack(database_url, broker, roles)


@pytest.fixture
def production(tmp_path: Path, postgres_server: PostgresRun) -> Iterator[tuple[str, str, Roles]]:
    with production_stack(tmp_path, postgres_server, REPLENISH_INGEST_BATCH_WAIT_MS="5") as stack:
        yield stack.database_url, stack.broker_url, stack.roles


def member(role: Role) -> int:
    found = re.search(r"ingest share group member (\d+)", role.output())
    assert found, role.output()
    return int(found.group(1))


def subscribed(role: Role) -> bool:
    # Both lanes: events and telemetry.
    return role.output().count("ingestor subscribed to $share/replenish/") == 2


# -- ingest --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_ingestors_split_the_stream_and_lose_nothing_through_a_kill(production):
    database_url, broker_url, roles = production
    roles.env["REPLENISH_INGEST_SHARE_GROUP"] = SHARE_GROUP
    device_ids = register_devices(database_url, DEVICES, now=datetime.now(UTC))
    first = roles.start("ingest", "ingest-a")
    wait_for(lambda: subscribed(first), 30, first.output)
    second = roles.start("ingest", "ingest-b")
    wait_for(lambda: subscribed(second), 30, second.output)
    assert (member(first), member(second)) == (1, 2), "each takes the lowest free member number"
    assert "as replenish-ingest-2 " in second.output() and "as replenish-ingest-2-events " in second.output()
    fleet = Fleet(broker_url, device_ids)
    try:
        # Both running: the broker splits the stream between them.
        fleet.publish(PER_PHASE)
        wait_for(lambda: stored(database_url)[0] >= PER_PHASE, 30, lambda: f"stored {stored(database_url)}")
        shares = [
            role.metric("replenish_ingest_messages_total", lane="telemetry", outcome="stored")
            for role in (first, second)
        ]
        assert sum(shares) == PER_PHASE, shares
        assert min(shares) >= 0.2 * PER_PHASE, f"the load was not split: {shares}"

        # One dies mid-stream (SIGKILL): Mosquitto keeps queuing its share in its persistent session.
        halfway = threading.Event()
        publishing = threading.Thread(
            target=fleet.publish, args=(PER_PHASE,), kwargs={"published": halfway, "at": PER_PHASE // 2}
        )
        publishing.start()
        assert halfway.wait(30)
        second.kill()
        publishing.join(60)
        total = 2 * PER_PHASE
        time.sleep(2)  # the survivor stores all it is given
        rows_without_second = stored(database_url)[0]
        assert rows_without_second < total, "Mosquitto queued the dead member's share in its session (documented)"

        # Its replacement takes the free member number, resumes those sessions and stores what waited there.
        replacement = roles.start("ingest", "ingest-b2")
        wait_for(lambda: subscribed(replacement), 30, replacement.output)
        assert member(replacement) == 2
        wait_for(lambda: stored(database_url)[0] >= total, 30, lambda: f"stored {stored(database_url)} of {total}")
        time.sleep(0.5)  # any redelivery after the last row would show up as a duplicate row below, if it could
        # One reading per message: a message handled twice would have added its reading twice.
        assert stored(database_url) == (total, total, 0), "every message stored exactly once, none dead-lettered"
        assert replacement.metric("replenish_ingest_messages_total", lane="telemetry", outcome="stored") > 0
        # Whichever member committed last, each slot shows its newest reading, each device its newest sighting.
        with psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql")) as db:
            stale = db.execute(
                "SELECT s.device_id FROM slots s WHERE s.level_at IS DISTINCT FROM "
                "(SELECT max(r.ts) FROM readings r WHERE r.slot_id = s.id) OR s.level NOT IN "
                "(SELECT r.level FROM readings r WHERE r.slot_id = s.id AND r.ts = s.level_at)"
            ).fetchall()
            unseen = db.execute(
                "SELECT d.id FROM devices d WHERE d.last_seen_at IS DISTINCT FROM "
                "(SELECT max(m.received_at) FROM device_messages m WHERE m.device_id = d.id)"
            ).fetchall()
        assert stale == [] and unseen == [], (stale, unseen)
    finally:
        fleet.close()
    assert "Traceback" not in first.output() + replacement.output()


def test_a_stopped_member_frees_its_number_for_the_next_process(production):
    """Member numbers are taken while a process lives: a stopped (SIGINT) member's number goes to the next process."""
    _, _, roles = production
    roles.env["REPLENISH_INGEST_SHARE_GROUP"] = SHARE_GROUP
    roles.env["REPLENISH_INGEST_LANES"] = "telemetry"
    first = roles.start("ingest", "ingest-1")
    second = roles.start("ingest", "ingest-2")
    wait_for(
        lambda: "ingestor subscribed" in first.output() and "ingestor subscribed" in second.output(),
        30,
        lambda: first.output() + second.output(),
    )
    assert {member(first), member(second)} == {1, 2}
    leaving = first if member(first) == 1 else second
    leaving.process.send_signal(2)
    assert leaving.process.wait(20) == 0, leaving.output()
    third = roles.start("ingest", "ingest-3")
    wait_for(lambda: "ingestor subscribed" in third.output(), 30, third.output)
    assert member(third) == 1


# -- scheduler -----------------------------------------------------------------------------------------------------


def leader_of(schedulers: list[Role]) -> list[Role]:
    return [
        role for role in schedulers if role.process.poll() is None and role.metric("replenish_scheduler_leader") == 1
    ]


def offline_alarms(database_url: str) -> set[str]:
    with Session(polled_engine(database_url)) as session:
        return set(session.exec(select(Alarm.device_id).where(col(Alarm.cleared_at).is_(None))).all())


@pytest.mark.slow
def test_one_scheduler_leads_and_the_standby_takes_over_within_seconds_of_a_kill(production):
    database_url, _, roles = production
    roles.env["REPLENISH_HEALTH_INTERVAL_SECONDS"] = "0.5"
    # Wearables registered an hour ago and never heard from: the health job raises an offline alarm for each.
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    schedulers = [roles.start("scheduler", "scheduler-a"), roles.start("scheduler", "scheduler-b")]

    def ready() -> bool:
        try:
            return all(role.metric("replenish_build_info") is not None for role in schedulers)
        except (httpx.TransportError, AssertionError):
            return False

    wait_for(ready, 30, lambda: "\n".join(role.output() for role in schedulers))
    wait_for(lambda: len(leader_of(schedulers)) == 1, 10, "one leader")
    [leader] = leader_of(schedulers)
    [standby] = [role for role in schedulers if role is not leader]
    assert "standing by" in standby.output() and "is the leader now" in leader.output()

    before = register_devices(database_url, 2, kind=DeviceKind.WEARABLE, now=an_hour_ago)
    wait_for(lambda: offline_alarms(database_url) >= set(before), 10, "the leader's health job raised the alarms")
    assert "health: raised" in leader.output() and "health: raised" not in standby.output(), "only the leader runs jobs"

    leader.kill()
    killed_at = time.monotonic()
    wait_for(lambda: leader_of([standby]) == [standby], 10, standby.output)
    took_over = time.monotonic() - killed_at
    assert took_over < 5, f"the standby took {took_over:.1f} s to lead"

    after = register_devices(database_url, 2, kind=DeviceKind.WEARABLE, now=an_hour_ago)
    wait_for(lambda: offline_alarms(database_url) >= set(after), 10, standby.output)
    assert "health: raised" in standby.output(), "the new leader runs the jobs"

    # The old leader comes back as a standby: still one leader.
    returned = roles.start("scheduler", "scheduler-a2")
    wait_for(lambda: "standing by" in returned.output(), 30, returned.output)
    time.sleep(1.5)
    assert leader_of([standby, returned]) == [standby]


def test_a_leader_whose_lock_session_ends_stops_leading_at_once_and_one_leads_again(postgres_server):
    """A database restart or a network failure ends the leader's lock session without killing the process: it must
    stop leading by its next check, not go on running jobs beside the new leader."""
    database = f"election_{uuid.uuid4().hex}"
    url = postgres_server.create_database(database)
    changes: dict[str, list[bool]] = {"a": [], "b": []}
    elections = {
        name: LeaderElection(
            AdvisoryLock(url, keys=(SCHEDULER_LEADER_LOCK_KEY,), name=name),
            name=name,
            interval=0.2,
            on_change=changes[name].append,
        )
        for name in ("a", "b")
    }
    elections["a"].start()
    elections["b"].start()
    try:
        assert elections["a"].is_leader and not elections["b"].is_leader
        with psycopg.connect(f"host=127.0.0.1 port={postgres_server.port} user=postgres dbname={database}") as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s "
                "AND database = (SELECT oid FROM pg_database WHERE datname = %s)",
                (SCHEDULER_LEADER_LOCK_KEY, database),
            ).fetchall()
        assert ended == [(True,)], "the leader's lock session, and only it"
        # Each runs on its own timer: the standby may lead a moment before the old leader's next check.
        wait_for(lambda: not elections["a"].is_leader, 5, "the old leader notices it lost the lock")
        # Then both compete for the free lock, the old leader like any standby: usually the standby's timer comes
        # first, but on a loaded machine the old leader may take it back. Either way, one leads again.
        wait_for(lambda: elections["a"].is_leader or elections["b"].is_leader, 5, "someone leads again")
        leader, other = ("b", "a") if elections["b"].is_leader else ("a", "b")
        assert not elections[other].is_leader
        assert changes == ({"a": [True, False], "b": [True]} if leader == "b" else {"a": [True, False, True], "b": []})
        elections[leader].stop()
        wait_for(lambda: elections[other].is_leader, 5, "the other leads once the lock is free")
    finally:
        for election in elections.values():
            election.stop()


def test_a_share_group_needs_an_external_broker_and_empty_turns_it_off(tmp_path):
    with pytest.raises(ValidationError, match="ingest_share_group needs an external broker"):
        Settings(_env_file=None, data_dir=tmp_path, ingest_share_group="replenish")
    assert Settings(_env_file=None, data_dir=tmp_path, ingest_share_group="").ingest_share_group is None
    with pytest.raises(ValidationError):
        Settings(_env_file=None, data_dir=tmp_path, mqtt_url="mqtt://broker", ingest_share_group="a/b")

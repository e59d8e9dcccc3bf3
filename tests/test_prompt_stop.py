"""Prompt, clean stops on the production stack (issue 17): SIGTERM of the leading scheduler in the middle of an
evaluation pass steps down at once (its evaluation batch ends after), so the standby leads at once; SIGTERM of an
ingest process under load takes nothing new, stores and acknowledges what it holds, and leaves.
bench/prompt_stop.py runs the same scenarios repeatedly and prints the times (target: every role exits within 3 s,
the standby leads within 2 s)."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from replenish.db import make_engine
from support.brokers import PostgresRun
from support.platform import polled_engine, register_through_services, stored
from test_scale_out import Fleet, ProductionStack, Role, leader_of, production_stack, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SLOTS = 300
HISTORY = timedelta(days=7)
READING_EVERY = timedelta(minutes=15)


@pytest.fixture
def production(tmp_path: Path, postgres_server: PostgresRun) -> Iterator[ProductionStack]:
    with production_stack(tmp_path, postgres_server) as stack:
        yield stack


def slots_with_history(
    database_url: str, *, slots: int = SLOTS, history: timedelta = HISTORY, every: timedelta = READING_EVERY
) -> list[str]:
    """``slots`` printers of one slot each, with ``history`` of readings ``every`` so often, falling 7.7 % a day:
    an evaluation pass over them takes seconds. Written by SQL, as an ingestor would have stored it over the
    days."""
    now = datetime.now(UTC)
    device_ids = [f"printer-{number:04d}" for number in range(slots)]
    register_through_services(database_url, device_ids, mode="notify_only", now=now - history)
    readings = int(history / every)
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO device_messages (device_id, seq, channel, ts, received_at, payload) "
                    "SELECT d.id, n, 'telemetry', :start + n * :every, :start + n * :every, '{}'::jsonb "
                    "FROM devices d CROSS JOIN generate_series(1, :readings) AS n WHERE d.id = ANY(:ids)"
                ),
                {"start": now - history, "every": every, "readings": readings, "ids": device_ids},
            )
            # A steady fall with a little noise, from full: each slot is well inside a cycle.
            connection.execute(
                text(
                    "INSERT INTO readings (slot_id, message_id, ts, level) "
                    "SELECT s.id, m.id, m.ts, greatest(0, 1 - m.seq * :fall + (random() - 0.5) * 0.004) "
                    "FROM device_messages m JOIN slots s ON s.device_id = m.device_id WHERE m.device_id = ANY(:ids)"
                ),
                {"ids": device_ids, "fall": 0.0008 * (every / READING_EVERY)},
            )
            # As ingest marks the slots it stores readings for: due for evaluation, their readings changed from
            # the first one on (an evaluator's stored window of them is out of date from there).
            connection.execute(
                text(
                    "UPDATE slots SET due_at = :now, due_marks = due_marks + 1, readings_changed_from = :start "
                    "WHERE device_id = ANY(:ids)"
                ),
                {"now": now, "start": now - history, "ids": device_ids},
            )
    finally:
        engine.dispose()
    return device_ids


def forecasts(database_url: str) -> int:
    """Slots evaluated since they were last marked due: no longer due, nor claimed by an evaluator."""
    with polled_engine(database_url).connect() as connection:
        left = connection.execute(
            text("SELECT count(*) FROM slots WHERE due_at <= now() OR claimed_until IS NOT NULL")
        ).scalar_one()
        return int(connection.execute(text("SELECT count(*) FROM slots")).scalar_one() - left)


def metrics_ready(role: Role) -> bool:
    try:
        return role.metric("replenish_build_info") is not None
    except (httpx.TransportError, AssertionError):
        return False


@dataclass
class SchedulerStop:
    exited_after: float  # SIGTERM -> the leader's process ended
    standby_led_after: float  # SIGTERM -> the standby reports itself the leader
    forecasts_at_stop: int
    leader_output: str


def stop_the_leader_mid_pass(
    production: ProductionStack,
    *,
    slots: int = SLOTS,
    history: timedelta = HISTORY,
    every: timedelta = READING_EVERY,
) -> SchedulerStop:
    production.roles.env |= {
        "REPLENISH_EVALUATION_INTERVAL_SECONDS": "2",  # the first pass soon after the start
        # Many short transactions: the pass is still going when the first slots' forecasts are in.
        "REPLENISH_EVALUATION_BATCH_SIZE": "10",
    }
    leader = production.roles.start("scheduler", f"scheduler-{uuid.uuid4().hex[:6]}")
    wait_for(lambda: metrics_ready(leader), 30, leader.output)
    standby = production.roles.start("scheduler", f"scheduler-{uuid.uuid4().hex[:6]}")
    wait_for(lambda: metrics_ready(standby) and "standing by" in standby.output(), 30, standby.output)
    assert leader_of([leader, standby]) == [leader]
    # Due once both run (the standby evaluates too): the pass starts with both up, however fast it goes.
    slots_with_history(production.database_url, slots=slots, history=history, every=every)
    # Mid-pass: some slots forecast, most not yet (the standby evaluates beside it).
    wait_for(lambda: forecasts(production.database_url) >= 1, 60, leader.output)
    at_stop = forecasts(production.database_url)
    leader.process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    standby_led: list[float] = []

    def watch_standby() -> None:
        while time.monotonic() - stopped < 30:
            try:
                if standby.metric("replenish_scheduler_leader") == 1:
                    standby_led.append(time.monotonic() - stopped)
                    return
            except (httpx.TransportError, AssertionError):
                pass
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_standby)
    watcher.start()
    leader.process.wait(30)
    exited = time.monotonic() - stopped
    watcher.join()
    assert standby_led, standby.output()
    return SchedulerStop(exited, standby_led[0], at_stop, leader.output())


@dataclass
class IngestStop:
    exited_after: float
    sent: int
    stored_at_stop: int
    stored_in_the_end: tuple[int, int, int]
    returncode: int


def stop_ingest_under_load(production: ProductionStack, *, messages: int = 8_000) -> IngestStop:
    device_ids = [f"printer-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    register_through_services(production.database_url, device_ids, now=datetime.now(UTC))
    first = production.roles.start("ingest", f"ingest-{uuid.uuid4().hex[:6]}")
    wait_for(lambda: first.output().count("ingestor subscribed") >= 2, 30, first.output)
    fleet = Fleet(production.broker_url, device_ids)
    publishing = threading.Thread(target=fleet.publish, args=(messages,))
    publishing.start()
    try:
        # Early in the stream: the process stores several thousand a second, and the stop reaches it a few tenths
        # of a second after this sees the first rows.
        wait_for(lambda: stored(production.database_url)[0] >= messages // 20, 60, first.output)
        first.process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        first.process.wait(30)
        exited = time.monotonic() - stopped
        at_stop = stored(production.database_url)[0]
        # The rest, and what the stopped one did not acknowledge, reaches the next process of the same session.
        second = production.roles.start("ingest", f"ingest-{uuid.uuid4().hex[:6]}")
        publishing.join(120)
    finally:
        fleet.close()
    wait_for(lambda: stored(production.database_url)[0] >= messages, 60, second.output)
    time.sleep(1)  # a duplicate would show now
    return IngestStop(exited, fleet.sent, at_stop, stored(production.database_url), first.process.returncode)


def test_a_leader_stopped_mid_pass_steps_down_at_once_and_the_standby_leads(production: ProductionStack) -> None:
    stop = stop_the_leader_mid_pass(production, every=timedelta(hours=1))  # a quarter of the rows to write
    assert stop.forecasts_at_stop < SLOTS, "stopped in the middle of the pass"
    # Its own evaluation pass, if one was running, ends at its next transaction: leadership is not held for it.
    assert "stepping down" in stop.leader_output
    # Before, the leader held its lock until the pass ended (10-18 s). Loose bounds here, for a loaded CI machine;
    # bench/prompt_stop.py measures the targets (exit within 3 s, the standby leading within 2 s).
    assert stop.exited_after < 8 and stop.standby_led_after < 8, stop


def test_an_ingest_process_stopped_under_load_stores_what_it_holds_and_loses_nothing(
    production: ProductionStack,
) -> None:
    stop = stop_ingest_under_load(production)
    assert stop.returncode == 0
    assert stop.exited_after < 8, "before, it ran into its 10 s stop timeout under load"
    assert stop.stored_at_stop < stop.sent, "stopped while the stream was still coming"
    assert stop.stored_in_the_end == (stop.sent, stop.sent, 0), "every message once, none lost, no dead letter"


def count(database_url: str, query: str) -> int:
    with polled_engine(database_url).connect() as connection:
        return int(connection.execute(text(query)).scalar_one())


def test_two_evaluators_share_the_due_slots_and_a_killed_one_loses_nothing(production: ProductionStack) -> None:
    """Issue 18: every scheduler process evaluates; kill -9 of one mid-pass, and the other evaluates what it held
    once its claims expire: every due slot is evaluated, none decided twice."""
    production.roles.env |= {
        "REPLENISH_EVALUATION_INTERVAL_SECONDS": "1",
        "REPLENISH_EVALUATION_BATCH_SIZE": "10",
        "REPLENISH_EVALUATION_CLAIM_SECONDS": "5",
    }
    first = production.roles.start("scheduler", f"scheduler-{uuid.uuid4().hex[:6]}")
    second = production.roles.start("scheduler", f"scheduler-{uuid.uuid4().hex[:6]}")
    wait_for(lambda: metrics_ready(first) and metrics_ready(second), 30, first.output)
    # Twelve days of a steady fall from full, hourly: every slot is about to run out, and decides (notify_only) once.
    slots_with_history(production.database_url, slots=SLOTS, history=timedelta(days=12), every=timedelta(hours=1))
    url = production.database_url
    wait_for(lambda: forecasts(url) >= 20, 60, first.output)
    first.kill()
    assert forecasts(url) < SLOTS, "killed in the middle of the work"
    wait_for(lambda: count(url, "SELECT count(*) FROM decisions") >= SLOTS, 90, second.output)
    assert count(url, "SELECT count(*) FROM slot_forecasts") == SLOTS
    assert count(url, "SELECT count(*) FROM decisions") == SLOTS, "one decision per slot"
    # A slot that a reading of the history marked again while it was being evaluated is due once more, and the next
    # pass evaluates it (without a second decision): under load that pass may still be to come.
    unsettled = "SELECT count(*) FROM slots WHERE due_at <= now() OR claimed_until IS NOT NULL"
    wait_for(lambda: count(url, unsettled) == 0, 30, second.output)
    assert count(url, "SELECT count(*) FROM decisions") == SLOTS, "one decision per slot"
    assert "evaluation failed" not in second.output()

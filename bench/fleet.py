#!/usr/bin/env python
"""A synthetic fleet in a migrated, empty database: what the evaluation benchmark (bench/evaluate.py) runs on.

``build_fleet`` writes customers (each with version 1 of a consent document: auto_order or ask_first for every
slot), their printers (ink slots black/cyan/magenta/yellow, capacity 1, lead time 3 days), and D days of telemetry
ending at ``now``: one message per device per interval (a ``device_messages`` row, which every reading's
``message_id`` points at) with a reading for each of its slots. The traces deplete (more on weekday office hours),
with a little sensor noise, and are refilled when nearly empty; readings are stored in the order ingest would
store them (time first), so that one slot's history is spread over the table as in production.

On PostgreSQL everything goes in through COPY (the big tables as COPY text written in blocks), then VACUUM ANALYZE,
as autovacuum would have done to a database that grew over weeks. On SQLite, executemany in a few transactions.
Rows are written directly, not through the services: no audit rows for the registrations and consent, and devices
have no MQTT secret (neither is read by an evaluation).

``add_tick_readings`` gives a share of the slots one new reading through the real ingest service
(``ingest_batch``), which marks their slots due for evaluation, as it does in production.

    .venv/bin/python bench/fleet.py --url sqlite:///var/bench-fleet.db --slots 1000 --days 21
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, MetaData, Table, func, inspect, select, text
from sqlalchemy.dialects import sqlite as sqlite_dialect

from replenish.consent.models import ConsentVersion
from replenish.consent.schemas import ConsentDocument
from replenish.constants import DEFAULT_SERVICE_LEVEL, Channel, ConsentMode
from replenish.customers.models import Customer
from replenish.db import insert_rows, make_engine, transaction
from replenish.devices.models import Device, Slot
from replenish.ingest.schemas import IncomingMessage
from replenish.ingest.service import ingest_batch
from replenish.schema import create_schema

SLOT_NAMES = ("black", "cyan", "magenta", "yellow", "light_cyan", "light_magenta", "photo_black", "gray")
# Ink use per day as a fraction of a cartridge (median): black lasts about 3 weeks, a colour about 6.
MEDIAN_RATE_PER_DAY = {"black": 0.045}
COLOUR_RATE_PER_DAY = 0.022
LEAD_TIME_DAYS = 3.0
UNIT_PRICE = Decimal("24.90")
SENSOR_NOISE = 0.003  # standard deviation of a reading around the true level, in fractions of capacity
BLOCK_ROWS = 50_000  # rows per COPY write / executemany call
SQLITE_COMMIT_ROWS = 1_000_000
INGEST_BATCH = 500  # messages per ingest transaction in add_tick_readings (the ingestor's default batch size)


@dataclass
class Fleet:
    """What was built, and what the next tick needs to carry the traces on."""

    url: str
    now: datetime
    interval: timedelta
    seed: int
    customer_ids: list[str]
    device_ids: list[str]
    slot_ids: list[str]
    slot_device: list[int]  # index into device_ids, per slot
    slot_names: list[str]
    modes: dict[str, int]  # consent mode -> customers
    last_levels: np.ndarray  # per slot, the newest stored level
    rates: np.ndarray  # per slot, its use per day
    last_seq: list[int]  # per device, the newest message's seq
    rows: dict[str, int] = field(default_factory=dict)
    load_seconds: float = 0.0
    vacuum_seconds: float = 0.0

    @property
    def slots(self) -> int:
        return len(self.slot_ids)


@dataclass
class Tick:
    slots: int
    messages: int
    seconds: float
    due: int  # of those slots, how many their new reading made due (the rest could wait: ingest screened them)


def mark_due(connection: Connection, at: datetime) -> None:
    """Every slot due for evaluation at ``at``: a fleet that was never evaluated is due everywhere. (A tick's
    readings need no such call: ingest marks the slots it stores readings for.)"""
    connection.execute(text("UPDATE slots SET due_at = :at, due_marks = due_marks + 1"), {"at": at})


# ---------------------------------------------------------------------------------------------------------------
# The traces
# ---------------------------------------------------------------------------------------------------------------
def _activity(times: np.ndarray) -> np.ndarray:
    """Relative printing activity at each time (epoch seconds, UTC): weekdays 8:00-18:00 busy, a little at other
    times; mean 1 over a week."""
    hours = (times % 86_400) / 3_600
    weekday = ((times // 86_400 + 3) % 7) < 5  # 1970-01-01 was a Thursday
    busy = weekday & (hours >= 8) & (hours < 18)
    weights = np.where(busy, 1.0, 0.08)
    return weights / (50 / 168 + 0.08 * 118 / 168)


def _traces(
    rng: np.random.Generator, times: np.ndarray, names: Sequence[str], step_days: float
) -> tuple[np.ndarray, np.ndarray]:
    """Levels in thousandths (int16, shape times x slots) and each slot's rate per day."""
    n_times, n_slots = len(times), len(names)
    medians = np.array([MEDIAN_RATE_PER_DAY.get(name, COLOUR_RATE_PER_DAY) for name in names])
    rates = medians * rng.lognormal(0.0, 0.35, n_slots)
    # Use per step: the rate times the hour's activity, in gamma-distributed lumps (pages differ).
    use = (rates[None, :] * step_days * _activity(times)[:, None] * rng.gamma(2.0, 0.5, (n_times, n_slots))).astype(
        np.float64
    )
    used = np.cumsum(use, axis=0)
    levels = np.empty((n_times, n_slots))
    start = rng.uniform(0.15, 1.0, n_slots)
    for s in range(n_slots):
        column = start[s] - used[:, s]
        k = 0
        while True:
            threshold = rng.uniform(0.0, 0.08)
            low = np.flatnonzero(column[k:] < threshold)
            if len(low) == 0:
                break
            k += int(low[0])
            # Refilled between this reading and the previous one: a fresh cartridge, a little under full.
            column[k:] += rng.uniform(0.96, 1.0) - column[k] + use[k, s]
        levels[:, s] = column
    levels += rng.normal(0.0, SENSOR_NOISE, levels.shape)
    return np.clip(np.round(levels * 1000), 0, 1000).astype(np.int16), rates


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------
LEVEL_VALUE = [round(i / 1000, 3) for i in range(1001)]
LEVEL_TEXT = [repr(value) for value in LEVEL_VALUE]


def _iso_z(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _message_rows(fleet: Fleet, levels: np.ndarray, times: list[datetime], *, ts_text: list[str]) -> Iterator[tuple]:
    """(id, device_id, seq, ts, received_at, payload) per message, time first, then device."""
    slots_of: list[list[int]] = [[] for _ in fleet.device_ids]
    for s, d in enumerate(fleet.slot_device):
        slots_of[d].append(s)
    names = fleet.slot_names
    message_id = 0
    for k, moment in enumerate(times):
        row_levels = levels[k].tolist()
        iso = _iso_z(moment)
        for d, device_id in enumerate(fleet.device_ids):
            message_id += 1
            inner = ", ".join(f'"{names[s]}": {LEVEL_TEXT[row_levels[s]]}' for s in slots_of[d])
            payload = f'{{"seq": {k + 1}, "ts": "{iso}", "levels": {{{inner}}}}}'
            # received_at = ts: nothing an evaluation reads.
            yield (message_id, device_id, k + 1, ts_text[k], ts_text[k], payload)


def _reading_rows(fleet: Fleet, levels: np.ndarray, *, ts_text: list[str], values: list[Any]) -> Iterator[tuple]:
    """(id, slot_id, message_id, ts, level) per reading, in the order of their messages."""
    n_devices = len(fleet.device_ids)
    reading_id = 0
    slot_ids, slot_device = fleet.slot_ids, fleet.slot_device
    for k, ts in enumerate(ts_text):
        row_levels = levels[k].tolist()
        base = k * n_devices + 1
        for s, slot_id in enumerate(slot_ids):
            reading_id += 1
            yield (reading_id, slot_id, base + slot_device[s], ts, values[row_levels[s]])


def _copy_text(raw: Any, table: str, columns: Sequence[str], rows: Iterator[tuple]) -> int:
    """COPY ... FROM STDIN (text format) of rows already rendered as text (no tabs, newlines or backslashes)."""
    count = 0
    with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        block: list[str] = []
        for row in rows:
            block.append("\t".join(map(str, row)))
            if len(block) >= BLOCK_ROWS:
                copy.write("\n".join(block) + "\n")
                count += len(block)
                block.clear()
        if block:
            copy.write("\n".join(block) + "\n")
            count += len(block)
    return count


def _executemany(raw: Any, table: str, columns: Sequence[str], rows: Iterator[tuple]) -> int:
    statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    count = since_commit = 0
    cursor = raw.cursor()
    block: list[tuple] = []
    for row in rows:
        block.append(row)
        if len(block) >= BLOCK_ROWS:
            cursor.executemany(statement, block)
            count += len(block)
            since_commit += len(block)
            block.clear()
            if since_commit >= SQLITE_COMMIT_ROWS:
                raw.commit()
                since_commit = 0
    if block:
        cursor.executemany(statement, block)
        count += len(block)
    raw.commit()
    cursor.close()
    return count


def _stored_columns(connection: Connection, table: Table) -> Table:
    """The model's table with only the columns the database has: a model may be ahead of the migrations (a column
    being added), and SQLAlchemy would otherwise insert the new column's default into a table without it. The
    columns left out take their server defaults."""
    present = {column["name"] for column in inspect(connection).get_columns(table.name)}
    return Table(table.name, MetaData(), *(column._copy() for column in table.columns if column.name in present))


def _same_level_run(column: np.ndarray) -> tuple[int, int]:
    """(length, index of its first reading) of the trailing run of equal readings."""
    different = np.flatnonzero(column != column[-1])
    first = int(different[-1]) + 1 if len(different) else 0
    return len(column) - first, first


def build_fleet(
    url: str,
    *,
    slots: int,
    days: float,
    interval_minutes: float = 15,
    now: datetime,
    seed: int = 0,
    slots_per_device: int = 4,
    devices_per_customer: int = 2,
) -> Fleet:
    """Fill a migrated, empty database at ``url`` with a fleet of ``slots`` slots and ``days`` of readings every
    ``interval_minutes`` up to ``now``; print how long the load took."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if not 1 <= slots_per_device <= len(SLOT_NAMES):
        raise ValueError(f"slots_per_device must be 1..{len(SLOT_NAMES)}")
    rng = np.random.default_rng(seed)
    interval = timedelta(minutes=interval_minutes)
    n_times = max(1, round(days * 1440 / interval_minutes))
    times = [now - (n_times - 1 - k) * interval for k in range(n_times)]
    epoch = np.array([moment.timestamp() for moment in times])
    n_devices = math.ceil(slots / slots_per_device)
    n_customers = math.ceil(n_devices / devices_per_customer)
    created = times[0] - timedelta(days=1)

    def random_id() -> str:  # uuid4-like: random, as new_id() makes them, but reproducible
        return rng.bytes(16).hex()

    customer_ids = [random_id() for _ in range(n_customers)]
    device_ids = [f"printer-{seed:03d}-{d:06d}" for d in range(n_devices)]
    slot_device = [s // slots_per_device for s in range(slots)]
    slot_names = [SLOT_NAMES[s % slots_per_device] for s in range(slots)]
    slot_ids = [random_id() for _ in range(slots)]
    choices = (ConsentMode.AUTO_ORDER, ConsentMode.ASK_FIRST)
    mode_of = [choices[i] for i in rng.integers(0, 2, n_customers)]
    lends = rng.random(n_customers) < 0.5

    generated = time.perf_counter()
    levels, rates = _traces(rng, epoch, slot_names, interval_minutes / 1440)
    generated = time.perf_counter() - generated
    fleet = Fleet(
        url=url,
        now=now,
        interval=interval,
        seed=seed,
        customer_ids=customer_ids,
        device_ids=device_ids,
        slot_ids=slot_ids,
        slot_device=slot_device,
        slot_names=slot_names,
        modes={mode.value: mode_of.count(mode) for mode in choices},
        last_levels=levels[-1].astype(float) / 1000,
        rates=rates,
        last_seq=[n_times] * n_devices,
    )

    customers = [
        {"id": c, "name": f"Customer {i}", "email": f"customer{i}@bench.example", "created_at": created}
        for i, c in enumerate(customer_ids)
    ]
    consents = [
        {
            "id": i + 1,
            "customer_id": c,
            "version": 1,
            "created_at": created,
            "created_by": "bench",
            "document": ConsentDocument(default_mode=mode_of[i], fleet_learning_allowed=bool(lends[i])).model_dump(
                mode="json"
            ),
        }
        for i, c in enumerate(customer_ids)
    ]
    devices = [
        {
            "id": device_id,
            "customer_id": customer_ids[d // devices_per_customer],
            "kind": "printer",
            "name": f"Printer {d}",
            "created_at": created,
            "online": True,
            "status_changed_at": created,
            "last_seen_at": times[-1],
        }
        for d, device_id in enumerate(device_ids)
    ]
    slot_rows = []
    for s, slot_id in enumerate(slot_ids):
        run, first = _same_level_run(levels[:, s])
        slot_rows.append(
            {
                "id": slot_id,
                "device_id": device_ids[slot_device[s]],
                "name": slot_names[s],
                "unit": "fraction",
                "capacity": 1.0,
                "product_sku": f"INK-{slot_names[s].upper()}",
                "lead_time_days": LEAD_TIME_DAYS,
                "service_level": DEFAULT_SERVICE_LEVEL,
                "order_quantity": 1,
                "unit_price": UNIT_PRICE,
                "level": float(levels[-1, s]) / 1000,
                "level_at": times[-1],
                "same_level_count": run,
                "same_level_since": times[first],
                "cycle_started_at": None,
                "created_at": created,
            }
        )

    engine = make_engine(url)
    postgres = engine.dialect.name == "postgresql"
    try:
        started = time.perf_counter()
        with transaction(engine) as session:
            for model, rows in (
                (Customer, customers),
                (ConsentVersion, consents),
                (Device, devices),
                (Slot, slot_rows),
            ):
                insert_rows(session, _stored_columns(session.connection(), model.__table__), rows)  # type: ignore[arg-type]
                fleet.rows[model.__tablename__] = len(rows)
            mark_due(session.connection(), now)
        small = time.perf_counter() - started

        if postgres:
            ts_text = [moment.isoformat(sep=" ") for moment in times]
        else:
            to_text = sqlite_dialect.DATETIME().bind_processor(sqlite_dialect.dialect())
            assert to_text is not None
            ts_text = [to_text(moment.replace(tzinfo=None)) for moment in times]
        message_columns = ("id", "device_id", "seq", "ts", "received_at", "channel", "event_type", "payload")
        messages = (
            (id_, device, seq, ts, received, Channel.TELEMETRY.value, "\\N" if postgres else None, payload)
            for id_, device, seq, ts, received, payload in _message_rows(fleet, levels, times, ts_text=ts_text)
        )
        reading_columns = ("id", "slot_id", "message_id", "ts", "level")
        raw = engine.raw_connection()
        try:
            driver = raw.driver_connection
            if postgres:
                # The rows are consistent by construction: skip the per-row foreign key checks (RI triggers), which
                # would make COPY several times slower. Needs a superuser (the throwaway cluster's postgres).
                driver.execute("SET session_replication_role = replica")
            timings: dict[str, float] = {}
            for table, columns, rows in (
                ("device_messages", message_columns, messages),
                (
                    "readings",
                    reading_columns,
                    _reading_rows(fleet, levels, ts_text=ts_text, values=LEVEL_TEXT if postgres else LEVEL_VALUE),
                ),
            ):
                began = time.perf_counter()
                if postgres:
                    fleet.rows[table] = _copy_text(driver, table, columns, rows)
                    driver.commit()
                else:
                    fleet.rows[table] = _executemany(driver, table, columns, rows)
                timings[table] = time.perf_counter() - began
            if postgres:
                for table in ("consent_versions", "device_messages", "readings"):
                    driver.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
                    )
                driver.execute("RESET session_replication_role")
                driver.commit()
        finally:
            raw.close()
        fleet.load_seconds = time.perf_counter() - started
        if postgres:
            began = time.perf_counter()
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(text("VACUUM ANALYZE"))
            fleet.vacuum_seconds = time.perf_counter() - began
    finally:
        engine.dispose()

    total = sum(fleet.rows.values())
    print(
        f"fleet: {n_customers} customers ({fleet.modes}), {n_devices} devices, {slots} slots, "
        f"{n_times} readings per slot ({days:g} days every {interval_minutes:g} min up to {_iso_z(now)}); "
        f"traces generated in {generated:.1f} s",
        flush=True,
    )
    print(
        f"  load ({engine.dialect.name}, {'COPY' if postgres else 'executemany'}): {total:,} rows in "
        f"{fleet.load_seconds:.1f} s = {total / fleet.load_seconds:,.0f} rows/s "
        f"(customers/consents/devices/slots {small:.1f} s; "
        + "; ".join(
            f"{table} {fleet.rows[table]:,} in {seconds:.1f} s = {fleet.rows[table] / seconds:,.0f}/s"
            for table, seconds in timings.items()
        )
        + ")"
        + (f"; VACUUM ANALYZE {fleet.vacuum_seconds:.1f} s" if postgres else ""),
        flush=True,
    )
    return fleet


# ---------------------------------------------------------------------------------------------------------------
# A tick
# ---------------------------------------------------------------------------------------------------------------
def add_tick_readings(
    url: str, fleet: Fleet, *, share: float, at: datetime, engine: Engine | None = None, refill_empty: bool = False
) -> Tick:
    """Give ``share`` of the slots (at least one) one new reading at ``at``, each device's in one telemetry message,
    through the ingest service as the ingestor stores them (batches of INGEST_BATCH messages, one transaction each),
    which marks their slots due. Updates ``fleet`` (levels, seqs). With ``refill_empty``, a slot whose reading
    would be empty reads full instead: it was refilled."""
    rng = np.random.default_rng([fleet.seed, int(at.timestamp())])
    count = min(fleet.slots, max(1, round(share * fleet.slots)))
    chosen = np.sort(rng.choice(fleet.slots, count, replace=False))
    step_days = fleet.interval / timedelta(days=1)
    by_device: dict[int, list[int]] = {}
    for s in chosen.tolist():
        by_device.setdefault(fleet.slot_device[s], []).append(s)
    messages: list[tuple[IncomingMessage, list[str]]] = []
    for d, members in by_device.items():
        levels = {}
        for s in members:
            level = fleet.last_levels[s] - fleet.rates[s] * step_days * rng.gamma(2.0, 0.5)
            level = min(1.0, max(0.0, round(level + rng.normal(0.0, SENSOR_NOISE), 3)))
            if refill_empty and level <= 0.0:
                level = 1.0
            fleet.last_levels[s] = level
            levels[fleet.slot_names[s]] = level
        fleet.last_seq[d] += 1
        payload = json.dumps({"seq": fleet.last_seq[d], "ts": _iso_z(at), "levels": levels}).encode()
        messages.append(
            (
                IncomingMessage(f"devices/{fleet.device_ids[d]}/telemetry", payload, received_at=at),
                [fleet.slot_ids[s] for s in members],
            )
        )
    own_engine = engine is None
    engine = engine or make_engine(url)
    chosen_ids = [fleet.slot_ids[s] for s in chosen.tolist()]
    due_before = _due_among(engine, chosen_ids, at)  # due for another reason already: not the readings' doing
    started = time.perf_counter()
    try:
        for first in range(0, len(messages), INGEST_BATCH):
            batch = messages[first : first + INGEST_BATCH]
            with transaction(engine) as session:
                result = ingest_batch(session=session, messages=[message for message, _ in batch])
                if result.stored != len(batch):
                    raise RuntimeError(f"ingest stored {result.stored} of {len(batch)} tick messages: {result}")
        seconds = time.perf_counter() - started
        due = _due_among(engine, chosen_ids, at) - due_before
    finally:
        if own_engine:
            engine.dispose()
    return Tick(slots=count, messages=len(messages), seconds=seconds, due=due)


def _due_among(engine: Engine, slot_ids: list[str], at: datetime) -> int:
    """How many of these slots are due by ``at``: ten thousand ids per query, within every database's limit."""
    table = Slot.__table__
    due = 0
    with engine.connect() as connection:
        for start in range(0, len(slot_ids), 10_000):
            due += connection.execute(
                select(func.count())
                .select_from(table)
                .where(table.c.id.in_(slot_ids[start : start + 10_000]), table.c.due_at <= at)
            ).scalar_one()
    return due


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fill a database with a synthetic fleet (migrating it first).")
    parser.add_argument("--url", required=True, help="SQLAlchemy URL of an empty database")
    parser.add_argument("--slots", type=int, default=1000)
    parser.add_argument("--days", type=float, default=21)
    parser.add_argument("--interval-minutes", type=float, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    engine = make_engine(args.url)
    try:
        create_schema(engine)
    finally:
        engine.dispose()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    build_fleet(
        args.url, slots=args.slots, days=args.days, interval_minutes=args.interval_minutes, now=now, seed=args.seed
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The platform as the tests run it: its settings on free loopback ports, a migrated database, its roles started in
this process, and the stacks (embedded, production) it runs on."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine

from replenish.clock import ManualClock
from replenish.config import Settings
from replenish.runtime import Platform, Roles
from support.api import create_customer, register_device
from support.brokers import SERVICE_PASSWORD, MosquittoRun, free_port, write_auth_files
from support.mqtt import DEVICE_SECRETS, Publisher, publish_depletion

START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


_MIGRATED_SQLITE: list[Path] = []


def migrated_sqlite_copy(path: Path) -> None:
    """A SQLite database at ``path`` with the current schema: a copy of one migrated once per test process (a file
    copy takes a millisecond, migrating a fresh database a fifth of a second). Roles starting on it find it up to
    date."""
    if not _MIGRATED_SQLITE:
        from replenish.db import make_engine
        from replenish.schema import create_schema

        template = Path(tempfile.mkdtemp(prefix="replenish-migrated-")) / "template.db"
        atexit.register(shutil.rmtree, template.parent, ignore_errors=True)
        engine = make_engine(f"sqlite:///{template}")
        try:
            create_schema(engine)
        finally:
            engine.dispose()  # the last connection checkpoints the write-ahead log into the file
        _MIGRATED_SQLITE.append(template)
    shutil.copyfile(_MIGRATED_SQLITE[0], path)


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    if "database_url" not in overrides and not (data_dir / "replenish.db").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        migrated_sqlite_copy(data_dir / "replenish.db")
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "broker_port": free_port(),
        "api_port": free_port(),
        "mqtt_client_id": f"replenish-ingest-{free_port()}",
        "ingest_batch_wait_ms": 5,
        "broker_credentials_check_seconds": 0.3,
        # Webhook receivers in tests listen on loopback (tests/test_escalation.py shows the default refusing it).
        "webhook_allow_private_networks": True,
        "web_live_seconds": 1.0,  # the web app's pages follow new orders and alerts quickly in browser tests
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


ALL_ROLES = Roles(broker=True, ingest=True, scheduler=True, api=True)


@contextmanager
def running_platform(settings: Settings, clock: ManualClock, roles: Roles = ALL_ROLES) -> Iterator[Platform]:
    """The roles in this process (all by default); jobs are not scheduled: tests tick them on the manual clock."""
    fresh_device_secrets()
    running = Platform(settings, roles=roles, clock=clock, run_jobs=False)
    running.start()
    try:
        yield running
    finally:
        running.stop()


STACKS = ("embedded", "production")


@dataclass
class Stack:
    """Which broker and database a test's platform runs on; for production, the Mosquitto it started."""

    name: str
    mosquitto: MosquittoRun | None = None
    database_url: str | None = None

    def publisher(self, platform: Platform) -> Publisher:
        if self.mosquitto is None:
            return Publisher(platform.settings.mqtt_endpoint)
        return Publisher(
            platform.settings.mqtt_endpoint,
            device_port=self.mosquitto.device_port,
            before_device_connects=self.sync_device_accounts,
        )

    def sync_device_accounts(self) -> None:
        """What broker-auth and reload-on-change.sh do in production: Mosquitto learns the registered devices."""
        assert self.mosquitto is not None and self.database_url is not None
        write_auth_files(self.mosquitto.auth_dir, service_password=SERVICE_PASSWORD, database_url=self.database_url)
        self.mosquitto.reload()


def fresh_device_secrets() -> None:
    """A new platform has a new database: secrets of devices registered with an earlier one are void there."""
    DEVICE_SECRETS.clear()


LOW_AFTER_DAYS = 8  # report_running_low's defaults: after 8 days at 0.05 a day from 0.5, two days are left


def report_running_low(
    platform: Platform,
    publisher: Publisher,
    *,
    device_id: str = "printer-1",
    slots: tuple[str, ...] = ("black",),
    start_level: float = 0.5,
    rate_per_day: float = 0.05,
    days: float = LOW_AFTER_DAYS,
) -> int:
    """A registered device's slots fall at a steady rate from START, a reading every 6 hours for ``days`` (by default
    two days are left at the end: inside lead time plus margin), all ingested; nothing evaluated yet. Returns how
    many messages were sent."""
    sent = 0
    for number, slot in enumerate(slots):
        sent += publish_depletion(
            publisher,
            device_id=device_id,
            slot=slot,
            start=START,
            start_level=start_level,
            rate_per_day=rate_per_day,
            days=days,
            first_seq=1 + 1000 * number,
        )
    assert platform.ingestor is not None and platform.ingestor.wait_for(handled=sent, timeout=20)
    return sent


def run_low(
    platform: Platform,
    api: httpx.Client,
    *,
    mode: str = "auto_order",
    device_id: str = "printer-1",
    kind: str = "printer",
    slots: list[dict[str, Any]] | None = None,
    slot: str = "black",
    start_level: float = 0.5,
    rate_per_day: float = 0.05,
    days: float = LOW_AFTER_DAYS,
) -> tuple[str, int]:
    """Ada (in ``mode``) and a new device (by default a printer) whose ``slot`` runs low: report_running_low on the
    embedded broker. Returns the customer's id and how many messages were sent."""
    customer_id = create_customer(api, mode=mode)
    register_device(api, customer_id=customer_id, device_id=device_id, kind=kind, slots=slots)
    publisher = Publisher(platform.settings.mqtt_endpoint)
    try:
        sent = report_running_low(
            platform,
            publisher,
            device_id=device_id,
            slots=(slot,),
            start_level=start_level,
            rate_per_day=rate_per_day,
            days=days,
        )
    finally:
        publisher.close()
    return customer_id, sent


def place_an_order(
    platform: Platform, api: httpx.Client, clock: ManualClock, *, mode: str = "auto_order"
) -> tuple[dict[str, Any], int]:
    """A printer's black ink runs low over 8 days of readings; the automation job orders it (or, ask-first, asks
    for approval). Returns the order and the seq of the last message sent."""
    _, sent = run_low(platform, api, mode=mode)
    clock.set(START + timedelta(days=LOW_AFTER_DAYS))
    assert platform.jobs is not None
    platform.jobs.evaluate()
    [order] = api.get("/orders").json()
    return order, sent


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


_POLLED: dict[str, Engine] = {}


def polled_engine(database_url: str) -> Engine:
    """One engine for the database a test polls while processes apart from it work: connecting anew costs 5 ms of
    CPU here and a new server process in PostgreSQL, ten times a second. The last test's engine is let go."""
    if database_url not in _POLLED:
        for engine in _POLLED.values():
            engine.dispose()
        _POLLED.clear()
        from replenish.db import make_engine

        _POLLED[database_url] = make_engine(database_url)
    return _POLLED[database_url]


@atexit.register
def _dispose_polled() -> None:
    for engine in _POLLED.values():
        engine.dispose()


def stored(database_url: str) -> tuple[int, int, int]:
    """(messages, readings, dead letters) in the database: what a process apart from the test stored."""
    from sqlalchemy import text

    with polled_engine(database_url).connect() as connection:
        rows = connection.execute(text("SELECT count(*) FROM device_messages")).scalar_one()
        readings = connection.execute(text("SELECT count(*) FROM readings")).scalar_one()
        letters = connection.execute(text("SELECT count(*) FROM dead_letters")).scalar_one()
    return rows, readings, letters

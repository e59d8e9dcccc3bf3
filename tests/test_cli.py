"""The `replenish` command as a user runs it: real processes, real ports, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from replenish.config import MqttEndpoint
from support.api import PASSWORD, operator_token
from support.brokers import free_port
from support.mqtt import DEVICE_SECRETS, Publisher

REPLENISH = str(Path(sys.executable).parent / "replenish")


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLENISH_")}
    env.update({"REPLENISH_DATA_DIR": str(tmp_path), "REPLENISH_LOG_LEVEL": "INFO", **extra})
    return env


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([REPLENISH, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def poll(fetch: Callable[[], Any], ready: Callable[[Any], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = fetch()
            if ready(value):
                return value
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout} s; last value: {value!r}")


def signed_up_customer(env: dict[str, str], base: str) -> str:
    """Ada's bearer token: an operator, made with the command line as a deployer does, creates her with a password (a
    customer signing up alone confirms the address by e-mail first: tests/test_auth.py)."""
    subprocess.run(
        [REPLENISH, "accounts", "create-operator", "--email", "ops@example.com"],
        env={**env, "REPLENISH_NEW_OPERATOR_PASSWORD": PASSWORD},
        check=True,
        capture_output=True,
        timeout=60,
    )
    operator = httpx.post(f"{base}/auth/token", data={"username": "ops@example.com", "password": PASSWORD}).json()
    httpx.post(
        f"{base}/customers",
        json={"name": "Ada", "email": "ada@example.com", "password": PASSWORD},
        headers={"Authorization": f"Bearer {operator['access_token']}"},
    ).raise_for_status()
    token = httpx.post(f"{base}/auth/token", data={"username": "ada@example.com", "password": PASSWORD}).json()
    return str(token["access_token"])


@pytest.mark.slow
def test_roles_run_as_separate_processes(tmp_path):
    """As in production: broker, ingestor and API are separate processes sharing one database."""
    broker_port, api_port = free_port(), free_port()
    service_password = "shared by the platform's processes"
    env = environment(
        tmp_path,
        REPLENISH_BROKER_PORT=str(broker_port),
        REPLENISH_MQTT_URL=f"mqtt://replenish:{quote(service_password)}@127.0.0.1:{broker_port}",
        REPLENISH_API_PORT=str(api_port),
    )
    base = f"http://127.0.0.1:{api_port}/api/v1"
    broker_env = {k: v for k, v in env.items() if k != "REPLENISH_MQTT_URL"} | {
        "REPLENISH_BROKER_SERVICE_PASSWORD": service_password
    }
    with (
        process(["broker"], broker_env, tmp_path / "broker.log"),
        process(["api"], env, tmp_path / "api.log"),
    ):
        try:
            poll(lambda: httpx.get(f"http://127.0.0.1:{api_port}/readyz").status_code, lambda code: code == 200, 90)
        except AssertionError as exc:
            logs = {name: (tmp_path / name).read_text() for name in ("api.log", "broker.log")}
            raise AssertionError(f"{exc}\n{logs}") from None
        # A customer, signed in, registers a device.
        api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {signed_up_customer(env, base)}"})
        registered = api.post(
            "/devices",
            json={
                "id": "printer-1",
                "kind": "printer",
                "name": "P",
                "slots": [{"name": "black", "product_sku": "INK"}],
            },
        )
        registered.raise_for_status()
        DEVICE_SECRETS["printer-1"] = registered.json()["credentials"]["mqtt_password"]
        with process(["ingest"], env, tmp_path / "ingest.log"):
            # A first-time subscriber gets nothing published before it subscribed; wait for it.
            poll(lambda: (tmp_path / "ingest.log").read_text(), lambda text: "ingestor subscribed" in text, 30)
            device = Publisher(MqttEndpoint.parse(env["REPLENISH_MQTT_URL"]))  # printer-1 signs in as itself
            device.send("devices/printer-1/telemetry", {"seq": 1, "levels": {"black": 0.42}})
            device.close()
            readings = poll(
                lambda: api.get("/devices/printer-1/slots/black/readings").json(),
                lambda found: len(found) == 1,
                timeout=30,
            )
    assert readings[0]["level"] == 0.42


def test_fleet_simulator_registers_its_devices_and_publishes_per_the_contract(platform, api):
    fleet = Path(__file__).resolve().parents[1] / "simulators" / "fleet.py"
    endpoint = platform.settings.mqtt_endpoint
    args = ["--printers", "2", "--fridges", "1", "--wearables", "1", "--prefix", "t", "--speed", "inf"]
    args += ["--duration-hours", "24", "--broker", f"mqtt://{endpoint.host}:{endpoint.port}"]
    args += ["--register", platform.api_url, "--api-token", operator_token(platform), "--log-level", "WARNING"]
    done = subprocess.run([sys.executable, str(fleet), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    devices = {d["id"]: d for d in api.get("/devices").json()}
    assert set(devices) == {"t-printer-0001", "t-printer-0002", "t-fridge-0001", "t-wearable-0001"}
    assert [s["name"] for s in devices["t-fridge-0001"]["slots"]] == ["eggs", "milk"]
    # 25 hourly reports a printer and fridge; the wearable's heartbeats every 15 minutes, plus status messages.
    poll(lambda: api.get("/devices/t-printer-0002/slots/black/readings").json(), lambda r: len(r) == 25, 20)
    assert api.get("/dead-letters").json() == []
    # Running it again registers nothing twice.
    again = subprocess.run([sys.executable, str(fleet), *args], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert len(api.get("/devices").json()) == 4


@pytest.mark.slow
def test_a_database_from_before_migrations_is_taken_over_or_named_plainly(tmp_path):
    """Made by create_all before migrations came in: recorded as the baseline when it has every column of it;
    otherwise the error names what is missing and how to add it."""
    import sqlite3

    from alembic import command

    from replenish.db import make_engine
    from replenish.schema import BASELINE_REVISION, migration_config

    # What create_all made on the day migrations came in: the baseline's tables, and no record of any migration.
    engine = make_engine(f"sqlite:///{tmp_path / 'replenish.db'}")
    with engine.begin() as connection:
        command.upgrade(migration_config(connection), BASELINE_REVISION)
    engine.dispose()
    with sqlite3.connect(tmp_path / "replenish.db") as connection:
        connection.execute("DROP TABLE alembic_version")
        connection.execute("ALTER TABLE devices DROP COLUMN battery")  # as a database from before it had one
    env = environment(tmp_path)
    refused = subprocess.run([REPLENISH, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "lacks devices.battery" in refused.stderr and "Traceback" not in refused.stderr
    assert "ALTER TABLE devices ADD COLUMN battery FLOAT" in refused.stderr
    up = subprocess.run([REPLENISH, "up"], env=env, capture_output=True, text=True, timeout=60)
    assert up.returncode == 1 and "lacks devices.battery" in up.stderr

    with sqlite3.connect(tmp_path / "replenish.db") as connection:
        connection.execute("ALTER TABLE devices ADD COLUMN battery FLOAT")  # what the error said to do
    done = subprocess.run([REPLENISH, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(tmp_path / "replenish.db") as connection:
        [(version,)] = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        columns = {row[1] for row in connection.execute("PRAGMA table_info(outbox)")}
    assert version != BASELINE_REVISION and "claimed_by" in columns, "stamped as the baseline, then migrated on"


def test_the_newest_migration_read_from_the_scripts_is_alembic_s_head():
    """create_schema skips Alembic for a database at head_revision(): it must be the head Alembic would upgrade to."""
    from alembic.script import ScriptDirectory

    from replenish.schema import head_revision, migration_config

    assert ScriptDirectory.from_config(migration_config(None)).get_heads() == [head_revision()]


def test_the_migrations_build_exactly_the_schema_the_models_describe(tmp_path):
    """A model change without its migration fails here (alembic's autogenerate comparison finds the difference)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    from replenish.db import make_engine
    from replenish.schema import create_schema

    engine = make_engine(f"sqlite:///{tmp_path / 'migrated.db'}")
    create_schema(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []
    engine.dispose()


def test_a_populated_database_upgrades_through_migrations_that_rebuild_a_referenced_table(tmp_path):
    """SQLite rebuilds a table to change a constraint (batch mode: copy, DROP, rename). The households migration
    rebuilds accounts, which access tokens refer to: with foreign keys enforced, the DROP used to fail on any database
    someone had signed in to. Upgraded as a role upgrades at start-up; the keys are enforced again after."""
    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from replenish.db import make_engine
    from replenish.schema import create_schema, migration_config

    engine = make_engine(f"sqlite:///{tmp_path / 'populated.db'}")
    with engine.begin() as connection:
        command.upgrade(migration_config(connection), "a4f19c0e6d35")  # before households
    at = {"at": "2026-12-01T00:00:00+00:00"}
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO customers VALUES ('c1', 'Ada', 'ada@example.com', :at)"), at)
        connection.execute(
            text(
                "INSERT INTO accounts (id, email, password_hash, role, customer_id, created_at) VALUES "
                "('a1', 'ada@example.com', 'h', 'customer', 'c1', :at), ('a2', 'ops@example.com', 'h', 'operator', "
                "NULL, :at)"
            ),
            at,
        )
        connection.execute(
            text(
                "INSERT INTO access_tokens (id, account_id, kind, name, token_hash, created_at) "
                "VALUES ('t1', 'a1', 'session', 'sign-in', 'hash', :at)"
            ),
            at,
        )
    create_schema(engine)
    with engine.connect() as connection:
        roles = connection.execute(text("SELECT id, household_role FROM accounts ORDER BY id")).all()
        assert roles == [("a1", "owner"), ("a2", None)]
        assert connection.execute(text("SELECT account_id FROM access_tokens")).scalar() == "a1"
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO access_tokens (id, account_id, kind, name, token_hash, created_at) "
                "VALUES ('t2', 'nobody', 'session', 'x', 'hash2', :at)"
            ),
            at,
        )
    engine.dispose()

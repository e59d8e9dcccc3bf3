"""Shared fixtures: a real platform (ingestor, scheduler, API) on free loopback ports, on one of two stacks.

- embedded: the amqtt broker inside the platform and a SQLite file, as `make run` runs it;
- production: Mosquitto and PostgreSQL, started natively from the config files docker-compose.yml mounts.

Tests get the embedded stack; a module or test marked ``both_stacks`` runs once on each."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlmodel import select

from brokers import (
    SERVICE_PASSWORD,
    MosquittoRun,
    PostgresRun,
    free_port,
    running_mosquitto,
    running_postgres,
    write_auth_files,
)
from helpers import DEVICE_SECRETS, PASSWORD, Mailbox, create_customer, publish_depletion, register_device
from replenish.auth import service as auth
from replenish.auth.models import Account
from replenish.clock import ManualClock
from replenish.config import MqttEndpoint, Settings
from replenish.constants import AccountRole
from replenish.db import transaction
from replenish.runtime import Platform, Roles

START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


_MIGRATED_SQLITE: list[Path] = []


def migrated_sqlite_copy(path: Path) -> None:
    """A SQLite database at ``path`` with the current schema: a copy of one migrated once per test process (a file
    copy takes a millisecond, migrating a fresh database a fifth of a second). Roles starting on it find it up to
    date."""
    if not _MIGRATED_SQLITE:
        from replenish.db import create_schema, make_engine

        template = Path(tempfile.mkdtemp(prefix="replenish-migrated-")) / "template.db"
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


# Argon2 as configured takes ~140 ms per hash or check, and nearly every test creates accounts and signs in several
# times: seconds of CPU per test on a 2-core machine. Elsewhere the same hasher with the cheapest parameters (the same
# code paths, the same $argon2id$ format); tests/test_auth.py keeps the real one. Roles started as processes hash
# for real.
CHEAP_PASSWORDS = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
REAL_PASSWORD_MODULES = {"test_auth"}


_COMPILER = pytest.StashKey[subprocess.Popen[bytes]]()


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller, before any worker starts
        # Compile the forecast model (about half a minute on a cold cache) in a process of its own while the
        # workers start on the tests: the first worker to forecast waits for it and loads its cache
        # (forecasting/compiled.py takes one compiler at a time), instead of every worker compiling.
        code = "from replenish.forecasting.model import compile_ahead; compile_ahead()"
        config.stash[_COMPILER] = subprocess.Popen([sys.executable, "-c", code])


def pytest_unconfigure(config: pytest.Config) -> None:
    compiler = config.stash.get(_COMPILER, None)
    if compiler is not None and compiler.wait(timeout=300) != 0:
        raise RuntimeError(f"compiling the forecast model failed (exit status {compiler.returncode})")


@pytest.fixture(autouse=True)
def cheap_password_hashing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.module.__name__ in REAL_PASSWORD_MODULES:
        return
    monkeypatch.setattr(auth, "_passwords", CHEAP_PASSWORDS)
    monkeypatch.setattr(auth, "_DUMMY_HASH", CHEAP_DUMMY_HASH)


CHEAP_DUMMY_HASH = CHEAP_PASSWORDS.hash("nobody's password")


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    running = Mailbox()
    yield running
    running.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "stack" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_stacks"):
        metafunc.parametrize("stack", STACKS, indirect=True)


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


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Stack:
    return Stack(getattr(request, "param", "embedded"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresRun]:
    """One PostgreSQL server for the session, started on first use; each platform gets a database of its own."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def platform(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock, stack: Stack) -> Iterator[Platform]:
    if stack.name == "embedded":
        with running_platform(make_settings(tmp_path), clock) as running:
            yield running
        return
    server: PostgresRun = request.getfixturevalue("postgres_server")
    stack.database_url = server.create_migrated_database(f"test_{uuid.uuid4().hex}")
    broker_dir = tmp_path / "mosquitto"
    broker_dir.mkdir()
    with running_mosquitto(broker_dir) as broker:
        stack.mosquitto = broker
        settings = make_settings(
            tmp_path, mqtt_url=broker.url, broker_service_password=SERVICE_PASSWORD, database_url=stack.database_url
        )
        with running_platform(settings, clock, roles=Roles(ingest=True, scheduler=True, api=True)) as running:
            yield running


def fresh_device_secrets() -> None:
    """A new platform has a new database: secrets of devices registered with an earlier one are void there."""
    DEVICE_SECRETS.clear()


OPERATOR_EMAIL = "operator@example.com"


def sign_in(platform: Platform, email: str, password: str = PASSWORD) -> str:
    """A bearer token through the real sign-in route."""
    response = httpx.post(
        f"{platform.api_url}/api/v1/auth/token", data={"username": email, "password": password}, timeout=10
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def personal_token(platform: Platform, email: str, password: str = PASSWORD) -> str:
    """Sign in, then create a personal API token: unlike the sign-in token, it outlives days of simulated time."""
    with api_client(platform, sign_in(platform, email, password)) as api:
        response = api.post("/auth/tokens", json={"name": "tests", "password": password})
        assert response.status_code == 201, response.text
        return str(response.json()["token"])


def operator_token(platform: Platform, email: str = OPERATOR_EMAIL) -> str:
    """Operators are created from the command line in production; here through the same service."""
    with transaction(platform.engine) as session:
        if session.exec(select(Account).where(Account.email == email)).first() is None:
            auth.create_account(
                session=session, email=email, password=PASSWORD, role=AccountRole.OPERATOR, customer_id=None, now=START
            )
    return personal_token(platform, email)


def api_client(platform: Platform, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"{platform.api_url}/api/v1", timeout=10, headers=headers)


def customer_api(platform: Platform, email: str) -> httpx.Client:
    """The API as the customer with this e-mail (created with helpers.create_customer)."""
    return api_client(platform, personal_token(platform, email))


@pytest.fixture
def api(platform: Platform) -> Iterator[httpx.Client]:
    """The API as an operator, who may act for any customer."""
    with api_client(platform, operator_token(platform)) as client:
        yield client


class Publisher:
    """Devices publishing at QoS 1, each send waiting for its PUBACK.

    A registered device (helpers.register_device keeps its secret) publishes as itself, signed in with the secret
    the platform issued it. Anything else (an unknown device, a foreign topic) goes out as the platform's service
    account, which may publish anywhere: how a message the contract refuses can reach the ingestor at all.
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        *,
        device_port: int | None = None,
        before_device_connects: Callable[[], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        # Mosquitto has a listener for devices apart from the platform's; the embedded broker has one for both.
        self.device_port = device_port or endpoint.port
        # Mosquitto knows a device once its password file is written again and reloaded (the embedded broker asks
        # the database at each sign-in).
        self.before_device_connects = before_device_connects
        self.clients: dict[str, paho.Client] = {}

    def devices_port(self) -> int:
        """The port where registered devices sign in, once the broker knows them: for clients of other makes."""
        if self.before_device_connects is not None:
            self.before_device_connects()
        return self.device_port

    def _client(self, topic: str) -> paho.Client:
        parts = topic.split("/")
        device_id = parts[1] if len(parts) == 3 and parts[0] == "devices" else ""
        secret = DEVICE_SECRETS.get(device_id)
        who = device_id if secret else ""
        client = self.clients.get(who)
        if client is None:
            # A device's client id is its device id; the service account's start with "replenish".
            client_id = f"{device_id}/publisher" if secret else f"replenish-test-{free_port()}"
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
            if secret:
                client.username_pw_set(device_id, secret)
            else:
                client.username_pw_set(self.endpoint.username, self.endpoint.password)
            client.connect(self.endpoint.host, self.devices_port() if secret else self.endpoint.port)
            client.loop_start()
            self.clients[who] = client
        return client

    def send(self, topic: str, payload: Any, *, retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self._client(topic).publish(topic, data, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"broker did not acknowledge {topic}"

    def close(self) -> None:
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()


@pytest.fixture
def publisher(platform: Platform, stack: Stack) -> Iterator[Publisher]:
    device = stack.publisher(platform)
    yield device
    device.close()


class CommandListener:
    """Subscribes to devices/+/commands the way a device would."""

    def __init__(self, endpoint: MqttEndpoint) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.received = threading.Condition()
        subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"replenish-test-listener-{free_port()}", protocol=paho.MQTTv311
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.username_pw_set(endpoint.username, endpoint.password)  # the service account: sees every device
        self.client.connect(endpoint.host, endpoint.port)
        self.client.loop_start()
        self.client.subscribe("devices/+/commands", qos=1)
        assert subscribed.wait(10)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self.received:
            self.messages.append((message.topic, json.loads(message.payload)))
            self.received.notify_all()

    def wait_for(self, count: int, timeout: float = 10) -> list[tuple[str, dict[str, Any]]]:
        with self.received:
            self.received.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


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
    days: float = 8,
) -> tuple[str, int]:
    """Ada and a device whose slot runs low over `days` of readings from START (by default a printer's black ink),
    all ingested; nothing evaluated yet. Returns the customer's id and how many messages were sent."""
    customer_id = create_customer(api, mode=mode)
    register_device(api, customer_id=customer_id, device_id=device_id, kind=kind, slots=slots)
    device = Publisher(platform.settings.mqtt_endpoint)
    sent = publish_depletion(
        device,
        device_id=device_id,
        slot=slot,
        start=START,
        start_level=start_level,
        rate_per_day=rate_per_day,
        days=days,
    )
    device.close()
    assert platform.ingestor is not None and platform.ingestor.wait_for(handled=sent, timeout=10)
    return customer_id, sent


def place_an_order(
    platform: Platform, api: httpx.Client, clock: ManualClock, *, mode: str = "auto_order"
) -> tuple[dict[str, Any], int]:
    """A printer's black ink runs low over 8 days of readings; the automation job orders it (or, ask-first, asks
    for approval). Returns the order and the seq of the last message sent."""
    _, sent = run_low(platform, api, mode=mode)
    clock.set(START + timedelta(days=8))
    assert platform.jobs is not None
    platform.jobs.evaluate()
    [order] = api.get("/orders").json()
    return order, sent

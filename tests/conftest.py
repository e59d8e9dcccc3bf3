"""Shared fixtures: a real platform (ingestor, scheduler, API) on free loopback ports, on one of two stacks.

- embedded: the amqtt broker inside the platform and a SQLite file, as `make run` runs it;
- production: Mosquitto and PostgreSQL, started natively from the config files docker-compose.yml mounts.

Tests get the embedded stack; a module or test marked ``both_stacks`` runs once on each."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import settings as hypothesis_settings
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import Engine

from replenish.auth import service as auth
from replenish.clock import ManualClock
from replenish.db import make_engine
from replenish.runtime import Platform, Roles
from support.api import api_client, operator_token
from support.brokers import SERVICE_PASSWORD, PostgresRun, running_mosquitto, running_postgres
from support.mqtt import Publisher
from support.platform import STACKS, START, Stack, make_settings, migrated_sqlite_copy, running_platform
from support.servers import Mailbox

# Argon2 as configured takes ~140 ms per hash or check, and nearly every test creates accounts and signs in several
# times: seconds of CPU per test on a 2-core machine. Tests get the same hasher with the cheapest parameters (the same
# code paths, the same $argon2id$ format); tests marked real_passwords (the hashing itself, the equal answers for a
# wrong password and an unknown address) keep the configured one, as do roles started as processes.
CHEAP_PASSWORDS = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))


# How hard the property tests search: hypothesis's own profiles in make test (100 examples; its "ci" profile when CI
# is set), HYPOTHESIS_PROFILE=thorough for a longer hunt (ten times the examples) before a release or after touching
# ingest. The bad-input volume tests take their count from the profile; tests that set max_examples keep theirs.
hypothesis_settings.register_profile("thorough", max_examples=1000)
if os.environ.get("HYPOTHESIS_PROFILE"):
    hypothesis_settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])


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
    if request.node.get_closest_marker("real_passwords"):
        return
    monkeypatch.setattr(auth, "_passwords", CHEAP_PASSWORDS)
    monkeypatch.setattr(auth, "_dummy_hash", lambda: CHEAP_DUMMY_HASH)


CHEAP_DUMMY_HASH = CHEAP_PASSWORDS.hash("nobody's password")


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    running = Mailbox()
    yield running
    running.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not metafunc.definition.get_closest_marker("both_stacks"):
        return
    if "stack" in metafunc.fixturenames:
        metafunc.parametrize("stack", STACKS, indirect=True)
    elif any(mark.name == "both_stacks" for mark in metafunc.definition.own_markers):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: {UNUSED_MARK}")


UNUSED_MARK = (
    "marked both_stacks, but no fixture it uses runs on a stack (platform, engine, stack): the mark does nothing"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow_first(config, items)
    check_both_stacks_marks(config, items)


def slow_first(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked slow (seconds each: processes started and killed, a demo replayed) run first, spread over the
    workers, so that a parallel run does not end with one worker still on a long test while the others wait.

    `make test` runs `--dist worksteal`, which hands worker k the k-th of equal consecutive slices of this order and
    lets an idle worker take the back half of a busy one's: each slice starts with its share of the slow tests and
    goes on with the others in file order (a module's tests together: its module fixtures start once or twice).
    Every worker collects and orders alike, as xdist requires. (A worker's own options say nothing of the
    controller's --dist: its workerinput gives the number of workers.)"""
    slow = [item for item in items if item.get_closest_marker("slow")]
    if not slow:
        return
    others = [item for item in items if not item.get_closest_marker("slow")]
    workerinput: dict[str, Any] = getattr(config, "workerinput", {})
    workers = int(workerinput.get("workercount", 1))
    ordered: list[pytest.Item] = []
    remaining = len(items)
    for number in range(workers):
        size = remaining // (workers - number)  # as worksteal sizes its slices
        remaining -= size
        own = slow[number::workers]
        ordered += own
        ordered += others[: max(size - len(own), 0)]
        del others[: max(size - len(own), 0)]
    items[:] = ordered + others


def check_both_stacks_marks(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A module marked both_stacks where no test runs on a stack is an error, not a silent no-op (a test that starts
    its own platform in such a module may run on the embedded stack only). Judged on whole modules only: a run of
    chosen tests (by node id, or the last failed) may well hold none that runs on a stack."""
    if config.getoption("lf", False) or any("::" in str(arg) for arg in config.args):
        return
    on_a_stack: dict[str, bool] = {}
    for item in items:
        module = getattr(item, "module", None)
        marks = getattr(module, "pytestmark", [])
        if not any(mark.name == "both_stacks" for mark in (marks if isinstance(marks, list) else [marks])):
            continue
        parametrized = getattr(item, "callspec", None)
        on_a_stack[module.__name__] = on_a_stack.get(module.__name__, False) or (
            parametrized is not None and "stack" in parametrized.params
        )
    unused = sorted(name for name, used in on_a_stack.items() if not used)
    if unused:
        raise pytest.UsageError(f"{', '.join(unused)}: {UNUSED_MARK}")


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


@pytest.fixture
def engine(request: pytest.FixtureRequest, tmp_path: Path, stack: Stack) -> Iterator[Engine]:
    """A migrated database of the test's own, with no platform around it: SQLite on the embedded stack, PostgreSQL
    on the production one. For tests of services and jobs called directly."""
    if stack.name == "embedded":
        path = tmp_path / "replenish.db"
        migrated_sqlite_copy(path)
        url = f"sqlite:///{path}"
    else:
        server: PostgresRun = request.getfixturevalue("postgres_server")
        url = server.create_migrated_database(f"test_{uuid.uuid4().hex}")
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def api(platform: Platform) -> Iterator[httpx.Client]:
    """The API as an operator, who may act for any customer."""
    with api_client(platform, operator_token(platform)) as client:
        yield client


@pytest.fixture
def publisher(platform: Platform, stack: Stack) -> Iterator[Publisher]:
    device = stack.publisher(platform)
    yield device
    device.close()

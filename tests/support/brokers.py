"""Mosquitto, the production broker, started natively from the config file docker-compose.yml mounts."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
RELOAD_ON_CHANGE = ROOT / "deploy" / "mosquitto" / "reload-on-change.sh"
# Debian installs the broker in /usr/sbin, which is not on a non-root user's PATH.
MOSQUITTO_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
START_TIMEOUT = 5.0


_HANDED_OUT: set[int] = set()


# Under pytest-xdist each worker hands out ports from a block of its own, below the kernel's ephemeral range (32768
# up on Linux), so that no two workers, and no outgoing connection, are ever given the same port.
PORT_BLOCK_START = 10000
EPHEMERAL_PORTS_START = 32768
# Browsers refuse pages on a few well-known ports (Chromium: net::ERR_UNSAFE_PORT); the one among those handed out
# here is 10080 (Amanda backup). A web test whose API got it failed.
BROWSER_UNSAFE_PORTS = frozenset({10080})


def port_block(worker: str) -> range:
    """Worker gwN's share of the ports below the ephemeral range (a whole run hands out about 2,500 ports)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    size = (EPHEMERAL_PORTS_START - PORT_BLOCK_START) // workers
    number = int(worker[2:])
    return range(PORT_BLOCK_START + number * size, PORT_BLOCK_START + (number + 1) * size)


def free_port() -> int:
    """A port nothing listens on now, and never one this process was given before: two servers of one test (the
    broker and the API) must not be handed the same port the kernel freed in between."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    candidates = port_block(worker) if worker.startswith("gw") else itertools.repeat(0)  # port 0: the kernel picks
    for candidate in candidates:
        if candidate in BROWSER_UNSAFE_PORTS:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"xdist worker {worker} has used up its {len(port_block(worker))} ports")


DEVICE_LISTENER = 1883
PLATFORM_LISTENER = 1884
AUTH_DIR_IN_CONTAINER = "/mosquitto-auth/"
RELOADING = "Reloading config."
LOG_FILE = "mosquitto.log"
# The platform's service password on the Mosquitto brokers tests start.
SERVICE_PASSWORD = "the platform's own, for tests"


def local_copy_of_mosquitto_conf(
    directory: Path,
    *,
    device_port: int,
    platform_port: int,
    auth_dir: Path,
    overrides: dict[str, str] | None = None,
) -> Path:
    """The production config with only what cannot work here rewritten: the listeners' ports (on 127.0.0.1), the data
    and auth directories, the user; and ``overrides`` (directive -> value) replacing every occurrence, or added."""
    overrides = dict(overrides or {})
    ports = {str(DEVICE_LISTENER): device_port, str(PLATFORM_LISTENER): platform_port}
    lines = []
    for line in MOSQUITTO_CONF.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "listener":
            line = f"listener {ports[value.strip()]} 127.0.0.1"
        elif key == "persistence_location":
            line = f"persistence_location {directory}/"
        elif key == "log_dest":
            # A file, which Mosquitto flushes line by line (its stdout is block-buffered when not a terminal).
            line = f"log_dest file {directory / LOG_FILE}"
        elif key in overrides:
            line = f"{key} {overrides[key]}"
        elif value.startswith(AUTH_DIR_IN_CONTAINER):
            line = f"{key} {auth_dir / value.removeprefix(AUTH_DIR_IN_CONTAINER)}"
        lines.append(line)
    present = {line.partition(" ")[0] for line in lines}
    lines += [f"{key} {value}" for key, value in overrides.items() if key not in present]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Started as root, Mosquitto switches to the `mosquitto` user, which cannot write into pytest's tmp dir.
        lines.append("user root")
    config = directory / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    return config


def write_auth_files(auth_dir: Path, *, service_password: str, database_url: str | None = None) -> None:
    """What `replenish mosquitto-files` writes, from the devices in ``database_url`` (default: a database with
    none)."""
    from sqlmodel import Session

    from replenish.db import make_engine
    from replenish.mqtt.mosquitto import sync_files
    from replenish.schema import create_schema
    from support.platform import migrated_sqlite_copy

    with tempfile.TemporaryDirectory() as scratch:
        if database_url is None:
            empty = Path(scratch) / "empty.db"
            migrated_sqlite_copy(empty)  # migrating an in-memory database would take a fifth of a second
            database_url = f"sqlite:///{empty}"
        engine = make_engine(database_url)
        try:
            create_schema(engine)
            with Session(engine) as session:
                sync_files(auth_dir, session=session, service_password=service_password)
        finally:
            engine.dispose()


def mosquitto_binary() -> str:
    binary = shutil.which("mosquitto", path=MOSQUITTO_SEARCH_PATH)
    if binary is None:
        raise RuntimeError(
            "the `mosquitto` broker is not installed. Install it: `make system-deps` (run by `make test`), "
            "or apt-get install -y mosquitto mosquitto-clients."
        )
    return binary


@dataclass
class MosquittoRun:
    device_port: int
    platform_port: int
    auth_dir: Path
    process: subprocess.Popen[str]
    log_path: Path
    stdout_path: Path
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def restart(self, *, down_for: float = 0.0) -> None:
        """Stop Mosquitto as `docker compose restart` does (SIGTERM: it saves its persistence file), keep it down
        ``down_for`` seconds, and start it again from the same config and data, on the same ports."""
        self.process.terminate()
        self.process.wait(timeout=10)
        time.sleep(down_for)
        with self.stdout_path.open("a") as stdout:
            self.process = subprocess.Popen(
                self.command, stdout=stdout, stderr=subprocess.STDOUT, text=True, env=self.env, start_new_session=True
            )
        wait_for_port(self, self.platform_port)
        wait_for_port(self, self.device_port)

    @property
    def output(self) -> str:
        """What it printed before its log was open (a rejected config), then its log."""
        return "".join(path.read_text() for path in (self.stdout_path, self.log_path) if path.exists())

    @property
    def url(self) -> str:
        """The platform listener, where the platform's clients sign in as the service user."""
        return f"mqtt://127.0.0.1:{self.platform_port}"

    def reload(self) -> None:
        """Make Mosquitto read its password files and ACL again, as reload-on-change.sh does in production, and wait
        until it has: it logs the line first and then reloads before it serves any other client."""
        before = self.output.count(RELOADING)
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + START_TIMEOUT
        while self.output.count(RELOADING) == before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not reload within 5 s:\n{self.output}")
            time.sleep(0.02)


@contextmanager
def running_mosquitto(
    directory: Path,
    *,
    service_password: str = SERVICE_PASSWORD,
    overrides: dict[str, str] | None = None,
    reload_check_seconds: float | None = None,
) -> Iterator[MosquittoRun]:
    """Start Mosquitto from a local copy of deploy/mosquitto/mosquitto.conf, with the auth files (no devices yet:
    write them again with write_auth_files and call reload) in ``directory``/auth. ``output`` is its log.

    With ``reload_check_seconds``, through deploy/mosquitto/reload-on-change.sh as the compose file runs it: the
    process is then the script, which reloads Mosquitto by itself (do not call reload)."""
    device_port, platform_port = free_port(), free_port()
    auth_dir = directory / "auth"
    write_auth_files(auth_dir, service_password=service_password)
    config = local_copy_of_mosquitto_conf(
        directory, device_port=device_port, platform_port=platform_port, auth_dir=auth_dir, overrides=overrides
    )
    stdout_path = directory / "mosquitto.stdout"
    command = [mosquitto_binary(), "-c", str(config)]
    env = dict(os.environ)
    if reload_check_seconds is not None:
        command = ["sh", str(RELOAD_ON_CHANGE), str(auth_dir), *command]
        env["RELOAD_CHECK_SECONDS"] = str(reload_check_seconds)
    with stdout_path.open("w") as stdout:
        # Its own process group: the wrapper script and Mosquitto under it are stopped together.
        process = subprocess.Popen(
            command, stdout=stdout, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
    run = MosquittoRun(
        device_port=device_port,
        platform_port=platform_port,
        auth_dir=auth_dir,
        process=process,
        log_path=directory / LOG_FILE,
        stdout_path=stdout_path,
        command=command,
        env=env,
    )
    try:
        wait_for_port(run, platform_port)
        wait_for_port(run, device_port)
        yield run
    finally:
        run.process.terminate()
        try:
            run.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(run.process.pid, signal.SIGKILL)
            run.process.wait()


def wait_for_port(run: MosquittoRun, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if run.process.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {run.process.returncode} (rejected the config?):\n{run.output}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not accept a connection on port {port} within 5 s") from None
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL, the production database, started natively from the config file docker-compose.yml mounts
# ---------------------------------------------------------------------------------------------------------------
POSTGRES_CONF = ROOT / "deploy" / "postgres" / "postgresql.conf"
# What cannot work here, rewritten on the command line: where it listens and keeps its socket. fsync=off trades
# surviving a power cut (irrelevant to a throwaway test cluster) for speed; a kill -9 of our processes, which is
# what tests do, loses nothing either way.
POSTGRES_TEST_OVERRIDES = {"listen_addresses": "127.0.0.1", "fsync": "off"}


def postgres_bin_dir() -> Path:
    """Debian's server binaries (/usr/lib/postgresql/VERSION/bin, newest first), else whatever PATH has."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if candidates:
        return candidates[-1].parent
    found = shutil.which("postgres", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if found is None:
        raise RuntimeError(
            "the PostgreSQL server is not installed. Install it: `make system-deps` (run by `make test`), "
            "or apt-get install -y postgresql."
        )
    return Path(found).parent


MIGRATED_TEMPLATE = "replenish_migrated"


@dataclass
class PostgresRun:
    port: int
    directory: Path
    _migrated_template: bool = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, *, template: str = "template1") -> str:
        """A new database on this server, a copy of ``template``; its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def create_migrated_database(self, name: str) -> str:
        """A new database with the current schema: copied from one migrated once per server (as fast as an empty
        one), where migrating each would take half a second. Roles starting on it find it up to date."""
        if not self._migrated_template:
            from replenish.db import make_engine
            from replenish.schema import create_schema

            engine = make_engine(self.create_database(MIGRATED_TEMPLATE))
            try:
                create_schema(engine)
            finally:
                engine.dispose()  # a template must have no connections when it is copied
            self._migrated_template = True
        return self.create_database(name, template=MIGRATED_TEMPLATE)


@contextmanager
def running_postgres(overrides: dict[str, str] | None = None) -> Iterator[PostgresRun]:
    """A throwaway cluster: initdb, then the server from deploy/postgres/postgresql.conf (as the compose file starts
    it) with only the listen address, port and socket directory rewritten, and ``overrides`` (default:
    POSTGRES_TEST_OVERRIDES; benchmarks keep fsync on). Trust authentication on 127.0.0.1.

    The server refuses to run as root, so as root it runs as the `postgres` user the Debian package creates; its
    directory is then outside pytest's tmp dir, which that user cannot enter."""
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    user = "postgres" if as_root else None
    directory = Path(tempfile.mkdtemp(prefix="replenish-postgres-"))
    if as_root:
        shutil.chown(directory, user="postgres", group="postgres")
    binaries = postgres_bin_dir()
    data = directory / "data"
    log_path = directory / "server.log"
    port = free_port()
    try:
        subprocess.run(
            [binaries / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            user=user,
            check=True,
            capture_output=True,
            text=True,
        )
        chosen = POSTGRES_TEST_OVERRIDES if overrides is None else overrides
        options = {
            "listen_addresses": "127.0.0.1",
            **chosen,
            "port": str(port),
            "unix_socket_directories": str(directory),
        }
        # A copy beside the data: the `postgres` user may not be able to enter the checkout (a clone under a 0700
        # directory), and the file must be the one the compose file mounts, unchanged.
        config = directory / POSTGRES_CONF.name
        shutil.copyfile(POSTGRES_CONF, config)
        if as_root:
            shutil.chown(config, user="postgres", group="postgres")
        server_options = " ".join([f"-c config_file={config}", *(f"-c {k}={v}" for k, v in options.items())])
        started = subprocess.run(
            [binaries / "pg_ctl", "-D", data, "-l", log_path, "-o", server_options, "-w", "-t", "60", "start"],
            user=user,
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:
            log = log_path.read_text() if log_path.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start:\n{started.stdout}{started.stderr}{log}")
        try:
            yield PostgresRun(port=port, directory=directory)
        finally:
            subprocess.run([binaries / "pg_ctl", "-D", data, "-m", "immediate", "stop"], user=user, capture_output=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

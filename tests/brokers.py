"""Mosquitto, the production broker, started natively from the config file docker-compose.yml mounts."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
RELOAD_ON_CHANGE = ROOT / "deploy" / "mosquitto" / "reload-on-change.sh"
# Debian installs the broker in /usr/sbin, which is not on a non-root user's PATH.
MOSQUITTO_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
START_TIMEOUT = 5.0


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and never one this process was given before: two servers of one test (the
    broker and the API) must not be handed the same port the kernel freed in between."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


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


def write_auth_files(auth_dir: Path, *, service_password: str, database_url: str = "sqlite://") -> None:
    """What `replenish mosquitto-files` writes, from the devices in ``database_url`` (default: none)."""
    from sqlmodel import Session

    from replenish.db import create_schema, make_engine
    from replenish.mqtt.mosquitto import sync_files

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
    )
    try:
        wait_for_port(run, platform_port)
        wait_for_port(run, device_port)
        yield run
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


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

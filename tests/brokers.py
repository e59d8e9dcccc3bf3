"""Mosquitto, the production broker, started natively from the config file docker-compose.yml mounts."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
# Debian installs the broker in /usr/sbin, which is not on a non-root user's PATH.
MOSQUITTO_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
START_TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_copy_of_mosquitto_conf(directory: Path, port: int, overrides: dict[str, str] | None = None) -> Path:
    """The production config with only what cannot work here rewritten: port, data directory, user; and
    ``overrides`` (directive -> value) replaced or added."""
    overrides = dict(overrides or {})
    lines = []
    for line in MOSQUITTO_CONF.read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key == "listener":
            line = f"listener {port} 127.0.0.1"
        elif key == "persistence_location":
            line = f"persistence_location {directory}/"
        elif key == "log_dest":
            line = "log_dest stdout"
        elif key in overrides:
            line = f"{key} {overrides.pop(key)}"
        lines.append(line)
    lines += [f"{key} {value}" for key, value in overrides.items()]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Started as root, Mosquitto switches to the `mosquitto` user, which cannot write into pytest's tmp dir.
        lines.append("user root")
    config = directory / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    return config


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
    port: int
    process: subprocess.Popen[str]
    output: str = ""

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@contextmanager
def running_mosquitto(directory: Path, overrides: dict[str, str] | None = None) -> Iterator[MosquittoRun]:
    """Start Mosquitto from a local copy of deploy/mosquitto/mosquitto.conf; ``output`` is its log after it stops."""
    port = free_port()
    config = local_copy_of_mosquitto_conf(directory, port, overrides)
    process = subprocess.Popen(
        [mosquitto_binary(), "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    run = MosquittoRun(port=port, process=process)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                output = process.stdout.read() if process.stdout else ""
                raise RuntimeError(f"mosquitto exited with {process.returncode} (rejected the config?):\n{output}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not accept a connection on port {port} within 5 s") from None
                time.sleep(0.05)
        yield run
    finally:
        process.terminate()
        try:
            run.output, _ = process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            run.output, _ = process.communicate()

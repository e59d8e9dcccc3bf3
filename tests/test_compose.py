"""The production deployment files agree with the code.

docker-compose.yml: bind-mounted files exist, every REPLENISH_* variable is a real setting and parses, every
platform container runs a real role. deploy/mosquitto/mosquitto.conf: Mosquitto syntax, the directives the
ingest path depends on, and a real `mosquitto` started from it. None of this needs Docker.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from brokers import MOSQUITTO_CONF, running_mosquitto
from replenish.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"

ENV_PREFIX = "REPLENISH_"
ROLE_COMMANDS = {"api", "ingest", "scheduler"}
PLATFORM_SERVICES = {"api", "ingest", "scheduler"}
INFRA_SERVICES = {"mosquitto", "postgres"}

# `key value...`: Mosquitto directives are lower-case words with underscores, followed by their value(s).
MOSQUITTO_LINE = re.compile(r"^[a-z][a-z0-9_]*(\s+\S.*)?$")
MOSQUITTO_START_TIMEOUT = 5.0
# Debian installs the broker in /usr/sbin, which is not on a non-root user's PATH.
MOSQUITTO_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])

# MQTT 3.1.1 CONNECT: clean session, keepalive 60 s, empty client id (the broker assigns one); and the
# CONNACK that accepts it.
MQTT_CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 60, 0, 0])
MQTT_CONNACK_ACCEPTED = bytes([0x20, 2, 0, 0])


# -- compose helpers -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict), "no services in compose file"
    return document


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def platform_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The containers built from our Dockerfile (the others are stock images)."""
    return {name: service for name, service in services(compose).items() if "build" in service}


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment, in either compose form; None means "passed through from the host"."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = [entry.split("=", 1) for entry in env]
        return {pair[0]: (pair[1] if len(pair) == 2 else None) for pair in pairs}
    return {key: (None if value is None else str(value)) for key, value in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    value = service.get("command")
    if value is None:
        return []
    return value.split() if isinstance(value, str) else [str(part) for part in value]


def bind_mount_sources(service: dict[str, Any]) -> list[str]:
    """Host paths of the service's bind mounts (relative ones; named volumes have no ./ prefix)."""
    sources = []
    for entry in service.get("volumes") or []:
        source = entry.split(":", 1)[0] if isinstance(entry, str) else str(entry.get("source", ""))
        if source.startswith(("./", "../")):
            sources.append(source)
    return sources


def settings_variables() -> set[str]:
    return {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


def settings_from(env: dict[str, str | None], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the container would build them: only the compose file's variables, no .env file."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and value is not None:
            monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def mosquitto_directives(text: str) -> list[tuple[str, str]]:
    directives = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            key, _, value = stripped.partition(" ")
            directives.append((key, value.strip()))
    return directives


# -- docker-compose.yml ----------------------------------------------------------------------------------------


def test_compose_describes_the_production_services(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the top-level `version:` key is obsolete in the Compose specification"
    assert set(services(compose)) == INFRA_SERVICES | PLATFORM_SERVICES
    assert set(platform_services(compose)) == PLATFORM_SERVICES
    for name, service in platform_services(compose).items():
        assert service.get("restart") == "unless-stopped", name


def test_bind_mounted_host_paths_exist(compose: dict[str, Any]) -> None:
    mounts = [(name, source) for name, service in services(compose).items() for source in bind_mount_sources(service)]
    assert mounts, "expected the mosquitto and postgres config files to be bind-mounted"
    missing = [f"{name}: {source}" for name, source in mounts if not (ROOT / source).exists()]
    assert not missing, f"bind-mounted paths missing from the repository: {missing}"


def test_every_replenish_variable_is_a_settings_field(compose: dict[str, Any]) -> None:
    known = settings_variables()
    unknown = [
        f"{name}: {variable}"
        for name, service in services(compose).items()
        for variable in environment(service)
        if variable.startswith(ENV_PREFIX) and variable not in known
    ]
    assert not unknown, f"not fields of replenish.config.Settings (typo, or a removed setting): {unknown}"


def test_platform_services_run_a_role(compose: dict[str, Any]) -> None:
    from replenish.cli import app

    cli_commands = {info.name or info.callback.__name__ for info in app.registered_commands if info.callback}
    assert cli_commands >= ROLE_COMMANDS, f"the CLI lost a role subcommand: {sorted(ROLE_COMMANDS - cli_commands)}"
    for name, service in platform_services(compose).items():
        assert len(command(service)) == 1 and command(service)[0] in ROLE_COMMANDS, (
            f"{name}: command {service.get('command')!r} is not one of {sorted(ROLE_COMMANDS)}"
        )
    assert sorted(command(service)[0] for service in platform_services(compose).values()) == sorted(ROLE_COMMANDS)


def test_healthy_dependencies_have_healthchecks(compose: dict[str, Any]) -> None:
    for name, service in platform_services(compose).items():
        depends_on = service.get("depends_on")
        assert isinstance(depends_on, dict) and "postgres" in depends_on, f"{name}: needs the long depends_on form"
        for dependency, options in depends_on.items():
            assert options.get("condition") == "service_healthy", f"{name} -> {dependency}"
            assert "healthcheck" in services(compose)[dependency], f"{name} waits for {dependency}, which has none"


@pytest.mark.parametrize("service_name", sorted(PLATFORM_SERVICES))
def test_settings_accept_the_compose_values(
    compose: dict[str, Any], service_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(services(compose)[service_name])
    settings = settings_from(env, monkeypatch)

    # The external broker, not the embedded one, on the port mosquitto.conf listens on.
    assert not settings.uses_embedded_broker
    assert settings.mqtt_endpoint.host == "mosquitto"
    listeners = [
        value.split()[0] for key, value in mosquitto_directives(MOSQUITTO_CONF.read_text()) if key == "listener"
    ]
    assert settings.mqtt_endpoint.port == int(listeners[0])

    # PostgreSQL through psycopg 3, with the credentials the postgres container is initialised with.
    url = make_url(settings.resolved_database_url)
    postgres_env = environment(services(compose)["postgres"])
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port or 5432) == ("postgres", 5432)
    assert (url.username, url.password, url.database) == (
        postgres_env["POSTGRES_USER"],
        postgres_env["POSTGRES_PASSWORD"],
        postgres_env["POSTGRES_DB"],
    )

    if service_name == "api":
        assert settings.api_host == "0.0.0.0", "the API must bind all interfaces to be reachable from outside"
        published = [str(mapping).rsplit(":", 1)[-1] for mapping in services(compose)["api"].get("ports", [])]
        assert str(settings.api_port) in published, f"API port {settings.api_port} is not published: {published}"
        healthcheck = " ".join(services(compose)["api"]["healthcheck"]["test"])
        assert f":{settings.api_port}/" in healthcheck, "the API healthcheck probes another port"


# -- mosquitto.conf --------------------------------------------------------------------------------------------


def test_mosquitto_conf_is_mosquitto_syntax_with_the_ingest_settings() -> None:
    text = MOSQUITTO_CONF.read_text()
    bad = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    bad = [line for line in bad if not MOSQUITTO_LINE.match(line)]
    assert not bad, f"not `key value...` lines: {bad}"

    directives = dict(mosquitto_directives(text))
    assert directives["listener"] == "1883", "listen on every interface (no bind address)"
    assert directives["allow_anonymous"] == "true"
    assert directives["persistence"] == "true"
    assert directives["persistence_location"] == "/mosquitto/data/"
    assert directives["log_dest"] == "stdout"
    # The default of 1000 queued messages drops telemetry while the ingestor restarts (perf-limits).
    assert int(directives["max_queued_messages"]) >= 100_000
    assert int(directives["max_inflight_messages"]) >= 1000
    # Oversize payloads must reach the platform to be dead-lettered, not be dropped by the broker.
    assert "max_packet_size" not in directives
    assert "message_size_limit" not in directives


def test_mosquitto_starts_from_the_config(tmp_path: Path) -> None:
    with (
        running_mosquitto(tmp_path) as broker,
        socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock,
    ):
        sock.sendall(MQTT_CONNECT)
        connack = sock.recv(4)
    assert connack == MQTT_CONNACK_ACCEPTED, (
        f"broker refused an anonymous MQTT 3.1.1 client: {connack!r}\n{broker.output}"
    )
    complaints = [
        line
        for line in broker.output.splitlines()
        if ("Error" in line or "Warning" in line) and "should not be run as root" not in line
    ]
    assert not complaints, f"mosquitto complained about the config: {complaints}"

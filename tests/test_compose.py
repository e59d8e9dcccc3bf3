"""The production deployment files agree with the code.

docker-compose.yml: bind-mounted files exist, every REPLENISH_* variable is a real setting and parses, every
platform container runs a real role, Mosquitto finds the files broker-auth writes, Prometheus scrapes every role on a
port it serves metrics on, the Grafana dashboard queries only metrics the code defines.
deploy/mosquitto/mosquitto.conf: Mosquitto syntax, the directives the ingest path and device identity depend on, and
a real `mosquitto` started from it, probed by the compose healthcheck itself. None of this needs Docker.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from replenish.clock import SystemClock
from replenish.config import SERVICE_USERNAME, Settings
from replenish.constants import MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES
from replenish.mqtt.mosquitto import DEVICES_ACL_FILE, DEVICES_PASSWORD_FILE, PLATFORM_PASSWORD_FILE, SYNCED_MARKER
from replenish.notifications.push import new_private_key
from replenish.observability.database import DatabaseCollector
from replenish.observability.metrics import Metrics
from support.brokers import (
    AUTH_DIR_IN_CONTAINER,
    DEVICE_LISTENER,
    MOSQUITTO_CONF,
    PLATFORM_LISTENER,
    RELOAD_ON_CHANGE,
    SERVICE_PASSWORD,
    free_port,
    running_mosquitto,
    write_auth_files,
)

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"

ENV_PREFIX = "REPLENISH_"
ROLE_COMMANDS = {"api", "ingest", "scheduler"}
PLATFORM_SERVICES = {"api", "ingest", "ingest-events", "scheduler", "broker-auth"}
# The services that sign in to the broker, or write its password file, and so get the service password.
MQTT_SERVICES = {"ingest", "ingest-events", "scheduler", "broker-auth"}
INFRA_SERVICES = {"mosquitto", "postgres", "prometheus", "grafana"}
# The roles Prometheus must scrape: each is a process with metrics of its own.
SCRAPED_SERVICES = {"api", "ingest", "ingest-events", "scheduler"}
PROMETHEUS_CONF = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "replenish.json"
# Metric names in a PromQL expression: ours, and the process and Python ones prometheus_client adds (Prometheus'
# own `up` is the only other series the dashboard asks for).
METRIC_NAME = re.compile(r"\b(?:replenish|process|python)_[a-z0-9_]+")

# `key value...`: Mosquitto directives are lower-case words with underscores, followed by their value(s).
MOSQUITTO_LINE = re.compile(r"^[a-z][a-z0-9_]*(\s+\S.*)?$")
MOSQUITTO_START_TIMEOUT = 5.0
# Debian installs the broker in /usr/sbin, which is not on a non-root user's PATH.
MOSQUITTO_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])

# MQTT 3.1.1 CONNECT: clean session, keepalive 60 s, empty client id (the broker assigns one); and the
# CONNACK that accepts it.
MQTT_CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 60, 0, 0])
MQTT_CONNACK_NOT_AUTHORIZED = bytes([0x20, 2, 0, 5])
# A compose variable from the environment or .env: ${NAME:?message} (required) or ${NAME:-default}.
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*):(?P<kind>[?-])(?P<rest>[^}]*)\}")


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


# What an operator's .env holds, as docs/deployment.md says to make it.
FROM_DOT_ENV = {
    "REPLENISH_BROKER_SERVICE_PASSWORD": SERVICE_PASSWORD,
    "REPLENISH_WEBPUSH_VAPID_PRIVATE_KEY": new_private_key(),
}


def settings_variables() -> set[str]:
    return {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


def interpolated(value: str, variables: dict[str, str]) -> str:
    """As `docker compose` substitutes ${NAME:?message} (NAME must be given) and ${NAME:-default}."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("kind") == "?":
            return variables[match.group("name")]
        return variables.get(match.group("name"), match.group("rest"))

    return VARIABLE.sub(substitute, value)


def settings_from(env: dict[str, str | None], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the container would build them: only the compose file's variables (the service password from
    .env), no .env file of ours."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and value is not None:
            monkeypatch.setenv(name, interpolated(value, FROM_DOT_ENV))
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
    roles = {name: service for name, service in platform_services(compose).items() if name != "broker-auth"}
    for name, service in roles.items():
        assert len(command(service)) == 1 and command(service)[0] in ROLE_COMMANDS, (
            f"{name}: command {service.get('command')!r} is not one of {sorted(ROLE_COMMANDS)}"
        )
    assert {command(service)[0] for service in roles.values()} == ROLE_COMMANDS
    assert "mosquitto-files" in cli_commands


def volume_target(service: dict[str, Any], volume: str) -> str:
    targets = [entry.split(":")[1] for entry in service.get("volumes") or [] if entry.split(":")[0] == volume]
    assert len(targets) == 1, f"expected {volume} mounted once in {service}"
    return targets[0]


def test_mosquitto_reads_the_files_broker_auth_writes(compose: dict[str, Any]) -> None:
    """broker-auth writes into the mosquitto-auth volume; Mosquitto mounts it where mosquitto.conf looks, and the
    wrapper that reloads it watches the same place."""
    broker_auth, mosquitto = services(compose)["broker-auth"], services(compose)["mosquitto"]
    arguments = command(broker_auth)
    assert arguments[0] == "mosquitto-files" and float(arguments[arguments.index("--every") + 1]) <= 10
    written_to = arguments[arguments.index("--out") + 1]
    assert volume_target(broker_auth, "mosquitto-auth") == written_to
    assert "mosquitto-auth" in compose["volumes"]

    read_from = volume_target(mosquitto, "mosquitto-auth")
    assert read_from.rstrip("/") + "/" == AUTH_DIR_IN_CONTAINER
    paths = [value for key, value in mosquitto_directives(MOSQUITTO_CONF.read_text()) if key.endswith("_file")]
    assert sorted(paths) == sorted(
        AUTH_DIR_IN_CONTAINER + name for name in (DEVICES_PASSWORD_FILE, DEVICES_ACL_FILE, PLATFORM_PASSWORD_FILE)
    )
    # The wrapper is mounted from the repository and given the same directory.
    entrypoint = [str(part) for part in mosquitto["entrypoint"]]
    assert entrypoint[2] == read_from
    assert f"./{RELOAD_ON_CHANGE.relative_to(ROOT)}:{entrypoint[1]}:ro" in mosquitto["volumes"]
    assert mosquitto["depends_on"]["broker-auth"]["condition"] == "service_healthy"
    assert written_to in " ".join(broker_auth["healthcheck"]["test"])


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

    # The external broker, not the embedded one, on mosquitto.conf's platform listener, as the service user.
    assert not settings.uses_embedded_broker
    endpoint = settings.mqtt_endpoint
    assert (endpoint.host, endpoint.port) == ("mosquitto", PLATFORM_LISTENER)
    if service_name in MQTT_SERVICES:
        assert (endpoint.username, endpoint.password) == (SERVICE_USERNAME, SERVICE_PASSWORD)
    else:
        assert settings.broker_service_password is None, f"{service_name} has no use for the broker password"

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
        # /readyz wants the broker, which waits for broker-auth, which waits for the API: a first start would hang.
        assert "/healthz" in healthcheck and "/readyz" not in healthcheck


# -- mosquitto.conf --------------------------------------------------------------------------------------------


def test_mosquitto_conf_is_mosquitto_syntax_with_the_ingest_and_identity_settings(compose: dict[str, Any]) -> None:
    text = MOSQUITTO_CONF.read_text()
    bad = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    bad = [line for line in bad if not MOSQUITTO_LINE.match(line)]
    assert not bad, f"not `key value...` lines: {bad}"

    directives = mosquitto_directives(text)
    settings = dict(directives)
    assert settings["per_listener_settings"] == "true"
    # Each listener's own settings follow it: the device listener, then the platform listener.
    listeners = [index for index, (key, _) in enumerate(directives) if key == "listener"]
    assert [directives[index][1] for index in listeners] == [str(DEVICE_LISTENER), str(PLATFORM_LISTENER)]
    device_listener = dict(directives[listeners[0] + 1 : listeners[1]])
    platform_listener = dict(directives[listeners[1] + 1 :])
    assert device_listener["allow_anonymous"] == platform_listener["allow_anonymous"] == "false"
    assert device_listener["password_file"] == AUTH_DIR_IN_CONTAINER + DEVICES_PASSWORD_FILE
    assert device_listener["acl_file"] == AUTH_DIR_IN_CONTAINER + DEVICES_ACL_FILE
    assert device_listener["use_username_as_clientid"] == "true"
    assert platform_listener["password_file"] == AUTH_DIR_IN_CONTAINER + PLATFORM_PASSWORD_FILE
    published = [str(mapping).rsplit(":", 1)[-1] for mapping in services(compose)["mosquitto"]["ports"]]
    assert published == [str(DEVICE_LISTENER)], "devices reach 1883; the platform listener stays internal"

    assert settings["persistence"] == "true"
    assert settings["persistence_location"] == "/mosquitto/data/"
    assert settings["log_dest"] == "stdout"
    # The default of 1000 queued messages drops telemetry while the ingestor restarts (perf-limits).
    assert int(settings["max_queued_messages"]) >= 100_000
    assert int(settings["max_inflight_messages"]) >= 1000
    # Packets are bounded (issue 17), but above the contract's payload maximum: oversize payloads still reach the
    # platform to be dead-lettered.
    assert int(settings["max_packet_size"]) == MAX_PACKET_BYTES > MAX_PAYLOAD_BYTES
    assert "message_size_limit" not in settings


def test_mosquitto_starts_from_the_config_and_passes_the_compose_healthcheck(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    with running_mosquitto(tmp_path) as broker:
        for port in (broker.device_port, broker.platform_port):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(MQTT_CONNECT)
                assert sock.recv(4) == MQTT_CONNACK_NOT_AUTHORIZED, f"port {port} let an anonymous client in"

        # The healthcheck, as the container's shell runs it (compose turns $$ into $), against this broker; and
        # against a port where nothing answers MQTT.
        kind, script = services(compose)["mosquitto"]["healthcheck"]["test"]
        assert kind == "CMD-SHELL" and f"-p {PLATFORM_LISTENER} " in script
        assert "REPLENISH" not in script, "the broker's healthcheck needs no secret"

        def healthcheck(port: int) -> int:
            probe = script.replace("$$", "$").replace(f"-p {PLATFORM_LISTENER} ", f"-p {port} ")
            env = {"PATH": os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin"])}
            return subprocess.run(["sh", "-c", probe], env=env, capture_output=True, timeout=10).returncode

        assert healthcheck(broker.platform_port) == 0, broker.output
        with socket.socket() as idle:
            idle.bind(("127.0.0.1", 0))
            idle.listen()
            assert healthcheck(idle.getsockname()[1]) != 0, "healthy although nothing answered MQTT"
        assert healthcheck(free_port()) != 0, "healthy although nothing listened"
    complaints = [
        line
        for line in broker.output.splitlines()
        if ("Error" in line or "Warning" in line) and "should not be run as root" not in line
    ]
    assert not complaints, f"mosquitto complained about the config: {complaints}"


def test_every_setting_is_in_the_deployment_guide() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    missing = sorted(variable for variable in settings_variables() if f"| `{variable}` |" not in guide)
    assert not missing, f"docs/deployment.md's table of environment variables lacks {missing}"


def test_broker_auth_is_healthy_only_while_its_passes_succeed(compose: dict[str, Any], tmp_path: Path) -> None:
    broker_auth = services(compose)["broker-auth"]
    kind, script = broker_auth["healthcheck"]["test"]
    directory = command(broker_auth)[command(broker_auth).index("--out") + 1]
    assert kind == "CMD-SHELL" and directory in script
    probe = script.replace("$$", "$").replace(directory, str(tmp_path))

    def healthy() -> bool:
        return subprocess.run(["sh", "-c", probe], capture_output=True, timeout=10).returncode == 0

    assert not healthy(), "no pass yet"
    write_auth_files(tmp_path, service_password=SERVICE_PASSWORD)
    assert healthy()
    two_minutes_ago = time.time() - 120
    os.utime(tmp_path / SYNCED_MARKER, (two_minutes_ago, two_minutes_ago))
    assert (tmp_path / PLATFORM_PASSWORD_FILE).exists() and not healthy(), "files of an earlier pass are not enough"


def test_safety_events_and_telemetry_are_ingested_by_separate_processes(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    lanes = {
        name: settings_from(environment(services(compose)[name]), monkeypatch).ingest_lanes
        for name in ("ingest", "ingest-events")
    }
    assert lanes == {"ingest": ("telemetry",), "ingest-events": ("events",)}


# -- Prometheus and Grafana ------------------------------------------------------------------------------------


def scrape_targets() -> list[tuple[str, str]]:
    config = yaml.safe_load(PROMETHEUS_CONF.read_text())
    targets = []
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        # Each replica of a service (`--scale`) is its own target: found through Docker's DNS, one A record each.
        assert "static_configs" not in job, f"{job['job_name']}: a static target is one random replica per scrape"
        for lookup in job["dns_sd_configs"]:
            assert lookup["type"] == "A", job["job_name"]
            targets += [(job["job_name"], f"{name}:{lookup['port']}") for name in lookup["names"]]
    return targets


def test_prometheus_scrapes_every_role_on_a_port_it_serves_metrics_on(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    prometheus = services(compose)["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"]), "pin the image"
    assert f"./{PROMETHEUS_CONF.relative_to(ROOT)}:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]

    scraped = set()
    for job, target in scrape_targets():
        host, port = target.rsplit(":", 1)
        assert host in services(compose), f"{job}: {target} names no compose service"
        service = services(compose)[host]
        settings = settings_from(environment(service), monkeypatch)
        # Every role, the API too, serves metrics on a port of its own, never on a published one.
        assert int(port) == settings.metrics_port, f"{job}: {target} is not {host}'s REPLENISH_METRICS_PORT"
        assert settings.metrics_host == "0.0.0.0", f"{host}'s metrics are unreachable from prometheus"
        assert port in [str(exposed) for exposed in service.get("expose", [])], f"{host} does not expose {port}"
        published = [str(mapping).rsplit(":", 1)[-1] for mapping in service.get("ports", [])]
        assert port not in published, f"{host} publishes its metrics port"
        scraped.add(host)
    assert scraped == SCRAPED_SERVICES


def defined_metric_families() -> dict[str, list[str]]:
    """Every metric family a Replenish process exposes, with the series names PromQL sees (a counter's _total, a
    histogram's _bucket ...); the database gauges from their descriptions, without a database."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
    database = DatabaseCollector(engine=None, clock=SystemClock())  # type: ignore[arg-type]
    families = [*Metrics(role="test").registry.collect(), *database.describe()]
    return {family.name: [family.name + suffix for suffix in suffixes.get(family.type, [""])] for family in families}


def dashboard_expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [expr for value in node.values() for expr in dashboard_expressions(value)]
    if isinstance(node, list):
        return [expr for value in node for expr in dashboard_expressions(value)]
    return []


def test_the_dashboard_queries_only_metrics_the_code_defines() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    expressions = dashboard_expressions(dashboard)
    assert len(expressions) >= 10
    families = defined_metric_families()
    defined = {series for names in families.values() for series in names}
    queried = {name for expr in expressions for name in METRIC_NAME.findall(expr)}
    assert queried - defined == set(), "the dashboard queries metrics no Replenish process exposes"
    # Every metric of ours has a panel.
    unused = [name for name, series in families.items() if name.startswith("replenish_") and not queried & set(series)]
    assert not unused, f"metrics without a panel: {unused}"

    # Every panel asks the data source Grafana is provisioned with.
    [source] = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090"
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert all(panel["datasource"]["uid"] == source["uid"] for panel in panels)
    assert all(target["datasource"]["uid"] == source["uid"] for panel in panels for target in panel["targets"])


def test_grafana_loads_the_dashboard_from_where_compose_mounts_it(compose: dict[str, Any]) -> None:
    grafana = services(compose)["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"]), "pin the image"
    mounts = dict(entry.split(":")[:2] for entry in grafana["volumes"] if entry.startswith("./"))
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "replenish.yml").read_text())
    [files] = provider["providers"]
    assert mounts[f"./{DASHBOARD.parent.relative_to(ROOT)}"] == files["options"]["path"]
    assert mounts[f"./{(GRAFANA_DIR / 'provisioning').relative_to(ROOT)}"] == "/etc/grafana/provisioning"
    for service in ("prometheus", "grafana"):
        published = [str(mapping) for mapping in services(compose)[service]["ports"]]
        assert all(mapping.startswith("127.0.0.1:") for mapping in published), f"{service} is published to the world"

"""Device identity on Mosquitto, the production broker, started from deploy/mosquitto/mosquitto.conf with the files
`replenish mosquitto-files` writes: devices sign in on the device listener with their own secret and may speak only
for themselves; the platform signs in on its own listener."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from replenish.clock import ManualClock
from replenish.config import SERVICE_USERNAME, MqttEndpoint
from replenish.db import make_engine
from replenish.ingest.models import DeviceMessage
from replenish.mqtt.mosquitto import DEVICES_PASSWORD_FILE, FILE_MODE, sync_files
from replenish.runtime import Platform, Roles
from replenish.schema import create_schema
from support import wait_until
from support.api import api_client, create_customer, operator_token, register_device
from support.brokers import RELOAD_ON_CHANGE, SERVICE_PASSWORD, MosquittoRun, running_mosquitto, write_auth_files
from support.mqtt import DEVICE_SECRETS, Refused, connected, publish
from support.platform import make_settings, running_platform

REPLENISH = str(Path(sys.executable).parent / "replenish")


class Rig:
    def __init__(self, broker: MosquittoRun, platform: Platform, api: httpx.Client) -> None:
        self.broker = broker
        self.platform = platform
        self.api = api
        self.devices = MqttEndpoint(host="127.0.0.1", port=broker.device_port)
        self.internal = MqttEndpoint(host="127.0.0.1", port=broker.platform_port)

    def publish_auth_files(self) -> None:
        write_auth_files(
            self.broker.auth_dir,
            service_password=SERVICE_PASSWORD,
            database_url=self.platform.settings.resolved_database_url,
        )
        self.broker.reload()

    def stored_for(self, device_id: str) -> int:
        with Session(self.platform.engine) as session:
            return len(session.exec(select(DeviceMessage).where(DeviceMessage.device_id == device_id)).all())


def refused(endpoint: MqttEndpoint, username: str, password: str) -> bool:
    try:
        with connected(endpoint, username, password):
            return False
    except Refused:
        return True


@contextmanager
def started_rig(directory: Path, clock: ManualClock, **broker_options: Any) -> Iterator[Rig]:
    """Mosquitto, and the platform on its internal listener; two customers with a printer each."""
    with running_mosquitto(directory / "mosquitto", **broker_options) as broker:
        settings = make_settings(directory, mqtt_url=broker.url, broker_service_password=SERVICE_PASSWORD)
        with (
            running_platform(settings, clock, roles=Roles(ingest=True, scheduler=True, api=True)) as platform,
            api_client(platform, operator_token(platform)) as api,
        ):
            ada = create_customer(api, email="ada@example.com")
            bob = create_customer(api, email="bob@example.com")
            register_device(api, customer_id=ada, device_id="ada-printer")
            register_device(api, customer_id=bob, device_id="bob-printer")
            yield Rig(broker, platform, api)


@pytest.fixture
def rig(tmp_path: Path, clock: ManualClock) -> Iterator[Rig]:
    (tmp_path / "mosquitto").mkdir()
    with started_rig(tmp_path, clock) as started:
        started.publish_auth_files()
        yield started


def test_each_listener_admits_only_its_own_clients(rig: Rig) -> None:
    ada_secret = DEVICE_SECRETS["ada-printer"]
    for endpoint, username, password in [
        (rig.devices, None, None),
        (rig.devices, "ada-printer", "not its secret"),
        (rig.devices, "ghost-printer", ada_secret),
        (rig.devices, SERVICE_USERNAME, SERVICE_PASSWORD),  # the service user has no business on the public port
        (rig.internal, None, None),
        (rig.internal, "ada-printer", ada_secret),  # nor a device on the internal one
    ]:
        with pytest.raises(Refused), connected(endpoint, username, password, client_id="probe"):
            pass
    with connected(rig.devices, "ada-printer", ada_secret):
        pass
    with connected(rig.internal, SERVICE_USERNAME, SERVICE_PASSWORD, client_id="replenish-probe"):
        pass


def test_a_device_cannot_publish_as_another_device(rig: Rig) -> None:
    with connected(rig.devices, "ada-printer", DEVICE_SECRETS["ada-printer"]) as ada:
        publish(ada, "devices/bob-printer/telemetry", {"seq": 1, "levels": {"black": 0.01}})
        publish(ada, "devices/bob-printer/events", {"seq": 2, "type": "fall_detected"})
        publish(ada, "devices/bob-printer/status", {"seq": 3})
        publish(ada, "devices/ada-printer/telemetry", {"seq": 4, "levels": {"black": 0.5}})
    # Ada's own message went all the way through to the database: the ones before it were refused, not slow.
    assert wait_until(lambda: rig.stored_for("ada-printer") == 1)
    assert rig.stored_for("bob-printer") == 0
    with connected(rig.devices, "bob-printer", DEVICE_SECRETS["bob-printer"]) as bob:
        publish(bob, "devices/bob-printer/telemetry", {"seq": 1, "levels": {"black": 0.4}})
    assert wait_until(lambda: rig.stored_for("bob-printer") == 1)


def test_a_device_receives_only_its_own_commands(rig: Rig) -> None:
    received: list[str] = []
    subscribed = threading.Event()
    with connected(rig.devices, "ada-printer", DEVICE_SECRETS["ada-printer"]) as ada:
        ada.on_message = lambda client, userdata, message: received.append(message.topic)
        ada.on_subscribe = lambda *args: subscribed.set()
        ada.subscribe([("devices/+/commands", 1), ("devices/bob-printer/commands", 1)])
        assert subscribed.wait(10)
        with connected(rig.internal, SERVICE_USERNAME, SERVICE_PASSWORD, client_id="replenish-commands") as platform:
            publish(platform, "devices/bob-printer/commands", {"type": "alert_acknowledged"})
            publish(platform, "devices/ada-printer/commands", {"type": "alert_acknowledged"})
        assert wait_until(lambda: "devices/ada-printer/commands" in received)
        threading.Event().wait(0.3)
    assert set(received) == {"devices/ada-printer/commands"}


def test_a_device_cannot_take_over_another_devices_session(rig: Rig) -> None:
    """The device listener makes the client id the username: claiming Bob's client id does not kick Bob off."""
    bob_gone = threading.Event()
    with connected(rig.devices, "bob-printer", DEVICE_SECRETS["bob-printer"]) as bob:
        bob.on_disconnect = lambda *args: bob_gone.set()
        with connected(rig.devices, "ada-printer", DEVICE_SECRETS["ada-printer"], client_id="bob-printer"):
            pass
        assert not bob_gone.wait(1.0), "Ada's connection took over Bob's session"
        publish(bob, "devices/bob-printer/telemetry", {"seq": 1, "levels": {"black": 0.4}})
    assert wait_until(lambda: rig.stored_for("bob-printer") == 1)


def test_a_rotated_secret_cuts_off_the_connection_that_used_the_old_one(rig: Rig) -> None:
    old = DEVICE_SECRETS["ada-printer"]
    cut_off = threading.Event()
    with connected(rig.devices, "ada-printer", old) as ada:
        ada.on_disconnect = lambda *args: cut_off.set()
        new = rig.api.post("/devices/ada-printer/credentials").json()["mqtt_password"]
        rig.publish_auth_files()
        assert cut_off.wait(10), "Mosquitto re-checks connected clients' passwords when it reloads"
    assert refused(rig.devices, "ada-printer", old)
    with connected(rig.devices, "ada-printer", new):
        pass


def test_in_production_the_files_follow_the_database_and_mosquitto_reloads_them(tmp_path: Path, clock: ManualClock):
    """As docker-compose.yml runs it: `replenish mosquitto-files --every` keeps the files current and
    reload-on-change.sh reloads Mosquitto, with nobody sending a signal by hand."""
    (tmp_path / "mosquitto").mkdir()
    with started_rig(tmp_path, clock, reload_check_seconds=0.2) as rig:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "REPLENISH_DATABASE_URL": rig.platform.settings.resolved_database_url,
            "REPLENISH_BROKER_SERVICE_PASSWORD": SERVICE_PASSWORD,
        }
        keeper = subprocess.Popen(
            [REPLENISH, "mosquitto-files", "--out", str(rig.broker.auth_dir), "--every", "0.2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            # Registered before the keeper started: admitted once it has written the files (the keeper's own start, a
            # Python process importing the platform, takes seconds on a loaded machine).
            assert wait_until(lambda: not refused(rig.devices, "ada-printer", DEVICE_SECRETS["ada-printer"]), 30)
            customer = rig.api.get("/customers").json()[0]["id"]
            register_device(rig.api, customer_id=customer, device_id="new-printer")
            assert wait_until(lambda: not refused(rig.devices, "new-printer", DEVICE_SECRETS["new-printer"]))
            old = DEVICE_SECRETS["new-printer"]
            rig.api.post("/devices/new-printer/credentials")
            assert wait_until(lambda: refused(rig.devices, "new-printer", old))
        finally:
            keeper.send_signal(signal.SIGTERM)
            try:
                output, _ = keeper.communicate(timeout=10)
            finally:
                keeper.kill()
        assert keeper.returncode == 0, output
        assert "reloading" in rig.broker.output
    # The script passed SIGTERM on to Mosquitto, which shut down cleanly.
    assert rig.broker.process.returncode == 0, rig.broker.output
    assert "terminating" in rig.broker.output


def test_a_file_mosquitto_could_not_read_is_written_again(tmp_path: Path) -> None:
    write_auth_files(tmp_path, service_password=SERVICE_PASSWORD)
    (tmp_path / DEVICES_PASSWORD_FILE).chmod(0o600)  # right content; Mosquitto reads it through the group
    engine = make_engine("sqlite://")
    create_schema(engine)
    with Session(engine) as session:
        changed = sync_files(tmp_path, session=session, service_password=SERVICE_PASSWORD)
        assert changed == [tmp_path / DEVICES_PASSWORD_FILE]
        assert (tmp_path / DEVICES_PASSWORD_FILE).stat().st_mode & 0o777 == FILE_MODE
        assert sync_files(tmp_path, session=session, service_password=SERVICE_PASSWORD) == [], "nothing to reload"


def test_the_reload_script_never_sends_sighup_to_a_process_that_would_die_of_it(tmp_path: Path) -> None:
    """Mosquitto catches SIGHUP only once it has started; before that, SIGHUP ends it. `sleep` never catches it."""
    write_auth_files(tmp_path, service_password=SERVICE_PASSWORD)
    script = subprocess.Popen(
        ["sh", str(RELOAD_ON_CHANGE), str(tmp_path), "sleep", "30"],
        env={**os.environ, "RELOAD_CHECK_SECONDS": "0.1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        threading.Event().wait(0.3)
        (tmp_path / DEVICES_PASSWORD_FILE).write_text("ghost-printer:$7$whatever\n")
        threading.Event().wait(1.0)
        assert script.poll() is None, "the child was sent SIGHUP"
        script.send_signal(signal.SIGTERM)
        output, _ = script.communicate(timeout=10)
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
    assert script.returncode == 128 + signal.SIGTERM, "the script passes on SIGTERM and the child's exit status"
    assert "reloading" not in output

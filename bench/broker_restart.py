"""A broker restart under load: how many acknowledged messages and falls are lost, with devices that trust the
broker's PUBACK (the baseline) and with devices that keep what the platform has not confirmed (docs/mqtt.md,
"Confirmations"), measured in the same run on the production stack.

Mosquitto from deploy/mosquitto/mosquitto.conf and PostgreSQL from deploy/postgres/postgresql.conf (fsync on), both
started natively as tests/support/brokers.py starts them; `replenish ingest` processes as compose runs them. K simulated
wearables (src/replenish/simulation) send heartbeats at --rate messages a second in all, and each falls once, the
falls spread over the run. After --restart-at seconds Mosquitto is stopped (SIGTERM, as `docker compose restart`
does), kept down --down seconds and started again on the same data. The cases:

- shared: two ingest processes on a shared subscription (as docker-compose.yml runs them), up throughout;
- plain: one ingest process on plain subscriptions, up throughout;
- ingest-down: the shared subscription, its one ingest process stopped before the restart and started --ingest-gap
  seconds after the broker is back.

For each case and each kind of device the run prints what was sent, stored, lost, the falls and the fall alerts, how
long after the broker was back the ingestors had subscribed again, and how long the devices waited at the end for the
last confirmations. Exit status 0 when the devices that keep what is unconfirmed lost nothing in every case.

    .venv/bin/python bench/broker_restart.py
    .venv/bin/python bench/broker_restart.py --rate 2000 --seconds 30 --cases shared
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

from replenish.config import SERVICE_USERNAME, MqttEndpoint
from replenish.simulation.devices import WearableModel
from replenish.simulation.runner import run_device

ROOT = Path(__file__).resolve().parent.parent
REPLENISH = str(Path(sys.executable).parent / "replenish")
SERVICE_PASSWORD = "bench-service-password"
SHARE_GROUP = "replenish"
REPORT_INTERVAL = timedelta(minutes=15)
CASES = ("shared", "plain", "ingest-down")


def tests_module(name: str) -> ModuleType:
    """A module of tests/ (the brokers and database the test suite starts, its registration helper)."""
    tests_dir = str(ROOT / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    return importlib.import_module(name)


@dataclass
class Outcome:
    case: str
    devices_keep: bool
    sent: int
    stored: int
    distinct: int
    falls_sent: int
    falls_stored: int
    fall_alerts: int
    resubscribed_after: float  # seconds from the broker's return to every ingest lane subscribed again
    confirmed_wait: float  # seconds the devices waited at the end for the last confirmations

    @property
    def lost(self) -> int:
        return self.sent - self.distinct


class Ingest:
    """`replenish ingest` processes, as compose runs them."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.directory / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen([REPLENISH, "ingest"], env=self.env, stdout=out, stderr=subprocess.STDOUT)
        started = (process, log)
        self.processes.append(started)
        self.wait_subscribed(log, times=1)
        return started

    @staticmethod
    def subscriptions(log: Path) -> int:
        return log.read_text(errors="replace").count("ingestor subscribed to")

    def wait_subscribed(self, log: Path, *, times: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.subscriptions(log) < 2 * times:  # two lanes
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest not subscribed:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.02)

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)

    def stop_all(self) -> None:
        for process, _ in self.processes:
            self.stop(process)


def run_case(args: argparse.Namespace, *, case: str, devices_keep: bool, postgres: object, directory: Path) -> Outcome:
    brokers = tests_module("support.brokers")
    platform_support = tests_module("support.platform")
    database_url = postgres.create_migrated_database(f"bench_restart_{uuid.uuid4().hex[:12]}")  # type: ignore[attr-defined]
    device_ids = [f"wearable-{number:03d}" for number in range(args.devices)]
    platform_support.register_through_services(database_url, device_ids, kind="wearable", now=datetime.now(UTC))
    broker_dir = directory / f"{case}-{'keep' if devices_keep else 'trust'}"
    broker_dir.mkdir()
    with ExitStack() as stack:
        broker = stack.enter_context(brokers.running_mosquitto(broker_dir, service_password=SERVICE_PASSWORD))
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPLENISH_")}
        env.update(
            REPLENISH_DATA_DIR=str(broker_dir),
            REPLENISH_DATABASE_URL=database_url,
            REPLENISH_MQTT_URL=broker.url,
            REPLENISH_BROKER_SERVICE_PASSWORD=SERVICE_PASSWORD,
            REPLENISH_LOG_LEVEL="INFO",
        )
        if case != "plain":
            env["REPLENISH_INGEST_SHARE_GROUP"] = SHARE_GROUP
        ingest = Ingest(broker_dir, env)
        stack.callback(ingest.stop_all)
        members = [ingest.start(f"ingest-{n}") for n in range(2 if case == "shared" else 1)]
        resubscribed: list[float] = []

        def restart() -> None:
            if case == "ingest-down":
                ingest.stop(members[0][0])
            broker.restart(down_for=args.down)
            back = time.monotonic()
            if case == "ingest-down":
                time.sleep(args.ingest_gap)
                ingest.start("ingest-after")
            else:
                for _, log in members:
                    ingest.wait_subscribed(log, times=2)
            resubscribed.append(time.monotonic() - back)

        sent, falls, waited = run_fleet(args, broker, device_ids, devices_keep=devices_keep, restart=restart)
        time.sleep(2)  # what a trusting device's broker still delivers
        messages, distinct, falls_stored, alerts = tests_module("test_broker_restart").counts(database_url)
    return Outcome(
        case=case,
        devices_keep=devices_keep,
        sent=sent,
        stored=messages,
        distinct=distinct,
        falls_sent=falls,
        falls_stored=falls_stored,
        fall_alerts=alerts,
        resubscribed_after=resubscribed[0] if resubscribed else float("nan"),
        confirmed_wait=waited,
    )


def run_fleet(
    args: argparse.Namespace,
    broker: object,
    device_ids: list[str],
    *,
    devices_keep: bool,
    restart: Callable[[], None],
) -> tuple[int, int, float]:
    """(messages sent, falls sent, seconds the devices waited at the end for the last confirmations)."""
    start = datetime.now(UTC) - timedelta(days=60)
    per_device = args.rate / len(device_ids)
    reports = int(args.seconds * per_device)
    models = [
        WearableModel(
            device_id,
            start=start,
            report_interval=REPORT_INTERVAL,
            battery_drain_per_day=0.0,
            fall_at=start + REPORT_INTERVAL * ((number * reports) // len(device_ids)) + REPORT_INTERVAL / 2,
        )
        for number, device_id in enumerate(device_ids)
    ]
    endpoint = MqttEndpoint.parse(broker.url)  # type: ignore[attr-defined]
    endpoint = MqttEndpoint(endpoint.host, endpoint.port, username=SERVICE_USERNAME, password=SERVICE_PASSWORD)
    simulated_end = time.monotonic() + args.seconds
    finished: list[float] = []

    def device(model: WearableModel) -> None:
        run_device(
            model,
            endpoint,
            speed=REPORT_INTERVAL.total_seconds() * per_device,
            duration=REPORT_INTERVAL * (reports - 1),
            tick_seconds=0.05,
            client_id=model.device_id,
            keep_until_stored=devices_keep,
            stored_timeout=args.stored_timeout,
        )
        finished.append(time.monotonic())

    threads = [threading.Thread(target=device, args=(model,)) for model in models]
    for thread in threads:
        thread.start()
    time.sleep(args.restart_at)
    restart()
    for thread in threads:
        thread.join()
    falls = sum(model.fall_at is not None and model.now >= model.fall_at for model in models)
    return sum(model.seq - 1 for model in models), falls, max(0.0, max(finished) - simulated_end)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500, help="messages a second, all devices (default 500)")
    parser.add_argument("--devices", type=int, default=20, help="simulated wearables (default 20)")
    parser.add_argument("--seconds", type=float, default=15, help="how long the devices publish (default 15)")
    parser.add_argument("--restart-at", type=float, default=5, help="seconds in when the broker restarts (default 5)")
    parser.add_argument("--down", type=float, default=1.0, help="seconds the broker stays down (default 1)")
    parser.add_argument(
        "--ingest-gap", type=float, default=2.0, help="ingest-down: seconds after the broker's return (default 2)"
    )
    parser.add_argument("--stored-timeout", type=float, default=120, help="the devices' wait at the end (default 120)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    args = parser.parse_args()
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    brokers = tests_module("support.brokers")
    version = subprocess.run(
        [brokers.mosquitto_binary(), "-h"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[0]
    print(
        f"# broker restart under load: {version}, PostgreSQL (fsync on), {args.devices} devices at {args.rate:g} msgs/s"
    )
    print(f"# publish {args.seconds:g} s, restart at {args.restart_at:g} s, broker down {args.down:g} s")
    print()
    header = (
        f"{'case':<12} {'devices':<8} {'sent':>6} {'stored':>6} {'lost':>5} {'dups':>5} "
        f"{'falls':>5} {'stored':>6} {'alerts':>6} {'resub s':>7} {'wait s':>6}"
    )
    print(header)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="replenish-bench-restart-") as temp:
        os.chmod(temp, 0o755)  # Mosquitto, started as root, runs as its own user
        with brokers.running_postgres({}) as postgres:
            for case in cases:
                for devices_keep in (False, True):
                    outcome = run_case(
                        args, case=case, devices_keep=devices_keep, postgres=postgres, directory=Path(temp)
                    )
                    outcomes.append(outcome)
                    print(
                        f"{case:<12} {'keep' if devices_keep else 'trust':<8} {outcome.sent:>6} {outcome.distinct:>6} "
                        f"{outcome.lost:>5} {outcome.stored - outcome.distinct:>5} {outcome.falls_sent:>5} "
                        f"{outcome.falls_stored:>6} {outcome.fall_alerts:>6} {outcome.resubscribed_after:>7.2f} "
                        f"{outcome.confirmed_wait:>6.1f}",
                        flush=True,
                    )
    print()
    print("trust: devices forget a message at the broker's PUBACK; keep: until the platform confirms it.")
    print("resub s: broker back -> every ingest lane subscribed again (ingest-down: includes --ingest-gap).")
    print("wait s: how long after they stopped publishing the devices waited for the last confirmations.")
    kept = [outcome for outcome in outcomes if outcome.devices_keep]
    ok = all(outcome.lost == 0 and outcome.fall_alerts == outcome.falls_sent for outcome in kept)
    print("result:", "nothing lost with confirmations" if ok else "LOST MESSAGES with confirmations")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: how fast a fall reaches people, with and without background telemetry from the fleet simulator.

One run:

1. starts the platform in a temporary directory, and a webhook receiver in this process. `--stack up` (the
   default): as `replenish up` runs it, the embedded amqtt broker and every role in one process. `--stack
   production`: as docker-compose.yml runs it, Mosquitto from deploy/mosquitto/mosquitto.conf (through
   reload-on-change.sh, with `replenish mosquitto-files --every 1`) and the api, ingest (telemetry), ingest
   (events) and scheduler roles each in its own process; SQLite, or --database-url;
2. registers W wearables, alternately for two customers whose consent sends the customer's own notifications to the
   receiver (cancel window 0, so a fall asks contact 1 at once). The first customer's contact 1 is a webhook to the
   receiver; the second's is a carer of the household (invited through the API, the link read from the log) reached
   by SMS through the telephony provider, whose API (Twilio's shape) the receiver also plays;
3. phase "quiet": F falls, one wearable each, paced, with nothing else going on;
4. starts `simulators/fleet.py` (printers, their own MQTT clients, registered over the API) at about
   --background telemetry messages per second, waits for it to settle, and measures the background rate actually
   stored;
5. phase "loaded": F more falls on other wearables.

For each fall it records, on this machine's monotonic clock: publish -> the customer's notification received
(the incident was stored and committed before it left: it is the incident's own transaction that queued it), and
publish -> contact 1's notification received: the webhook, or the carer's SMS request at the provider. It prints
p50/p95/p99/max per phase and the loaded/quiet ratios.

    .venv/bin/python bench/alert_latency.py --stack production   # F=100, background 1000 msgs/s
    .venv/bin/python bench/alert_latency.py --stack up --background 500

Target (issues 6 and 21): p99 at most 100 ms under 1,000 telemetry messages per second, to contact 1 and to the
carer's channel. A bench figure, not a test.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine, make_url, text

ROOT = Path(__file__).resolve().parents[1]
REPLENISH = str(Path(sys.executable).parent / "replenish")
HOST = "127.0.0.1"
PASSWORD = "bench password 1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class Arrivals:
    """What the receiver got: per wearable, when its customer and contact notifications arrived."""

    customer: dict[str, float] = field(default_factory=dict)
    contact: dict[str, float] = field(default_factory=dict)
    carer: dict[str, float] = field(default_factory=dict)  # the carer's SMS, as the provider's API received it
    lock: threading.Lock = field(default_factory=threading.Lock)


SMS_TOKEN = secrets.token_urlsafe(16)


def send_receipt(url: str, sid: str) -> None:
    form = {"MessageSid": sid, "MessageStatus": "delivered", "AccountSid": "ACbench"}
    signed = url + "".join(f"{name}{form[name]}" for name in sorted(form))
    signature = base64.b64encode(hmac.new(SMS_TOKEN.encode(), signed.encode(), hashlib.sha1).digest()).decode()
    try:
        httpx.post(url, data=form, headers={"X-Twilio-Signature": signature}, timeout=10)
    except httpx.HTTPError as exc:
        print(f"! receipt for {sid}: {exc}", file=sys.stderr)


def start_receiver(arrivals: Arrivals) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            arrived = time.monotonic()
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            sms = self.path.endswith("/Messages.json")  # the telephony provider's API, Twilio's shape
            body = {k: v[0] for k, v in parse_qs(raw.decode()).items()} if sms else json.loads(raw)
            # Which wearable: its name is in the text ("bench-wearable-0007").
            text = f"{body.get('subject', '')} {body.get('body', '')} {body.get('Body', '')}"
            name = next((word.strip("().,:") for word in text.split() if word.startswith("bench-w")), None)
            with arrivals.lock:
                target = arrivals.carer if sms else arrivals.contact if self.path == "/contact" else arrivals.customer
                if name is not None:
                    target.setdefault(name, arrived)
            if sms:
                sid = f"SM{secrets.token_hex(16)}"
                answer = json.dumps({"sid": sid, "status": "queued"}).encode()
                # As a provider does: the handset's delivery receipt, signed, a moment later.
                threading.Timer(0.2, send_receipt, args=(body["StatusCallback"], sid)).start()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                return
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((HOST, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def invite_carer(api: httpx.Client, workdir: Path, customer: str, device_ids: list[str]) -> str:
    """A carer of the household, the wearables shared with them: invited as an owner does, the link taken from the
    log (no SMTP here; REPLENISH_LOG_NOTIFICATION_LINKS), accepted as the carer does. Their account id."""
    api.post(
        "/household/invitations",
        params={"customer_id": customer},
        json={"email": "carer@example.com", "role": "carer", "device_ids": device_ids},
    ).raise_for_status()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        logs = " ".join(path.read_text(errors="replace") for path in workdir.glob("*.log"))
        found = re.search(r"/app/invitations/([A-Za-z0-9_-]+)", logs)
        if found:
            joined = httpx.post(
                f"{str(api.base_url).rstrip('/')}/invitations/{found.group(1)}",
                json={"name": "Carer", "password": PASSWORD},
            )
            joined.raise_for_status()
            return str(joined.json()["account_id"])
        time.sleep(0.2)
    raise RuntimeError("the invitation's link did not reach the log")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"replenish up exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"replenish up not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def start_stack(stack: ExitStack, kind: str, env: dict[str, str], workdir: Path, api_url: str, broker_port: int) -> int:
    """Start the platform; returns the port devices connect to."""

    def role(args: list[str], name: str, role_env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = stack.enter_context((workdir / f"{name}.log").open("wb"))
        process = subprocess.Popen([REPLENISH, *args], env=role_env, stdout=log, stderr=subprocess.STDOUT)
        stack.callback(_stop, process)
        return process

    if kind == "up":
        platform = role(["up"], "platform", env)
        wait_ready(api_url, platform, workdir / "platform.log")
        return broker_port
    sys.path.insert(0, str(ROOT / "tests"))
    from support import brokers  # the tests' Mosquitto starter: the production config, rewritten for this machine

    password = env["REPLENISH_BROKER_SERVICE_PASSWORD"]
    (workdir / "mosquitto").mkdir()
    broker = stack.enter_context(
        brokers.running_mosquitto(workdir / "mosquitto", service_password=password, reload_check_seconds=0.5)
    )
    roles_env = env | {"REPLENISH_MQTT_URL": f"mqtt://{HOST}:{broker.platform_port}"}
    api = role(["api"], "api", roles_env)
    wait_ready(api_url, api, workdir / "api.log")
    role(["mosquitto-files", "--out", str(broker.auth_dir), "--every", "1"], "broker-auth", roles_env)
    # As docker-compose.yml runs them: safety events and telemetry in separate ingest processes.
    role(["ingest"], "ingest-events", roles_env | {"REPLENISH_INGEST_LANES": "events"})
    role(["ingest"], "ingest", roles_env | {"REPLENISH_INGEST_LANES": "telemetry"})
    role(["scheduler"], "scheduler", roles_env)
    time.sleep(2)
    return broker.device_port


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


class Wearable:
    def __init__(self, device_id: str, secret: str, port: int) -> None:
        self.device_id = device_id
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=paho.MQTTv311)
        self.client.username_pw_set(device_id, secret)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.connected = threading.Event()
        # Refused until the broker has the new device's secret (Mosquitto: its next reload); paho tries again.
        self.client.on_connect = lambda client, userdata, flags, reason, props: (
            self.connected.set() if not reason.is_failure else None
        )
        self.client.connect_async(HOST, port)
        self.client.loop_start()

    def fall(self) -> float:
        payload = json.dumps({"seq": 1, "type": "fall_detected", "confidence": 0.95}).encode()
        sent = time.monotonic()
        self.client.publish(f"devices/{self.device_id}/events", payload, qos=1)
        return sent

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_phase(
    name: str, wearables: list[Wearable], arrivals: Arrivals, *, spacing: float, timeout: float
) -> dict[str, list[float]]:
    sent: dict[str, float] = {}
    for wearable in wearables:
        sent[wearable.device_id] = wearable.fall()
        time.sleep(spacing)

    def first_contact(device_id: str) -> tuple[str, dict[str, float]]:
        # Odd wearables are the second customer's: their contact 1 is the carer, by SMS.
        return ("carer", arrivals.carer) if int(device_id.rsplit("-", 1)[1]) % 2 else ("contact", arrivals.contact)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with arrivals.lock:
            done = all(d in arrivals.customer and d in first_contact(d)[1] for d in sent)
        if done:
            break
        time.sleep(0.1)
    result: dict[str, list[float]] = {"customer": [], "contact": [], "carer": []}
    missing = 0
    with arrivals.lock:
        for device_id, at in sent.items():
            for kind, got in (("customer", arrivals.customer), first_contact(device_id)):
                if device_id in got:
                    result[kind].append((got[device_id] - at) * 1000)
                else:
                    missing += 1
    if missing:
        print(f"! {name}: {missing} notification(s) did not arrive within {timeout:.0f} s", file=sys.stderr)
    return result


def stored_rate(database_url: str, seconds: float) -> float:
    """Messages stored per second over ``seconds``, read from the platform's database."""
    engine = create_engine(database_url)

    def count() -> int:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM device_messages")).scalar_one())

    try:
        before, started = count(), time.monotonic()
        time.sleep(seconds)
        return (count() - before) / (time.monotonic() - started)
    finally:
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--falls", type=int, default=100, help="falls per phase F (default 100)")
    parser.add_argument("--spacing-ms", type=float, default=200, help="between falls (default 200)")
    parser.add_argument(
        "--background", type=float, default=1000, help="target background telemetry msgs/s (default 1000)"
    )
    parser.add_argument("--printers", type=int, default=100, help="fleet printers sharing the background (100)")
    parser.add_argument("--settle", type=float, default=10, help="seconds to let the fleet settle (default 10)")
    parser.add_argument("--stack", choices=("up", "production"), default="up", help="see above (default up)")
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL of an empty database dedicated to the run, e.g. postgresql+psycopg://user@host/db "
        "(default: a temporary SQLite file)",
    )
    parser.add_argument("--keep", type=Path, help="keep the platform's directory and logs here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    api_port, broker_port = free_port(), free_port()
    api_url = f"http://{HOST}:{api_port}"
    arrivals = Arrivals()
    receiver = start_receiver(arrivals)
    hook = f"http://{HOST}:{receiver.server_address[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLENISH_")} | {
        "REPLENISH_DATA_DIR": str(workdir),
        "REPLENISH_API_PORT": str(api_port),
        "REPLENISH_BROKER_PORT": str(broker_port),
        "REPLENISH_BROKER_SERVICE_PASSWORD": secrets.token_urlsafe(16),
        "REPLENISH_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
        "REPLENISH_LOG_LEVEL": "WARNING",
        # The receiver plays the telephony provider's API; the invitation's link is read from the log.
        "REPLENISH_SMS_PROVIDER": "twilio",
        "REPLENISH_SMS_ACCOUNT_SID": "ACbench",
        "REPLENISH_SMS_AUTH_TOKEN": SMS_TOKEN,
        "REPLENISH_SMS_FROM": "+15005550006",
        "REPLENISH_SMS_API_URL": hook,
        "REPLENISH_LOG_NOTIFICATION_LINKS": "true",
    }
    database_url = args.database_url or f"sqlite:///{workdir / 'replenish.db'}"
    env["REPLENISH_DATABASE_URL"] = database_url
    subprocess.run(
        [REPLENISH, "accounts", "create-operator", "--email", "bench@example.com"],
        env=env | {"REPLENISH_NEW_OPERATOR_PASSWORD": PASSWORD},
        check=True,
        capture_output=True,
    )
    fleet: subprocess.Popen[bytes] | None = None
    wearables: list[Wearable] = []
    stack = ExitStack()
    try:
        device_port = start_stack(stack, args.stack, env, workdir, api_url, broker_port)
        token = httpx.post(
            f"{api_url}/api/v1/auth/token", data={"username": "bench@example.com", "password": PASSWORD}
        ).json()["access_token"]
        api = httpx.Client(base_url=f"{api_url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        customers = [
            api.post(
                "/customers", json={"name": f"Wearers {n}", "email": f"wearers{n}@example.com", "password": PASSWORD}
            ).json()["id"]
            for n in (1, 2)
        ]
        for i in range(2 * args.falls):
            device_id = f"bench-wearable-{i:04d}"
            registered = api.post(
                "/devices",
                json={
                    "id": device_id,
                    "customer_id": customers[i % 2],
                    "kind": "wearable",
                    "name": device_id,
                    "slots": [],
                },
            )
            registered.raise_for_status()
            wearables.append(Wearable(device_id, registered.json()["credentials"]["mqtt_password"], device_port))
        carer = invite_carer(api, workdir, customers[1], [w.device_id for w in wearables[1::2]])
        contacts = [
            {"name": "Contact", "channel": "webhook", "address": f"{hook}/contact"},
            {"name": "Carer", "channel": "sms", "address": "+4915112345678", "account_id": carer},
        ]
        for customer, contact in zip(customers, contacts, strict=True):
            api.put(
                f"/customers/{customer}/consent",
                json={
                    "notification_channels": [{"type": "webhook", "address": f"{hook}/customer"}],
                    "emergency_contacts": [contact],
                    "fall_cancel_window_seconds": 0,
                    "escalation_timeout_seconds": 3600,
                },
            ).raise_for_status()
        for wearable in wearables:
            if not wearable.connected.wait(30):
                raise RuntimeError(f"{wearable.device_id} could not connect to the broker")
        time.sleep(1)

        spacing, timeout = args.spacing_ms / 1000, 30.0
        quiet = run_phase("quiet", wearables[: args.falls], arrivals, spacing=spacing, timeout=timeout)

        # The fleet: each printer reports every simulated minute; speed makes that per_printer msgs/s in real time.
        per_printer = args.background / args.printers
        fleet = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "simulators" / "fleet.py"),
                "--printers",
                str(args.printers),
                "--fridges",
                "0",
                "--wearables",
                "0",
                "--prefix",
                "bench",
                "--broker",
                f"mqtt://{HOST}:{device_port}",
                "--interval-minutes",
                "1",
                "--speed",
                str(60 * per_printer),
                "--history-days",
                "365",
                "--register",
                api_url,
                "--api-token",
                token,
                "--log-level",
                "WARNING",
            ],
            stdout=(workdir / "fleet.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        time.sleep(args.settle)
        if fleet.poll() is not None:
            raise RuntimeError(f"fleet simulator exited: {(workdir / 'fleet.log').read_text()[-2000:]}")
        background_before = stored_rate(database_url, 5)
        loaded = run_phase("loaded", wearables[args.falls :], arrivals, spacing=spacing, timeout=timeout)
        background_after = stored_rate(database_url, 5)
    finally:
        for wearable in wearables:
            wearable.close()
        if fleet is not None:
            fleet.terminate()
            fleet.wait(20)
        stack.close()
        receiver.shutdown()

    background = (background_before + background_after) / 2
    layout = (
        "`replenish up` (embedded amqtt broker, one process)"
        if args.stack == "up"
        else "Mosquitto + api, ingest (telemetry), ingest (events), scheduler in their own processes"
    )
    layout += f", {make_url(database_url).get_backend_name()}"
    print(
        f"platform: {layout}, {os.cpu_count()} CPUs; "
        f"F={args.falls} falls per phase, one every {args.spacing_ms:g} ms, each from its own wearable"
    )
    print(
        f"background: simulators/fleet.py, {args.printers} printers, target {args.background:g} msgs/s, "
        f"stored {background_before:,.0f} msgs/s before and {background_after:,.0f} after the loaded phase"
    )
    print()
    print("| phase  | notification               | n   | p50 ms | p95 ms | p99 ms | max ms |")
    print("|--------|----------------------------|-----|--------|--------|--------|--------|")
    rows: dict[tuple[str, str], list[float]] = {}
    kinds = (
        ("customer", "customer (incident stored)"),
        ("contact", "contact 1 (webhook)"),
        ("carer", "carer 1 (SMS at provider)"),
    )
    for phase, result in (("quiet", quiet), ("loaded", loaded)):
        for kind, label in kinds:
            values = result[kind]
            rows[(phase, kind)] = values
            if not values:
                print(f"| {phase:<6} | {label:<26} | 0   |        |        |        |        |")
                continue
            print(
                f"| {phase:<6} | {label:<26} | {len(values):<3} | {percentile(values, 50):6.1f} | "
                f"{percentile(values, 95):6.1f} | {percentile(values, 99):6.1f} | {max(values):6.1f} |"
            )
    print("(publish of fall_detected -> the request received, this machine's monotonic clock)")
    for kind in ("customer", "contact", "carer"):
        quiet_values, loaded_values = rows[("quiet", kind)], rows[("loaded", kind)]
        if quiet_values and loaded_values:
            ratio = percentile(loaded_values, 99) / percentile(quiet_values, 99)
            print(f"loaded/quiet p99, {kind}: {ratio:.2f}")
    for kind, label in (("contact", "contact 1"), ("carer", "the carer's SMS")):
        p99 = percentile(rows[("loaded", kind)], 99) if rows[("loaded", kind)] else float("inf")
        verdict = "met" if p99 <= 100 and background >= 0.9 * args.background else "MISSED"
        print(
            f"target: {label} p99 <= 100 ms under >= {args.background:g} msgs/s: {verdict} "
            f"(p99 {p99:.1f} ms at {background:,.0f} msgs/s); median over both phases "
            f"{statistics.median(rows[('quiet', kind)] + rows[('loaded', kind)]):.1f} ms"
        )
    if args.keep:
        shutil.copytree(workdir, args.keep, dirs_exist_ok=True)
        print(f"kept {workdir} in {args.keep}")
    shutil.rmtree(workdir, ignore_errors=True)
    missing = sum(
        1 for (_, kind), values in rows.items() if len(values) < (args.falls if kind == "customer" else args.falls // 2)
    )
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())

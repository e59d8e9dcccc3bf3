"""Play a device model over MQTT: the I/O half of the simulators.

``run_device`` connects one paho-mqtt client per device (MQTT 3.1.1, which is what the embedded amqtt
broker speaks), announces ``"online"`` on the retained status topic with ``"offline"`` as its last will,
and publishes what the model produces as its simulated clock moves on. The simulated clock runs at
``speed`` simulated seconds per real second; with ``catch_up`` it runs at ``speed`` only until it reaches
the real present and then follows real time, which is how a demo shows weeks of history in seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from replenish.config import MqttEndpoint
from replenish.mqtt.client import disconnect_and_stop
from replenish.simulation.devices import ConsumableModel, DeviceModel, SimMessage

log = logging.getLogger(__name__)

QOS = 1
ONLINE = json.dumps("online")  # the JSON string "online", quotes included
OFFLINE = json.dumps("offline")
CONNECT_TIMEOUT_SECONDS = 15.0
#: How long to wait, when stopping, for the broker to acknowledge what was published.
DRAIN_TIMEOUT_SECONDS = 30.0
#: How long to wait for the broker to confirm the subscription to, and forwarding of, the final "offline".
ECHO_TIMEOUT_SECONDS = 5.0
#: Publishing pauses while this many QoS 1 messages are unacknowledged (flow control at speed=inf).
MAX_UNACKED = 1000
#: At speed=inf the model is advanced this much per loop, so ``stop`` is noticed between chunks.
FAST_FORWARD_CHUNK = timedelta(hours=12)
#: A message the platform has not confirmed (devices/{id}/stored) this long after it was sent is sent again; each
#: further time after twice as long, up to MAX_RESEND_INTERVAL_SECONDS, and at most MAX_SENDS times in all.
RESEND_AFTER_SECONDS = 15.0
MAX_RESEND_INTERVAL_SECONDS = 300.0
MAX_SENDS = 8
#: How long ``close`` waits for the platform to confirm what is still unconfirmed.
STORED_TIMEOUT_SECONDS = 30.0
#: The most unconfirmed messages a device keeps; beyond, the oldest are given up (and counted).
MAX_UNCONFIRMED = 100_000


def status_topic(device_id: str) -> str:
    return f"devices/{device_id}/status"


def stored_topic(device_id: str) -> str:
    return f"devices/{device_id}/stored"


def commands_topic(device_id: str) -> str:
    return f"devices/{device_id}/commands"


def message_topic(device_id: str, channel: str) -> str:
    return f"devices/{device_id}/{channel}"


def encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


class PublishTracker:
    """Tracks QoS 1 publishes until the broker acknowledges them (wire ``on_publish`` to it).

    Unlike ``MQTTMessageInfo.wait_for_publish`` this also covers messages published while the client
    was disconnected (paho queues them and sends them on reconnect, but reports ``MQTT_ERR_NO_CONN``).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: set[int] = set()
        self._acked_early: set[int] = set()  # acknowledged before track() was called

    def track(self, mid: int) -> None:
        with self._cond:
            if mid in self._acked_early:
                self._acked_early.discard(mid)
            else:
                self._pending.add(mid)

    def on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._cond:
            if mid in self._pending:
                self._pending.discard(mid)
                self._cond.notify_all()
            else:
                self._acked_early.add(mid)

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def wait(self, *, below: int = 1, timeout: float | None = None) -> bool:
        """Block until fewer than ``below`` messages are unacknowledged; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._pending) < below, timeout)


def publish_messages(client: mqtt.Client, device_id: str, messages: Iterable[SimMessage]) -> list[mqtt.MQTTMessageInfo]:
    """Publish each message to ``devices/{device_id}/{channel}`` as JSON, QoS 1, not retained.

    Returns paho's message infos (their ``mid`` identify the acknowledgements). A message published while
    the client is disconnected is queued by paho and sent on reconnect; any other failure raises.
    """
    infos = []
    for message in messages:
        info = client.publish(message_topic(device_id, message.channel), encode(message.payload), qos=QOS)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"publishing to {device_id}/{message.channel} failed: {mqtt.error_string(info.rc)}")
        infos.append(info)
    return infos


def simulated_now(
    start: datetime, *, speed: float, elapsed_seconds: float, catch_up: bool, wall_now: datetime
) -> datetime:
    """Where the simulated clock is after ``elapsed_seconds`` of real time (speed may be inf)."""
    if catch_up:
        if math.isinf(speed):
            return wall_now
        # the fast clock until it meets the real one, which then leads: both only move forward
        return min(start + timedelta(seconds=speed * elapsed_seconds), wall_now)
    if math.isinf(speed):
        return datetime.max.replace(tzinfo=UTC)
    return start + timedelta(seconds=speed * elapsed_seconds)


@dataclass
class _Unconfirmed:
    topic: str
    payload: bytes
    sent_at: float  # time.monotonic()
    sends: int = 1


class UnconfirmedMessages:
    """The device's side of the platform's confirmations (docs/mqtt.md, "Confirmations"): every telemetry and event
    message is kept until a message on devices/{id}/stored covers its seq, and sent again while it is not. A broker
    that acknowledged a message and then lost it (a restart before anyone subscribed) cannot lose it for good."""

    def __init__(self, *, limit: int = MAX_UNCONFIRMED) -> None:
        self._cond = threading.Condition()
        self._messages: dict[int, _Unconfirmed] = {}  # by seq, oldest first
        self._limit = limit
        self.given_up = 0
        self.refused = 0

    def keep(self, seq: int, topic: str, payload: bytes, *, now: float) -> None:
        with self._cond:
            self._messages[seq] = _Unconfirmed(topic, payload, now)
            while len(self._messages) > self._limit:
                del self._messages[next(iter(self._messages))]
                self.given_up += 1

    def confirm(self, document: Any) -> None:
        """Forget the seqs a confirmation covers. Anything malformed confirms nothing."""
        if not isinstance(document, dict):
            return
        with self._cond:
            for key in ("stored", "refused"):
                for run in document.get(key) or ():
                    if not (isinstance(run, list) and len(run) == 2 and all(type(n) is int for n in run)):
                        continue
                    first, last = run
                    if last - first < len(self._messages):
                        covered = [seq for seq in range(first, last + 1) if seq in self._messages]
                    else:
                        covered = [seq for seq in self._messages if first <= seq <= last]
                    for seq in covered:
                        del self._messages[seq]
                    if key == "refused":
                        self.refused += len(covered)
            self._cond.notify_all()

    def due(
        self, *, now: float, after: float = RESEND_AFTER_SECONDS, limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        """The messages (oldest first, at most ``limit``) unconfirmed for long enough since they were last sent:
        ``after`` seconds the first time, twice as long each time after. They are marked as sent again now; one sent
        MAX_SENDS times is given up instead (a platform that never confirms it will not start now)."""
        with self._cond:
            due: list[_Unconfirmed] = []
            for seq, message in list(self._messages.items()):
                if limit is not None and len(due) >= limit:
                    break
                wait = min(after * 2 ** (message.sends - 1), max(after, MAX_RESEND_INTERVAL_SECONDS))
                if now - message.sent_at < wait:
                    continue
                if message.sends >= MAX_SENDS:
                    del self._messages[seq]
                    self.given_up += 1
                    continue
                message.sent_at, message.sends = now, message.sends + 1
                due.append(message)
            if self.given_up:
                self._cond.notify_all()
            return [(message.topic, message.payload) for message in due]

    def forget(self) -> None:
        """Stop keeping anything: the broker refused the subscription to the confirmations, none will come."""
        with self._cond:
            self.given_up += len(self._messages)
            self._messages.clear()
            self._cond.notify_all()

    @property
    def count(self) -> int:
        with self._cond:
            return len(self._messages)

    def wait_empty(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._messages, timeout)


class _Connection:
    """A connected paho client with status handling and acknowledgement tracking."""

    def __init__(
        self,
        device_id: str,
        endpoint: MqttEndpoint,
        client_id: str | None,
        *,
        keep_until_stored: bool = True,
        stored_timeout: float = STORED_TIMEOUT_SECONDS,
        resend_after: float = RESEND_AFTER_SECONDS,
    ) -> None:
        self.device_id = device_id
        self.resend_after = resend_after
        self.tracker = PublishTracker()
        self.unconfirmed = UnconfirmedMessages() if keep_until_stored else None
        self.stored_timeout = stored_timeout
        # Held while subscribing, so that the SUBACK's callback sees which subscription it answers.
        self._subscribing = threading.Lock()
        self._status_subscription: int | None = None
        self._confirmations_refused = False
        self._connected = threading.Event()
        self._refused: str | None = None
        self._subscribed = threading.Event()
        self._subscribe_refused = False
        self._offline_echoed = threading.Event()
        # The platform's commands, as they came (docs/mqtt.md, "Platform -> device"): an acknowledged alert tells the
        # wearer that help is coming.
        self.commands: list[dict[str, Any]] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or device_id,  # a device signs in as its own session
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if endpoint.username:
            self.client.username_pw_set(endpoint.username, endpoint.password)
        self.client.will_set(status_topic(device_id), OFFLINE, qos=QOS, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self.tracker.on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.endpoint = endpoint

    def open(self) -> None:
        # connect_async + loop_start: paho's thread retries until the broker answers (it may start later)
        self.client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(CONNECT_TIMEOUT_SECONDS):
            self.client.loop_stop()
            reason = self._refused or f"no answer within {CONNECT_TIMEOUT_SECONDS:.0f} s"
            raise ConnectionError(f"{self.device_id}: cannot connect to {self.endpoint.url}: {reason}")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            # Paho tries again (1 s, then longer): a device registered a moment ago may be refused until the broker
            # has its secret (Mosquitto reloads its password file every few seconds).
            log.warning("%s: broker refused the connection (%s); trying again", self.device_id, reason_code)
            self._refused = str(reason_code)
            return
        log.info("%s: connected to %s", self.device_id, self.endpoint.url)
        if self.unconfirmed is not None:
            # A clean session: subscribed again on every connection. QoS 0 is all the platform sends.
            client.subscribe(stored_topic(self.device_id), qos=0)
        client.subscribe(commands_topic(self.device_id), qos=QOS)
        # Announced on every (re)connect: the broker may have sent the last will in between.
        self._publish_status(ONLINE)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("%s: disconnected (%s), paho will reconnect", self.device_id, reason_code)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[Any], properties: Any
    ) -> None:
        with self._subscribing:
            status = mid == self._status_subscription
        if not status:
            if any(code.is_failure for code in reason_codes):
                log.warning("%s: the broker refused a subscription (confirmations or commands)", self.device_id)
            return
        self._subscribe_refused = any(code.is_failure for code in reason_codes)
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == commands_topic(self.device_id):
            self._on_command(bytes(message.payload))
            return
        if self.unconfirmed is not None and message.topic == stored_topic(self.device_id):
            try:
                self.unconfirmed.confirm(json.loads(message.payload))
            except ValueError:
                log.warning("%s: a confirmation that is not JSON: %r", self.device_id, message.payload[:100])
            return
        # Only our own "offline" coming back live (retained copies have the retain flag set) matters.
        # Anything else is ignored: amqtt 0.12.1 even sends unsolicited retained messages on connect.
        if message.topic == status_topic(self.device_id) and not message.retain and message.payload == OFFLINE.encode():
            self._offline_echoed.set()

    def _on_command(self, payload: bytes) -> None:
        try:
            command = json.loads(payload)
        except ValueError:
            log.warning("%s: a command that is not JSON: %r", self.device_id, payload[:100])
            return
        if not isinstance(command, dict):
            log.warning("%s: a command that is not an object: %r", self.device_id, payload[:100])
            return
        self.commands.append(command)
        if command.get("type") == "alert_acknowledged":
            # What the pendant shows the wearer: someone has it in hand.
            log.warning("%s: alert_acknowledged (alert %s): help is coming", self.device_id, command.get("alert_id"))
        else:
            log.info("%s: command %s", self.device_id, command.get("type"))

    def _publish_status(self, status: str) -> None:
        info = self.client.publish(status_topic(self.device_id), status, qos=QOS, retain=True)
        self.tracker.track(info.mid)

    def publish(self, messages: list[SimMessage]) -> None:
        if self.unconfirmed is not None and not self._confirmations_refused:
            now = time.monotonic()
            for message in messages:
                topic = message_topic(self.device_id, message.channel)
                self.unconfirmed.keep(message.payload["seq"], topic, encode(message.payload), now=now)
        for info in publish_messages(self.client, self.device_id, messages):
            self.tracker.track(info.mid)

    def resend_unconfirmed(self) -> int:
        """Send again what the platform has not confirmed in time (only while connected: paho would queue it twice)."""
        if self.unconfirmed is None or self._confirmations_refused or not self.client.is_connected():
            return 0
        # Within the window of unacknowledged publishes: a backlog goes out at the pace the broker takes it.
        room = MAX_UNACKED - self.tracker.pending
        if room <= 0:
            return 0
        due = self.unconfirmed.due(now=time.monotonic(), after=self.resend_after, limit=room)
        for topic, payload in due:
            info = self.client.publish(topic, payload, qos=QOS)
            self.tracker.track(info.mid)
        if due:
            log.info("%s: sent %d unconfirmed message(s) again", self.device_id, len(due))
        return len(due)

    def wait_stored(self, timeout: float) -> bool:
        """Until the platform has confirmed everything (sending again what it has not), at most ``timeout``."""
        if self.unconfirmed is None:
            return True
        deadline = time.monotonic() + timeout
        while not self.unconfirmed.wait_empty(min(1.0, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                log.warning("%s: %d message(s) not confirmed by the platform", self.device_id, self.unconfirmed.count)
                return False
            self.resend_unconfirmed()
        return True

    def close(self) -> None:
        """Say "offline" (retained), make sure the broker has passed everything on, and disconnect.

        A PUBACK is not enough: amqtt 0.12.1 acknowledges a QoS 1 message, queues it, and drops what is
        still queued when the client disconnects. So the client subscribes to its own status topic and
        waits for its "offline" to come back: the broker handles a client's messages in order, so by then
        everything before it has been forwarded (and the retained status really is "offline").
        """
        try:
            self.wait_stored(self.stored_timeout)
            connected = self.client.is_connected()
            echo = connected and self._subscribe_to_own_status()
            self._publish_status(OFFLINE)
            # connected: the broker is answering, give it time; otherwise a short grace for a reconnect
            timeout = DRAIN_TIMEOUT_SECONDS if connected else 3.0
            if not self.tracker.wait(timeout=timeout):
                log.warning("%s: %d message(s) not acknowledged by the broker", self.device_id, self.tracker.pending)
            elif echo and not self._offline_echoed.wait(ECHO_TIMEOUT_SECONDS):
                log.warning('%s: the broker did not forward the final "offline" in time', self.device_id)
        finally:
            disconnect_and_stop(self.client)

    def _subscribe_to_own_status(self) -> bool:
        """Subscribe to the device's status topic; False if the broker will not allow or confirm it."""
        with self._subscribing:
            _, self._status_subscription = self.client.subscribe(status_topic(self.device_id), qos=QOS)
        if not self._subscribed.wait(ECHO_TIMEOUT_SECONDS) or self._subscribe_refused:
            log.debug("%s: cannot subscribe to its own status; stopping without confirmation", self.device_id)
            return False
        return True


def run_device(
    model: DeviceModel,
    endpoint: MqttEndpoint,
    *,
    speed: float = 1.0,
    catch_up: bool = False,
    duration: timedelta | None = None,
    stop: threading.Event | None = None,
    tick_seconds: float = 0.2,
    client_id: str | None = None,
    keep_until_stored: bool = True,
    stored_timeout: float = STORED_TIMEOUT_SECONDS,
    resend_after: float = RESEND_AFTER_SECONDS,
) -> int:
    """Simulate ``model`` and publish its messages until ``duration`` of simulated time or ``stop``.

    ``speed`` is simulated seconds per real second; ``float("inf")`` publishes as fast as possible up to
    ``model.start + duration`` (or, with ``catch_up``, up to the present and then in real time). Returns
    the number of device messages (telemetry and events, not status) the broker acknowledged.

    With ``keep_until_stored`` (the default) the device keeps every message until the platform confirms it, sends
    again what stays unconfirmed for ``resend_after`` seconds, and on stopping waits up to ``stored_timeout`` for the
    last confirmations. Without, it trusts the broker's PUBACK, as devices that predate the confirmations do (and as a
    test of a bare broker must).
    """
    if not speed > 0:
        raise ValueError(f"speed must be positive, got {speed}")
    fast = math.isinf(speed)
    if fast and duration is None and not catch_up:
        raise ValueError("speed=inf without catch_up needs a duration")
    stop = stop or threading.Event()
    end = model.start + duration if duration is not None else None

    connection = _Connection(
        model.device_id,
        endpoint,
        client_id,
        keep_until_stored=keep_until_stored,
        stored_timeout=stored_timeout,
        resend_after=resend_after,
    )
    connection.open()
    handed_over = 0
    try:
        real_start = time.monotonic()
        while not stop.is_set():
            wall_now = datetime.now(UTC)
            target = simulated_now(
                model.start,
                speed=speed,
                elapsed_seconds=time.monotonic() - real_start,
                catch_up=catch_up,
                wall_now=wall_now,
            )
            if fast:
                target = min(target, model.now + FAST_FORWARD_CHUNK)
            if end is not None:
                target = min(target, end)
            messages = model.advance_to(target)
            connection.publish(messages)
            connection.resend_unconfirmed()
            handed_over += len(messages)
            if not connection.tracker.wait(below=MAX_UNACKED, timeout=DRAIN_TIMEOUT_SECONDS):
                log.warning("%s: broker is not acknowledging, publishing on", model.device_id)
            if end is not None and model.now >= end:
                log.info("%s: simulated %s, done", model.device_id, duration)
                break
            if fast and not (catch_up and model.now >= wall_now):
                continue  # fast-forwarding: no sleeping until the end or the present is reached
            stop.wait(tick_seconds)
    finally:
        connection.close()
    published = handed_over - connection.tracker.pending
    log.info("%s: %d message(s) published, simulated clock at %s", model.device_id, published, model.now)
    return published


# -- helpers for the command-line simulators in simulators/ ------------------------------------------


@dataclass(frozen=True)
class CliOptions:
    """What the shared simulator flags resolve to."""

    args: argparse.Namespace
    endpoint: MqttEndpoint
    speed: float
    seed: int
    report_interval: timedelta | None  # None: the model's default
    duration: timedelta | None  # None: until Ctrl-C
    start: datetime
    catch_up: bool
    keep_until_stored: bool


def parse_speed(text: str) -> float:
    """``--speed`` value: a positive number, or ``inf`` for as fast as possible."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("speed must be positive (or inf)")
    return value


def parse_slot_values(items: list[str] | None) -> dict[str, float] | None:
    """``["black=0.5", "cyan=0.8"]`` -> ``{"black": 0.5, "cyan": 0.8}`` (None when empty)."""
    if not items:
        return None
    values: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            values[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"expected SLOT=NUMBER, got {item!r}") from None
    return values


def add_common_arguments(parser: argparse.ArgumentParser, *, interval_minutes: float | None) -> None:
    """Flags shared by the simulators (``--device-id`` and model flags are added by each script)."""
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://[user[:pass]@]host[:port]")
    parser.add_argument(
        "--speed",
        type=parse_speed,
        default=1.0,
        help="simulated seconds per real second; 'inf' = as fast as possible (default 1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    default = f"{interval_minutes:g}" if interval_minutes is not None else "the device's own"
    parser.add_argument(
        "--interval-minutes",
        type=float,
        default=interval_minutes,
        help=f"simulated minutes between telemetry reports (default {default})",
    )
    parser.add_argument(
        "--duration-hours",
        type=float,
        default=None,
        help="stop after this many simulated hours from the start (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--history-days",
        type=float,
        default=0.0,
        help="start this many days in the past, replay them at --speed, then follow real time",
    )
    parser.add_argument(
        "--register",
        metavar="API_URL",
        help="first register the device(s) with the platform at this URL, e.g. http://127.0.0.1:8000 (otherwise "
        "their messages are dead letters until someone registers them); needs --api-token",
    )
    parser.add_argument(
        "--api-token",
        default=os.environ.get("REPLENISH_API_TOKEN"),
        help="bearer token for --register (default: $REPLENISH_API_TOKEN): a customer's registers the devices as "
        "theirs; an operator's, under a 'Simulated devices' customer",
    )
    parser.add_argument(
        "--trust-broker",
        action="store_true",
        help="forget a message once the broker acknowledges it, as devices that predate the platform's "
        "confirmations do (default: keep it until devices/{id}/stored confirms it, and send it again meanwhile)",
    )
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO)")


def parse_common(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> CliOptions:
    """Parse and check the command line, and set up logging."""
    args = parser.parse_args(argv)
    try:
        endpoint = MqttEndpoint.parse(args.broker)
    except ValueError as exc:
        parser.error(str(exc))
    if args.interval_minutes is not None and args.interval_minutes <= 0:
        parser.error("--interval-minutes must be positive")
    if args.duration_hours is not None and args.duration_hours <= 0:
        parser.error("--duration-hours must be positive")
    if args.history_days < 0:
        parser.error("--history-days cannot be negative")
    if math.isinf(args.speed) and args.duration_hours is None and not args.history_days:
        parser.error("--speed inf needs --duration-hours or --history-days")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.history_days and args.speed <= 1:
        log.warning("with --history-days, a --speed of 1 or less never catches up with the present")
    now = datetime.now(UTC).replace(microsecond=0)
    return CliOptions(
        args=args,
        endpoint=endpoint,
        speed=args.speed,
        seed=args.seed,
        report_interval=timedelta(minutes=args.interval_minutes) if args.interval_minutes else None,
        duration=timedelta(hours=args.duration_hours) if args.duration_hours else None,
        start=now - timedelta(days=args.history_days),
        catch_up=args.history_days > 0,
        keep_until_stored=not args.trust_broker,
    )


def stop_on_signals() -> threading.Event:
    """An event that SIGINT/SIGTERM set, so simulators stop cleanly (publishing "offline")."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop


def register_if_asked(options: CliOptions, models: list[DeviceModel]) -> dict[str, MqttEndpoint]:
    """Each device's broker endpoint: with --register, signed in with the secret the platform issued it;
    otherwise the --broker URL as given (its user and password, if any)."""
    if not options.args.register:
        return {model.device_id: options.endpoint for model in models}
    from replenish.simulation.registration import register_over_api

    if not options.args.api_token:
        raise SystemExit("--register needs --api-token (or REPLENISH_API_TOKEN): a customer's or an operator's")
    secrets = register_over_api(options.args.register, models, token=options.args.api_token)
    return {
        model.device_id: replace(options.endpoint, username=model.device_id, password=secrets[model.device_id])
        for model in models
    }


def run_cli(model: DeviceModel, options: CliOptions, stop: threading.Event | None = None) -> int:
    """Run one device for a command-line simulator; returns the process exit status."""
    try:
        endpoints = register_if_asked(options, [model])
        run_device(
            model,
            endpoints[model.device_id],
            speed=options.speed,
            catch_up=options.catch_up,
            duration=options.duration,
            stop=stop or stop_on_signals(),
            keep_until_stored=options.keep_until_stored,
        )
    except (ConnectionError, httpx.HTTPError) as exc:
        log.error("%s", exc)
        return 1
    return 0


def consumable_main(
    model_class: type[ConsumableModel],
    *,
    description: str,
    default_device_id: str,
    level_help: str,
    usage_help: str,
    argv: list[str] | None = None,
) -> int:
    """The command line of a device with consumable slots (printer.py, fridge.py)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device-id", default=default_device_id, help=f"device id (default {default_device_id})")
    add_common_arguments(parser, interval_minutes=60)
    parser.add_argument("--level", action="append", metavar="SLOT=AMOUNT", help=level_help)
    parser.add_argument("--daily-usage", action="append", metavar="SLOT=AMOUNT", help=usage_help)
    options = parse_common(parser, argv)
    try:
        model = model_class(
            options.args.device_id,
            start=options.start,
            seed=options.seed,
            report_interval=options.report_interval or timedelta(hours=1),
            initial_levels=parse_slot_values(options.args.level),
            daily_usage=parse_slot_values(options.args.daily_usage),
        )
    except ValueError as exc:
        parser.error(str(exc))
    return run_cli(model, options)

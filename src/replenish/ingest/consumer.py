"""The MQTT ingestor: receives at QoS 1, commits in batches, and acknowledges a message only once it is stored.
Safety events have a lane of their own."""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from replenish.clock import Clock
from replenish.config import MqttEndpoint
from replenish.constants import (
    CONFIRM_INTERVAL_SECONDS,
    DEAD_LETTERS_PER_DEVICE_HOUR,
    INGEST_SUBSCRIPTIONS,
    MQTT_QOS,
    SHARED_SUBSCRIPTION_PREFIX,
    STORED_TOPIC,
    Channel,
    DeadLetterReason,
)
from replenish.db import transaction
from replenish.ingest.schemas import IncomingMessage, confirmation_payloads
from replenish.ingest.service import BatchResult, dead_letter, ingest_batch
from replenish.mqtt.client import connect_async, disconnect_and_stop, make_client
from replenish.observability.metrics import Metrics

log = logging.getLogger(__name__)

RETRY_BACKOFF_MAX_SECONDS = 30.0
LANE_SUBSCRIBE_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class _Delivery:
    message: IncomingMessage
    mid: int
    qos: int
    # Which connection delivered it: a PUBACK is only meaningful on that one.
    connection: int
    # time.monotonic() on arrival, for the receive -> commit lag (the injectable clock may be a test's manual one).
    arrived: float


class _Confirmations:
    """What a lane has stored or refused since it last told the devices, per device; sent at most every
    CONFIRM_INTERVAL_SECONDS, one message per device, at QoS 0: a confirmation lost on the way only makes the device
    send the message again, which is stored once and confirmed again (docs/mqtt.md, "Confirmations")."""

    def __init__(self) -> None:
        self._stored: dict[str, list[int]] = {}
        self._refused: dict[str, list[int]] = {}
        self._next = time.monotonic() + CONFIRM_INTERVAL_SECONDS

    def note(self, result: BatchResult) -> None:
        for mine, theirs in ((self._stored, result.stored_seqs), (self._refused, result.refused_seqs)):
            for device_id, seqs in theirs.items():
                mine.setdefault(device_id, []).extend(seqs)

    def send_if_due(self, client: paho.Client) -> None:
        if time.monotonic() >= self._next:
            self.send(client)

    def send(self, client: paho.Client) -> None:
        self._next = time.monotonic() + CONFIRM_INTERVAL_SECONDS
        stored, refused, self._stored, self._refused = self._stored, self._refused, {}, {}
        for device_id in stored.keys() | refused.keys():
            topic = STORED_TOPIC.format(device_id=device_id)
            for payload in confirmation_payloads(stored=stored.get(device_id, ()), refused=refused.get(device_id, ())):
                client.publish(topic, payload, qos=0)


class _Lane:
    """One persistent MQTT session (its own client id and subscriptions) with its own queue and writer thread."""

    def __init__(
        self,
        owner: MqttIngestor,
        *,
        name: str,
        client_id: str,
        subscriptions: tuple[str, ...],
        unsubscriptions: tuple[str, ...],
        batch_wait: float,
    ) -> None:
        self.owner = owner
        self.name = name
        self.batch_wait = batch_wait
        self.subscriptions = subscriptions
        # Topics an older version of this session subscribed to and that now travel in another lane.
        self.unsubscriptions = unsubscriptions
        # Bounded: when the writer falls behind, paho's network thread waits here and TCP pushes back on the
        # broker, instead of the backlog piling up in this process's memory (Mosquitto 2.0.11 does not hold
        # deliveries to max_inflight_messages once acknowledgements flow).
        self.queue: queue.Queue[_Delivery] = queue.Queue(maxsize=max(4 * owner.batch_size, 1000))
        self.subscribed = threading.Event()
        self.connection = 0
        self.confirmations = _Confirmations()
        owner.metrics.ingest_queue(lane=name, qsize=self.queue.qsize)
        self.writer = threading.Thread(target=self._write_loop, name=f"ingest-{name}", daemon=True)
        self.client_id = client_id
        self.client = make_client(
            owner.endpoint, client_id=client_id, persistent_session=True, manual_ack=True, mqtt5=owner.mqtt5
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def start(self) -> None:
        self.writer.start()
        connect_async(self.client, self.owner.endpoint, persistent_session=True)
        self.client.loop_start()

    # -- paho callbacks (network thread) ---------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("MQTT connection to %s refused: %s", self.owner.endpoint.url, reason)
            return
        self.connection += 1
        log.info(
            "ingestor (%s) connected to %s as %s (session present: %s)",
            self.name,
            self.owner.endpoint.url,
            self.client_id,
            flags.session_present,
        )
        if self.unsubscriptions:
            client.unsubscribe(list(self.unsubscriptions))
        client.subscribe([(topic, MQTT_QOS) for topic in self.subscriptions])

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        granted = zip(self.subscriptions, reasons, strict=False)
        refused = [f"{topic} ({reason})" for topic, reason in granted if reason.is_failure]
        if refused:
            # A broker without shared subscriptions (or one that forbids a filter) answers here, and nothing would
            # ever arrive: say so loudly rather than wait in silence.
            log.error("ingestor (%s): the broker refused the subscription to %s", self.name, ", ".join(refused))
            return
        log.info("ingestor subscribed to %s", ", ".join(self.subscriptions))
        self.subscribed.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connection += 1  # deliveries of the lost connection must not be acknowledged on the next one
        self.subscribed.clear()
        if not self.owner.stopping.is_set():
            log.warning(
                "ingestor (%s) disconnected from %s (%s); reconnecting", self.name, self.owner.endpoint.url, reason
            )

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        # A topic that is not UTF-8 cannot be a contract topic; keep it readable for the dead letter.
        topic = message._topic.decode("utf-8", errors="replace")
        incoming = IncomingMessage(topic=topic, payload=bytes(message.payload), received_at=self.owner.clock.now())
        delivery = _Delivery(incoming, message.mid, message.qos, self.connection, time.monotonic())
        if self.owner.stopping.is_set():
            # Stopping: what is in hand is committed, nothing more is taken. Never acknowledged, this one is
            # delivered again to the session (another member's, or this one's after a restart).
            return
        while not self.owner.abandon.is_set():
            try:
                self.queue.put(delivery, timeout=0.5)
                return
            except queue.Full:
                continue
        # Given up on while stopping: never acknowledged, so the broker delivers it again.

    # -- writer thread ---------------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        owner = self.owner
        while not (owner.stopping.is_set() and self.queue.empty()) and not owner.abandon.is_set():
            self.confirmations.send_if_due(self.client)
            try:
                first = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            # Under load a backlog built up while the last batch committed: take it and commit at once. Only a
            # lane that found nothing else waiting gives stragglers batch_wait to join (a burst shares a commit);
            # waiting under load would idle the database for batch_wait on every batch.
            while len(batch) < owner.batch_size:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < owner.batch_size and (len(batch) == 1 or not self.queue.empty()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(self.queue.get(timeout=remaining))
                except queue.Empty:
                    break
            result = owner.commit(batch)
            if result is None:
                return  # abandoned while the database was failing: nothing acknowledged
            committed = time.monotonic()
            owner.metrics.ingest_committed(
                lane=self.name, result=result, lags=(committed - delivery.arrived for delivery in batch)
            )
            for delivery in batch:
                # After a reconnect the broker resends what was not acknowledged, and may reuse a packet id for
                # another message: acknowledging an old delivery there would acknowledge a message never stored.
                if delivery.qos > 0 and delivery.connection == self.connection:
                    self.client.ack(delivery.mid, delivery.qos)
            self.confirmations.note(result)
            owner.count(result)
        self.confirmations.send(self.client)


class MqttIngestor:
    """Two lanes, each one persistent MQTT session with its own writer thread: events (a fall, a help request) and
    everything else (telemetry, status). A safety event does not queue behind a backlog of telemetry here.

    In each lane paho's network thread only queues messages; the writer drains the queue into batches, commits each
    batch in one transaction, and only then sends the PUBACKs (manual ack). A crash before the commit leaves the
    messages unacknowledged, and the broker delivers them again to the persistent session.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        endpoint: MqttEndpoint,
        clock: Clock,
        client_id: str = "replenish-ingest",
        batch_size: int = 500,
        batch_wait_seconds: float = 0.02,
        lanes: Collection[str] = ("events", "telemetry"),
        metrics: Metrics | None = None,
        share_group: str | None = None,
        dead_letters_per_hour: int = DEAD_LETTERS_PER_DEVICE_HOUR,
    ) -> None:
        self.dead_letters_per_hour = dead_letters_per_hour
        self.engine = engine
        # Without a registry given (a benchmark, a test's second ingestor), counted into one nobody reads.
        self.metrics = metrics or Metrics(role="ingest")
        self.endpoint = endpoint
        self.clock = clock
        self.batch_size = batch_size
        # Shared subscriptions are MQTT 5; without a group, 3.1.1 as ever (the embedded broker speaks nothing newer).
        self.mqtt5 = bool(share_group)
        self.abandon = threading.Event()
        self.stopping = threading.Event()
        self._totals = BatchResult()
        self._totals_lock = threading.Condition()
        topics = tuple(shared(topic, share_group) for topic in INGEST_SUBSCRIPTIONS)
        events = tuple(topic for topic in topics if topic.endswith(f"/{Channel.EVENTS}"))
        rest = tuple(topic for topic in topics if topic not in events)
        all_lanes = (
            # Events are few and urgent: stored as they come (what arrives together still commits together).
            _Lane(
                self,
                name="events",
                client_id=lane_client_id(client_id, "events"),
                subscriptions=events,
                unsubscriptions=(),
                batch_wait=0.0,
            ),
            _Lane(
                self,
                name="telemetry",
                client_id=lane_client_id(client_id, "telemetry"),
                subscriptions=rest,
                # The telemetry session of an older version also took events. It lets go of them only where the
                # events lane runs in this same process and has subscribed first (start): with the events lane in
                # another process, nothing here can know it is subscribed, and a fall published in between would
                # reach no session. Delivered to both, an event is stored once ((device, seq) is unique).
                unsubscriptions=events if "events" in lanes else (),
                batch_wait=batch_wait_seconds,
            ),
        )
        unknown = set(lanes) - {lane.name for lane in all_lanes}
        if unknown or not lanes:
            raise ValueError(f"ingest lanes must be some of events, telemetry (got {sorted(lanes)})")
        self._lanes = tuple(lane for lane in all_lanes if lane.name in lanes)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        for lane in self._lanes:  # events first: see the telemetry lane's unsubscriptions
            lane.start()
            if lane.name == "events" and not lane.subscribed.wait(LANE_SUBSCRIBE_WAIT_SECONDS):
                log.warning("events lane not yet subscribed; starting the telemetry lane anyway")

    def wait_ready(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        return all(lane.subscribed.wait(max(0.0, deadline - time.monotonic())) for lane in self._lanes)

    def stop(self, timeout: float = 10.0) -> None:
        """Take nothing new, store and acknowledge what is in hand (for up to ``timeout`` seconds), then leave.

        What arrives meanwhile, or is still queued at the timeout, stays unacknowledged: the broker delivers it again
        to this session.
        """
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for lane in self._lanes:
            lane.writer.join(max(0.0, deadline - time.monotonic()))
        if any(lane.writer.is_alive() for lane in self._lanes):
            self.abandon.set()
            for lane in self._lanes:
                lane.writer.join(RETRY_BACKOFF_MAX_SECONDS)
            log.warning(
                "ingestor stopped with %d message(s) not stored; the broker will deliver them again",
                sum(lane.queue.qsize() for lane in self._lanes),
            )
        # Nothing will be taken off the queues any more: let paho's threads drop what still comes, or they could
        # wait on a full queue forever and never finish disconnecting.
        self.abandon.set()
        for lane in self._lanes:
            disconnect_and_stop(lane.client)

    # -- storage (writer threads) ----------------------------------------------------------------------------
    def commit(self, batch: list[_Delivery]) -> BatchResult | None:
        messages = [delivery.message for delivery in batch]
        backoff = 0.5
        while True:
            for attempt in range(2):
                try:
                    with transaction(self.engine) as session:
                        # First without asking which messages are stored already: the unique constraint says so.
                        return ingest_batch(
                            session=session,
                            messages=messages,
                            check_stored=attempt > 0,
                            dead_letters_per_hour=self.dead_letters_per_hour,
                        )
                except DBAPIError as exc:
                    if attempt == 0 and _worth_another_try(exc):
                        # A redelivery of a message stored before (or by another lane or ingest process meanwhile),
                        # or a deadlock: the batch itself is fine, and the next try, which checks, sees the rows.
                        log.debug("batch of %d collided with stored rows (%s); trying again", len(messages), exc)
                        continue
                    log.exception("batch of %d failed; storing its messages one by one", len(messages))
                except Exception:
                    log.exception("batch of %d failed; storing its messages one by one", len(messages))
                break
            try:
                return self._commit_one_by_one(messages)
            except Exception:
                # The database itself is failing: keep the batch unacknowledged and try again.
                log.exception("database unavailable; retrying in %.1f s", backoff)
                if self.abandon.wait(backoff):
                    return None
                backoff = min(backoff * 2, RETRY_BACKOFF_MAX_SECONDS)

    def _commit_one_by_one(self, messages: list[IncomingMessage]) -> BatchResult:
        total = BatchResult()
        for message in messages:
            try:
                with transaction(self.engine) as session:
                    result = ingest_batch(
                        session=session, messages=[message], dead_letters_per_hour=self.dead_letters_per_hour
                    )
            except DBAPIError as exc:
                if _connection_lost(exc):
                    raise  # the database, not the message: retry the batch, acknowledge nothing
                result = self._dead_letter_after_error(message, exc)
            except Exception as exc:
                result = self._dead_letter_after_error(message, exc)
            total.add(result)
        return total

    def _dead_letter_after_error(self, message: IncomingMessage, error: Exception) -> BatchResult:
        log.exception("message on %s could not be stored; dead-lettering it", message.topic)
        with transaction(self.engine) as session:
            dead_letter(
                session=session,
                message=message,
                reason=f"internal error while storing: {error!r}",
                category=DeadLetterReason.INTERNAL_ERROR,
                device_id=None,
            )
        return BatchResult(dead_letters=1, dead_letter_reasons={DeadLetterReason.INTERNAL_ERROR: 1})

    def count(self, result: BatchResult) -> None:
        with self._totals_lock:
            self._totals.add_counts(result)
            self._totals_lock.notify_all()

    # -- observation -----------------------------------------------------------------------------------------
    def queued(self) -> int:
        """Messages received but not yet stored (nor acknowledged), over both lanes."""
        return sum(lane.queue.qsize() for lane in self._lanes)

    @property
    def totals(self) -> BatchResult:
        with self._totals_lock:
            return self._totals.copy()

    def wait_for(self, *, handled: int, timeout: float) -> bool:
        """Block until at least ``handled`` messages (stored, duplicate, dead-lettered or status) were processed."""
        with self._totals_lock:
            return self._totals_lock.wait_for(lambda: self._totals.handled >= handled, timeout)


def shared(topic: str, group: str | None) -> str:
    """The topic filter as a member of ``group`` subscribes to it (MQTT 5 shared subscription), or as it is."""
    return f"{SHARED_SUBSCRIPTION_PREFIX}/{group}/{topic}" if group else topic


def lane_client_id(client_id: str, lane: str) -> str:
    """Each lane is a persistent session of its own; the telemetry lane keeps the plain id that older versions used
    for their one session."""
    return f"{client_id}-events" if lane == "events" else client_id


def lane_client_ids(client_id: str, lanes: Collection[str]) -> tuple[str, ...]:
    return tuple(lane_client_id(client_id, lane) for lane in ("events", "telemetry") if lane in lanes)


# Python's default is a young-generation collection every 700 net allocations, and every tenth of those a
# middle one, every tenth of those a full one walking every object the process holds (SQLAlchemy's and pydantic's
# are many). The ingest path allocates thousands of short-lived dicts per batch, so the default collected
# constantly and each full collection stalled both the writer and paho's network thread. Measured with
# bench/ingest.py on Mosquitto + PostgreSQL: p99 publish -> committed at 3,900 msgs/s 141-244 ms over six runs
# (220-334 ms with 50,000/20/100, more with the default); the maximum rate 4,143-4,412 msgs/s with the default,
# 4,730-4,961 after; memory flat over a 10-minute soak (bench/README.md).
GC_THRESHOLDS = (200_000, 50, 1_000)


def tune_garbage_collection() -> None:
    """For a process that ingests, once it has started: what exists now (modules, the models' metadata) is frozen
    out of every future collection, and collections run far less often. Process-wide, so called by the command
    that runs the process (and the benchmark), not by the library."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _worth_another_try(error: DBAPIError) -> bool:
    """A unique violation (a duplicate another writer stored first), a deadlock or a lock timeout: transient."""
    sqlstate = getattr(error.orig, "sqlstate", None)
    unique_on_sqlite = isinstance(error, IntegrityError) and "UNIQUE constraint failed" in str(error.orig)
    return sqlstate in {"23505", "40P01", "55P03", "40001"} or unique_on_sqlite


def _connection_lost(error: DBAPIError) -> bool:
    """The database went away or is busy (retry later), as opposed to refusing this one message (dead-letter it).
    SQLite's "database is locked" after its busy timeout is the other writer, not the message."""
    busy = isinstance(error, OperationalError) and "database is locked" in str(error.orig)
    return bool(error.connection_invalidated) or isinstance(error, InterfaceError) or busy

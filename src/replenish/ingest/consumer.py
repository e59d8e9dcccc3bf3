"""The MQTT ingestor: receives at QoS 1, commits in batches, and acknowledges a message only once it is stored."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError

from replenish.clock import Clock
from replenish.config import MqttEndpoint
from replenish.constants import INGEST_SUBSCRIPTIONS, MQTT_QOS
from replenish.db import transaction
from replenish.ingest.schemas import IncomingMessage
from replenish.ingest.service import BatchResult, dead_letter, ingest_batch
from replenish.mqtt.client import make_client

log = logging.getLogger(__name__)

RETRY_BACKOFF_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class _Delivery:
    message: IncomingMessage
    mid: int
    qos: int
    # Which connection delivered it: a PUBACK is only meaningful on that one.
    connection: int


class MqttIngestor:
    """Owns one persistent MQTT session and one writer thread.

    paho's network thread only queues messages; the writer drains the queue into batches, commits each batch in
    one transaction, and only then sends the PUBACKs (manual ack). A crash before the commit leaves the messages
    unacknowledged, and the broker delivers them again to the persistent session.
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
    ) -> None:
        self._engine = engine
        self._endpoint = endpoint
        self._clock = clock
        self._batch_size = batch_size
        self._batch_wait = batch_wait_seconds
        # Bounded: when the writer falls behind, paho's network thread waits here and TCP pushes back on the
        # broker, instead of the backlog piling up in this process's memory (Mosquitto 2.0.11 does not hold
        # deliveries to max_inflight_messages once acknowledgements flow).
        self._queue: queue.Queue[_Delivery] = queue.Queue(maxsize=max(4 * batch_size, 1000))
        self._abandon = threading.Event()
        self._stopping = threading.Event()
        self._subscribed = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._client = make_client(endpoint, client_id=client_id, persistent_session=True, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._connection = 0
        self._totals = BatchResult()
        self._totals_lock = threading.Condition()

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._writer.start()
        self._client.connect_async(self._endpoint.host, self._endpoint.port, keepalive=30)
        self._client.loop_start()

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return self._subscribed.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Store and acknowledge what has arrived, for up to ``timeout`` seconds, then leave.

        What is still queued then stays unacknowledged: the broker delivers it again to this session.
        """
        self._stopping.set()
        self._writer.join(timeout)
        if self._writer.is_alive():
            self._abandon.set()
            self._writer.join(RETRY_BACKOFF_MAX_SECONDS)
            log.warning(
                "ingestor stopped with %d message(s) not stored; the broker will deliver them again",
                self._queue.qsize(),
            )
        # Nothing will be taken off the queue any more: let paho's thread drop what still comes, or it could wait
        # on a full queue forever and never finish disconnecting.
        self._abandon.set()
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho callbacks (network thread) ---------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("MQTT connection to %s refused: %s", self._endpoint.url, reason)
            return
        self._connection += 1
        log.info("ingestor connected to %s (session present: %s)", self._endpoint.url, flags.session_present)
        client.subscribe([(topic, MQTT_QOS) for topic in INGEST_SUBSCRIPTIONS])

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        log.info("ingestor subscribed to %s", ", ".join(INGEST_SUBSCRIPTIONS))
        self._subscribed.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connection += 1  # deliveries of the lost connection must not be acknowledged on the next one
        self._subscribed.clear()
        if not self._stopping.is_set():
            log.warning("ingestor disconnected from %s (%s); reconnecting", self._endpoint.url, reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        # A topic that is not UTF-8 cannot be a contract topic; keep it readable for the dead letter.
        topic = message._topic.decode("utf-8", errors="replace")
        incoming = IncomingMessage(topic=topic, payload=bytes(message.payload), received_at=self._clock.now())
        delivery = _Delivery(incoming, message.mid, message.qos, self._connection)
        while not self._abandon.is_set():
            try:
                self._queue.put(delivery, timeout=0.5)
                return
            except queue.Full:
                continue
        # Given up on while stopping: never acknowledged, so the broker delivers it again.

    # -- writer thread ---------------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while not (self._stopping.is_set() and self._queue.empty()) and not self._abandon.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self._batch_wait
            while len(batch) < self._batch_size:
                remaining = deadline - time.monotonic()
                try:
                    batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            result = self._commit(batch)
            if result is None:
                return  # abandoned while the database was failing: nothing acknowledged
            for delivery in batch:
                # After a reconnect the broker resends what was not acknowledged, and may reuse a packet id for
                # another message: acknowledging an old delivery there would acknowledge a message never stored.
                if delivery.qos > 0 and delivery.connection == self._connection:
                    self._client.ack(delivery.mid, delivery.qos)
            with self._totals_lock:
                self._totals.add(result)
                self._totals_lock.notify_all()

    def _commit(self, batch: list[_Delivery]) -> BatchResult | None:
        messages = [delivery.message for delivery in batch]
        backoff = 0.5
        while True:
            try:
                with transaction(self._engine) as session:
                    return ingest_batch(session=session, messages=messages)
            except Exception:
                log.exception("batch of %d failed; storing its messages one by one", len(messages))
            try:
                return self._commit_one_by_one(messages)
            except Exception:
                # The database itself is failing: keep the batch unacknowledged and try again.
                log.exception("database unavailable; retrying in %.1f s", backoff)
                if self._abandon.wait(backoff):
                    return None
                backoff = min(backoff * 2, RETRY_BACKOFF_MAX_SECONDS)

    def _commit_one_by_one(self, messages: list[IncomingMessage]) -> BatchResult:
        total = BatchResult()
        for message in messages:
            try:
                with transaction(self._engine) as session:
                    result = ingest_batch(session=session, messages=[message])
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
        with transaction(self._engine) as session:
            dead_letter(
                session=session, message=message, reason=f"internal error while storing: {error!r}", device_id=None
            )
        return BatchResult(dead_letters=1)

    # -- observation -----------------------------------------------------------------------------------------
    @property
    def totals(self) -> BatchResult:
        with self._totals_lock:
            return BatchResult(**vars(self._totals))

    def wait_for(self, *, handled: int, timeout: float) -> bool:
        """Block until at least ``handled`` messages (stored, duplicate, dead-lettered or status) were processed."""
        with self._totals_lock:
            return self._totals_lock.wait_for(lambda: self._totals.handled >= handled, timeout)


def _connection_lost(error: DBAPIError) -> bool:
    """The database went away (retry later), as opposed to refusing this one message (dead-letter it)."""
    return bool(error.connection_invalidated) or isinstance(error, InterfaceError)

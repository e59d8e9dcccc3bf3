"""Delivers outbox messages: orders to fulfilment, notifications to their channel, commands to devices.

`DispatchLoop` runs the dispatcher in its own thread: every dispatch interval, and at once when a transaction in this
process commits an urgent message (a safety notification), so a fall reaches its first contact in milliseconds, not at
the next poll."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from replenish.clock import Clock
from replenish.constants import ACKNOWLEDGE_PAGE_PATH, ANSWER_PAGE_PATH, OutboxKind
from replenish.db import transaction
from replenish.notifications.channels import Channels, Delivery, Link
from replenish.notifications.models import Notification
from replenish.observability import correlation
from replenish.observability.metrics import Metrics
from replenish.orders.fulfilment import FulfilmentSink
from replenish.outbox import service as outbox
from replenish.outbox.models import OutboxMessage

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(minutes=10)
RETRY_BASE = timedelta(seconds=1)
DISPATCH_BATCH = 100
DELIVERY_WORKERS = 8
# How long a dispatcher holds a message it is delivering, by default: longer than any delivery takes (timeouts are
# 10 s by default; Settings keeps the lease longer than the timeout).
CLAIM_LEASE = timedelta(seconds=60)

CommandSender = Callable[[str, dict[str, Any]], None]


@dataclass
class DispatchReport:
    delivered: int = 0
    failed: int = 0


class Dispatcher:
    def __init__(
        self,
        *,
        engine: Engine,
        clock: Clock,
        fulfilment: FulfilmentSink,
        send_command: CommandSender | None,
        channels: Channels,
        public_url: str,
        kinds: Collection[OutboxKind] | None = None,
        urgent_only: bool = False,
        metrics: Metrics | None = None,
        claim_lease: timedelta = CLAIM_LEASE,
        retry_base: timedelta = RETRY_BASE,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._fulfilment = fulfilment
        self._send_command = send_command
        self._channels = channels
        # Where people reach the platform from outside: the base of the links in notifications.
        self._public_url = public_url.rstrip("/")
        # Only these kinds (None: all), only urgent ones: the events ingest process delivers a fall's
        # notifications itself, at once, and leaves everything else to the scheduler.
        self._kinds = kinds
        self._urgent_only = urgent_only
        self._claim_lease = claim_lease
        self._retry_base = retry_base
        self._identity = uuid.uuid4().hex  # what its claims carry
        self._metrics = metrics

    def dispatch_due(self, *, limit: int = DISPATCH_BATCH) -> DispatchReport:
        """Deliver what is due now, several at once, and wait for all of it (the jobs' tick; DispatchLoop does not
        wait). ``due`` hands out at most one message per stream, so concurrent delivery keeps each stream's
        order."""
        report = DispatchReport()
        pending = self.pending(limit=limit)
        if not pending:
            return report
        with ThreadPoolExecutor(max_workers=min(DELIVERY_WORKERS, len(pending)), thread_name_prefix="deliver") as pool:
            for outcome in pool.map(self.deliver, pending):
                if outcome is True:
                    report.delivered += 1
                elif outcome is False:
                    report.failed += 1
        return report

    def pending(self, *, limit: int = DISPATCH_BATCH) -> list[OutboxMessage]:
        with Session(self._engine) as session:
            return outbox.due(
                session=session, now=self._clock.now(), limit=limit, kinds=self._kinds, urgent_only=self._urgent_only
            )

    def deliver(self, message: OutboxMessage) -> bool | None:
        """Claim the message, deliver it, record the outcome: True delivered, False failed (retried later), None
        another dispatcher holds it. The claim is taken just before sending, so that its lease covers this one
        delivery and not a queue of others ahead of it."""
        now = self._clock.now()
        assert message.id is not None
        # Delivery threads start without a context: the id comes from the row (it may have been written elsewhere).
        with correlation.bound(message.correlation_id):
            with transaction(self._engine) as session:
                if not outbox.claim(
                    session=session, message_id=message.id, now=now, until=now + self._claim_lease, by=self._identity
                ):
                    return None
            try:
                self._deliver(message)
            except Exception as exc:
                self._count(message, delivered=False)
                self._guarded(self._record_failure, message, exc)
                return False
            self._count(message, delivered=True)
            self._guarded(self._record_delivery, message)
            log.debug("outbox %s (%s) delivered", message.id, message.kind)
            return True

    def _count(self, message: OutboxMessage, *, delivered: bool) -> None:
        if self._metrics is not None:
            self._metrics.outbox_delivered(kind=message.kind, delivered=delivered)

    @staticmethod
    def _guarded(record: Callable[..., None], *args: Any) -> None:
        # Bookkeeping that fails must not stop the rest of the tick; the message is simply delivered again later,
        # under the same idempotency key.
        try:
            record(*args)
        except Exception:
            log.exception("could not record the outcome of outbox message %s", args[0].id)

    def _deliver(self, message: OutboxMessage) -> None:
        kind = OutboxKind(message.kind)
        if kind in (
            OutboxKind.ORDER_PLACED,
            OutboxKind.ORDER_CANCELLED,
            OutboxKind.ORDER_HELD,
            OutboxKind.ORDER_RELEASED,
        ):
            self._fulfilment.send(event=kind, idempotency_key=message.idempotency_key, order=message.payload)
        elif kind == OutboxKind.NOTIFICATION:
            self._channels.send(self._delivery(message))
        elif kind == OutboxKind.DEVICE_COMMAND:
            if self._send_command is None:
                raise RuntimeError("no MQTT publisher configured for device commands")
            self._send_command(message.payload["topic"], message.payload["command"])

    def _delivery(self, message: OutboxMessage) -> Delivery:
        payload = message.payload
        token = payload.get("acknowledge_token")
        links = [
            Link(link["label"], f"{self._public_url}{link.get('path', ANSWER_PAGE_PATH)}/{link['token']}")
            for link in payload.get("links") or ()
            if link.get("token")
        ]
        if payload.get("app_path"):
            links.append(Link("Open in the app", f"{self._public_url}{payload['app_path']}"))
        return Delivery(
            notification_id=payload["notification_id"],
            idempotency_key=message.idempotency_key,
            channel=payload.get("channel", "log"),
            address=payload.get("address"),
            subject=payload["subject"],
            body=payload["body"],
            acknowledge_url=f"{self._public_url}{ACKNOWLEDGE_PAGE_PATH}/{token}" if token else None,
            alert_id=payload.get("alert_id"),
            kind=payload.get("kind"),
            order_id=payload.get("order_id"),
            links=tuple(links),
            push_keys=(payload["push_keys"]["p256dh"], payload["push_keys"]["auth"])
            if payload.get("push_keys")
            else None,
        )

    def _record_delivery(self, message: OutboxMessage) -> None:
        now = self._clock.now()
        with transaction(self._engine) as session:
            stored = session.get(OutboxMessage, message.id)
            assert stored is not None
            if stored.delivered_at is not None:
                return  # another dispatcher took it over after this one's lease ran out, and recorded it first
            stored.delivered_at = now
            stored.attempts += 1
            if stored.payload.get("acknowledge_token") or stored.payload.get("links"):
                # Delivered: a token need not be kept anywhere but in the recipient's hands (a hash stays with the
                # escalation step or the order's link).
                stored.payload = {
                    **stored.payload,
                    "acknowledge_token": None,
                    "links": [{**link, "token": None} for link in stored.payload.get("links") or ()],
                }
            session.add(stored)
            if stored.kind == OutboxKind.NOTIFICATION:
                notification = session.get(Notification, stored.payload["notification_id"])
                if notification is not None:
                    notification.sent_at = now
                    session.add(notification)

    def _record_failure(self, message: OutboxMessage, error: Exception) -> None:
        now = self._clock.now()
        with transaction(self._engine) as session:
            stored = session.get(OutboxMessage, message.id)
            assert stored is not None
            if stored.delivered_at is not None or stored.claimed_by != self._identity:
                return  # not ours any more: its lease ran out and another dispatcher holds or delivered it
            stored.attempts += 1
            stored.claimed_until = None
            stored.last_error = repr(error)[:2000]
            stored.available_at = now + min(self._retry_base * 2**stored.attempts, MAX_BACKOFF)
            session.add(stored)
        log.warning("outbox %s (%s) failed, attempt %d: %r", message.id, message.kind, stored.attempts, error)


class DispatchLoop:
    """The dispatcher's own thread: every interval, and at once when this process commits an urgent message. It
    hands messages to a pool of workers without waiting for them, so a new fall's notifications never wait for a
    slow delivery that is already under way."""

    def __init__(self, dispatcher: Dispatcher, *, interval_seconds: float) -> None:
        self._dispatcher = dispatcher
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._wake = outbox.wakeup()
        self._thread = threading.Thread(target=self._run, name="outbox-dispatch", daemon=True)
        self._pool = ThreadPoolExecutor(max_workers=DELIVERY_WORKERS, thread_name_prefix="deliver")
        self._in_flight: set[int] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        outbox.release_wakeup(self._wake)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                pending = self._dispatcher.pending()
            except Exception:
                log.exception("outbox dispatch failed; trying again")
                pending = []
            for message in pending:
                assert message.id is not None
                with self._lock:
                    if message.id in self._in_flight:
                        continue
                    self._in_flight.add(message.id)
                self._pool.submit(self._deliver, message)
            self._wake.wait(self._interval)

    def _deliver(self, message: OutboxMessage) -> None:
        try:
            self._dispatcher.deliver(message)
        except Exception:
            log.exception("outbox %s: delivery failed", message.id)
        finally:
            with self._lock:
                self._in_flight.discard(message.id)  # type: ignore[arg-type]
            self._wake.set()  # the next message of its stream may be due now

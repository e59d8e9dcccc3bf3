"""Delivers outbox messages through the handler each domain registers for its kind (wired in runtime.py): orders
to fulfilment (orders.fulfilment), notifications to their channel (notifications.delivery), commands to devices
(mqtt.client).

`DispatchLoop` runs the dispatcher in its own thread: every dispatch interval, and at once when a transaction in this
process commits an urgent message (a safety notification), so a fall reaches its first contact in milliseconds, not at
the next poll."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlmodel import Session

from replenish.clock import Clock
from replenish.constants import OutboxKind
from replenish.db import transaction
from replenish.observability import correlation
from replenish.observability.metrics import Metrics
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


class OutboxHandler(Protocol):
    """Delivers the outbox messages of one kind, for the domain that owns them."""

    def deliver(self, message: OutboxMessage) -> None:
        """Hand the message over, or raise so that the dispatcher retries it later under the same idempotency key."""
        ...

    def record_delivery(self, *, session: Session, message: OutboxMessage, now: datetime) -> None:
        """The domain's own bookkeeping once the message is delivered, in the transaction that marks it delivered
        (``message`` is the stored row, which may be changed)."""
        ...


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
        handlers: Mapping[OutboxKind, OutboxHandler],
        urgent_only: bool = False,
        metrics: Metrics | None = None,
        claim_lease: timedelta = CLAIM_LEASE,
        retry_base: timedelta = RETRY_BASE,
    ) -> None:
        """Deliver the kinds ``handlers`` has a handler for (the events ingest process delivers only notifications)
        and, with ``urgent_only``, only urgent messages: a fall's notifications, at once, leaving everything else to
        the scheduler."""
        self._engine = engine
        self._clock = clock
        self._handlers = dict(handlers)
        self._urgent_only = urgent_only
        self._claim_lease = claim_lease
        self._retry_base = retry_base
        self._identity = uuid.uuid4().hex  # what its claims carry
        self._metrics = metrics

    @property
    def kinds(self) -> frozenset[OutboxKind]:
        """The kinds of message this dispatcher delivers: those it has a handler for."""
        return frozenset(self._handlers)

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
                session=session,
                now=self._clock.now(),
                limit=limit,
                kinds=self.kinds,
                urgent_only=self._urgent_only,
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
        self._handlers[OutboxKind(message.kind)].deliver(message)

    def _record_delivery(self, message: OutboxMessage) -> None:
        now = self._clock.now()
        with transaction(self._engine) as session:
            stored = session.get(OutboxMessage, message.id)
            assert stored is not None
            if stored.delivered_at is not None:
                return  # another dispatcher took it over after this one's lease ran out, and recorded it first
            stored.delivered_at = now
            stored.attempts += 1
            self._handlers[OutboxKind(stored.kind)].record_delivery(session=session, message=stored, now=now)
            session.add(stored)

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
                if message.id is not None:
                    self._in_flight.discard(message.id)
            self._wake.set()  # the next message of its stream may be due now

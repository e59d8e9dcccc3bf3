"""Every Prometheus metric of the platform, defined here and nowhere else.

Each process has a registry of its own (``Metrics``), exposed by the API at /metrics, or by a process without the
API (ingest, scheduler) on REPLENISH_METRICS_PORT. Prometheus scrapes every process and adds them up in its queries
(``sum by (...)``). Why not prometheus_client's multiprocess mode: it is for workers forked on one host that share a
directory (gunicorn); our roles are separate containers, which share nothing but the network, and it would also take
away custom collectors and the process metrics. A registry per ``Platform`` rather than the global one also keeps
the many platforms a test run starts in one interpreter from counting into each other.

The database gauges (orders and alerts by state, outbox backlog, escalation timers) are read at scrape time by
``DatabaseCollector``, a few COUNT ... GROUP BY queries, and only by the API process: every role sees the same
database, and one copy of those numbers is enough.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Engine, or_
from sqlmodel import Session, col, func, select

from replenish import __version__
from replenish.alerts.models import Alert
from replenish.clock import Clock
from replenish.constants import AlarmKind, AlarmStatus, AlertStatus, DeadLetterReason, OrderStatus, OutboxKind
from replenish.devices.models import Slot
from replenish.health.models import Alarm
from replenish.orders.models import Order
from replenish.outbox.models import OutboxMessage

if TYPE_CHECKING:
    from replenish.ingest.service import BatchResult

log = logging.getLogger(__name__)

INGEST_LANES = ("events", "telemetry")


class IngestOutcome:
    """The ``outcome`` label of replenish_ingest_messages_total."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    STATUS = "status"
    DEAD_LETTER = "dead_letter"
    ALL = (STORED, DUPLICATE, STATUS, DEAD_LETTER)


class DeliveryOutcome:
    """The ``outcome`` label of replenish_outbox_deliveries_total."""

    DELIVERED = "delivered"
    FAILED = "failed"
    ALL = (DELIVERED, FAILED)


# Receive -> commit: milliseconds when all is well, seconds under a backlog, a minute when the database is failing.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Up to REPLENISH_INGEST_BATCH_SIZE (500 by default) messages per commit.
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


EVALUATION_OUTCOMES = ("forecast", "decided", "failed")


class Metrics:
    """One process's metrics, in a registry of its own."""

    def __init__(self, *, role: str) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        # Which build and role a scrape target is: for the dashboard's version panel and for joins.
        Info(
            "replenish_build", "The version of Replenish and the roles this process runs.", registry=self.registry
        ).info({"version": __version__, "role": role})

        self.ingest_messages = Counter(
            "replenish_ingest_messages",
            "MQTT messages the ingestor committed, by lane and outcome (stored, duplicate, status, dead_letter).",
            ["lane", "outcome"],
            registry=self.registry,
        )
        self.ingest_dead_letters = Counter(
            "replenish_ingest_dead_letters",
            "Messages dead-lettered, by category of reason (the full reason is stored with the dead letter).",
            ["reason"],
            registry=self.registry,
        )
        self.ingest_lag = Histogram(
            "replenish_ingest_lag_seconds",
            "Seconds from a message's arrival in this process to the commit that stored it (or dead-lettered it).",
            ["lane"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.ingest_batch_size = Histogram(
            "replenish_ingest_batch_size",
            "Messages per committed ingest batch.",
            ["lane"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.ingest_queue_depth = Gauge(
            "replenish_ingest_queue_depth",
            "Messages received but not yet committed (nor acknowledged to the broker), by lane.",
            ["lane"],
            registry=self.registry,
        )
        self.outbox_deliveries = Counter(
            "replenish_outbox_deliveries",
            "Outbox messages this process delivered or failed to deliver (retried later), by kind.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.evaluations = Counter(
            "replenish_evaluations",
            "Due slots this process's evaluator took: forecast (evaluated in full), decided (a decision taken), "
            "failed (tried again later). A new reading that can wait makes no slot due (ingest screens it).",
            ["outcome"],
            registry=self.registry,
        )
        self.scheduler_leader = Gauge(
            "replenish_scheduler_leader",
            "1 while this process is the scheduler's leader and runs its jobs (follow-ups, escalation, health, "
            "retention); 0 on a standby and on processes without the scheduler role. Summed over processes: 1.",
            registry=self.registry,
        )
        # Every series from the start, at 0: rate() needs a first sample before the first increment.
        for lane in INGEST_LANES:
            for outcome in IngestOutcome.ALL:
                self.ingest_messages.labels(lane=lane, outcome=outcome)
        for reason in DeadLetterReason:
            self.ingest_dead_letters.labels(reason=reason.value)
        for kind in OutboxKind:
            for outcome in DeliveryOutcome.ALL:
                self.outbox_deliveries.labels(kind=kind.value, outcome=outcome)
        for outcome in EVALUATION_OUTCOMES:
            self.evaluations.labels(outcome=outcome)

    # -- what the ingestor and the dispatcher report -----------------------------------------------------------
    def ingest_queue(self, *, lane: str, qsize: Callable[[], int]) -> None:
        """Read the lane's queue depth at scrape time rather than on every put and get."""
        self.ingest_queue_depth.labels(lane=lane).set_function(lambda: float(qsize()))

    def ingest_committed(self, *, lane: str, result: BatchResult, lags: Iterable[float]) -> None:
        """One committed batch: its outcomes, its size, and each message's receive -> commit seconds."""
        counts = {
            IngestOutcome.STORED: result.stored,
            IngestOutcome.DUPLICATE: result.duplicates,
            IngestOutcome.STATUS: result.status_updates,
            IngestOutcome.DEAD_LETTER: result.dead_letters,
        }
        for outcome, count in counts.items():
            if count:
                self.ingest_messages.labels(lane=lane, outcome=outcome).inc(count)
        for reason, count in result.dead_letter_reasons.items():
            self.ingest_dead_letters.labels(reason=DeadLetterReason(reason).value).inc(count)
        self.ingest_batch_size.labels(lane=lane).observe(result.handled)
        lag = self.ingest_lag.labels(lane=lane)
        for seconds in lags:
            lag.observe(max(seconds, 0.0))

    def evaluated(self, *, forecast: int, decided: int, failed: int) -> None:
        """One evaluation pass of this process."""
        counts = zip(EVALUATION_OUTCOMES, (forecast, decided, failed), strict=True)
        for outcome, count in counts:
            if count:
                self.evaluations.labels(outcome=outcome).inc(count)

    def outbox_delivered(self, *, kind: str, delivered: bool) -> None:
        outcome = DeliveryOutcome.DELIVERED if delivered else DeliveryOutcome.FAILED
        self.outbox_deliveries.labels(kind=OutboxKind(kind).value, outcome=outcome).inc()

    # -- exposition ----------------------------------------------------------------------------------------------
    def watch_database(self, *, engine: Engine, clock: Clock) -> None:
        self.registry.register(DatabaseCollector(engine=engine, clock=clock))

    def serve(self, *, host: str, port: int) -> MetricsServer:
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsServer(server, thread)


class MetricsServer:
    """prometheus_client's HTTP server of a process without the API, and how to stop it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class DatabaseCollector:
    """Gauges of what the database holds, read when Prometheus scrapes: a handful of COUNT ... GROUP BY queries over
    indexed columns, rather than bookkeeping on every request that could drift from the truth.

    Label values come from the platform's enums, each always present (0 when there is none), so a series never
    vanishes when the last order of a status moves on."""

    # A scrape answers from what was read at most this long ago: Prometheus scrapes every 15 s, anyone else who can
    # reach the port would otherwise set the pace of these queries.
    CACHE_FOR = timedelta(seconds=10)

    def __init__(self, *, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._cached: tuple[datetime, list[Metric]] | None = None
        self._lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        # Names only, so that registering runs no query (prometheus_client calls describe() on register).
        return [self._up(), *self._families()]

    @staticmethod
    def _up() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "replenish_database_metrics_up", "1 when this scrape could read the database gauges, 0 when it could not."
        )

    def collect(self) -> Iterator[Metric]:
        up = self._up()
        try:
            families = self._read()
        except Exception as exc:
            # A failing database must not fail the whole scrape: the process metrics still matter then.
            log.warning("database gauges unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[Metric]:
        now = self._clock.now()
        with self._lock:
            if self._cached is not None and now - self._cached[0] < self.CACHE_FOR:
                return self._cached[1]
            with Session(self._engine) as session:
                families = self._families(session=session, now=now)
            self._cached = (now, families)
            return families

    def _families(self, *, session: Session | None = None, now: datetime | None = None) -> list[Metric]:
        orders = GaugeMetricFamily("replenish_orders", "Orders by status.", labels=["status"])
        alerts = GaugeMetricFamily(
            "replenish_alerts", "Safety alerts (falls, help requests) by status.", labels=["status"]
        )
        alarms = GaugeMetricFamily(
            "replenish_device_alarms",
            "Device health alarms not yet cleared, by kind and status (active, acknowledged).",
            labels=["kind", "status"],
        )
        backlog = GaugeMetricFamily(
            "replenish_outbox_backlog",
            "Outbox messages not yet delivered (due, retrying or being sent), by kind.",
            labels=["kind"],
        )
        oldest = GaugeMetricFamily(
            "replenish_outbox_oldest_pending_seconds",
            "Age of the oldest outbox message not yet delivered, by kind (0 when none waits).",
            labels=["kind"],
        )
        timers = GaugeMetricFamily(
            "replenish_escalation_timers_pending",
            "Safety incidents waiting for their next escalation step (a cancel window or a contact's timeout).",
        )
        overdue = GaugeMetricFamily(
            "replenish_escalation_overdue_seconds",
            "How far past its time the most overdue escalation step is (0 when none is due): above a few seconds, "
            "no scheduler is escalating.",
        )
        due = GaugeMetricFamily(
            "replenish_evaluation_due_slots",
            "Slots due for evaluation now (a reading, an order moment, a change) that no evaluator has claimed yet.",
        )
        due_behind = GaugeMetricFamily(
            "replenish_evaluation_behind_seconds",
            "How long the longest-waiting due slot has waited (0 when none waits): above a couple of evaluation "
            "intervals, the evaluators are falling behind.",
        )
        families: list[Metric] = [orders, alerts, alarms, backlog, oldest, timers, overdue, due, due_behind]
        if session is None or now is None:
            return families

        by_status = dict(session.exec(select(Order.status, func.count()).group_by(col(Order.status))).all())
        for status in OrderStatus:
            orders.add_metric([status.value], by_status.get(status.value, 0))

        by_status = dict(session.exec(select(Alert.status, func.count()).group_by(col(Alert.status))).all())
        for status in AlertStatus:
            alerts.add_metric([status.value], by_status.get(status.value, 0))

        unacknowledged = col(Alarm.acknowledged_at).is_(None)
        rows = session.exec(
            select(Alarm.kind, unacknowledged, func.count())
            .where(col(Alarm.cleared_at).is_(None))
            .group_by(col(Alarm.kind), unacknowledged)
        ).all()
        by_kind = {
            (kind, AlarmStatus.ACTIVE if active else AlarmStatus.ACKNOWLEDGED): count for kind, active, count in rows
        }
        for kind in AlarmKind:
            for status in (AlarmStatus.ACTIVE, AlarmStatus.ACKNOWLEDGED):
                alarms.add_metric([kind.value, status.value], by_kind.get((kind.value, status), 0))

        rows = session.exec(
            select(OutboxMessage.kind, func.count(), func.min(OutboxMessage.created_at))
            .where(col(OutboxMessage.delivered_at).is_(None))
            .group_by(col(OutboxMessage.kind))
        ).all()
        pending = {kind: (count, created) for kind, count, created in rows}
        for kind in OutboxKind:
            count, created = pending.get(kind.value, (0, None))
            backlog.add_metric([kind.value], count)
            oldest.add_metric([kind.value], max((now - created).total_seconds(), 0.0) if created else 0.0)

        count, first_due = session.exec(
            select(func.count(), func.min(Alert.next_escalation_at)).where(col(Alert.next_escalation_at).is_not(None))
        ).one()
        timers.add_metric([], count)
        overdue.add_metric([], max((now - first_due).total_seconds(), 0.0) if first_due else 0.0)

        count, first_due = session.exec(
            select(func.count(), func.min(Slot.due_at)).where(
                col(Slot.due_at) <= now, or_(col(Slot.claimed_until).is_(None), col(Slot.claimed_until) <= now)
            )
        ).one()
        due.add_metric([], count)
        due_behind.add_metric([], max((now - first_due).total_seconds(), 0.0) if first_due else 0.0)
        return families

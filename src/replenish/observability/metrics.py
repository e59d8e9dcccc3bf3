"""Every Prometheus metric the platform counts, defined here and nowhere else (the database gauges: database.py).

Each process has a registry of its own (``Metrics``), exposed by the API at /metrics, or by a process without the
API (ingest, scheduler) on REPLENISH_METRICS_PORT. Prometheus scrapes every process and adds them up in its queries
(``sum by (...)``). Why not prometheus_client's multiprocess mode: it is for workers forked on one host that share a
directory (gunicorn); our roles are separate containers, which share nothing but the network, and it would also take
away custom collectors and the process metrics. A registry per ``Platform`` rather than the global one also keeps
the many platforms a test run starts in one interpreter from counting into each other.

The database gauges (orders and alerts by state, outbox backlog, escalation timers) are defined apart, in
observability/database.py: they read every domain's tables, and this module imports no domain.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
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

from replenish import __version__
from replenish.constants import DeadLetterReason, OutboxKind

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

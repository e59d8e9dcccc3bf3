"""The coordinator that owns the periodic work: which jobs run, how often, and where (on the leader; evaluation on
every scheduler process on PostgreSQL). The work itself is each domain's (automation.service.evaluate_due and the
domains' scheduled.py: answers, alerts, health, insights, privacy); Jobs adds the clock, the settings, the metrics
and the log lines."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from replenish.alerts.scheduled import escalate_due
from replenish.answers.scheduled import FollowUpReport, follow_up
from replenish.automation.service import EvaluationReport, FleetRatesCache, evaluate_due
from replenish.clock import Clock
from replenish.config import Settings
from replenish.health.rules import HealthPolicy
from replenish.health.scheduled import assess_fleet
from replenish.health.service import HealthReport
from replenish.insights.scheduled import InsightsReport, refresh_and_send
from replenish.observability.metrics import Metrics
from replenish.outbox.dispatcher import Dispatcher
from replenish.privacy.scheduled import retention

log = logging.getLogger(__name__)


class LeaderWork:
    """Counts the leader's jobs running now: a stopping process waits for them to end before it lets leadership
    go, and for nothing else (an evaluation batch is no leader's work)."""

    def __init__(self) -> None:
        self._running = 0
        self._changed = threading.Condition()

    def __enter__(self) -> None:
        with self._changed:
            self._running += 1

    def __exit__(self, *exc: object) -> None:
        with self._changed:
            self._running -= 1
            self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._running == 0, timeout)


class Jobs:
    """The jobs themselves, callable directly: tests and replays tick them with a manual clock."""

    def __init__(
        self,
        *,
        engine: Engine,
        clock: Clock,
        settings: Settings,
        dispatcher: Dispatcher,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.clock = clock
        self.settings = settings
        self.dispatcher = dispatcher
        self.policy = HealthPolicy()
        # Set when the process stops: a running pass ends between items, so that leadership passes on at once.
        self.stopping = threading.Event()
        self.leader_work = LeaderWork()
        self.fleet = FleetRatesCache()
        # On PostgreSQL every scheduler process evaluates (due slots are claimed with SKIP LOCKED); on SQLite the
        # one writer would only make several evaluators wait on each other.
        self.evaluation_shared = engine.dialect.name == "postgresql"

    def evaluate(self) -> EvaluationReport:
        """Evaluate the slots that are due (automation.service.evaluate_due)."""
        report = evaluate_due(
            engine=self.engine,
            now=self.clock.now(),
            margin_days=self.settings.reorder_margin_days,
            fleet=self.fleet,
            batch_size=self.settings.evaluation_batch_size,
            claim_lease=timedelta(seconds=self.settings.evaluation_claim_seconds),
            clock=self.clock.now,
            should_stop=self.stopping.is_set,
            minimum_basket=self.settings.minimum_basket,
        )
        if self.metrics is not None:
            self.metrics.evaluated(
                forecast=report.forecasts,
                decided=len(report.decisions),
                failed=report.errors,
            )
        if report.interrupted:
            log.info("evaluation stopped between transactions after %d slots: the process is stopping", report.slots)
        if report.decisions or report.errors:
            log.info("evaluated %d slots: %d decisions, %d errors", report.slots, len(report.decisions), report.errors)
        return report

    def follow_up(self) -> FollowUpReport:
        """Remind the customer of unanswered approval requests, and act on the ones whose deadline passed."""
        report = follow_up(engine=self.engine, now=self.clock.now())
        if report.reminded or report.unanswered:
            log.info("follow-up: reminded %s; no answer %s", report.reminded or "none", report.unanswered or "none")
        return report

    def dispatch(self) -> None:
        self.dispatcher.dispatch_due()

    def escalate(self) -> list[str]:
        """Step every safety incident whose time has come (alerts.scheduled)."""
        return escalate_due(
            engine=self.engine,
            now=self.clock.now(),
            receipt_timeout=timedelta(seconds=self.settings.sms_receipt_timeout_seconds),
        )

    def health(self) -> HealthReport:
        """Judge every device's health and bring its alarms in line (health.scheduled)."""
        report = assess_fleet(engine=self.engine, now=self.clock.now(), policy=self.policy)
        if report.raised or report.cleared:
            log.info("health: raised %s; cleared %s", report.raised or "none", report.cleared or "none")
        return report

    def insights(self) -> InsightsReport:
        """Refresh the fleet's usage norms and send the monthly digests that are due (insights.scheduled)."""
        report = refresh_and_send(engine=self.engine, now=self.clock.now())
        if report.digests or report.errors:
            log.info("insights: %d monthly digests sent, %d failed", len(report.digests), report.errors)
        return report

    def retention(self) -> dict[str, int]:
        removed = retention(engine=self.engine, now=self.clock.now())
        if any(removed.values()):
            log.info("retention: removed %s", ", ".join(f"{count} {name}" for name, count in removed.items()))
        return removed


def make_scheduler(jobs: Jobs, *, leading: Callable[[], bool] = lambda: True) -> BackgroundScheduler:
    """The periodic jobs, each run only while ``leading()`` says this process is the scheduler's leader: two
    escalators would step one incident, two health checks raise one alarm. Evaluation is the exception on
    PostgreSQL: every process takes a share of the due slots (Jobs.evaluation_shared). (The outbox dispatcher is not
    among them either: it runs in every scheduler process, see runtime.)"""
    scheduler = BackgroundScheduler(timezone="UTC")
    # One run at a time per job; a late run is coalesced rather than stacked up behind a slow one.
    common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}

    def when_leading(job: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            with jobs.leader_work:  # counted before the check: a stopping process waits for it or it does nothing
                if jobs.stopping.is_set() or not leading():
                    return
                job()

        return run

    def unless_stopping(job: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            if not jobs.stopping.is_set():
                job()

        return run

    intervals = {
        "evaluate": (jobs.evaluate, jobs.settings.evaluation_interval_seconds),
        "follow_up": (jobs.follow_up, jobs.settings.evaluation_interval_seconds),
        # The outbox has its own thread (DispatchLoop), woken at once by urgent messages.
        "escalate": (jobs.escalate, jobs.settings.escalation_interval_seconds),
        "health": (jobs.health, jobs.settings.health_interval_seconds),
        "retention": (jobs.retention, jobs.settings.retention_interval_seconds),
        "insights": (jobs.insights, jobs.settings.insights_interval_seconds),
    }
    for job_id, (job, seconds) in intervals.items():
        shared = job_id == "evaluate" and jobs.evaluation_shared
        scheduler.add_job(
            unless_stopping(job) if shared else when_leading(job), "interval", seconds=seconds, id=job_id, **common
        )
    return scheduler

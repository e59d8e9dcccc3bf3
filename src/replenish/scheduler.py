"""The coordinator that owns the periodic work: re-forecasting and deciding, and delivering the outbox."""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from replenish.automation.service import EvaluationReport, evaluate_all
from replenish.clock import Clock
from replenish.config import Settings
from replenish.outbox.dispatcher import Dispatcher
from replenish.privacy.service import retention_job

log = logging.getLogger(__name__)


class Jobs:
    """The jobs themselves, callable directly: tests and replays tick them with a manual clock."""

    def __init__(self, *, engine: Engine, clock: Clock, settings: Settings, dispatcher: Dispatcher) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings
        self.dispatcher = dispatcher

    def evaluate(self) -> EvaluationReport:
        report = evaluate_all(engine=self.engine, now=self.clock.now(), margin_days=self.settings.reorder_margin_days)
        if report.decisions or report.errors:
            log.info("evaluated %d slots: %d decisions, %d errors", report.slots, len(report.decisions), report.errors)
        return report

    def dispatch(self) -> None:
        self.dispatcher.dispatch_due()

    def retention(self) -> dict[str, int]:
        removed = retention_job(engine=self.engine, now=self.clock.now())
        if any(removed.values()):
            log.info("retention: removed %s", ", ".join(f"{count} {name}" for name, count in removed.items()))
        return removed


def make_scheduler(jobs: Jobs) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC")
    # One run at a time per job; a late run is coalesced rather than stacked up behind a slow one.
    common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
    scheduler.add_job(
        jobs.evaluate, "interval", seconds=jobs.settings.evaluation_interval_seconds, id="evaluate", **common
    )
    scheduler.add_job(
        jobs.dispatch, "interval", seconds=jobs.settings.dispatch_interval_seconds, id="dispatch", **common
    )
    scheduler.add_job(
        jobs.retention, "interval", seconds=jobs.settings.retention_interval_seconds, id="retention", **common
    )
    return scheduler

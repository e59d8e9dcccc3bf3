"""The database gauges (orders and alerts by state, device alarms, outbox backlog, escalation timers, evaluation
backlog), read at scrape time by a few COUNT ... GROUP BY queries, and only by the API process (runtime.py registers
the collector there): every role sees the same database, and one copy of those numbers is enough. Apart from
metrics.py because it reads every domain's tables."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Engine, or_
from sqlmodel import Session, col, func, select

from replenish.alerts.models import Alert
from replenish.clock import Clock
from replenish.constants import AlarmKind, AlarmStatus, AlertStatus, OrderStatus, OutboxKind
from replenish.devices.models import Slot
from replenish.health.models import Alarm
from replenish.orders.models import Order
from replenish.outbox.models import OutboxMessage

log = logging.getLogger(__name__)


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

        orders_by_status = dict(session.exec(select(Order.status, func.count()).group_by(col(Order.status))).all())
        for order_status in OrderStatus:
            orders.add_metric([order_status.value], orders_by_status.get(order_status.value, 0))

        alerts_by_status = dict(session.exec(select(Alert.status, func.count()).group_by(col(Alert.status))).all())
        for alert_status in AlertStatus:
            alerts.add_metric([alert_status.value], alerts_by_status.get(alert_status.value, 0))

        unacknowledged = col(Alarm.acknowledged_at).is_(None)
        alarm_rows = session.exec(
            select(Alarm.kind, unacknowledged, func.count())
            .where(col(Alarm.cleared_at).is_(None))
            .group_by(col(Alarm.kind), unacknowledged)
        ).all()
        by_kind = {
            (kind, AlarmStatus.ACTIVE if active else AlarmStatus.ACKNOWLEDGED): count
            for kind, active, count in alarm_rows
        }
        for alarm_kind in AlarmKind:
            for alarm_status in (AlarmStatus.ACTIVE, AlarmStatus.ACKNOWLEDGED):
                alarms.add_metric(
                    [alarm_kind.value, alarm_status.value], by_kind.get((alarm_kind.value, alarm_status), 0)
                )

        outbox_rows = session.exec(
            select(OutboxMessage.kind, func.count(), func.min(OutboxMessage.created_at))
            .where(col(OutboxMessage.delivered_at).is_(None))
            .group_by(col(OutboxMessage.kind))
        ).all()
        pending = {kind: (waiting, created) for kind, waiting, created in outbox_rows}
        for outbox_kind in OutboxKind:
            waiting, created = pending.get(outbox_kind.value, (0, None))
            backlog.add_metric([outbox_kind.value], waiting)
            oldest.add_metric([outbox_kind.value], max((now - created).total_seconds(), 0.0) if created else 0.0)

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

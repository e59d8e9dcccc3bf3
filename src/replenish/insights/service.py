"""Insights for the customer: each slot's use per week, a marked change, its cost a month and maintenance hints, as
the supplies page and the monthly digest show them; and the fleet's norms the hints compare against.

The figures are insights.usage's pure functions of the slot's readings; this module reads what they need and puts
them in words. Nothing here commits.
"""

from __future__ import annotations

import calendar
import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal

import numpy as np
from sqlalchemy import delete, func, or_
from sqlmodel import Session, col, select

from replenish.automation import service as automation
from replenish.columns import table_of
from replenish.consent.schemas import ConsentDocument
from replenish.constants import MAINTENANCE_HINT_DEFAULT, MAINTENANCE_HINTS
from replenish.customers.models import Customer
from replenish.db import upsert
from replenish.devices import service as devices
from replenish.devices.models import Device, Slot
from replenish.forecasting import ReadingSeries
from replenish.insights.models import MonthlyDigest, UsageNorm
from replenish.insights.usage import (
    BASELINE_DAYS,
    RECENT_DAYS,
    Usage,
    UseCurve,
    describe_change,
    figure,
    monthly_cost,
    stuck_since_delivery,
    times_the_norm,
    usage,
)
from replenish.orders.models import Order

# The supplies page's chart: this many weeks of use.
WEEKS_SHOWN = 8
# Readings read for a slot's insights: the weeks shown, and the recent and baseline periods.
HISTORY = timedelta(days=max(7 * WEEKS_SHOWN, RECENT_DAYS + BASELINE_DAYS) + 1)


@dataclass(frozen=True)
class SlotInsight:
    slot_id: str
    device_id: str
    label: str  # "Office printer black"
    unit: str
    capacity: float
    usage: Usage
    change: str | None  # a marked change in words, when the customer wants them
    monthly_cost: Decimal | None  # at the current use, when the customer wants costs and a price is known
    currency: str | None
    hints: tuple[str, ...]

    def amount(self, fraction: float) -> str:
        """A fraction of the slot in its unit: "1.2 l", "3 eggs", "40% of a fill" for a slot counted in fractions."""
        if self.unit in ("fraction", ""):
            return f"{fraction:.0%} of a fill"
        return f"{figure(fraction * self.capacity)} {self.unit}"


def slot_insights(
    *,
    session: Session,
    slots: Sequence[tuple[Slot, Device]],
    documents: dict[str, ConsentDocument],
    now: datetime,
    history: dict[str, list[tuple[datetime, float]]] | None = None,
) -> dict[str, SlotInsight]:
    """The insights of each slot, as its customer's consent (``documents``, by customer id) asks for them.
    ``history``: each slot's readings since at least HISTORY before ``now`` (devices.level_history), when the
    caller has read them already."""
    if not slots:
        return {}
    if history is None:
        history = devices.level_history(session=session, slot_ids=[slot.id for slot, _ in slots], since=now - HISTORY)
    norms = _norms(session=session, keys={(device.kind, slot.name) for slot, device in slots})
    deliveries = _latest_deliveries(session=session, slot_ids=[slot.id for slot, _ in slots], now=now)
    found = {}
    for slot, device in slots:
        document = documents[device.customer_id]
        wanted = document.insights
        series = _series(history[slot.id], capacity=slot.capacity)
        used = usage(series, now=now, weeks=WEEKS_SHOWN)
        label = f"{device.name} {slot.name}"
        insight = SlotInsight(
            slot_id=slot.id,
            device_id=device.id,
            label=label,
            unit=slot.unit,
            capacity=slot.capacity,
            usage=used,
            change=None,
            monthly_cost=None,
            currency=None,
            hints=(),
        )
        change = None
        if wanted.usage_changes and (ratio := used.change) is not None:
            assert used.recent_per_day is not None and used.baseline_per_day is not None
            recent, before = insight.amount(used.recent_per_day * 7), insight.amount(used.baseline_per_day * 7)
            change = (
                f"{label} use {describe_change(ratio)} in the last two weeks: {recent} a week, against {before} before"
            )
        cost, currency = None, None
        if wanted.costs and used.rate_per_day is not None:
            cost, currency = _monthly_cost(session=session, slot=slot, device=device, document=document, rate=used)
        hints = []
        if wanted.maintenance:
            median, count = norms.get((device.kind, slot.name), (None, 0))
            if (ratio := times_the_norm(used.rate_per_day, median=median, slots=count)) is not None:
                hints.append(
                    f"{label} is used {ratio:.1f} times as fast as the same slot of other customers' {device.kind}s: "
                    + MAINTENANCE_HINTS.get(device.kind, MAINTENANCE_HINT_DEFAULT)
                )
            delivered_at = deliveries.get(slot.id)
            if stuck_since_delivery(
                delivered_at=delivered_at,
                refilled_since=slot.cycle_started_at is not None
                and delivered_at is not None
                and slot.cycle_started_at >= delivered_at,
                same_level_count=slot.same_level_count,
                same_level_since=slot.same_level_since,
                now=now,
            ):
                assert delivered_at is not None and slot.level is not None
                hints.append(
                    f"The delivery for {label} of {delivered_at:%d %b} does not show: the sensor has read "
                    f"{insight.amount(slot.level / slot.capacity)} {slot.same_level_count} times running. Is the new "
                    "one in, and seated? A sensor that repeats itself may need cleaning."
                )
        found[slot.id] = dataclasses.replace(
            insight, change=change, monthly_cost=cost, currency=currency, hints=tuple(hints)
        )
    return found


def _series(points: list[tuple[datetime, float]], *, capacity: float) -> ReadingSeries:
    return ReadingSeries(
        times=np.array([ts.timestamp() for ts, _ in points], dtype=float),
        levels=np.array([level / capacity for _, level in points], dtype=float),
    )


def _monthly_cost(
    *, session: Session, slot: Slot, device: Device, document: ConsentDocument, rate: Usage
) -> tuple[Decimal | None, str | None]:
    assert rate.rate_per_day is not None
    offer = automation.line_for(
        session=session, slot=slot, device=device, document=document, forecast=None, quantity=1
    ).offer
    cost = monthly_cost(
        rate_per_day=rate.rate_per_day, capacity=slot.capacity, pack_size=offer.pack_size, price=offer.price
    )
    return cost, offer.currency


def _norms(*, session: Session, keys: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[float, int]]:
    kinds = sorted({kind for kind, _ in keys})
    rows = list(session.exec(select(UsageNorm).where(col(UsageNorm.device_kind).in_(kinds)))) if kinds else []
    return {
        (row.device_kind, row.slot_name): (row.median_rate_per_day, row.slots)
        for row in rows
        if (row.device_kind, row.slot_name) in keys
    }


def _latest_deliveries(*, session: Session, slot_ids: list[str], now: datetime) -> dict[str, datetime]:
    """Each slot's newest delivery in the history read, if any."""
    rows = session.exec(
        select(Order.slot_id, func.max(Order.delivered_at))
        .where(col(Order.slot_id).in_(slot_ids), col(Order.delivered_at) >= now - HISTORY)
        .group_by(col(Order.slot_id))
    )
    return {slot_id: delivered_at for slot_id, delivered_at in rows if delivered_at is not None}


def refresh_norms(*, session: Session, now: datetime) -> int:
    """Each kind and slot name's median rate, from the rates the fleet lends (automation.fleet_rates: only customers
    who allow fleet learning, only slots with enough evidence of their own). Returns how many norms were written."""
    fleet = automation.fleet_rates(session=session)
    rows = [
        {
            "device_kind": kind,
            "slot_name": name,
            "median_rate_per_day": statistics.median(rates.values()),
            "slots": len(rates),
            "computed_at": now,
        }
        for (kind, name), rates in fleet.rates.items()
        if rates
    ]
    upsert(session, table_of(UsageNorm), rows, key=["device_kind", "slot_name"])
    # A group nobody lends to any more (consent withdrawn, slots gone) has no norm.
    session.execute(delete(UsageNorm).where(col(UsageNorm.computed_at) < now))
    return len(rows)


# --- the monthly digest ------------------------------------------------------------------------------------------


def month_before(moment: datetime, document: ConsentDocument) -> tuple[str, datetime, datetime, datetime]:
    """The calendar month before the one ``moment`` is in (the consent's time zone): its key (YYYY-MM), start and
    end, and when its digest goes out (the 1st of the next month at digest_time)."""
    local = moment.astimezone(document.zone)
    this_month = datetime.combine(local.date().replace(day=1), time(0), tzinfo=document.zone)
    previous = (this_month - timedelta(days=1)).replace(day=1)
    send_at = datetime.combine(this_month.date(), document.digest_time, tzinfo=document.zone)
    return f"{previous:%Y-%m}", previous, this_month, send_at


def digest_due(*, session: Session, customer_id: str, document: ConsentDocument, now: datetime) -> str | None:
    """The month whose digest is to be handled now (its key), or None: not yet time, or handled (sent, or not sent
    because it was turned off or had nothing to report)."""
    month, _, _, send_at = month_before(now, document)
    if now < send_at:
        return None
    handled = session.get(MonthlyDigest, (customer_id, month))
    return None if handled is not None else month


def customers_owed_a_digest(*, session: Session, now: datetime) -> list[str]:
    """The customers whose month may be due and is not handled yet: each customer's month is the one before theirs
    in their time zone, so the months before UTC's, 14 hours either way, are the candidates. Once everyone's is
    handled, none: the job reads nothing per customer for the rest of the month."""
    around = (now - timedelta(hours=14), now + timedelta(hours=14))
    candidates = sorted({f"{moment - timedelta(days=moment.day):%Y-%m}" for moment in around})
    handled = [
        select(MonthlyDigest.customer_id).where(MonthlyDigest.month == month).scalar_subquery() for month in candidates
    ]
    missing = [col(Customer.id).not_in(subquery) for subquery in handled]
    return list(session.exec(select(Customer.id).where(or_(*missing)).order_by(col(Customer.id))))


def compose_digest(
    *, session: Session, customer_id: str, document: ConsentDocument, now: datetime
) -> tuple[str, str] | None:
    """The subject and body of the customer's digest for last month, or None when they have no slot to report."""
    month, start, end, _ = month_before(now, document)
    before_start = (start - timedelta(days=1)).replace(day=1)
    slots = list(
        session.exec(
            select(Slot, Device)
            .join(Device, col(Device.id) == col(Slot.device_id))
            .where(Device.customer_id == customer_id)
            .order_by(col(Device.name), col(Slot.name))
        ).all()
    )
    if not slots:
        return None
    # The two months reported, and what the insights read before now: one read.
    history = devices.level_history(
        session=session, slot_ids=[slot.id for slot, _ in slots], since=min(before_start, now - HISTORY), most=10_000
    )
    insights = slot_insights(session=session, slots=slots, documents={customer_id: document}, now=now, history=history)
    lines = []
    for slot, _ in slots:
        insight = insights[slot.id]
        curve = UseCurve(_series(history[slot.id], capacity=slot.capacity))
        if not curve.covered(start, end):
            continue
        line = f"- {insight.label}: {insight.amount(curve.between(start, end))} used in {start:%B}"
        if curve.covered(before_start, start) > 0.9:
            line += f" (in {before_start:%B}: {insight.amount(curve.between(before_start, start))})"
        if insight.monthly_cost is not None:
            line += f"; about {insight.monthly_cost} {insight.currency or ''} a month at the current use".replace(
                "  ", " "
            )
        lines.append(line + ".")
        lines += [f"  {text}." for text in ((insight.change,) if insight.change else ())]
        lines += [f"  {hint}" for hint in insight.hints]
    if not lines:
        return None
    days = calendar.monthrange(start.year, start.month)[1]
    subject = f"Your supplies in {start:%B %Y}"
    body = (
        f"What your devices used in {start:%B %Y} ({days} days):\n"
        + "\n".join(lines)
        + "\n\nYou can turn these insights, or this digest, off on the consent page."
    )
    assert month
    return subject, body


def record_digest(*, session: Session, customer_id: str, month: str, sent: bool, now: datetime) -> None:
    """The month's digest is handled (``sent``, or not): a second attempt (another scheduler, a retry) fails on the
    key."""
    session.add(MonthlyDigest(customer_id=customer_id, month=month, sent_at=now, sent=sent))
    session.flush()

"""Insights for the customer (issue 22, part 4): use per week, a marked change, the cost a month, maintenance hints,
and the monthly digest on the consented channels; each can be turned off."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from replenish.consent import service as consent
from replenish.consent.schemas import ConsentDocument, InsightSettings
from replenish.constants import ConsentMode, NoticeKind
from replenish.customers import service as customers
from replenish.db import transaction
from replenish.devices import service as devices
from replenish.devices.models import Device, Slot
from replenish.devices.schemas import DeviceCreate, SlotCreate
from replenish.forecasting import ReadingSeries
from replenish.ingest.schemas import IncomingMessage
from replenish.ingest.service import ingest_batch
from replenish.insights import service as insights
from replenish.insights.models import MonthlyDigest, UsageNorm
from replenish.insights.scheduled import refresh_and_send
from replenish.insights.usage import (
    UseCurve,
    describe_change,
    monthly_cost,
    stuck_since_delivery,
    times_the_norm,
    usage,
)
from replenish.notifications.models import Notification

T0 = datetime(2026, 9, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def series(days: np.ndarray, levels: np.ndarray) -> ReadingSeries:
    return ReadingSeries(times=T0.timestamp() + days * 86_400.0, levels=levels)


def sawtooth(days: np.ndarray, rate_per_day: np.ndarray | float, *, refill_below: float = 0.1) -> np.ndarray:
    """A slot used at ``rate_per_day`` (per reading, or one rate), refilled to full when it falls below a level."""
    rates = np.broadcast_to(rate_per_day, days.shape)
    levels, level = [], 1.0
    for index in range(len(days)):
        if index:
            level -= rates[index] * (days[index] - days[index - 1])
        if level < refill_below:
            level = 1.0
        levels.append(level)
    return np.array(levels)


# --- the pure functions ----------------------------------------------------------------------------------------


def test_use_per_week_counts_through_refills_spikes_dips_and_noise():
    days = np.arange(0.0, 56.0, 0.25)
    levels = sawtooth(days, 0.05)
    noisy = np.clip(levels + np.random.default_rng(1).normal(0, 0.01, len(levels)), 0, 1)
    noisy[40] = 1.0  # a spike
    noisy[90] = 0.0  # a bottle out of the fridge
    found = usage(series(days, noisy), now=T0 + 56 * DAY, weeks=8)
    assert [week.start for week in found.weeks] == [T0 + 7 * number * DAY for number in range(8)]
    used = np.array([week.used for week in found.weeks])
    assert np.all(np.abs(used - 0.35) < 0.06), used  # 0.05 a day
    assert all(week.covered == pytest.approx(1.0, abs=0.05) for week in found.weeks)  # the last: until 55.75
    assert found.rate_per_day == pytest.approx(0.05, rel=0.15)
    assert found.change is None


def test_a_doubling_is_marked_and_put_in_words():
    days = np.arange(0.0, 56.0, 0.25)
    found = usage(series(days, sawtooth(days, np.where(days < 42, 0.04, 0.08))), now=T0 + 56 * DAY, weeks=8)
    assert found.change == pytest.approx(2.0, rel=0.15)
    assert describe_change(found.change) == "doubled"
    assert describe_change(0.5) == "halved" and describe_change(3.0) == "tripled"


def test_weeks_before_the_first_reading_are_not_covered():
    days = np.arange(35.0, 56.0, 0.25)
    found = usage(series(days, sawtooth(days, 0.05)), now=T0 + 56 * DAY, weeks=8)
    assert [round(week.covered, 1) for week in found.weeks] == [0, 0, 0, 0, 0, 1, 1, 1]
    assert found.recent_per_day is not None and found.baseline_per_day is None  # 28 days before the last 14: no


def test_the_curve_is_zero_without_readings_and_never_falls():
    assert UseCurve(series(np.array([]), np.array([]))).between(T0, T0 + DAY) == 0
    days = np.arange(0.0, 20.0, 0.5)
    curve = UseCurve(series(days, np.clip(sawtooth(days, 0.1) + np.sin(days) * 0.02, 0, 1)))
    assert np.all(np.diff(curve.used) >= 0)


def test_the_monthly_cost_at_the_current_use():
    # 2% of a 500-sheet... of a 1-litre slot a day: 0.61 litres a month; packs of 0.5 litres at 3.20.
    assert monthly_cost(rate_per_day=0.02, capacity=1.0, pack_size=0.5, price=Decimal("3.20")) == Decimal("3.90")
    # A free SKU (no pack size): one unit fills the slot.
    assert monthly_cost(rate_per_day=0.1, capacity=2.0, pack_size=None, price=Decimal("10")) == Decimal("30.44")
    assert monthly_cost(rate_per_day=0.1, capacity=2.0, pack_size=None, price=None) is None


def test_hints_need_a_norm_and_a_sensor_that_repeats_itself():
    assert times_the_norm(0.3, median=0.1, slots=10) == pytest.approx(3.0)
    assert times_the_norm(0.2, median=0.1, slots=10) is None, "twice the median is within the usual"
    assert times_the_norm(0.3, median=0.1, slots=2) is None, "too few slots for a norm"
    delivered = T0 + 10 * DAY
    stuck = {"delivered_at": delivered, "refilled_since": False, "same_level_count": 5, "now": delivered + 2 * DAY}
    assert stuck_since_delivery(**stuck, same_level_since=delivered - DAY)
    assert not stuck_since_delivery(**{**stuck, "refilled_since": True}, same_level_since=delivered - DAY)
    assert not stuck_since_delivery(**{**stuck, "same_level_count": 2}, same_level_since=delivered - DAY)
    assert not stuck_since_delivery(**{**stuck, "now": delivered + DAY / 2}, same_level_since=delivered - DAY)


# --- through the database --------------------------------------------------------------------------------------


class Household:
    """A customer with a fridge (milk, in litres) whose readings go in through the real ingest service."""

    def __init__(self, engine: Engine, *, name: str = "ada", document: ConsentDocument | None = None) -> None:
        self.engine, self.seq, self.device_id = engine, 0, f"{name}-fridge"
        with transaction(engine) as session:
            customer = customers.create(
                session=session,
                name=name,
                email=f"{name}@example.com",
                consent_document=document or ConsentDocument(default_mode=ConsentMode.NOTIFY_ONLY),
                actor="test",
                now=T0,
            )
            self.customer_id = customer.id
            devices.register(
                session=session,
                actor="test",
                request=DeviceCreate(
                    id=self.device_id,
                    customer_id=customer.id,
                    kind="fridge",
                    name="Fridge",
                    slots=[
                        SlotCreate(
                            name="milk", unit="l", capacity=2.0, product_sku="MILK", lead_time_days=1, unit_price="1.50"
                        )
                    ],
                ),
                now=T0,
            )

    def report(self, days: np.ndarray, levels: np.ndarray) -> None:
        messages = []
        for day, level in zip(days.tolist(), levels.tolist(), strict=True):
            self.seq += 1
            at = T0 + timedelta(days=day)
            payload = {"seq": self.seq, "ts": at.isoformat(), "levels": {"milk": round(2.0 * level, 4)}}
            messages.append(
                IncomingMessage(f"devices/{self.device_id}/telemetry", json.dumps(payload).encode(), received_at=at)
            )
        with transaction(self.engine) as session:
            assert ingest_batch(session=session, messages=messages).stored == len(messages)

    def insight(self, now: datetime) -> insights.SlotInsight:
        with Session(self.engine) as session:
            rows = list(session.exec(select(Slot, Device).join(Device).where(Device.id == self.device_id)).all())
            document = consent.current_document(session=session, customer_id=self.customer_id)[1]
            found = insights.slot_insights(session=session, slots=rows, documents={self.customer_id: document}, now=now)
        [insight] = found.values()
        return insight

    def set_insights(self, **wanted: bool) -> None:
        with transaction(self.engine) as session:
            _, document = consent.current_document(session=session, customer_id=self.customer_id)
            consent.record(
                session=session,
                customer_id=self.customer_id,
                document=document.model_copy(update={"insights": InsightSettings(**wanted)}),
                actor="test",
                now=T0,
            )


@pytest.mark.both_stacks
def test_a_slots_use_change_and_cost_in_words(engine: Engine):
    home = Household(engine)
    days = np.arange(0.0, 56.0, 0.25)
    home.report(days, sawtooth(days, np.where(days < 42, 0.1, 0.2)))  # 0.2 l a day, then 0.4
    insight = home.insight(T0 + 56 * DAY)
    assert insight.change is not None
    words = re.fullmatch(
        r"Fridge milk use doubled in the last two weeks: ([\d.]+) l a week, against ([\d.]+) l before", insight.change
    )
    assert words is not None, insight.change
    assert float(words[1]) == pytest.approx(2.8, rel=0.1) and float(words[2]) == pytest.approx(1.4, rel=0.1)
    # 28 days at 0.15 of the slot a day on average: 4.57 fills a month, at 1.50 each (a free SKU fills the slot).
    assert insight.monthly_cost == pytest.approx(Decimal("6.85"), abs=Decimal("0.50"))
    assert insight.currency is None, "a free SKU's price has no currency"
    assert insight.hints == ()

    home.set_insights(usage_changes=False, costs=False)
    quiet = home.insight(T0 + 56 * DAY)
    assert quiet.change is None and quiet.monthly_cost is None
    assert quiet.usage.weeks == insight.usage.weeks, "the use itself is still shown"


@pytest.mark.both_stacks
def test_a_slot_far_faster_than_its_kind_gets_a_hint_from_the_fleets_norm(engine: Engine):
    days = np.arange(0.0, 30.0, 0.25)
    lending = ConsentDocument(default_mode=ConsentMode.NOTIFY_ONLY, fleet_learning_allowed=True)
    for number in range(5):
        neighbour = Household(engine, name=f"n{number}", document=lending)
        neighbour.report(days, sawtooth(days, 0.05 + 0.002 * number))
    ada = Household(engine)
    ada.report(days, sawtooth(days, 0.2))
    now = T0 + 30 * DAY
    from replenish.automation.service import evaluate_all

    assert evaluate_all(engine=engine, now=now, margin_days=1.0).errors == 0  # the forecasts the norms come from
    report = refresh_and_send(engine=engine, now=now)
    assert report.norms == 1 and report.errors == 0
    with Session(engine) as session:
        [norm] = session.exec(select(UsageNorm)).all()
    assert (norm.device_kind, norm.slot_name, norm.slots) == ("fridge", "milk", 5), "ada does not lend her rate"
    assert norm.median_rate_per_day == pytest.approx(0.054, rel=0.2)
    [hint] = ada.insight(now).hints
    assert hint.startswith("Fridge milk is used 3.") and "times as fast as the same slot of other customers'" in hint
    ada.set_insights(maintenance=False)
    assert ada.insight(now).hints == ()


@pytest.mark.both_stacks
def test_the_monthly_digest_goes_once_on_the_first_and_can_be_turned_off(engine: Engine):
    home = Household(engine)
    days = np.arange(0.0, 70.0, 0.25)  # September, October and into November
    home.report(days, sawtooth(days, 0.1))
    before = datetime(2026, 11, 1, 7, 0, tzinfo=UTC)
    assert refresh_and_send(engine=engine, now=before).digests == [], "not before digest_time (08:00 UTC)"
    first = datetime(2026, 11, 1, 8, 5, tzinfo=UTC)
    assert refresh_and_send(engine=engine, now=first).digests == [home.customer_id]
    assert refresh_and_send(engine=engine, now=first + timedelta(hours=1)).digests == [], "once a month"
    with Session(engine) as session:
        [digest] = session.exec(select(Notification).where(Notification.kind == NoticeKind.MONTHLY_DIGEST)).all()
        assert session.get(MonthlyDigest, (home.customer_id, "2026-10")) is not None
    assert digest.subject == "Your supplies in October 2026"
    used = re.search(r"- Fridge milk: ([\d.]+) l used in October \(in September: ([\d.]+) l\); about ", digest.body)
    assert used is not None, digest.body
    assert float(used[1]) == pytest.approx(6.2, rel=0.1) and float(used[2]) == pytest.approx(6.0, rel=0.1)
    assert "a month at the current use" in digest.body
    assert "turn these insights, or this digest, off" in digest.body

    home.set_insights(monthly_digest=False)
    december = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert refresh_and_send(engine=engine, now=december).digests == []
    with Session(engine) as session:
        handled = session.get(MonthlyDigest, (home.customer_id, "2026-11"))
        assert handled is not None and not handled.sent, "handled: not looked at again this month"
        assert insights.customers_owed_a_digest(session=session, now=december + timedelta(hours=1)) == []


def test_use_is_read_without_loading_the_models_compiled_kernels():
    """The API process shows insights; numba (half a minute to compile, 150 MB) stays the evaluator's."""
    script = textwrap.dedent(
        """
        import sys
        from datetime import UTC, datetime

        import numpy as np

        from replenish.forecasting import ReadingSeries
        from replenish.insights.usage import usage

        days = np.arange(0.0, 30.0, 0.25)
        series = ReadingSeries(times=1.78e9 + days * 86400.0, levels=1.0 - (0.05 * days) % 0.9)
        found = usage(series, now=datetime.fromtimestamp(1.78e9 + 30 * 86400.0, UTC), weeks=4)
        assert found.rate_per_day is not None
        print("numba" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"

"""Only due slots are evaluated: a reading, the order moment, consent, an order's status or a slot's settings make a
slot due; several evaluators share the due slots, and a killed one's claims expire. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, update
from sqlmodel import Session, col, select

from replenish.automation.engine import FORECAST_HISTORY_DAYS, REFRESH_AFTER, Screen
from replenish.automation.models import Decision
from replenish.automation.service import (
    CLAIM_LEASE,
    FORECAST_HISTORY,
    RETRY_AFTER,
    claim_due,
    evaluate_due,
    finish_claims,
    reading_windows,
    slot_readings,
)
from replenish.consent import service as consent
from replenish.consent.models import ConsentVersion
from replenish.consent.schemas import ConsentDocument
from replenish.constants import ConsentMode, OrderStatus
from replenish.customers import service as customers
from replenish.db import make_engine, transaction
from replenish.devices import service as devices
from replenish.devices.models import Slot, SlotForecast, SlotWindow
from replenish.devices.schemas import DeviceCreate, SlotCreate, SlotUpdate
from replenish.forecasting import Forecast
from replenish.ingest.models import Reading
from replenish.ingest.schemas import IncomingMessage
from replenish.ingest.service import ingest_batch
from replenish.orders import service as orders
from replenish.orders.models import Order
from replenish.schema import create_schema

T0 = datetime(2026, 3, 2, tzinfo=UTC)
REPLENISH = str(Path(sys.executable).parent / "replenish")
MARGIN_DAYS = 1.0

pytestmark = pytest.mark.both_stacks


class Printers:
    """Printers of one customer, one black slot each; readings go in through the real ingest service."""

    def __init__(
        self, engine: Engine, count: int, *, mode: ConsentMode = ConsentMode.AUTO_ORDER, prefix: str = "printer"
    ) -> None:
        self.engine = engine
        self.seqs: dict[str, int] = {}
        with transaction(engine) as session:
            self.customer_id = customers.create(
                session=session,
                name="Ada",
                email=f"ada-{uuid.uuid4().hex[:6]}@example.com",
                consent_document=ConsentDocument(default_mode=mode),
                actor="test",
                now=T0,
            ).id
            for number in range(count):
                device_id = f"{prefix}-{number}"
                devices.register(
                    session=session,
                    actor="test",
                    request=DeviceCreate(
                        id=device_id,
                        customer_id=self.customer_id,
                        kind="printer",
                        name=f"P{number}",
                        slots=[SlotCreate(name="black", product_sku="INK", lead_time_days=3)],
                    ),
                    now=T0,
                )
                self.seqs[device_id] = 0

    def report(self, device_ids: list[str], at: datetime, level: float, *, received_at: datetime | None = None) -> None:
        messages = []
        for device_id in device_ids:
            self.seqs[device_id] += 1
            payload = json.dumps({"seq": self.seqs[device_id], "ts": at.isoformat(), "levels": {"black": level}})
            messages.append(
                IncomingMessage(f"devices/{device_id}/telemetry", payload.encode(), received_at=received_at or at)
            )
        with transaction(self.engine) as session:
            assert ingest_batch(session=session, messages=messages).stored == len(messages)

    def falling(self, device_ids: list[str], *, start: datetime, days: float, start_level: float, rate: float) -> None:
        """Readings every 6 hours, falling steadily."""
        moment = start
        while moment <= start + timedelta(days=days):
            self.report(device_ids, moment, round(start_level - rate * (moment - start) / timedelta(days=1), 4))
            moment += timedelta(hours=6)

    def evaluate(self, at: datetime) -> int:
        report = evaluate_due(engine=self.engine, now=at, margin_days=MARGIN_DAYS)
        assert report.errors == 0
        return report.slots

    @staticmethod
    def slot_by_id(engine: Engine, slot_id: str) -> Slot:
        with Session(engine) as session:
            return session.get_one(Slot, slot_id)

    def slot(self, device_id: str = "printer-0") -> Slot:
        with Session(self.engine) as session:
            return devices.get_slot(session=session, device_id=device_id, slot_name="black")

    def forecast(self, device_id: str = "printer-0") -> Forecast:
        with Session(self.engine) as session:
            stored = session.get_one(SlotForecast, self.slot(device_id).id)
        forecast = Forecast.from_json(stored.forecast)
        assert forecast is not None
        return forecast

    def decisions(self) -> int:
        with Session(self.engine) as session:
            return session.exec(select(func.count()).select_from(Decision)).one()


def test_a_quiet_fleet_costs_nothing_and_a_reading_makes_its_slot_due(engine: Engine):
    printers = Printers(engine, 3)
    names = list(printers.seqs)
    printers.falling(names, start=T0, days=2, start_level=0.95, rate=0.02)
    now = T0 + timedelta(days=2)
    assert printers.evaluate(now) == 3
    assert printers.evaluate(now) == 0, "nothing new: nothing evaluated"
    assert printers.evaluate(now + timedelta(hours=1)) == 0, "time passing alone changes nothing yet"
    printers.report(["printer-0"], now + timedelta(hours=2), 0.905)  # as forecast: it can wait
    assert printers.evaluate(now + timedelta(hours=2)) == 0
    printers.report(["printer-1"], now + timedelta(hours=4), 0.7)  # a sharp drop, past the near step
    assert printers.evaluate(now + timedelta(hours=4)) == 1, "only the slot that reported it"
    assert printers.slot("printer-1").due_at == now + timedelta(hours=4) + REFRESH_AFTER, "and then at least daily"


def test_a_reading_that_can_wait_is_not_forecast_and_a_sharp_drop_or_a_refill_is(engine: Engine):
    printers = Printers(engine, 2)
    printers.falling(["printer-0", "printer-1"], start=T0, days=2, start_level=0.6, rate=0.02)
    now = T0 + timedelta(days=2)
    printers.evaluate(now)
    computed = printers.forecast().computed_at

    def evaluate(at: datetime) -> int:
        report = evaluate_due(engine=engine, now=at, margin_days=MARGIN_DAYS)
        assert report.errors == 0
        return report.forecasts

    due_at = printers.slot().due_at
    printers.report(["printer-0"], now + timedelta(hours=1), 0.555)
    assert printers.slot().due_at == due_at, "as the forecast said: it can wait, the slot stays due as it was"
    assert evaluate(now + timedelta(hours=1)) == 0
    assert printers.forecast().computed_at == computed
    printers.report(["printer-0"], now + timedelta(hours=4), 0.4)  # a sharp drop, past the near step
    assert printers.slot().due_at == now + timedelta(hours=4)
    assert evaluate(now + timedelta(hours=4)) == 1
    printers.report(["printer-1"], now + timedelta(hours=5), 0.95)  # a rise that may be a refill
    assert evaluate(now + timedelta(hours=5)) == 1
    with transaction(engine) as session:  # anything but a reading: evaluated in full at once
        consent.record(
            session=session,
            customer_id=printers.customer_id,
            document=ConsentDocument(default_mode=ConsentMode.ASK_FIRST),
            actor="test",
            now=now + timedelta(hours=6),
        )
    printers.report(["printer-0", "printer-1"], now + timedelta(hours=6), 0.55)
    assert evaluate(now + timedelta(hours=6)) == 2


def test_ingest_lets_exactly_the_readings_wait_that_the_engines_screen_does(engine: Engine):
    """devices.service.due_after_reading, in ingest's update of the slot, is Screen.lets_wait (which the backtest
    runs) written in SQL: the same answer at every boundary, for the slot's newest level after the reading."""
    printers = Printers(engine, 1)
    slot_id = printers.slot().id
    minutes = st.integers(min_value=-1, max_value=1).map(lambda count: T0 + timedelta(minutes=count))
    fractions = st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0, 1)
    waiting_until = T0 + timedelta(days=1)  # the slot's due moment before the reading: its next full evaluation

    later = T0 + timedelta(minutes=1)
    # Every boundary, whatever the search finds: a level at the drop bound (the longer wait) and at the refill bound
    # (no wait), a screen or a full evaluation ending right now (no wait).
    edge = {"capacity": 3.0, "until": later, "until_dropped": later, "evaluate_by": later, "stored": None}
    edge |= {"late": False}

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @example(**edge | {"level": 0.5, "low": 0.5, "high": None, "until_dropped": T0})
    @example(**edge | {"level": 0.5, "low": None, "high": 0.5})
    @example(**edge | {"level": 0.5, "low": None, "high": None, "until": T0})
    @example(**edge | {"level": 0.5, "low": None, "high": None, "evaluate_by": T0})
    @example(**edge | {"level": 0.9, "low": None, "high": 0.5, "stored": 0.2, "late": True})  # the stored newest
    @given(
        level=fractions,
        capacity=st.sampled_from([1.0, 3.0, 250.0]),
        until=st.none() | minutes,
        until_dropped=st.none() | minutes,
        evaluate_by=st.none() | minutes,
        low=st.none() | fractions,
        high=st.none() | fractions,
        stored=st.none() | fractions,
        late=st.booleans(),
    )
    def screens_alike(level, capacity, until, until_dropped, evaluate_by, low, high, stored, late) -> None:
        late = late and stored is not None  # a reading older than the slot's newest leaves that one the newest
        with transaction(engine) as session:
            session.execute(
                update(Slot)
                .where(col(Slot.id) == slot_id)
                .values(
                    level=stored * capacity if stored is not None else None,
                    level_at=(later if late else T0 - timedelta(days=1)) if stored is not None else None,
                    capacity=capacity,
                    due_at=waiting_until,
                    claimed_until=None,
                    evaluate_by=evaluate_by,
                    screen_until=until,
                    screen_until_dropped=until_dropped,
                    screen_low=low,
                    screen_high=high,
                )
            )
        printers.report(["printer-0"], T0, level * capacity)
        newest = stored if late else level
        expected = (
            until is not None
            and until_dropped is not None
            and evaluate_by is not None
            and evaluate_by > T0
            and Screen(
                until=until,
                until_dropped=until_dropped,
                low=-math.inf if low is None else low,
                high=math.inf if high is None else high,
            ).lets_wait(newest * capacity / capacity, now=T0)  # the level stored, over the capacity, as in SQL
        )
        slot = Printers.slot_by_id(engine, slot_id)
        assert slot.level == pytest.approx(newest * capacity)
        assert slot.due_at == (waiting_until if expected else T0)

    screens_alike()


def test_one_read_gives_each_slot_of_a_batch_its_own_readings_in_its_own_unit(engine: Engine):
    printers = Printers(engine, 4)
    with transaction(engine) as session:  # a slot measured in its own unit: levels run 0..250
        session.execute(update(Slot).where(col(Slot.device_id) == "printer-1").values(capacity=250.0))
    printers.falling(["printer-0", "printer-1"], start=T0, days=1, start_level=0.9, rate=0.05)
    printers.falling(["printer-2"], start=T0 - timedelta(days=60), days=1, start_level=0.8, rate=0.01)  # too old
    printers.falling(["printer-2"], start=T0 + timedelta(hours=3), days=0.5, start_level=0.7, rate=0.02)
    now = T0 + timedelta(days=1)
    with Session(engine) as session:
        slots = [printers.slot(f"printer-{number}") for number in (3, 1, 2, 0)]  # printer-3 never reported
        series = slot_readings(session=session, slots=slots, now=now - timedelta(hours=6))
        for slot in slots:
            expected = session.exec(
                select(Reading)
                .where(
                    Reading.slot_id == slot.id,
                    Reading.ts > now - timedelta(hours=6) - timedelta(days=FORECAST_HISTORY_DAYS),
                    Reading.ts <= now - timedelta(hours=6),
                )
                .order_by(col(Reading.ts))
            ).all()
            assert [round(t, 6) for t in series[slot.id].times] == [r.ts.timestamp() for r in expected]
            assert list(series[slot.id].levels) == pytest.approx([r.level / slot.capacity for r in expected])
    assert [len(series[slot.id].times) for slot in slots] == [0, 4, 3, 4]


def test_each_decision_of_a_batch_carries_the_message_behind_its_own_newest_reading(engine: Engine):
    printers = Printers(engine, 3)
    names = list(printers.seqs)
    printers.falling(names, start=T0, days=3, start_level=0.3, rate=0.08)  # every slot orders
    now = T0 + timedelta(days=3)
    printers.report(["printer-1"], now, 0.05)  # stamped as its 13th was, stored after it: the newer
    printers.report(["printer-2"], now + timedelta(hours=1), 0.04)  # stamped ahead of the evaluation's clock
    printers.evaluate(now)
    with Session(engine) as session:
        decided = {decision.device_id: decision.correlation_id for decision in session.exec(select(Decision)).all()}
    # The falling readings' 13th message of each device is stamped `now`.
    assert decided == {"printer-0": "printer-0:13", "printer-1": "printer-1:14", "printer-2": "printer-2:13"}


def test_a_late_reading_can_wait_as_any_reading(engine: Engine):
    printers = Printers(engine, 1)
    printers.falling(["printer-0"], start=T0, days=2, start_level=0.95, rate=0.02)
    now = T0 + timedelta(days=2)
    printers.evaluate(now)
    due_at = printers.slot().due_at
    assert due_at == now + REFRESH_AFTER
    # Older than the newest reading, arriving an hour on: the newest level is as forecast, so it can wait.
    printers.report(["printer-0"], now - timedelta(hours=3), 0.9, received_at=now + timedelta(hours=1))
    assert printers.slot().due_at == due_at
    assert printers.evaluate(now + timedelta(hours=1)) == 0


def test_a_reading_after_an_evaluation_on_evidence_too_old_to_act_on_never_waits(engine: Engine):
    """Its order moment has passed, but the newest reading it had was too old to order on (the readings since were
    still on their way: a backlog, or the demo's catch-up under load). The next reading is what the decision
    waits for: it makes the slot due at once, not hours later."""
    printers = Printers(engine, 1)
    printers.falling(["printer-0"], start=T0, days=1, start_level=0.3, rate=0.08)
    now = T0 + timedelta(days=3.5)
    assert printers.evaluate(now) == 1
    with Session(engine) as session:
        assert session.exec(select(Order)).all() == [], "nothing ordered on evidence 2.5 days old"
    printers.report(["printer-0"], now - timedelta(hours=1), 0.03, received_at=now + timedelta(minutes=1))
    assert printers.evaluate(now + timedelta(minutes=2)) == 1
    with Session(engine) as session:
        assert len(session.exec(select(Order)).all()) == 1


def test_a_customers_approval_waits_for_an_evaluation_of_theirs_under_way(engine: Engine):
    """An evaluation counts the customer's spending this month once, under the customer's lock: an approval placing
    an order meanwhile must wait for that transaction, or the evaluation could spend the same part of the cap. It
    waits before it locks the order: a consent change holding the customer's lock locks the customer's open orders
    next, and the two must not wait on each other."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer: every transaction waits for the one before it anyway")
    printers = Printers(engine, 1, mode=ConsentMode.ASK_FIRST)
    printers.falling(["printer-0"], start=T0, days=3, start_level=0.3, rate=0.05)
    now = T0 + timedelta(days=3)
    printers.evaluate(now)
    with Session(engine) as session:
        asked = session.exec(select(Order)).one()
    assert asked.status == OrderStatus.AWAITING_APPROVAL
    approved = threading.Event()

    def approve() -> None:
        with transaction(engine) as session:
            orders.transition(session=session, order_id=asked.id, to=OrderStatus.PLACED, actor="customer", now=now)
        approved.set()

    approval = threading.Thread(target=approve)
    with transaction(engine) as session:
        consent.lock_customer(session=session, customer_id=printers.customer_id)  # as an evaluation holds it
        approval.start()
        assert not approved.wait(1.0), "the approval placed the order under an evaluation's lock"
        # As a consent change goes on: the customer's open orders, locked (a deadlock would fail one of the two).
        assert session.get(Order, asked.id, with_for_update=True, populate_existing=True) is not None
    approval.join(timeout=30)
    assert approved.is_set(), "the approval went ahead once the evaluation committed"
    with Session(engine) as session:
        assert session.get_one(Order, asked.id).status == OrderStatus.PLACED


def test_the_order_moment_is_stored_and_the_order_placed_then_without_a_new_reading(engine: Engine):
    printers = Printers(engine, 1)
    # 5 %/day from 0.7: empty in about 14 days; lead time 3 + margin 1 puts the order moment about 9 days out.
    printers.falling(["printer-0"], start=T0, days=3, start_level=0.7, rate=0.05)
    now = T0 + timedelta(days=3)
    assert printers.evaluate(now) == 1
    forecast = printers.forecast()
    assert forecast.empty_at_early is not None
    order_moment = forecast.empty_at_early - timedelta(days=3 + MARGIN_DAYS)
    # The device goes on reporting daily; each reading moves the order moment a little.
    moment = now
    while moment + timedelta(days=1) < order_moment:
        moment += timedelta(days=1)
        level = round(0.7 - 0.05 * (moment - T0) / timedelta(days=1), 4)
        printers.report(["printer-0"], moment, level)
        assert printers.evaluate(moment) == 1
        assert printers.decisions() == 0
        forecast = printers.forecast()
        assert forecast.empty_at_early is not None
        order_moment = forecast.empty_at_early - timedelta(days=3 + MARGIN_DAYS)
    assert moment < order_moment < moment + timedelta(days=1)
    assert printers.slot().due_at == order_moment, "the order moment, stored with the forecast"
    assert printers.evaluate(order_moment - timedelta(seconds=1)) == 0
    assert printers.evaluate(order_moment) == 1
    assert printers.decisions() == 1, "ordered at its moment, between two readings"


def test_consent_an_order_and_the_slots_settings_make_it_due(engine: Engine):
    printers = Printers(engine, 2, mode=ConsentMode.OFF)
    names = list(printers.seqs)
    printers.falling(names, start=T0, days=3, start_level=0.3, rate=0.08)  # about to run out
    now = T0 + timedelta(days=3)
    assert printers.evaluate(now) == 2
    assert printers.decisions() == 0, "consent is off"
    later = now + timedelta(minutes=5)
    with transaction(engine) as session:
        consent.record(
            session=session,
            customer_id=printers.customer_id,
            document=ConsentDocument(default_mode=ConsentMode.AUTO_ORDER),
            actor="test",
            now=later,
        )
    assert printers.evaluate(later) == 2, "a new consent version: every slot of the customer"
    assert printers.decisions() == 2
    with Session(engine) as session:
        order = session.exec(select(Order).where(Order.device_id == "printer-0")).one()
    assert printers.evaluate(later + timedelta(minutes=1)) == 0
    with transaction(engine) as session:
        orders.transition(
            session=session, order_id=order.id, to=OrderStatus.CANCELLED, actor="test", now=later + timedelta(minutes=2)
        )
    assert printers.evaluate(later + timedelta(minutes=2)) == 1, "the cancelled order's slot"
    with transaction(engine) as session:
        device = devices.get(session=session, device_id="printer-1")
        slot = devices.get_slot(session=session, device_id="printer-1", slot_name="black")
        devices.update_slot(
            session=session,
            device=device,
            slot=slot,
            request=SlotUpdate(lead_time_days=5),
            now=later + timedelta(minutes=3),
        )
    assert printers.evaluate(later + timedelta(minutes=3)) == 1, "the slot whose settings changed"


def test_a_reading_stored_during_an_evaluation_keeps_the_slot_due(engine: Engine):
    printers = Printers(engine, 1)
    printers.falling(["printer-0"], start=T0, days=2, start_level=0.95, rate=0.02)
    now = T0 + timedelta(days=2)
    with transaction(engine) as session:
        [claim] = claim_due(session=session, now=now, limit=10)
    printers.report(["printer-0"], now, 0.9)  # between the claim and the end of the evaluation
    with transaction(engine) as session:
        assert claim_due(session=session, now=now, limit=10) == [], "claimed: no other evaluator takes it"
    # The claim's evaluation ends (as evaluate_due ends it): the mark since the claim keeps the slot due.
    with transaction(engine) as session:
        finish_claims(session=session, claims=[claim], next_at={claim.slot_id: now + timedelta(days=1)})
    assert printers.slot().due_at is not None and printers.slot().due_at <= now
    assert printers.evaluate(now) == 1


def test_a_killed_evaluators_claims_expire_and_nothing_is_lost(engine: Engine):
    printers = Printers(engine, 6)
    names = list(printers.seqs)
    printers.falling(names, start=T0, days=2, start_level=0.95, rate=0.02)
    now = T0 + timedelta(days=2)
    with transaction(engine) as session:
        killed = claim_due(session=session, now=now, limit=2)  # and then the process is killed
    assert printers.evaluate(now) == 4, "the others take the rest, not its claims"
    assert printers.evaluate(now + CLAIM_LEASE - timedelta(seconds=1)) == 0
    assert printers.evaluate(now + CLAIM_LEASE) == 2, "its claims expired"
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(SlotForecast)).one() == 6
    assert {claim.slot_id for claim in killed} <= {printers.slot(name).id for name in names}


def test_several_evaluators_share_the_due_slots_and_decide_each_once(engine: Engine):
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one evaluator: its one writer would make several wait on each other")
    printers = Printers(engine, 40)
    names = list(printers.seqs)
    printers.falling(names, start=T0, days=3, start_level=0.3, rate=0.08)  # every slot orders
    now = T0 + timedelta(days=3)
    reports = []

    def evaluator() -> None:
        reports.append(evaluate_due(engine=engine, now=now, margin_days=MARGIN_DAYS, batch_size=3))

    threads = [threading.Thread(target=evaluator) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(report.errors for report in reports) == 0
    assert sum(report.slots for report in reports) >= 40
    assert sum(len(report.decisions) for report in reports) == 40, "one decision per slot, whoever took it"
    assert printers.decisions() == 40
    assert sum(1 for report in reports if report.slots) >= 2, "the work was shared"


def test_replenish_forecasts_rebuild_forecasts_every_slot_from_its_readings(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'rebuild.db'}")
    create_schema(engine)
    printers = Printers(engine, 3)
    names = list(printers.seqs)
    recent = datetime.now(UTC) - timedelta(days=2)
    printers.falling(names, start=recent, days=1.5, start_level=0.95, rate=0.02)
    env = {**os.environ, "REPLENISH_DATABASE_URL": str(engine.url)}
    done = subprocess.run([REPLENISH, "forecasts", "rebuild"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "3 slots forecast, 0 decisions, 0 errors" in done.stdout
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(SlotForecast)).one() == 3
    assert printers.forecast("printer-2").status == "ok"


def test_a_slot_marked_during_every_evaluation_does_not_hold_the_pass(engine: Engine):
    printers = Printers(engine, 1)
    printers.falling(["printer-0"], start=T0, days=2, start_level=0.95, rate=0.02)
    now = T0 + timedelta(days=2)
    slot_id = printers.slot().id

    def marked_meanwhile() -> bool:
        """Between every two transactions of the pass, something marks the slot (a chatty device, say)."""
        with transaction(engine) as session:
            devices.mark_slots_due(session=session, at=now + timedelta(seconds=1), slot_ids=[slot_id])
        return False

    report = evaluate_due(engine=engine, now=now, margin_days=MARGIN_DAYS, should_stop=marked_meanwhile)
    assert report.forecasts == 2, "evaluated again once for the marks, then left to the next pass"
    assert printers.slot().due_at == now + timedelta(microseconds=1)
    assert printers.evaluate(now + timedelta(seconds=1)) == 1


def test_a_slot_that_fails_holds_up_no_other_and_is_tried_again_later(engine: Engine):
    healthy = Printers(engine, 2)
    broken = Printers(engine, 1, prefix="broken")
    now = T0 + timedelta(days=2)
    healthy.falling(list(healthy.seqs), start=T0, days=2, start_level=0.95, rate=0.02)
    broken.falling(["broken-0"], start=T0, days=2, start_level=0.95, rate=0.02)
    with transaction(engine) as session:  # a customer without any consent: its slot cannot be decided on
        session.execute(delete(ConsentVersion).where(col(ConsentVersion.customer_id) == broken.customer_id))
    report = evaluate_due(engine=engine, now=now, margin_days=MARGIN_DAYS)
    assert (report.slots, report.forecasts, report.errors) == (3, 2, 1), "the batch was redone slot by slot"
    assert broken.slot("broken-0").due_at == now + RETRY_AFTER
    assert healthy.slot("printer-1").due_at is not None and healthy.slot("printer-1").due_at > now


_STEPS = st.lists(
    st.one_of(
        # Readings of some of the three slots, stamped around the evaluator's clock: late (before readings already
        # stored) or ahead of it.
        st.tuples(
            st.just("report"),
            st.sets(st.integers(0, 2), min_size=1),
            st.floats(-60.0, 6.0),
            st.floats(0.0, 1.0).map(lambda level: round(level, 3)),
        ),
        # The evaluator's clock moves on (now and then past the whole history window) and evaluates the due slots.
        st.tuples(st.just("evaluate"), st.sampled_from([0.0, 0.25, 3.0, 20.0, 24.0 * 50]), st.just(0.0)),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_STEPS)
def test_a_stored_window_and_the_readings_since_always_equal_a_whole_read(engine: Engine, steps: list[tuple]):
    printers = Printers(engine, 3, prefix=f"p{uuid.uuid4().hex[:8]}")
    names = list(printers.seqs)
    clock = T0
    for step in steps:
        if step[0] == "report":
            _, which, hours, level = step
            printers.report([names[index] for index in sorted(which)], clock + timedelta(hours=hours), level)
            continue
        clock += timedelta(hours=step[1])
        assert evaluate_due(engine=engine, now=clock, margin_days=MARGIN_DAYS).errors == 0
        with Session(engine) as session:
            slots = [printers.slot(name) for name in names]
            stored = session.exec(
                select(func.count()).select_from(SlotWindow).where(col(SlotWindow.slot_id).in_([s.id for s in slots]))
            ).one()
            assert stored == len(slots), "every slot was evaluated (due since it was registered) and kept its window"
            for now in (clock, clock + timedelta(hours=5)):
                whole = slot_readings(session=session, slots=slots, now=now)
                windows, _ = reading_windows(
                    session=session,
                    slot_ids=[slot.id for slot in slots],
                    now=now,
                    changed_from={slot.id: slot.readings_changed_from for slot in slots},
                )
                for slot in slots:
                    series = windows[slot.id].series(now=now, capacity=slot.capacity)
                    start = int(np.searchsorted(series.times, (now - FORECAST_HISTORY).timestamp(), side="right"))
                    assert list(series.times[start:]) == list(whole[slot.id].times)
                    assert list(series.levels[start:]) == list(whole[slot.id].levels)


def test_marking_every_slot_due_goes_in_chunks_and_reaches_every_slot(engine: Engine, monkeypatch: pytest.MonkeyPatch):
    # `replenish forecasts rebuild` marks every slot: one statement for 100,000 ids would pass PostgreSQL's
    # 65,535 parameters.
    monkeypatch.setattr(devices, "MARK_CHUNK", 4)
    printers = Printers(engine, 10)
    later = T0 + timedelta(days=3)
    with transaction(engine) as session:
        session.execute(update(Slot).values(due_at=None))
        devices.mark_slots_due(session=session, at=later)
    with Session(engine) as session:
        assert session.exec(select(Slot.due_at)).all() == [later] * len(printers.seqs)

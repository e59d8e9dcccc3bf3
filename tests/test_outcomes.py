"""Cycle outcomes (issue 22, part 1): what happened to each decided cycle against its forecast, recorded by the live
evaluator when the cycle runs empty or a refill ends it, with the order and the customer's feedback; and the
fleet's reliability."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from replenish.automation import service as automation
from replenish.automation.models import Decision
from replenish.automation.service import evaluate_all
from replenish.consent.schemas import ConsentDocument
from replenish.constants import ConsentMode, OrderFeedback, OrderStatus
from replenish.customers import service as customers
from replenish.db import transaction
from replenish.devices import service as devices
from replenish.devices.models import Slot as DeviceSlot
from replenish.devices.schemas import DeviceCreate, SlotCreate
from replenish.errors import InvalidRequest
from replenish.forecasting import ReadingSeries
from replenish.forecasting.calibration import GROUP_STEP, SLOT_STEP, Calibration, learn, lesson
from replenish.forecasting.outcomes import Prediction, cycle_outcome, outcome_when_empty
from replenish.ingest.schemas import IncomingMessage
from replenish.ingest.service import ingest_batch
from replenish.orders import service as orders
from replenish.orders.models import Order
from replenish.outcomes import service as outcomes
from replenish.outcomes.models import CalibrationGroup, CycleOutcome
from replenish.privacy import service as privacy

pytestmark = pytest.mark.both_stacks

T0 = datetime(2026, 1, 5, tzinfo=UTC)
DAY = timedelta(days=1)
STEP = timedelta(hours=6)


class Printer:
    """One ink slot of one customer; readings go in through the real ingest service, the real evaluator decides."""

    def __init__(
        self,
        engine: Engine,
        *,
        mode: ConsentMode,
        device_id: str = "printer-1",
        kind: str = "printer",
        fleet_learning: bool = False,
    ):
        self.engine, self.device_id, self.seq = engine, device_id, 0
        with transaction(engine) as session:
            customer = customers.create(
                session=session,
                name="Ada",
                email=f"{device_id}@example.com",
                consent_document=ConsentDocument(default_mode=mode, fleet_learning_allowed=fleet_learning),
                actor="test",
                now=T0,
            )
            devices.register(
                session=session,
                actor="test",
                request=DeviceCreate(
                    id=device_id,
                    customer_id=customer.id,
                    kind=kind,
                    name="P",
                    slots=[SlotCreate(name="black", product_sku="INK", lead_time_days=3)],
                ),
                now=T0,
            )

    def run(self, start: datetime, levels: list[float]) -> datetime:
        """Reports ``levels`` every 6 hours from ``start``, evaluating after each; returns the next moment."""
        moment = start
        for level in levels:
            self.seq += 1
            payload = {"seq": self.seq, "ts": moment.isoformat(), "levels": {"black": round(level, 5)}}
            with transaction(self.engine) as session:
                stored = ingest_batch(
                    session=session,
                    messages=[
                        IncomingMessage(
                            f"devices/{self.device_id}/telemetry", json.dumps(payload).encode(), received_at=moment
                        )
                    ],
                )
            assert stored.stored == 1
            assert evaluate_all(engine=self.engine, now=moment, margin_days=1.0).errors == 0
            moment += STEP
        return moment

    def orders(self) -> list[Order]:
        with Session(self.engine) as session:
            return list(session.exec(select(Order).where(Order.device_id == self.device_id)))

    def outcomes(self) -> list[CycleOutcome]:
        with Session(self.engine) as session:
            return list(session.exec(select(CycleOutcome).where(CycleOutcome.device_id == self.device_id)))


def answer(engine: Engine, order: Order, *, to: OrderStatus, feedback: OrderFeedback, now: datetime) -> None:
    """The customer's answer to an order, with why."""
    with transaction(engine) as session:
        orders.transition(session=session, order_id=order.id, to=to, actor="customer:ada", now=now, feedback=feedback)


def depleting(start: float, rate_per_day: float, days: float) -> list[float]:
    return [max(0.0, start - rate_per_day * step / 4) for step in range(int(days * 4))]


def test_a_cycle_that_ran_out_records_when_and_for_how_long(engine: Engine):
    printer = Printer(engine, mode=ConsentMode.AUTO_ORDER)
    # 0.1 a day from 0.8: empty on day 8. Read every 6 hours until day 11, then refilled.
    moment = printer.run(T0, depleting(0.8, 0.1, 11))
    [order] = printer.orders()
    # Empty since day 8: what happened is known before the refill, and taught once.
    [when_empty] = printer.outcomes()
    assert when_empty.ended_at is None and when_empty.empty_days == 0
    assert when_empty.ran_out_at is not None
    assert abs((when_empty.ran_out_at - (T0 + 8 * DAY)).total_seconds()) < 60
    assert when_empty.recorded_at < T0 + 8 * DAY + DAY, "recorded while the slot was empty, not days later"
    with Session(engine) as session:
        [slot] = session.exec(select(DeviceSlot))
        assert slot.calibration_cycles == 1
    printer.run(moment, [1.0, 0.98, 0.96])

    [outcome] = printer.outcomes()
    assert outcome.id == when_empty.id and outcome.recorded_at == when_empty.recorded_at
    with Session(engine) as session:
        [slot] = session.exec(select(DeviceSlot))
        assert slot.calibration_cycles == 1, "the refill teaches nothing more"
    assert outcome.order_id == order.id and outcome.order_status == OrderStatus.PLACED
    assert outcome.decided_at == order.created_at and outcome.action == "place_order"
    assert outcome.device_kind == "printer" and outcome.slot_name == "black"
    assert outcome.cycle_started_at <= T0 and outcome.ended_at == moment
    # Empty at day 8 exactly (a reading of 0.0 then); the one before read 0.025, which the rate takes to 0 by then.
    assert outcome.ran_out_at is not None
    assert abs((outcome.ran_out_at - (T0 + 8 * DAY)).total_seconds()) < 60
    assert outcome.empty_estimated_at == outcome.ran_out_at
    assert outcome.empty_days == pytest.approx((moment - outcome.ran_out_at) / DAY, abs=1e-3)
    assert outcome.left_days == 0
    # A straight line is forecast well: the median within hours, and the slot did not run out before the early date.
    assert abs(outcome.error_days) < 0.25
    assert not outcome.ran_out_before_early
    assert outcome.predicted_early_at < outcome.predicted_empty_at
    assert outcome.service_level == pytest.approx(0.97)

    # Evaluating again records nothing more: one outcome per decision.
    with Session(engine) as session:
        assert len(list(session.exec(select(CycleOutcome)))) == 1


def test_a_refill_before_running_out_records_the_supply_left(engine: Engine):
    printer = Printer(engine, mode=ConsentMode.AUTO_ORDER)
    moment = printer.run(T0, depleting(0.8, 0.1, 6.5))  # down to 0.175 at day 6.25: ordered, not yet empty
    assert len(printer.orders()) == 1
    printer.run(moment, [1.0, 0.98])
    [outcome] = printer.outcomes()
    assert outcome.ran_out_at is None and outcome.empty_days == 0
    # The last reading, 0.175 at day 6.25, lasts 1.75 days more at 0.1 a day.
    assert outcome.empty_estimated_at == pytest.approx(T0 + 8 * DAY, abs=timedelta(minutes=30))
    assert outcome.left_days == pytest.approx((T0 + 8 * DAY - moment) / DAY, abs=0.05)


def test_a_dip_to_empty_is_not_running_out(engine: Engine):
    printer = Printer(engine, mode=ConsentMode.AUTO_ORDER)
    levels = depleting(0.8, 0.1, 6.5)
    levels[20] = 0.0  # day 5: one empty reading, then the level is back
    moment = printer.run(T0, levels)
    printer.run(moment, [1.0, 0.98])
    [outcome] = printer.outcomes()
    assert outcome.ran_out_at is None


def test_a_declined_request_records_the_customers_feedback(engine: Engine):
    printer = Printer(engine, mode=ConsentMode.ASK_FIRST)
    moment = printer.run(T0, depleting(0.8, 0.1, 6.5))
    [request] = printer.orders()
    assert request.status == OrderStatus.AWAITING_APPROVAL
    with pytest.raises(InvalidRequest, match="feedback"):
        answer(engine, request, to=OrderStatus.PLACED, feedback=OrderFeedback.TOO_EARLY, now=moment)
    answer(engine, request, to=OrderStatus.DECLINED, feedback=OrderFeedback.TOO_EARLY, now=moment)
    moment = printer.run(moment, depleting(0.175, 0.1, 3))
    printer.run(moment, [1.0, 0.98])
    [outcome] = printer.outcomes()
    assert outcome.order_status == OrderStatus.DECLINED and outcome.feedback == OrderFeedback.TOO_EARLY
    assert outcome.ran_out_at is not None, "it ran out all the same"


def test_reliability_compares_the_stated_probability_with_what_happened(engine: Engine):
    # Two printers forecast well (refilled in time); a fridge whose use grows sixfold after the order runs out early.
    for number in (1, 2):
        printer = Printer(engine, mode=ConsentMode.AUTO_ORDER, device_id=f"printer-{number}")
        moment = printer.run(T0, depleting(0.8, 0.1, 6.5))
        printer.run(moment, [1.0, 0.98])
    fridge = Printer(engine, mode=ConsentMode.AUTO_ORDER, device_id="fridge-1", kind="fridge")
    moment = fridge.run(T0, depleting(0.8, 0.1, 6.5))
    moment = fridge.run(moment, depleting(0.175, 0.6, 1.5))
    fridge.run(moment, [1.0, 0.98])

    with Session(engine) as session:
        rows = {row.device_kind: row for row in outcomes.reliability(session=session)}
        recent = outcomes.reliability(session=session, since=moment + DAY)
    assert set(rows) == {"printer", "fridge"}
    assert rows["printer"].cycles == 2 and rows["printer"].observed == 0 and rows["printer"].ran_out == 0
    assert rows["printer"].stated == pytest.approx(0.03)
    assert rows["fridge"].cycles == 1 and rows["fridge"].observed == 1 and rows["fridge"].ran_out == 1
    assert rows["fridge"].median_error_days is not None and rows["fridge"].median_error_days < -0.5
    assert rows["fridge"].verdict == "too few cycles to tell"
    assert list(rows) == ["printer", "fridge"], "most cycles first"
    assert recent == [], "nothing recorded since"


def test_the_outcome_of_readings_that_are_not_empty_at_the_end_is_extrapolated():
    """The pure function: no empty reading at the end is a refill before running out, whatever came before."""
    days = np.arange(0.0, 5.0, 0.5)
    levels = np.maximum(0.6 - 0.1 * days, 0.0)
    levels[3] = 0.0  # a dip
    series = ReadingSeries(times=T0.timestamp() + days * 86_400.0, levels=levels)
    prediction = Prediction(
        decided_at=T0 + 2 * DAY,
        empty_at=T0 + 6 * DAY,
        early_at=T0 + 5 * DAY,
        late_at=None,
        rate_per_day=0.1,
        service_level=0.97,
    )
    outcome = cycle_outcome(series, cycle_started_at=T0, ended_at=T0 + 5 * DAY, prediction=prediction)
    assert outcome.ran_out_at is None
    assert outcome.empty_estimated_at == T0 + 6 * DAY  # 0.15 at day 4.5 lasts 1.5 days
    assert not outcome.ran_out_before_early and outcome.error_days == 0 and outcome.left_days == 1


def test_a_cycle_is_known_to_have_run_empty_once_its_readings_show_it_and_not_at_a_dip():
    """The pure function: a gradual fall to empty is believed at once; a fall off a cliff (a bottle out of the
    fridge) only once it has lasted DIP_MAX; a non-empty newest reading says nothing yet."""
    prediction = Prediction(
        decided_at=T0, empty_at=T0 + 4 * DAY, early_at=T0 + 3 * DAY, late_at=None, rate_per_day=0.1,
        service_level=0.97,
    )  # fmt: skip

    def known(levels: list[float], *, hours_apart: float = 6.0) -> CycleOutcome | None:
        times = T0.timestamp() + np.arange(len(levels)) * hours_apart * 3600.0
        series = ReadingSeries(times=times, levels=np.array(levels))
        now = datetime.fromtimestamp(float(times[-1]), UTC)
        return outcome_when_empty(series, cycle_started_at=T0, now=now, prediction=prediction)

    gradual = known([0.3, 0.2, 0.1, 0.05, 0.0])
    assert gradual is not None and gradual.ended_at is None and gradual.ran_out_before_early
    # 0.05 at hour 18 lasts half a day at 0.1 a day: sooner than the empty reading at hour 24.
    assert gradual.ran_out_at == T0 + timedelta(hours=24)
    assert gradual.empty_days == 0 and gradual.left_days == 0
    assert known([0.3, 0.2, 0.1, 0.05]) is None
    assert known([0.5, 0.45, 0.0, 0.0]) is None, "a cliff to zero for six hours may be a dip"
    cliff = known([0.5, 0.45, 0.0, 0.0, 0.0])
    assert cliff is not None and cliff.ran_out_at == T0 + timedelta(hours=12)


def slot_calibration(engine: Engine) -> tuple[float, int]:
    with Session(engine) as session:
        [slot] = session.exec(select(DeviceSlot))
        return slot.calibration_shift, slot.calibration_cycles


def test_an_empty_run_that_turns_out_a_dip_is_read_again_at_the_refill_and_taught_once(engine: Engine):
    """Readings every 6 hours: three empty ones over 12 hours are believed (a slot that stays empty), and taught as
    running out early; then the level comes back, so it was a dip. The refill reads the cycle again: it ran out
    on day 8, as forecast, and the lesson is taken back and taught the right way."""
    printer = Printer(engine, mode=ConsentMode.AUTO_ORDER)
    levels = depleting(0.8, 0.1, 11)
    levels[20:23] = [0.0, 0.0, 0.0]  # day 5 to 5.5: the cartridge out of the printer
    moment = printer.run(T0, levels[:23])
    [order] = printer.orders()
    [at_empty] = printer.outcomes()
    assert at_empty.ended_at is None and at_empty.ran_out_at == T0 + 5 * DAY and at_empty.ran_out_before_early
    assert slot_calibration(engine) == (pytest.approx(lesson(missed=True, stated=0.97, step=SLOT_STEP)), 1)

    moment = printer.run(moment, levels[23:])
    printer.run(moment, [1.0, 0.98])
    [outcome] = printer.outcomes()
    assert outcome.id == at_empty.id and outcome.order_id == order.id and outcome.ended_at == moment
    assert outcome.ran_out_at is not None and abs((outcome.ran_out_at - (T0 + 8 * DAY)).total_seconds()) < 60
    assert not outcome.ran_out_before_early
    assert outcome.empty_days == pytest.approx((moment - outcome.ran_out_at) / DAY, abs=1e-3)
    assert slot_calibration(engine) == (pytest.approx(lesson(missed=False, stated=0.97, step=SLOT_STEP)), 1)


def test_a_cycle_has_one_outcome_whatever_is_decided_after_it_ran_empty(engine: Engine):
    """Told when it would run out (notify only), the customer orders only once it is empty: the cycle's outcome
    stays the notice's, and the refill completes it."""
    printer = Printer(engine, mode=ConsentMode.NOTIFY_ONLY)
    moment = printer.run(T0, depleting(0.8, 0.1, 10))
    [at_empty] = printer.outcomes()
    assert at_empty.action == "notify" and at_empty.ended_at is None and at_empty.order_id is None
    with transaction(engine) as session:
        [slot] = session.exec(select(DeviceSlot))
        device = devices.get(session=session, device_id=printer.device_id)
        found = automation.order_now(session=session, slot=slot, device=device, now=moment, actor="customer:ada")
        assert found is not None and found.created
    moment = printer.run(moment + STEP, [0.0, 0.0])
    assert [row.id for row in printer.outcomes()] == [at_empty.id]
    printer.run(moment, [1.0, 0.98])
    [outcome] = printer.outcomes()
    assert outcome.id == at_empty.id and outcome.ended_at is not None and outcome.action == "notify"
    assert slot_calibration(engine)[1] == 1


def test_not_needed_said_after_the_slot_ran_empty_takes_the_lesson_back_at_the_refill(engine: Engine):
    printer = Printer(engine, mode=ConsentMode.ASK_FIRST, fleet_learning=True)
    moment = printer.run(T0, depleting(0.8, 0.1, 10))
    [request] = printer.orders()
    [at_empty] = printer.outcomes()
    assert at_empty.order_status == OrderStatus.AWAITING_APPROVAL and at_empty.group_taught
    assert slot_calibration(engine)[1] == 1
    answer(engine, request, to=OrderStatus.DECLINED, feedback=OrderFeedback.NOT_NEEDED, now=moment)
    printer.run(moment, [1.0, 0.98])
    [outcome] = printer.outcomes()
    assert outcome.id == at_empty.id and outcome.feedback == OrderFeedback.NOT_NEEDED and not outcome.group_taught
    assert slot_calibration(engine) == (pytest.approx(0.0, abs=1e-12), 0)
    with Session(engine) as session:
        group = session.get(CalibrationGroup, ("printer", "black"))
        assert group is not None and group.cycles == 0 and group.shift == pytest.approx(0.0, abs=1e-12)


def test_a_customers_outcomes_are_exported_and_deleted_with_them(engine: Engine):
    printer = Printer(engine, mode=ConsentMode.AUTO_ORDER)
    moment = printer.run(T0, depleting(0.8, 0.1, 6.5))
    moment = printer.run(moment, [1.0, 0.98])
    [outcome] = printer.outcomes()
    export = json.loads("".join(privacy.export(engine=engine, customer_id=outcome.customer_id, now=moment)))
    assert [row["id"] for row in export["cycle_outcomes"]] == [outcome.id]
    with transaction(engine) as session:
        removed = privacy.delete_customer(session=session, customer_id=outcome.customer_id, actor="test", now=moment)
    assert removed["cycle_outcomes"] == 1
    assert printer.outcomes() == []


def test_the_calibration_learns_a_step_per_outcome_within_bounds():
    assert lesson(missed=True, stated=0.97, step=GROUP_STEP) == pytest.approx(0.97 * GROUP_STEP)
    assert lesson(missed=False, stated=0.97, step=GROUP_STEP) == pytest.approx(-0.03 * GROUP_STEP)
    assert lesson(missed=None, stated=0.97, step=GROUP_STEP) == 0, "an outcome that teaches nothing"
    # An outcome read again takes back what it taught before.
    assert lesson(missed=False, before=True, stated=0.97, step=GROUP_STEP) == pytest.approx(-GROUP_STEP)
    assert lesson(missed=None, before=True, stated=0.97, step=GROUP_STEP) == pytest.approx(-0.97 * GROUP_STEP)
    # Misses at the stated rate leave it where it is: 3 in 100.
    shift = 0.0
    for number in range(100):
        shift = learn(shift, missed=number % 33 == 0 and number < 99, stated=0.97, step=0.1, bounds=(-1, 2))
    assert shift == pytest.approx(0.0, abs=1e-9)
    assert learn(1.95, missed=True, stated=0.97, step=0.2, bounds=(-1, 2)) == 2
    calibration = Calibration(group_shift=0.5, slot_shift=0.25, group_cycles=40, slot_cycles=3)
    assert calibration.service_level(0.97) == pytest.approx(0.9957, abs=1e-4)  # z 1.88 + 0.75
    assert Calibration().service_level(0.97) == 0.97
    assert Calibration(group_shift=-5).service_level(0.97) == 0.5, "never below the bound"
    assert "planned at 99.57% to keep the stated 97%, as 40 ended cycle(s) of its kind and 3 of this slot" in (
        calibration.describe(0.97)
    )


def test_a_cycle_that_ran_out_before_its_early_date_makes_the_next_forecast_more_cautious(engine: Engine):
    fridge = Printer(engine, mode=ConsentMode.AUTO_ORDER, device_id="fridge-1", kind="fridge", fleet_learning=True)
    moment = fridge.run(T0, depleting(0.8, 0.1, 6.5))
    moment = fridge.run(moment, depleting(0.175, 0.6, 1.5))  # ran out long before the early date
    moment = fridge.run(moment, [1.0, 0.98])
    [outcome] = fridge.outcomes()
    assert outcome.ran_out_before_early
    with Session(engine) as session:
        [group] = session.exec(select(CalibrationGroup)).all()
        slot = session.exec(select(DeviceSlot).where(DeviceSlot.device_id == "fridge-1")).one()
    assert (group.device_kind, group.slot_name, group.cycles) == ("fridge", "black", 1)
    assert group.shift == pytest.approx(0.97 * GROUP_STEP)
    assert slot.calibration_shift == pytest.approx(0.97 * SLOT_STEP) and slot.calibration_cycles == 1

    # The next cycle plans at a higher level than the stated 97%, and its decision says why.
    fridge.run(moment, depleting(0.96, 0.1, 8))
    with Session(engine) as session:
        decision = session.exec(select(Decision).order_by(col(Decision.decided_at).desc())).first()
    assert decision is not None and decision.forecast["service_level"] > 0.97
    assert decision.policy["service_level"] == pytest.approx(0.97)
    assert "to keep the stated 97%, as 1 ended cycle(s) of its kind and 1 of this slot showed" in decision.reason


def test_a_customer_who_does_not_allow_fleet_learning_teaches_only_their_own_slot(engine: Engine):
    fridge = Printer(engine, mode=ConsentMode.AUTO_ORDER, device_id="fridge-1", kind="fridge")
    moment = fridge.run(T0, depleting(0.8, 0.1, 6.5))
    moment = fridge.run(moment, depleting(0.175, 0.6, 1.5))
    fridge.run(moment, [1.0, 0.98])
    with Session(engine) as session:
        assert session.exec(select(CalibrationGroup)).all() == [], "the group learns nothing from them"
        slot = session.exec(select(DeviceSlot).where(DeviceSlot.device_id == "fridge-1")).one()
    assert slot.calibration_shift == pytest.approx(0.97 * SLOT_STEP) and slot.calibration_cycles == 1


def test_the_kept_reliability_is_what_the_insights_job_last_computed(engine: Engine):
    printer = Printer(engine, mode=ConsentMode.AUTO_ORDER)
    moment = printer.run(T0, depleting(0.8, 0.1, 6.5))
    moment = printer.run(moment, [1.0, 0.98])
    with Session(engine) as session:
        assert outcomes.kept_reliability(session=session) == ([], None), "nothing until the job runs"
    with transaction(engine) as session:
        assert outcomes.refresh_reliability(session=session, now=moment) == 1
    with Session(engine) as session:
        [row], computed = outcomes.kept_reliability(session=session)
        assert row == outcomes.reliability(session=session, since=moment - timedelta(days=90))[0]
    assert computed == moment and (row.device_kind, row.cycles) == ("printer", 1)
    with transaction(engine) as session:
        assert outcomes.refresh_reliability(session=session, now=moment + timedelta(days=100)) == 0
    with Session(engine) as session:
        assert outcomes.kept_reliability(session=session)[0] == [], "outcomes older than 90 days leave it"

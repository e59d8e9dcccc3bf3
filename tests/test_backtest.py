"""`replenish backtest` (contract §3): the live evaluation replayed over a readings file, with no look-ahead."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from replenish.backtest.replay import FleetRates, RecordedReading, ReplayedOrder, read_readings, replay
from replenish.cli import app as cli
from replenish.forecasting import Forecast
from replenish.forecasting.model import SHARED_PRIOR_LENDERS, fleet_prior

REPLENISH = str(Path(sys.executable).parent / "replenish")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def write_readings(path: Path, rows: list[tuple[str, str, datetime, float]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["device_id", "slot", "ts", "level"])
        for device_id, slot, ts, level in sorted(rows, key=lambda row: row[2]):
            writer.writerow([device_id, slot, ts.isoformat().replace("+00:00", "Z"), f"{level:.4f}"])
    return path


def fleet(slots: int = 12, days: int = 90, seed: int = 3) -> list[tuple[str, str, datetime, float]]:
    """Slots emptying at their own noisy rates, refilled a day or two after they run dry."""
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(slots):
        rate, level, moment = rng.uniform(0.02, 0.12), rng.uniform(0.3, 1.0), T0
        while moment < T0 + timedelta(days=days):
            reported = float(np.clip(round(level + rng.normal(0, 0.01), 2), 0, 1))
            rows.append((f"dev-{number // 2}", f"slot{number % 2}", moment, reported))
            moment += timedelta(hours=float(rng.choice([2, 4, 8])))
            level -= rate * rng.uniform(0.5, 1.5) / 6
            if level <= 0 and rng.random() < 0.2:
                level = 1.0
            level = max(level, 0.0)
    return rows


def run_cli(readings: Path, out: Path, lead: float = 3) -> subprocess.CompletedProcess[str]:
    command = [REPLENISH, "backtest", str(readings), "--lead-time-days", str(lead), "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def read_orders(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_command_writes_orders_in_the_contract_format(tmp_path: Path):
    readings = write_readings(tmp_path / "READINGS.csv", fleet())
    done = run_cli(readings, tmp_path / "ORDERS.csv")
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "ORDERS.csv").read_text().splitlines()
    assert lines[0] == "device_id,slot,ordered_at"
    orders = read_orders(tmp_path / "ORDERS.csv")
    assert orders, "slots that run dry get orders"
    for order in orders:
        assert order["ordered_at"].endswith("Z")
        datetime.fromisoformat(order["ordered_at"])
    assert [o["ordered_at"] for o in orders] == sorted(o["ordered_at"] for o in orders)


def test_decisions_give_each_order_with_the_forecast_it_was_decided_on(tmp_path: Path):
    readings = write_readings(tmp_path / "READINGS.csv", fleet())
    command = [REPLENISH, "backtest", str(readings), "--lead-time-days", "3", "--out", str(tmp_path / "ORDERS.csv")]
    done = subprocess.run(
        [*command, "--decisions", str(tmp_path / "D.csv")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "D.csv").read_text().splitlines()[0] == (
        "device_id,slot,ordered_at,empty_at,empty_at_early,empty_at_late,service_level"
    )
    orders, decisions = read_orders(tmp_path / "ORDERS.csv"), read_orders(tmp_path / "D.csv")
    assert [(o["device_id"], o["slot"], o["ordered_at"]) for o in orders] == [
        (d["device_id"], d["slot"], d["ordered_at"]) for d in decisions
    ]
    for decision in decisions:
        ordered_at, early = (datetime.fromisoformat(decision[name]) for name in ("ordered_at", "empty_at_early"))
        assert early <= datetime.fromisoformat(decision["empty_at"])
        # Ordered when the early date came within lead time and margin, or later (a jump, a quiet slot).
        assert early <= ordered_at + timedelta(days=4, minutes=1)
        assert decision["service_level"] == "0.97"


def test_a_linear_slot_is_ordered_once_in_time(tmp_path: Path):
    rows = [("printer-1", "black", T0 + timedelta(hours=6 * i), max(0.8 - 0.05 * i / 4, 0.0)) for i in range(80)]
    orders = replay(read_readings(write_readings(tmp_path / "r.csv", rows)), lead_time_days=3, margin_days=1)
    assert len(orders) == 1
    empty_at = T0 + timedelta(days=16)
    # Lead time 3 + margin 1, plus the modest spread a slot gets before its own history shows how bursty it is.
    assert empty_at - timedelta(days=5.5) <= orders[0].ordered_at <= empty_at - timedelta(days=3)


@pytest.mark.parametrize("hours", [0, 1, 30])
def test_truncating_the_file_never_changes_the_orders_before_the_cut(tmp_path: Path, hours: int):
    # Cut at a reading's instant, between readings, and in a long silence: orders the truncated replay places after
    # its last reading (a quiet slot's order time) must be the full replay's too, up to the cut.
    rows = sorted(fleet(), key=lambda row: row[2])
    full = replay(read_readings(write_readings(tmp_path / "full.csv", rows)), lead_time_days=3, margin_days=1)
    assert len(full) > 10
    for cut in (0.2, 0.45, 0.7, 0.9):
        until = rows[int(len(rows) * cut)][2] + timedelta(hours=hours)
        kept = [row for row in rows if row[2] <= until]
        part = replay(read_readings(write_readings(tmp_path / "part.csv", kept)), lead_time_days=3, margin_days=1)
        before = [o for o in full if o.ordered_at <= until]
        assert before == [o for o in part if o.ordered_at <= until], f"cut at {cut:.0%} ({until})"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("device,slot,ts,level\n", "the header must be device_id,slot,ts,level"),
        ("device_id,slot,ts,level\nd1,black,2026-01-01T00:00:00Z,1.5\n", ":2: level 1.5 is outside [0, 1]"),
        ("device_id,slot,ts,level\nd1,black,yesterday,0.5\n", ":2: ts 'yesterday' is not ISO 8601"),
        ("device_id,slot,ts,level\nd1,black,,0.5\n", ":2: ts '' is not ISO 8601"),
        ("device_id,slot,ts,level\nd1,black,2026-01-01T00:00:00Z,0.5\nd1,cyan, ,0.4\n", ":3: ts '' is not ISO 8601"),
        (
            "device_id,slot,ts,level\nd1,black,2026-01-02T00:00:00Z,0.5\nd1,black,2026-01-01T00:00:00Z,0.4\n",
            ":3: rows must be sorted by ts",
        ),
        ("device_id,slot,ts,level\nd 1,black,2026-01-01T00:00:00Z,0.5\n", ":2: device_id 'd 1' does not match"),
    ],
)
def test_a_bad_file_is_refused_with_its_line(tmp_path: Path, content: str, message: str):
    readings = tmp_path / "READINGS.csv"
    readings.write_text(content)
    done = run_cli(readings, tmp_path / "ORDERS.csv")
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "ORDERS.csv").exists(), "no partial output"


def test_a_quiet_slot_is_ordered_between_readings_when_its_forecast_says(tmp_path: Path):
    # One reading a day: the live scheduler, evaluating every minute, orders at the moment the forecast gives, not
    # at the next reading; the replay does the same.
    rows = [("coffee-1", "beans", T0 + timedelta(days=i), max(0.8 - 0.05 * i, 0.0)) for i in range(20)]
    orders = replay(read_readings(write_readings(tmp_path / "r.csv", rows)), lead_time_days=3, margin_days=0)
    assert len(orders) == 1
    ordered = orders[0].ordered_at
    assert (ordered - T0) % timedelta(days=1) != timedelta(0), "not at a reading's instant"
    empty_at = T0 + timedelta(days=16)
    assert empty_at - timedelta(days=5) <= ordered <= empty_at - timedelta(days=3)


def test_a_higher_service_level_orders_earlier(tmp_path: Path):
    readings = write_readings(tmp_path / "READINGS.csv", fleet())
    placed = {}
    for level in ("0.6", "0.99"):
        out = tmp_path / f"ORDERS-{level}.csv"
        done = subprocess.run(
            [
                REPLENISH,
                "backtest",
                str(readings),
                "--lead-time-days",
                "3",
                "--out",
                str(out),
                "--service-level",
                level,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        placed[level] = {(o["device_id"], o["slot"]): o["ordered_at"] for o in reversed(read_orders(out))}
    assert placed["0.6"] and placed["0.6"].keys() == placed["0.99"].keys()
    assert all(placed["0.99"][key] <= placed["0.6"][key] for key in placed["0.6"])
    assert any(placed["0.99"][key] < placed["0.6"][key] for key in placed["0.6"])


def test_a_spike_does_not_delay_the_order():
    # Hourly readings falling 0.24 a day; one reading spikes up (a refill not yet confirmed, then not confirmed).
    def orders(spike_at: int | None) -> list[datetime]:
        readings = []
        for hour in range(96):
            level = max(0.9 - 0.24 * hour / 24, 0.0) + (0.3 if hour == spike_at else 0.0)
            readings.append(RecordedReading("fridge-1", "milk", T0 + timedelta(hours=hour), min(level, 1.0)))
        return [order.ordered_at for order in replay(readings, lead_time_days=1, margin_days=1)]

    calm, spiked = orders(None), orders(42)
    assert len(calm) == len(spiked) == 1
    assert abs(spiked[0] - calm[0]) <= timedelta(hours=2)


def _fleet_of(rates: list[float]) -> FleetRates:
    """Fridges fridge-0, fridge-1, ... whose milk slots lend these rates."""
    fleet_rates = FleetRates()
    for number, rate in enumerate(rates):
        forecast = Forecast(
            status="ok",
            computed_at=T0,
            cycle_started_at=T0,
            readings_used=50,
            outliers_dropped=0,
            evidence_from=T0,
            evidence_to=T0 + timedelta(days=10),
            rate_per_day=rate,
        )
        fleet_rates.observe("milk", (f"fridge-{number}", "milk"), forecast)
    return fleet_rates


def test_the_fleet_prior_leaves_out_the_asking_slot():
    fleet_rates = _fleet_of([0.01, 0.02, 0.03, 0.50])
    assert fleet_rates.prior("milk", exclude=("fridge-3", "milk")).rate_per_day == pytest.approx(0.02)
    assert fleet_rates.prior("milk", exclude=("fridge-0", "milk")).rate_per_day == pytest.approx(0.03)
    assert fleet_rates.prior("milk", exclude=("other", "milk")).rate_per_day == pytest.approx(0.025)
    assert fleet_rates.prior("eggs", exclude=("fridge-0", "eggs")) is None


def test_a_big_fleet_shares_one_prior_as_the_live_evaluator_does():
    rates = [0.01 * (number + 1) for number in range(SHARED_PRIOR_LENDERS)]
    big = _fleet_of(rates)
    whole_group = fleet_prior(rates)
    first, last = ("fridge-0", "milk"), (f"fridge-{SHARED_PRIOR_LENDERS - 1}", "milk")
    assert big.prior("milk", exclude=first) == big.prior("milk", exclude=last) == whole_group
    # One lender fewer, and each slot's own rate is left out again: the lowest rate's prior sits higher.
    smaller = _fleet_of(rates[:-1])
    assert smaller.prior("milk", exclude=first).rate_per_day > smaller.prior("milk", exclude=last).rate_per_day


@pytest.mark.parametrize("horizon", [0.0, 14.0])
def test_a_slot_due_within_the_pull_forward_horizon_joins_the_shipment(tmp_path: Path, horizon: float):
    # Black runs out on day 16, cyan on day 24: eight days later. Another device's magenta is never pulled in.
    rows = []
    for i in range(120):
        at = T0 + timedelta(hours=6 * i)
        rows.append(("printer-1", "black", at, max(0.8 - 0.05 * i / 4, 0.0)))
        rows.append(("printer-1", "cyan", at, max(0.8 - 0.8 / 24 * i / 4, 0.0)))
        rows.append(("printer-2", "magenta", at, max(0.8 - 0.8 / 20 * i / 4, 0.0)))
    orders = replay(
        read_readings(write_readings(tmp_path / "r.csv", rows)),
        lead_time_days=3,
        margin_days=1,
        pull_forward_days=horizon,
    )
    first = {order.slot: order.ordered_at for order in reversed(orders)}
    assert [order.slot for order in orders].count("cyan") == 1, "pulled forward or not, one order per cycle"
    if horizon:
        assert first["cyan"] == first["black"], "one shipment: the lines share ordered_at"
    else:
        assert first["cyan"] - first["black"] > timedelta(days=6)
    assert first["magenta"] not in (first["black"], first["cyan"]), "another device is another customer"


def test_without_the_flag_each_slot_orders_alone_and_with_it_lines_share_a_shipment(tmp_path: Path):
    readings = write_readings(tmp_path / "READINGS.csv", fleet(slots=8, days=60))

    def run(*flag: str) -> list[dict[str, str]]:
        out = tmp_path / f"ORDERS{''.join(flag)}.csv"
        argv = ["backtest", str(readings), "--lead-time-days", "3", "--out", str(out), *flag]
        done = CliRunner().invoke(cli, argv)  # the command in this process: its options and defaults
        assert done.exit_code == 0, done.output
        return read_orders(out)

    refused = CliRunner().invoke(
        cli, ["backtest", str(readings), "--lead-time-days", "3", "--out", "X.csv", "--pull-forward-days", "-1"]
    )
    assert refused.exit_code == 2 and "pull-forward-days" in refused.output
    assert run() == run("--pull-forward-days", "0"), "without the flag H = 0, as the contract says"
    together = Counter((order["device_id"], order["ordered_at"]) for order in run("--pull-forward-days", "14"))
    assert max(together.values()) == 2, "the two slots of a device in one shipment"


def test_learning_from_outcomes_orders_earlier_for_slots_whose_use_speeds_up_late_in_each_cycle(tmp_path: Path):
    """Every cycle's use trebles for its last stretch, so early dates keep being beaten: with learning, the later
    cycles order earlier than without (the truncation test above runs with learning, as the command does)."""
    rows, empties = [], {}
    for number in range(8):
        device = f"dev-{number}"
        moment, level, since_refill, empty = T0 + timedelta(hours=number), 1.0, 0.0, False
        while moment < T0 + timedelta(days=120):
            rows.append((device, "milk", moment, round(max(level, 0.0), 3)))
            step = 0.25
            level -= (0.05 if since_refill < 12 else 0.15) * step
            since_refill += step
            if level <= 0 and not empty:
                empties.setdefault(device, []).append(moment)
                empty = True
            if level <= 0 and since_refill > 14:  # empty a day or so, then refilled
                level, since_refill, empty = 1.0, 0.0, False
            moment += timedelta(days=step)
    readings = write_readings(tmp_path / "r.csv", rows)

    def warning_days(orders: list[ReplayedOrder]) -> list[float]:
        """Per cycle after day 60: days from its first order to its empty moment."""
        found = []
        for device, moments in empties.items():
            for empty in moments:
                if empty < T0 + timedelta(days=60):
                    continue
                before = [
                    o.ordered_at
                    for o in orders
                    if o.device_id == device and empty - timedelta(days=10) < o.ordered_at <= empty
                ]
                if before:
                    found.append((empty - min(before)) / timedelta(days=1))
        return found

    learned = replay(read_readings(readings), lead_time_days=3, margin_days=1)
    unlearned = replay(read_readings(readings), lead_time_days=3, margin_days=1, learn=False)
    with_learning, without = warning_days(learned), warning_days(unlearned)
    assert len(with_learning) == len(without) > 10
    assert np.mean(with_learning) > np.mean(without) + 0.2
    assert all(o.stated_service_level == 0.97 for o in learned)
    assert max(o.forecast.service_level for o in learned if o.forecast) > 0.97, "planned above the stated level"
    assert all(o.forecast.service_level == 0.97 for o in unlearned if o.forecast)

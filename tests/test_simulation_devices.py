"""The pure device models: deterministic, and every payload fits the MQTT device contract."""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from replenish.simulation.devices import (
    DeviceModel,
    FridgeModel,
    PrinterModel,
    SimMessage,
    SlotSpec,
    WearableModel,
)

START = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)  # a Monday
DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
EVENT_TYPES = {"fall_detected", "fall_cancelled", "help_requested", "battery_low"}


def parse_ts(ts: str) -> datetime:
    moment = datetime.fromisoformat(ts)
    assert moment.tzinfo is not None, f"ts without offset: {ts}"
    return moment


def readings(messages: list[SimMessage], slot: str) -> list[float]:
    return [m.payload["levels"][slot] for m in messages if m.channel == "telemetry"]


def assert_contract(model: DeviceModel, messages: list[SimMessage]) -> None:
    """Everything section 1 of the contract asks of device messages."""
    assert DEVICE_ID.match(model.device_id)
    capacity = {s.name: s.capacity for s in model.slots}
    previous_seq, previous_ts = 0, None
    for message in messages:
        payload = message.payload
        assert message.channel in ("telemetry", "events")
        assert len(json.dumps(payload).encode()) <= 16 * 1024
        assert isinstance(payload["seq"], int) and payload["seq"] > previous_seq
        ts = parse_ts(payload["ts"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", payload["ts"])
        assert previous_ts is None or ts >= previous_ts
        previous_seq, previous_ts = payload["seq"], ts
        if message.channel == "telemetry":
            for slot, level in payload["levels"].items():
                assert slot in capacity
                assert isinstance(level, int | float) and not isinstance(level, bool)
                assert 0 <= level <= capacity[slot]
        else:
            assert payload["type"] in EVENT_TYPES
            for key in ("confidence", "battery"):
                if key in payload:
                    assert 0 <= payload[key] <= 1


def make_models(seed: int = 7) -> list[DeviceModel]:
    return [
        PrinterModel("printer-01", start=START, seed=seed),
        FridgeModel("fridge_01", start=START, seed=seed),
        WearableModel(
            "wearable-01",
            start=START,
            seed=seed,
            fall_at=START + timedelta(hours=5, seconds=17),
            cancel_after=timedelta(seconds=40),
            battery=0.3,
        ),
    ]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_same_seed_same_messages_however_the_clock_is_sliced(index: int) -> None:
    end = START + timedelta(days=4)
    whole = make_models()[index].advance_to(end)

    sliced_model = make_models()[index]
    sliced: list[SimMessage] = []
    t = START
    while t < end:
        t = min(t + timedelta(minutes=37, seconds=11), end)
        sliced += sliced_model.advance_to(t)

    assert whole == sliced
    assert len(whole) > 0
    assert make_models(seed=8)[index].advance_to(end) != whole


@pytest.mark.parametrize("index", [0, 1, 2])
def test_payloads_follow_the_contract(index: int) -> None:
    model = make_models()[index]
    messages = model.advance_to(START + timedelta(days=10))
    assert_contract(model, messages)


def test_seq_starts_at_one_and_grows_by_one_across_channels() -> None:
    model = make_models()[2]
    messages = model.advance_to(START + timedelta(hours=6))
    messages += model.advance_to(START + timedelta(days=3))
    assert {m.channel for m in messages} == {"telemetry", "events"}
    assert [m.payload["seq"] for m in messages] == list(range(1, len(messages) + 1))
    assert model.seq == len(messages) + 1


def test_slots_and_kinds() -> None:
    printer, fridge, wearable = make_models()
    assert printer.kind == "printer"
    assert printer.slots == [SlotSpec(c, "fraction", 1.0) for c in ("black", "cyan", "magenta", "yellow")]
    assert fridge.kind == "fridge"
    assert fridge.slots == [SlotSpec("milk", "litre", 2.0), SlotSpec("eggs", "count", 12)]
    assert wearable.kind == "wearable"
    assert wearable.slots == []


def test_reports_every_interval_starting_at_start() -> None:
    printer = PrinterModel("p", start=START, report_interval=timedelta(minutes=30))
    messages = printer.advance_to(START + timedelta(days=2))
    assert len(messages) == 2 * 48 + 1
    assert parse_ts(messages[0].payload["ts"]) == START
    assert parse_ts(messages[1].payload["ts"]) == START + timedelta(minutes=30)
    assert all(set(m.payload["levels"]) == {"black", "cyan", "magenta", "yellow"} for m in messages)
    assert printer.advance_to(START + timedelta(days=1)) == []  # the clock never runs back


def test_printer_levels_fall_without_refill_and_stay_at_zero() -> None:
    printer = PrinterModel(
        "p",
        start=START,
        seed=3,
        initial_levels={"black": 1.0, "cyan": 1.0, "magenta": 1.0, "yellow": 1.0},
        daily_usage={"black": 0.2},
    )
    black = readings(printer.advance_to(START + timedelta(days=14)), "black")
    assert black[0] >= 0.97
    assert all(later <= earlier + 0.03 for earlier, later in itertools.pairwise(black))
    first_zero = black.index(0.0)
    assert first_zero < len(black) - 24
    assert all(level == 0.0 for level in black[first_zero:])


def test_printer_jumps_after_refill() -> None:
    printer = PrinterModel("p", start=START, seed=3, daily_usage={"cyan": 0.15})
    before = readings(printer.advance_to(START + timedelta(days=6)), "cyan")
    assert before[-1] < 0.3

    printer.refill("cyan", START + timedelta(days=6))  # now
    after = readings(printer.advance_to(START + timedelta(days=6, hours=1)), "cyan")
    assert after[-1] >= 0.95

    # a delivery scheduled ahead happens when the simulation gets there
    before = readings(printer.advance_to(START + timedelta(days=12)), "cyan")
    printer.refill("cyan", START + timedelta(days=12, minutes=30))
    after = readings(printer.advance_to(START + timedelta(days=12, hours=1)), "cyan")
    assert before[-1] < 0.7 and after == [pytest.approx(1.0, abs=0.02)]


def test_weekdays_print_more_than_weekends() -> None:
    used_weekdays = used_weekend = 0.0
    for seed in range(5):
        printer = PrinterModel("p", start=START, seed=seed, initial_levels={"black": 1.0})
        black = readings(printer.advance_to(START + timedelta(days=7)), "black")
        used_weekdays += black[0] - black[5 * 24]  # Monday..Friday
        used_weekend += black[5 * 24] - black[7 * 24]  # Saturday, Sunday
    assert used_weekdays / 5 > 2 * used_weekend / 2


def test_fridge_eggs_are_whole_and_refill_fills_to_capacity() -> None:
    fridge = FridgeModel("f", start=START, seed=5, initial_levels={"milk": 2.0, "eggs": 12})
    messages = fridge.advance_to(START + timedelta(days=5))
    eggs = readings(messages, "eggs")
    milk = readings(messages, "milk")
    assert all(isinstance(e, int) for e in eggs)
    assert eggs[-1] < 12 and milk[-1] < 1.5
    fridge.refill("milk", START + timedelta(days=5))
    fridge.refill("eggs", START + timedelta(days=5))
    last = fridge.advance_to(START + timedelta(days=5, hours=1))[-1].payload["levels"]
    assert last["eggs"] == 12 and last["milk"] >= 1.9


def test_wearable_fall_then_cancel() -> None:
    fall_at = START + timedelta(hours=2, minutes=3, seconds=5)
    wearable = WearableModel("w", start=START, fall_at=fall_at, cancel_after=timedelta(seconds=45))
    early = wearable.advance_to(fall_at - timedelta(seconds=1))
    assert all(m.channel == "telemetry" for m in early)

    events = [m.payload for m in wearable.advance_to(START + timedelta(hours=3)) if m.channel == "events"]
    assert [e["type"] for e in events] == ["fall_detected", "fall_cancelled"]
    assert parse_ts(events[0]["ts"]) == fall_at
    assert 0.5 <= events[0]["confidence"] <= 1
    assert parse_ts(events[1]["ts"]) == fall_at + timedelta(seconds=45)


def test_wearable_fall_without_cancel_and_no_fall_without_fall_at() -> None:
    fall_at = START + timedelta(minutes=10)
    wearable = WearableModel("w", start=START, fall_at=fall_at)
    events = [m.payload["type"] for m in wearable.advance_to(START + timedelta(days=1)) if m.channel == "events"]
    assert events == ["fall_detected"]
    quiet = WearableModel("w", start=START).advance_to(START + timedelta(days=1))
    assert all(m.channel == "telemetry" for m in quiet)


def test_wearable_battery_low_once() -> None:
    wearable = WearableModel("w", start=START, seed=2, battery=0.3, battery_drain_per_day=0.1)
    messages = wearable.advance_to(START + timedelta(days=3))
    low = [m.payload for m in messages if m.channel == "events"]
    assert [e["type"] for e in low] == ["battery_low"]
    assert low[0]["battery"] < 0.2
    heartbeats = [m.payload for m in messages if m.channel == "telemetry"]
    assert heartbeats[0]["levels"] == {} and heartbeats[0]["battery"] == 0.3
    assert heartbeats[-1]["battery"] < low[0]["battery"]


@pytest.mark.parametrize("bad", ["", "has space", "slash/", "x" * 65, "plus+"])
def test_device_id_must_fit_the_contract(bad: str) -> None:
    with pytest.raises(ValueError):
        PrinterModel(bad, start=START)


def test_naive_datetimes_and_unknown_slots_are_refused() -> None:
    with pytest.raises(ValueError):
        PrinterModel("p", start=datetime(2026, 1, 1))
    printer = PrinterModel("p", start=START)
    with pytest.raises(ValueError):
        printer.advance_to(datetime(2026, 1, 2))
    with pytest.raises(ValueError):
        printer.refill("green", START)
    with pytest.raises(ValueError):
        FridgeModel("f", start=START, initial_levels={"milk": 3.0})


@pytest.mark.parametrize("hour", [3, 9, 11, 18])
def test_the_demo_fridge_has_milk_left_to_ask_about_whatever_the_hour(hour: int) -> None:
    """The demo shows the fridge asking first: at any hour it starts, about a day and a half of milk is left, and
    the replayed week never ran out (started at 11:17 UTC, a fixed purchase time once left 1.41 l of 2)."""
    from replenish.demo import MILK_LEFT_NOW, _demo_fridge, _milk_replayed

    now = datetime(2026, 12, 7, hour, 17, tzinfo=UTC)
    left, ran_out = _milk_replayed(_demo_fridge(now), now)
    assert MILK_LEFT_NOW[0] <= left <= MILK_LEFT_NOW[1] and not ran_out


def test_wearable_help_button_and_every_safety_event_say_where_the_wearer_is() -> None:
    where = {"latitude": 52.5163, "longitude": 13.3777, "accuracy": 15, "room": "bathroom"}
    fall_at, help_at = START + timedelta(minutes=5), START + timedelta(minutes=20)
    wearable = WearableModel(
        "w", start=START, fall_at=fall_at, cancel_after=timedelta(seconds=30), help_at=help_at, location=where
    )
    events = [m.payload for m in wearable.advance_to(START + timedelta(hours=1)) if m.channel == "events"]
    assert [e["type"] for e in events] == ["fall_detected", "fall_cancelled", "help_requested"]
    assert all(e["location"] == where for e in events)
    assert parse_ts(events[2]["ts"]) == help_at
    plain = WearableModel("w", start=START, help_at=help_at).advance_to(START + timedelta(hours=1))
    [help_event] = [m.payload for m in plain if m.channel == "events"]
    assert help_event.keys() == {"seq", "ts", "type"}

#!/usr/bin/env python
"""Synthetic device traces with known ground truth: a third generator, written without looking at the other two.

    python bench/traces_calibrated.py --slots 300 --days 182 --seed 1 --out-dir DIR

writes DIR/READINGS.csv (`device_id,slot,ts,level`, contract §3) and DIR/TRUTH.csv
(`device_id,slot,cycle_start,true_empty_at`, one row per depletion cycle), deterministic given the seed.

Design. The generator simulates households and offices, not curves: what is consumed, when it is refilled and
what the sensor says are three separate models, and the readings are only what the sensor said.

1. Devices and slots. Six kinds of device (device shares in KIND_SHARE), each with its own slots, use, reports and
   sensor; "full lasts" is how long a full slot lasts at the slot's base rate:

   - printer (black, cyan, magenta, yellow; or black, tricolor): full lasts 3 weeks to 5 months (colours longer);
     print jobs, heavy-tailed, office hours or home evenings/weekends; home printers are switched off for weeks
     (no reports, no printing). Reports hourly to twice a day when on, and after each job. The level is the
     printer's own estimate: 10%, 5% or 1% steps, rounded up, down or to nearest, a small gain error, and often
     a reserve ("replace cartridge" while some ink is left).
   - fridge (milk, eggs): milk lasts 4-16 days, eggs 1-4 weeks; pours at breakfast and dinner, eggs at breakfast
     and in baking bursts, more at weekends. Reports every 15-60 min. Milk is a shelf scale (noise, tare offset
     and drift, the bottle lifted out reads near 0 for one report); eggs are counted (trays of 10-18).
   - coffee (beans): home 8-35 days, office 4-10 days on weekdays only; cups at breakfast / office hours.
     Reports after each brew and every 3-24 h; an optical hopper sensor, continuous or 5%/10% steps, dead volume
     below the window.
   - washer (detergent, softener): 3 weeks to 5 months; one dose per wash, 2-10 washes a week, more at weekends.
     Reports after each wash and every 4-24 h; a tank float in 5%/10% steps that bottoms out above the inlet.
   - petfeeder (food): 8-50 days; 2-4 meals a day like clockwork, and it keeps feeding while the household is
     away. Reports after each meal and every 0.5-6 h; a hopper scale (noise, drift, the cat sitting on it).
   - dishwasher (rinse_aid, tablets): 3 weeks to 4 months; about one run a day, in the evening. Reports after each
     run and every 4-24 h; rinse aid in 10% steps, tablets counted (boxes of 24-50).

2. Consumption. On a 15-minute grid, the expected use of a slot is its daily rate times an hour-of-day profile
   (shifted per household), a day-of-week profile, a regime factor (10-15% of slots change usage once, most
   often doubling: a guest, a new baby, work from home) and bursts (a party, baking, a thesis printed), and is
   zero while the household is away (vacations) or the printer is switched off. Use comes in events (a pour, a
   cup, a wash, a meal, a print job), partly like clockwork and partly Poisson, by kind (a feeder's meals are
   clockwork, print jobs are Poisson), with per-kind event sizes and jitter; eggs and tablets go in whole units.
   For food, coffee, detergent and ink the rate also follows the level (the inventory effect: people use more
   from a full pack than from one nearly gone), so a cycle's decline is slightly convex. A slot that is empty
   stays empty until it is refilled.

3. Refills. Each slot has a customer habit: "lazy" (refills some time after it runs out; a day for milk, up to
   weeks for ink), "warned" (reacts to the device's low warning, with a delay, sometimes forgetting),
   "shopper" (buys on weekly shopping trips when the level is below a threshold, and makes an emergency run
   some time after it runs out) and "eager" (checks daily and tops up well before it is low). Refills are full
   or partial (a bottle more, a box of six eggs, half a bag of beans), happen in the daytime and not while the
   household is away. Every refill is a rise of at least 0.15 and starts a new cycle.

4. Reports. Each device reports on its own schedule (periodic with jitter, after consumption events, or both),
   loses some reports, has outages (hours to days of Wi-Fi trouble) and, for printers, is switched off for
   weeks. The level reported is the true level through the slot's sensor: gain and offset error, Gaussian
   noise, one-off spikes (a bottle lifted out reads near zero, a cat on the scale reads far too high, a
   miscounted egg), then quantization to the sensor's step.

Ground truth: a cycle starts at the trace start or at a refill; true_empty_at is the moment the true level
reached 0 in that cycle, empty if it was refilled first or the trace ended first.

Calibration: the mix of kinds, rates, cadences, sensors and habits (nothing aimed at the baselines) was tuned so
that with --slots 300 --days 182 and L = 3 days the two baselines of bench/forecast.py score near the figures quoted
for the real held-out traces. Measured for seeds 1, 2, 3: "below 20%" 53.2%, 49.5%, 53.4% stockouts at a median of
4.5, 3.8, 4.0 days early with 820-1010 duplicates (quoted: about 52%, 4.2 days, hundreds); "linear fit since
refill" 38.8%, 37.0%, 38.9% at 2.6, 2.5, 2.6 days early (quoted: about 35%, 1.8 days). The linear fit's figures
stay a few points and most of a day above the quoted ones.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

START = np.datetime64("2026-01-05T00:00:00")  # a Monday, UTC
STEP = 900  # seconds, the simulation grid
STEPS_PER_DAY = 86_400 // STEP
DAY = 86_400
READINGS_HEADER = ["device_id", "slot", "ts", "level"]
TRUTH_HEADER = ["device_id", "slot", "cycle_start", "true_empty_at"]

# Device kinds and their share of devices (slots per device differ, so the slot mix is not the same).
KIND_SHARE = {
    "printer": 0.16,
    "fridge": 0.08,
    "coffee": 0.12,
    "washer": 0.20,
    "petfeeder": 0.22,
    "dishwasher": 0.22,
}


# --- plans -----------------------------------------------------------------------------------------------------


@dataclass
class Habit:
    """How the customer refills one slot."""

    style: str  # lazy | warned | shopper | eager
    threshold: float = 0.0  # warned: the device's low warning; shopper/eager: buy when below this
    delay_days: float = 1.0  # median delay after running out (lazy, emergency runs) or after the warning
    delay_sigma: float = 0.7
    forget: float = 0.0  # warned/shopper: chance a cycle is left until it runs out instead
    partial: float = 0.0  # chance a refill is partial
    partial_add: tuple[float, float] = (0.3, 0.6)  # a partial refill adds this much (or whole units for counts)
    full_to: tuple[float, float] = (0.97, 1.0)


@dataclass
class Sensor:
    noise: float = 0.0
    gain: float = 1.0
    offset: float = 0.0
    drift: float = 0.0  # offset change per 30 days (scale tare drift)
    reserve: float = 0.0  # the sensor reads 0 while this much is still left (dead volume, a printer's ink reserve)
    quantum: float = 0.0  # 0 = reports 3 decimals
    rounding: str = "nearest"  # nearest | ceil | floor
    spike_rate: float = 0.0  # chance per reading
    spike: str = "lift"  # lift (reads near 0) | load (reads too high) | count (one unit off) | glitch (0 or 1)


@dataclass
class SlotPlan:
    name: str
    per_day: float  # mean use, fraction of a full slot per day, before regime and bursts
    event: float  # mean size of one use event (fraction of a full slot)
    jitter: float  # lognormal sigma of event sizes (continuous slots)
    hourly: np.ndarray  # 24 relative weights
    weekly: np.ndarray  # 7 relative weights, Monday first
    habit: Habit
    sensor: Sensor
    units: int = 0  # > 0: counted in whole units (eggs, tablets), capacity in units
    per_event_units: tuple[int, ...] = (1,)
    bursts_per_month: float = 0.0
    burst_gain: tuple[float, float] = (3.0, 6.0)
    burst_hours: tuple[float, float] = (2.0, 8.0)
    regime: list[tuple[float, float]] = field(default_factory=list)  # (day, factor from then on)
    eats_when_away: bool = False
    initial: float = 1.0
    irregular: float = 1.0  # 0: use events like clockwork (a feeder's meals), 1: Poisson (print jobs)
    flex: float = 0.0  # inventory effect: use runs at (1 - flex/2 + flex * level) times the base rate


def level_after(level0: np.ndarray | float, used: np.ndarray | float, flex: float) -> np.ndarray | float:
    """The level after `used` of base-rate consumption from `level0`, where the rate scales with 1 - f/2 + f * level
    (people use more of a full pack than of one that is nearly gone): the solution of dl/dc = -(a + f l)."""
    if flex <= 0:
        return np.maximum(0.0, level0 - used)
    a = 1.0 - flex / 2
    return np.maximum(0.0, (level0 + a / flex) * np.exp(-flex * used) - a / flex)


def used_until(level0: float, remaining: float, flex: float) -> float:
    """Base-rate consumption that takes the level from level0 down to remaining (the inverse of level_after)."""
    if flex <= 0:
        return level0 - remaining
    a = 1.0 - flex / 2
    return math.log((level0 + a / flex) / (remaining + a / flex)) / flex


@dataclass
class DevicePlan:
    kind: str
    device_id: str
    slots: list[SlotPlan]
    heartbeat_s: float  # periodic report interval (0: none)
    heartbeat_jitter: float  # relative
    report_on_use: bool  # a report shortly after each consumption event
    loss: float  # chance a report is lost
    outages: list[tuple[float, float]]  # seconds: no reports
    switched_off: list[tuple[float, float]]  # seconds: no reports and no consumption
    away: list[tuple[float, float]]  # seconds: household away, no consumption (except eats_when_away), no refills
    shopping: np.ndarray  # grid steps of shopping trips
    active_hours: tuple[int, int] | None = None  # device only reports within these hours (local = UTC here)


# --- helpers ---------------------------------------------------------------------------------------------------


def loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def profile(rng: np.random.Generator, peaks: list[tuple[float, float, float]], floor: float) -> np.ndarray:
    """24 hourly weights from Gaussian bumps (hour, width, height) on a floor, shifted up to +-1.5 h per household,
    normalised to mean 1."""
    shift = rng.uniform(-1.5, 1.5)
    hours = np.arange(24) + 0.5
    w = np.full(24, floor)
    for hour, width, height in peaks:
        d = (hours - hour - shift + 12) % 24 - 12
        w += height * np.exp(-0.5 * (d / width) ** 2)
    return w / w.mean()


def week(values: list[float]) -> np.ndarray:
    w = np.asarray(values, dtype=float)
    return w / w.mean()


def windows(rng: np.random.Generator, total_s: float, count: int, lo_days: float, hi_days: float) -> list:
    out = []
    for _ in range(count):
        length = loguniform(rng, lo_days, hi_days) * DAY
        start = rng.uniform(0, max(1.0, total_s - length * 0.5))
        out.append((start, min(total_s, start + length)))
    return sorted(out)


def inside(t: np.ndarray, spans: list[tuple[float, float]]) -> np.ndarray:
    mask = np.zeros(len(t), dtype=bool)
    for a, b in spans:
        mask |= (t >= a) & (t < b)
    return mask


def vacations(rng: np.random.Generator, total_s: float) -> list[tuple[float, float]]:
    """Household away: none, one or two trips of 3 days to 2 weeks in six months."""
    return windows(rng, total_s, int(rng.choice([0, 1, 2], p=[0.45, 0.4, 0.15])), 3, 14)


def shopping_trips(rng: np.random.Generator, days: int, per_week: float) -> np.ndarray:
    """Grid steps of shopping trips: a usual weekday and hour, sometimes skipped, sometimes an extra trip."""
    trips = []
    usual = rng.choice(7, size=max(1, round(per_week)), replace=False)
    hour = rng.uniform(9, 19)
    for day in range(days):
        if day % 7 in usual and rng.random() > 0.12:
            trips.append(day + (hour + rng.normal(0, 1.0)) / 24)
        elif rng.random() < 0.06:
            trips.append(day + rng.uniform(9, 20) / 24)
    return np.array(sorted(trips)) * STEPS_PER_DAY


def regime(rng: np.random.Generator, days: int, chance: float) -> list[tuple[float, float]]:
    if rng.random() >= chance:
        return []
    factor = float(rng.choice([2.0, 2.0, 2.0, 1.6, 0.6, 0.5]))
    return [(rng.uniform(0.1, 0.9) * days, factor)]


# --- the device kinds ------------------------------------------------------------------------------------------


def habit_for(rng: np.random.Generator, weights: dict[str, float], **by_style: dict) -> Habit:
    styles = list(weights)
    p = np.array([weights[s] for s in styles])
    style = str(rng.choice(styles, p=p / p.sum()))
    params = dict(by_style.get(style, {}))
    for key, value in list(params.items()):
        if isinstance(value, tuple) and key not in ("partial_add", "full_to") and len(value) == 2:
            params[key] = float(rng.uniform(*value))
    return Habit(style=style, **params)


def printer(rng: np.random.Generator, days: int, number: int) -> DevicePlan:
    office = rng.random() < 0.35
    names = ["black", "cyan", "magenta", "yellow"] if rng.random() < 0.75 else ["black", "tricolor"]
    hourly = profile(rng, [(10, 2.0, 1.0), (15, 2.0, 0.8)], 0.02) if office else profile(rng, [(19, 3, 1.0)], 0.1)
    weekly = week([1, 1, 1, 1, 0.9, 0.05, 0.03]) if office else week([0.8, 0.8, 0.8, 0.8, 0.9, 1.4, 1.3])
    black_days = loguniform(rng, 20, 110) if office else loguniform(rng, 35, 160)
    quantum = float(rng.choice([0.1, 0.05, 0.01], p=[0.55, 0.3, 0.15]))
    rounding = str(rng.choice(["ceil", "nearest", "floor"], p=[0.3, 0.5, 0.2]))
    reserve = float(rng.uniform(0.01, 0.05)) if rng.random() < 0.5 else 0.0  # "replace cartridge" with ink left
    slots = []
    for name in names:
        cycle = black_days if name == "black" else black_days * loguniform(rng, 1.3, 3.0)
        habit = habit_for(
            rng,
            {"lazy": 0.45, "warned": 0.45, "eager": 0.10},
            lazy={"delay_days": (1.0, 6.0), "delay_sigma": 0.8},
            warned={"threshold": (0.1, 0.2), "delay_days": (1.0, 8.0), "forget": 0.3},
            eager={"threshold": (0.15, 0.3), "delay_days": (0.5, 3.0)},
        )
        habit.partial = 0.1  # refill kits
        habit.partial_add = (0.5, 0.8)
        sensor = Sensor(
            gain=float(rng.uniform(0.95, 1.05)),
            reserve=reserve,
            quantum=quantum,
            rounding=rounding,
            spike_rate=0.0004,
            spike="glitch",
        )
        slots.append(
            SlotPlan(
                name=name,
                per_day=1.0 / cycle,
                event=float(rng.uniform(0.004, 0.012)),
                jitter=0.8,
                hourly=hourly,
                weekly=weekly,
                habit=habit,
                sensor=sensor,
                bursts_per_month=float(rng.uniform(0.2, 1.0)),
                burst_gain=(3.0, 12.0),
                burst_hours=(1.0, 3.0),
                regime=regime(rng, days, 0.15),
                initial=float(rng.uniform(0.25, 1.0)),
                flex=float(rng.uniform(0.0, 0.3)),  # draft mode, fewer photos when the ink is low
            )
        )
    total = days * DAY
    off = [] if office else windows(rng, total, int(rng.choice([0, 1, 2, 3], p=[0.3, 0.35, 0.25, 0.1])), 4, 40)
    return DevicePlan(
        kind="printer",
        device_id=f"printer-{number:04d}",
        slots=slots,
        heartbeat_s=loguniform(rng, 1800, 4 * 3600) if office else loguniform(rng, 3600, 12 * 3600),
        heartbeat_jitter=0.3,
        report_on_use=True,
        loss=0.02,
        outages=windows(rng, total, int(rng.integers(0, 3)), 0.2, 4),
        switched_off=off,
        away=vacations(rng, total),
        shopping=shopping_trips(rng, days, 1),
        active_hours=(7, 19) if office else None,
    )


def fridge(rng: np.random.Generator, days: int, number: int) -> DevicePlan:
    total = days * DAY
    trips = shopping_trips(rng, days, float(rng.choice([1, 1, 2, 3])))
    household = loguniform(rng, 0.7, 1.5)  # how much the household eats relative to a typical one
    noise = loguniform(rng, 0.004, 0.02)
    milk_habit = habit_for(
        rng,
        {"shopper": 0.55, "lazy": 0.25, "eager": 0.20},
        shopper={"threshold": (0.2, 0.5), "delay_days": (0.3, 1.5), "forget": 0.15, "partial": 0.5},
        lazy={"delay_days": (0.2, 1.5), "delay_sigma": 0.8, "partial": 0.4},
        eager={"threshold": (0.3, 0.55), "delay_days": (0.05, 0.5), "partial": 0.3},
    )
    milk_habit.partial_add = (0.4, 0.7)
    milk = SlotPlan(
        name="milk",
        per_day=household / loguniform(rng, 6.0, 16.0),
        event=float(rng.uniform(0.05, 0.12)),
        jitter=0.4,
        hourly=profile(rng, [(7.5, 1.0, 1.0), (13, 1.5, 0.3), (19.5, 1.5, 0.5)], 0.03),
        weekly=week([1, 1, 1, 1, 1, 1.3, 1.3]),
        habit=milk_habit,
        sensor=Sensor(
            noise=noise,
            offset=float(rng.normal(0, 0.01)),
            drift=float(rng.normal(0, 0.01)),
            quantum=float(rng.choice([0.0, 0.05], p=[0.8, 0.2])),
            spike_rate=float(rng.uniform(0.0002, 0.001)),
            spike="lift",
        ),
        bursts_per_month=float(rng.uniform(0.2, 1.0)),
        regime=regime(rng, days, 0.15),
        initial=float(rng.uniform(0.2, 1.0)),
        irregular=0.6,
        flex=float(rng.uniform(0.2, 0.9)),
    )
    units = int(rng.choice([10, 12, 14, 18], p=[0.2, 0.45, 0.2, 0.15]))
    egg_habit = habit_for(
        rng,
        {"shopper": 0.6, "lazy": 0.25, "eager": 0.15},
        shopper={"threshold": (0.2, 0.45), "delay_days": (0.5, 3.0), "forget": 0.2, "partial": 0.5},
        lazy={"delay_days": (0.5, 5.0), "delay_sigma": 0.9, "partial": 0.5},
        eager={"threshold": (0.25, 0.5), "delay_days": (0.1, 1.0), "partial": 0.3},
    )
    egg_habit.partial_add = (6 / units, 6 / units)  # a box of six
    eggs = SlotPlan(
        name="eggs",
        per_day=household / loguniform(rng, 10.0, 30.0),
        event=1.0 / units,
        jitter=0.0,
        hourly=profile(rng, [(8.5, 1.2, 1.0), (18.5, 1.5, 0.6)], 0.02),
        weekly=week([0.8, 0.8, 0.8, 0.8, 0.9, 1.6, 1.6]),
        habit=egg_habit,
        sensor=Sensor(spike_rate=float(rng.uniform(0.0, 0.002)), spike="count"),
        units=units,
        per_event_units=(1, 1, 2, 2, 3),
        bursts_per_month=float(rng.uniform(0.2, 1.2)),  # baking
        burst_gain=(4.0, 10.0),
        burst_hours=(1.0, 3.0),
        regime=regime(rng, days, 0.12),
        initial=float(rng.uniform(0.3, 1.0)),
        irregular=0.8,
    )
    return DevicePlan(
        kind="fridge",
        device_id=f"fridge-{number:04d}",
        slots=[milk, eggs],
        heartbeat_s=loguniform(rng, 900, 3600),
        heartbeat_jitter=0.15,
        report_on_use=False,
        loss=float(rng.uniform(0.01, 0.08)),
        outages=windows(rng, total, int(rng.integers(0, 4)), 0.1, 5),
        switched_off=[],
        away=vacations(rng, total),
        shopping=trips,
    )


def coffee(rng: np.random.Generator, days: int, number: int) -> DevicePlan:
    total = days * DAY
    office = rng.random() < 0.2
    cycle = loguniform(rng, 4.0, 10.0) if office else loguniform(rng, 8.0, 35.0)
    habit = habit_for(
        rng,
        {"lazy": 0.45, "warned": 0.25, "eager": 0.3},
        lazy={"delay_days": (0.1, 1.5), "delay_sigma": 0.9, "partial": 0.4},
        warned={"threshold": (0.1, 0.25), "delay_days": (0.2, 2.0), "forget": 0.25, "partial": 0.3},
        eager={"threshold": (0.2, 0.45), "delay_days": (0.05, 1.0), "partial": 0.5},
    )
    habit.partial_add = (0.4, 0.7)
    quantum = float(rng.choice([0.0, 0.05, 0.1], p=[0.3, 0.4, 0.3]))
    beans = SlotPlan(
        name="beans",
        per_day=1.0 / cycle,
        event=float(rng.uniform(0.01, 0.035)) * (2 if office else 1),
        jitter=0.2,
        hourly=profile(rng, [(8, 1.0, 1.0), (11, 1.5, 0.4), (14, 1.2, 0.6)], 0.01)
        if office
        else profile(rng, [(7.5, 1.0, 1.0), (15, 1.5, 0.4)], 0.01),
        weekly=week([1, 1, 1, 1, 0.9, 0.03, 0.02]) if office else week([1, 1, 1, 1, 1, 1.3, 1.3]),
        habit=habit,
        sensor=Sensor(
            noise=float(rng.uniform(0.005, 0.025)) if quantum == 0 else float(rng.uniform(0.0, 0.015)),
            gain=float(rng.uniform(0.92, 1.05)),
            offset=float(rng.uniform(-0.02, 0.04)),
            reserve=float(rng.uniform(0.0, 0.06)),  # beans below the optical window
            quantum=quantum,
            spike_rate=float(rng.uniform(0.0, 0.002)),
            spike="glitch",
        ),
        bursts_per_month=float(rng.uniform(0.1, 0.8)),
        burst_gain=(2.0, 5.0),
        burst_hours=(3.0, 8.0),
        regime=regime(rng, days, 0.15),
        initial=float(rng.uniform(0.2, 1.0)),
        irregular=0.5,
        flex=float(rng.uniform(0.1, 0.8)),
    )
    return DevicePlan(
        kind="coffee",
        device_id=f"coffee-{number:04d}",
        slots=[beans],
        heartbeat_s=loguniform(rng, 3 * 3600, 24 * 3600),
        heartbeat_jitter=0.3,
        report_on_use=True,
        loss=float(rng.uniform(0.01, 0.06)),
        outages=windows(rng, total, int(rng.integers(0, 3)), 0.2, 6),
        switched_off=[],
        away=[] if office else windows(rng, total, int(rng.integers(0, 3)), 3, 16),
        shopping=shopping_trips(rng, days, 1),
    )


def washer(rng: np.random.Generator, days: int, number: int) -> DevicePlan:
    total = days * DAY
    washes = loguniform(rng, 2.0, 10.0) / 7  # per day
    quantum = float(rng.choice([0.05, 0.1], p=[0.5, 0.5]))
    slots = []
    names = ["detergent", "softener"] if rng.random() < 0.6 else ["detergent"]
    hourly = profile(rng, [(10, 2.5, 1.0), (19, 2.0, 0.8)], 0.05)
    for name in names:
        dose = 1.0 / loguniform(rng, 18, 45)
        habit = habit_for(
            rng,
            {"lazy": 0.35, "warned": 0.45, "shopper": 0.2},
            lazy={"delay_days": (0.5, 5.0), "delay_sigma": 0.9, "partial": 0.3},
            warned={"threshold": (0.1, 0.2), "delay_days": (1.0, 7.0), "forget": 0.3, "partial": 0.3},
            shopper={"threshold": (0.15, 0.3), "delay_days": (0.5, 3.0), "forget": 0.2, "partial": 0.3},
        )
        habit.partial_add = (0.4, 0.7)
        slots.append(
            SlotPlan(
                name=name,
                per_day=washes * dose,
                event=dose,
                jitter=0.15,
                hourly=hourly,
                weekly=week([0.9, 0.8, 0.9, 0.8, 0.9, 1.5, 1.3]),
                habit=habit,
                sensor=Sensor(
                    noise=float(rng.uniform(0.0, 0.01)),
                    gain=float(rng.uniform(0.93, 1.04)),
                    reserve=float(rng.uniform(0.0, 0.06)),  # the float bottoms out above the pump inlet
                    quantum=quantum,
                    rounding=str(rng.choice(["nearest", "ceil", "floor"], p=[0.6, 0.2, 0.2])),
                    spike_rate=0.0007,
                    spike="glitch",
                ),
                bursts_per_month=float(rng.uniform(0.0, 0.6)),
                burst_gain=(3.0, 6.0),
                burst_hours=(4.0, 10.0),
                regime=regime(rng, days, 0.12),
                initial=float(rng.uniform(0.2, 1.0)),
                irregular=0.5,
                flex=float(rng.uniform(0.0, 0.7)),  # generous doses from a full tank
            )
        )
    return DevicePlan(
        kind="washer",
        device_id=f"washer-{number:04d}",
        slots=slots,
        heartbeat_s=loguniform(rng, 4 * 3600, 24 * 3600),
        heartbeat_jitter=0.25,
        report_on_use=True,
        loss=float(rng.uniform(0.01, 0.05)),
        outages=windows(rng, total, int(rng.integers(0, 3)), 0.5, 10),
        switched_off=[],
        away=vacations(rng, total),
        shopping=shopping_trips(rng, days, 1),
    )


def petfeeder(rng: np.random.Generator, days: int, number: int) -> DevicePlan:
    total = days * DAY
    meals = int(rng.choice([2, 3, 4]))
    times = sorted(rng.uniform(6, 21, size=meals))
    hourly = np.full(24, 1e-3)
    for hour in times:
        hourly[int(hour)] += 1.0
    habit = habit_for(
        rng,
        {"warned": 0.4, "shopper": 0.3, "lazy": 0.3},
        warned={"threshold": (0.15, 0.35), "delay_days": (0.3, 3.0), "forget": 0.2, "partial": 0.3},
        shopper={"threshold": (0.2, 0.45), "delay_days": (0.2, 1.0), "forget": 0.15, "partial": 0.3},
        lazy={"delay_days": (0.1, 0.8), "delay_sigma": 0.7, "partial": 0.2},
    )
    habit.partial_add = (0.3, 0.6)
    food = SlotPlan(
        name="food",
        per_day=1.0 / loguniform(rng, 8.0, 50.0),
        event=0.0,  # set below: one meal
        jitter=0.08,
        hourly=hourly / hourly.mean(),
        weekly=week([1] * 7),
        habit=habit,
        sensor=Sensor(
            noise=float(rng.uniform(0.003, 0.012)),
            offset=float(rng.normal(0, 0.01)),
            drift=float(rng.normal(0, 0.008)),
            quantum=float(rng.choice([0.0, 0.05], p=[0.7, 0.3])),
            spike_rate=float(rng.uniform(0.0, 0.003)),
            spike="load",
        ),
        regime=regime(rng, days, 0.12),  # a second pet, a diet
        irregular=0.03,
        eats_when_away=True,
        initial=float(rng.uniform(0.2, 1.0)),
    )
    food.event = food.per_day / meals
    return DevicePlan(
        kind="petfeeder",
        device_id=f"petfeeder-{number:04d}",
        slots=[food],
        heartbeat_s=loguniform(rng, 1800, 6 * 3600),
        heartbeat_jitter=0.2,
        report_on_use=True,
        loss=float(rng.uniform(0.01, 0.05)),
        outages=windows(rng, total, int(rng.integers(0, 3)), 0.1, 4),
        switched_off=[],
        away=vacations(rng, total),
        shopping=shopping_trips(rng, days, 1),
    )


def dishwasher(rng: np.random.Generator, days: int, number: int) -> DevicePlan:
    total = days * DAY
    runs = loguniform(rng, 0.4, 1.5)  # per day
    hourly = profile(rng, [(20.5, 1.5, 1.0), (13.5, 1.0, 0.3)], 0.02)
    weekly = week([1, 1, 1, 1, 1, 1.2, 1.3])
    tabs = int(rng.choice([24, 30, 40, 50]))
    rinse_habit = habit_for(
        rng,
        {"lazy": 0.5, "warned": 0.5},
        lazy={"delay_days": (1.0, 10.0), "delay_sigma": 1.0},
        warned={"threshold": (0.1, 0.2), "delay_days": (1.0, 8.0), "forget": 0.4},
    )
    tab_habit = habit_for(
        rng,
        {"shopper": 0.5, "lazy": 0.3, "eager": 0.2},
        shopper={"threshold": (0.15, 0.35), "delay_days": (0.3, 2.0), "forget": 0.2},
        lazy={"delay_days": (0.3, 3.0), "delay_sigma": 0.8},
        eager={"threshold": (0.2, 0.4), "delay_days": (0.1, 1.0)},
    )
    rinse = SlotPlan(
        name="rinse_aid",
        per_day=runs / loguniform(rng, 25, 80),
        event=0.0,
        jitter=0.1,
        hourly=hourly,
        weekly=weekly,
        habit=rinse_habit,
        sensor=Sensor(
            quantum=0.1,
            rounding=str(rng.choice(["nearest", "ceil", "floor"], p=[0.5, 0.25, 0.25])),
            gain=float(rng.uniform(0.93, 1.05)),
            reserve=float(rng.uniform(0.0, 0.06)),
            spike_rate=0.001,
        ),
        regime=regime(rng, days, 0.1),
        initial=float(rng.uniform(0.2, 1.0)),
        irregular=0.35,
    )
    rinse.event = rinse.per_day / runs
    tablets = SlotPlan(
        name="tablets",
        per_day=runs / tabs,
        event=1.0 / tabs,
        jitter=0.0,
        hourly=hourly,
        weekly=weekly,
        habit=tab_habit,
        sensor=Sensor(spike_rate=0.001, spike="count"),
        units=tabs,
        regime=rinse.regime,
        initial=float(rng.uniform(0.2, 1.0)),
        irregular=0.35,
    )
    return DevicePlan(
        kind="dishwasher",
        device_id=f"dishwasher-{number:04d}",
        slots=[rinse, tablets],
        heartbeat_s=loguniform(rng, 4 * 3600, 24 * 3600),
        heartbeat_jitter=0.2,
        report_on_use=True,
        loss=float(rng.uniform(0.01, 0.05)),
        outages=windows(rng, total, int(rng.integers(0, 3)), 0.5, 8),
        switched_off=[],
        away=vacations(rng, total),
        shopping=shopping_trips(rng, days, 1),
    )


MAKERS = {
    "printer": printer,
    "fridge": fridge,
    "coffee": coffee,
    "washer": washer,
    "petfeeder": petfeeder,
    "dishwasher": dishwasher,
}


# --- simulation ------------------------------------------------------------------------------------------------


@dataclass
class SlotTrace:
    device_id: str
    slot: str
    ts: np.ndarray  # seconds since START, int
    level: np.ndarray
    cycle_start: list[float]  # seconds since START
    empty_at: list[float]  # seconds since START, nan if the cycle did not run out


def use_per_step(rng: np.random.Generator, plan: SlotPlan, device: DevicePlan, days: int) -> np.ndarray:
    """Consumption in each grid step (fraction of a full slot; whole units for counted slots)."""
    n = days * STEPS_PER_DAY
    step = np.arange(n)
    hour = (step % STEPS_PER_DAY) * 24 // STEPS_PER_DAY
    dow = (step // STEPS_PER_DAY) % 7
    rate = plan.per_day / STEPS_PER_DAY * plan.hourly[hour] * plan.weekly[dow]
    day_of = step / STEPS_PER_DAY
    for day, factor in plan.regime:
        rate = np.where(day_of >= day, rate * factor, rate)
    bursts = rng.poisson(plan.bursts_per_month * days / 30)
    for _ in range(bursts):
        at = int(rng.integers(0, n))
        hours = rng.uniform(*plan.burst_hours)
        gain = rng.uniform(*plan.burst_gain)
        end = min(n, at + int(hours * STEPS_PER_DAY / 24) + 1)
        # a burst happens when people are about: spread over waking hours rather than the exact grid slot
        rate[at:end] += plan.per_day / STEPS_PER_DAY * gain
    t = step * STEP
    stopped = inside(t, device.switched_off)
    if not plan.eats_when_away:
        stopped |= inside(t, device.away)
    rate[stopped] = 0.0
    if plan.units:
        mean_units = float(np.mean(plan.per_event_units))
        events = count_events(rng, rate * plan.units / mean_units, plan.irregular)
        used = np.zeros(n)
        where = np.nonzero(events)[0]
        for k in where:
            used[k] = rng.choice(plan.per_event_units, size=events[k]).sum()
        return used  # units
    events = count_events(rng, rate / plan.event, plan.irregular)
    size = plan.event * rng.lognormal(-0.5 * plan.jitter**2, plan.jitter, size=n) if plan.jitter else plan.event
    return events * size


def count_events(rng: np.random.Generator, expected: np.ndarray, irregular: float) -> np.ndarray:
    """Use events per grid step: a regular share, one event each time the running expected total passes a whole
    number (the evening dishwasher run), plus a Poisson share."""
    regular = np.diff(np.floor(np.cumsum(expected * (1.0 - irregular)) + rng.random()), prepend=0.0)
    return regular.astype(np.int64) + rng.poisson(expected * irregular)


def daytime(step: float, rng: np.random.Generator) -> float:
    """The first daytime moment (8:00-21:00) at or after this grid step."""
    day, into = divmod(step, STEPS_PER_DAY)
    hour = into * 24 / STEPS_PER_DAY
    if hour < 8:
        return day * STEPS_PER_DAY + rng.uniform(8, 11) * STEPS_PER_DAY / 24
    if hour > 21:
        return (day + 1) * STEPS_PER_DAY + rng.uniform(8, 11) * STEPS_PER_DAY / 24
    return step


def not_away(step: float, device: DevicePlan) -> float:
    t = step * STEP
    for a, b in device.away + device.switched_off:
        if a <= t < b:
            return b / STEP + 2
    return step


def simulate_slot(rng: np.random.Generator, plan: SlotPlan, device: DevicePlan, days: int) -> tuple:
    """True level as a function of time: (cycle starts [steps], level at start [fraction], cumulative use at
    start), the cumulative use curve, and the truth rows."""
    n = days * STEPS_PER_DAY
    used = use_per_step(rng, plan, device, days)
    scale = plan.units if plan.units else 1.0
    cum = np.concatenate([[0.0], np.cumsum(used)]) / scale  # fraction of a full slot used by grid point k
    habit = plan.habit
    starts, levels, bases, empties = [], [], [], []
    k0 = 0.0
    level0 = round(plan.initial * scale) / scale if plan.units else plan.initial
    daily_checks = np.arange(days) * STEPS_PER_DAY + rng.uniform(7, 21, size=days) * STEPS_PER_DAY / 24
    while True:
        base = cum[int(k0)]
        starts.append(k0)
        levels.append(level0)
        bases.append(base)

        def crossing(remaining: float, base: float = base, level0: float = level0, k0: float = k0) -> float:
            """The grid time (fractional) at which the level first falls to `remaining` or below, inf if never."""
            target = base + used_until(level0, remaining, plan.flex)
            k = int(np.searchsorted(cum, target - 1e-9, side="left"))
            if k <= k0:
                return k0
            if k > n:
                return math.inf
            if plan.units:
                return float(k)
            before = cum[k - 1]
            return (k - 1) + (target - before) / max(cum[k] - before, 1e-12)

        empty = crossing(0.0)
        delay = rng.lognormal(math.log(max(habit.delay_days, 0.01)), habit.delay_sigma) * STEPS_PER_DAY
        forgot = rng.random() < habit.forget
        if habit.style == "lazy" or forgot:
            refill = empty + delay
        elif habit.style == "warned":
            refill = crossing(habit.threshold) + delay
        else:  # shopper / eager: the first trip (or daily check) that finds it low, or a run after it runs out
            checks = device.shopping if habit.style == "shopper" else daily_checks
            low = crossing(habit.threshold)
            i = int(np.searchsorted(checks, max(low, k0 + 1), side="left"))
            trip = float(checks[i]) if i < len(checks) else math.inf
            if habit.style == "eager":
                trip += rng.uniform(0, 0.3) * STEPS_PER_DAY
            refill = min(trip, empty + delay)
        if math.isfinite(refill):
            refill = not_away(daytime(refill, rng), device)
            refill = max(refill, k0 + 1)
        if not math.isfinite(refill) or refill >= n:
            empties.append(empty * STEP if empty <= n else math.nan)
            break
        empties.append(empty * STEP if empty < refill else math.nan)
        k_r = math.floor(refill)
        left = float(level_after(level0, cum[k_r] - base, plan.flex))
        partial = rng.random() < habit.partial
        new = left + rng.uniform(*habit.partial_add) if partial else rng.uniform(*habit.full_to)
        new = min(1.0, new)
        if plan.units:
            new = math.floor(new * plan.units + 1e-9) / plan.units
        if new - left < 0.15:  # a top-up this small is not a refill: fill it up instead
            new = 1.0
        k0, level0 = float(k_r), new
    return np.array(starts), np.array(levels), np.array(bases), cum, empties


def report_times(rng: np.random.Generator, device: DevicePlan, use_steps: np.ndarray, days: int) -> np.ndarray:
    total = days * DAY
    times = []
    if device.heartbeat_s:
        count = int(total / device.heartbeat_s * 1.3) + 10
        gaps = device.heartbeat_s * rng.uniform(1 - device.heartbeat_jitter, 1 + device.heartbeat_jitter, count)
        beat = rng.uniform(0, device.heartbeat_s) + np.cumsum(gaps)
        times.append(beat[beat < total])
    if device.report_on_use and len(use_steps):
        times.append((use_steps + 1) * STEP + rng.uniform(5, 240, size=len(use_steps)))
    t = np.floor(np.concatenate(times)) if times else np.zeros(0)
    t = t[(t >= 0) & (t < total)]
    keep = rng.random(len(t)) >= device.loss
    keep &= ~inside(t, device.outages)
    keep &= ~inside(t, device.switched_off)
    if device.active_hours is not None:
        hour = (t % DAY) / 3600
        lo, hi = device.active_hours
        keep &= ((hour >= lo) & (hour < hi)) | (rng.random(len(t)) < 0.02)
    return np.unique(t[keep]).astype(np.int64)


def sense(rng: np.random.Generator, sensor: Sensor, truth: np.ndarray, t: np.ndarray, units: int) -> np.ndarray:
    v = np.maximum(truth - sensor.reserve, 0.0) / (1.0 - sensor.reserve)
    v = v * sensor.gain + sensor.offset + sensor.drift * t / (30 * DAY)
    if sensor.noise:
        v = v + rng.normal(0, sensor.noise, len(v))
    spikes = np.nonzero(rng.random(len(v)) < sensor.spike_rate)[0]
    for i in spikes:
        if sensor.spike == "lift":
            v[i] = rng.uniform(0.0, 0.04)
        elif sensor.spike == "load":
            v[i] = v[i] + rng.uniform(0.2, 0.8)
        elif sensor.spike == "count":
            v[i] = v[i] + rng.choice([-1, 1, 2]) / max(units, 1)
        else:
            v[i] = float(rng.choice([0.0, 1.0]))
    if units:
        v = np.round(v * units) / units
    if sensor.quantum:
        q = sensor.quantum
        if sensor.rounding == "ceil":
            v = np.ceil(v / q - 1e-9) * q
        elif sensor.rounding == "floor":
            v = np.floor(v / q + 1e-9) * q
        else:
            v = np.round(v / q) * q
    return np.clip(v, 0.0, 1.0) + 0.0  # + 0.0: no -0


def simulate_device(rng: np.random.Generator, device: DevicePlan, days: int) -> list[SlotTrace]:
    sims = [simulate_slot(rng, plan, device, days) for plan in device.slots]
    use_steps = np.zeros(0, dtype=np.int64)
    if device.report_on_use:
        # consumption steps: where any slot's cumulative use grew
        grew = np.zeros(days * STEPS_PER_DAY, dtype=bool)
        for *_, cum, _ in sims:
            grew |= np.diff(cum) > 0
        use_steps = np.nonzero(grew)[0]
    t = report_times(rng, device, use_steps, days)
    out = []
    for plan, (starts, levels, bases, cum, empties) in zip(device.slots, sims, strict=True):
        grid = t / STEP
        which = np.searchsorted(starts, grid, side="right") - 1
        # counted slots change in whole units at the grid points, the others linearly within a step
        used = cum[np.floor(grid).astype(np.int64)] if plan.units else np.interp(grid, np.arange(len(cum)), cum)
        true = level_after(levels[which], used - bases[which], plan.flex)
        level = sense(rng, plan.sensor, true, t.astype(float), plan.units)
        out.append(
            SlotTrace(
                device_id=device.device_id,
                slot=plan.name,
                ts=t,
                level=level,
                cycle_start=[float(s) * STEP for s in starts],
                empty_at=empties,
            )
        )
    return out


# --- the whole trace set ---------------------------------------------------------------------------------------


@dataclass
class TraceSet:
    slots: list[SlotTrace]
    kinds: dict[str, int]

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        readings, truth = out_dir / "READINGS.csv", out_dir / "TRUTH.csv"
        ids = sorted({(s.device_id, s.slot) for s in self.slots})
        rank = {key: i for i, key in enumerate(ids)}
        ts = np.concatenate([s.ts for s in self.slots])
        key = np.concatenate([np.full(len(s.ts), rank[(s.device_id, s.slot)]) for s in self.slots])
        level = np.concatenate([s.level for s in self.slots])
        order = np.lexsort((key, ts))
        stamps = iso(ts[order])
        names = np.array([f"{d},{s}" for d, s in ids])[key[order]]
        values = np.char.mod("%.4g", np.round(level[order], 4))
        with readings.open("w", encoding="utf-8", newline="") as handle:
            handle.write(",".join(READINGS_HEADER) + "\n")
            chunk = 200_000
            for a in range(0, len(order), chunk):
                b = a + chunk
                handle.write(
                    "\n".join(
                        f"{n},{s},{v}"
                        for n, s, v in zip(names[a:b].tolist(), stamps[a:b], values[a:b].tolist(), strict=True)
                    )
                    + "\n"
                )
        with truth.open("w", encoding="utf-8", newline="") as handle:
            handle.write(",".join(TRUTH_HEADER) + "\n")
            for s in sorted(self.slots, key=lambda s: (s.device_id, s.slot)):
                starts = iso(np.round(np.array(s.cycle_start)).astype(np.int64))
                for start, empty in zip(starts, s.empty_at, strict=True):
                    text = "" if math.isnan(empty) else iso(np.array([round(empty)], dtype=np.int64))[0]
                    handle.write(f"{s.device_id},{s.slot},{start},{text}\n")
        return readings, truth


def iso(seconds: np.ndarray) -> list[str]:
    """Seconds since START -> '2026-01-05T00:01:24Z'."""
    stamps = (START + seconds.astype("timedelta64[s]")).astype("datetime64[s]")
    return [text + "Z" for text in np.datetime_as_string(stamps, unit="s").tolist()]


def generate(slots: int, days: int, seed: int) -> TraceSet:
    """The device kinds follow KIND_SHARE as closely as whole devices allow (the next device is of the kind furthest
    below its share, ties in a seeded order); each device is drawn from its own seeded generator."""
    rng = np.random.default_rng(seed)
    kinds = [str(k) for k in rng.permutation(list(KIND_SHARE))]
    share = np.array([KIND_SHARE[k] for k in kinds]) / sum(KIND_SHARE.values())
    out: list[SlotTrace] = []
    count = dict.fromkeys(kinds, 0)
    while len(out) < slots:
        made = np.array([count[k] for k in kinds])
        kind = kinds[int(np.argmax(share * (made.sum() + 1) - made))]
        count[kind] += 1
        device_rng = np.random.default_rng([seed, list(KIND_SHARE).index(kind), count[kind]])
        device = MAKERS[kind](device_rng, days, count[kind])
        device.slots = device.slots[: slots - len(out)]
        out.extend(simulate_device(device_rng, device, days))
    return TraceSet(out, {k: n for k, n in count.items() if n})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=300, help="device-slots (default 300)")
    parser.add_argument("--days", type=int, default=182, help="days from 2026-01-05 (default 182)")
    parser.add_argument("--seed", type=int, default=1, help="seed (default 1)")
    parser.add_argument("--out-dir", type=Path, required=True, help="where to write READINGS.csv and TRUTH.csv")
    args = parser.parse_args(argv)
    traces = generate(args.slots, args.days, args.seed)
    readings, truth = traces.write(args.out_dir)
    rows = sum(len(s.ts) for s in traces.slots)
    cycles = sum(len(s.cycle_start) for s in traces.slots)
    ran_out = sum(not math.isnan(e) for s in traces.slots for e in s.empty_at)
    devices = ", ".join(f"{n} {k}" for k, n in sorted(traces.kinds.items()))
    print(f"{len(traces.slots)} slots on {sum(traces.kinds.values())} devices ({devices}), {args.days} days")
    print(f"{rows} readings -> {readings}; {cycles} cycles, {ran_out} ran out -> {truth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

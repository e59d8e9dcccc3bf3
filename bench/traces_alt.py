#!/usr/bin/env python
"""An independent second synthetic trace generator for the depletion-forecasting backtest.

Written from the problem description only, without looking at bench/traces.py, so that the forecaster can be
checked against a second interpretation of the same spec (connected devices of several kinds, noisy quantized
and irregular reports, refills decided in advance by the customer, weekly patterns, bursts, regime changes,
pauses). It writes the same two files bench/forecast.py scores:

* READINGS.csv  ``device_id,slot,ts,level`` sorted by ts (ties by device_id, slot);
* TRUTH.csv     ``device_id,slot,cycle_start,true_empty_at``, one row per depletion cycle.

Design, in short. Time runs on an hourly grid from a Monday 00:00 UTC. Each device has an hourly usage
intensity (diurnal x weekly profile in the device's time zone, day-to-day noise, persistent regime changes
that ramp in over a few days, burst episodes, vacations with no use, "switched off" spells with no use and no
reports). Each slot turns that intensity into compound-Poisson consumption (discrete units for eggs, fixed meal
portions for pet feeders, one-off big chunks such as a long print job). The customer's refill is decided from
the true level only: at/after running out (delay, shifted to waking hours, business hours or a shopping day),
in the last day before empty, or an early top-up when the level falls below a personal threshold with at
least 7 days of supply left; refills are full or partial (always a rise of at least 0.25). Reports follow one
of four schedules (periodic with jitter and drops, on use plus heartbeat, on change plus heartbeat, sparse)
minus connectivity gaps; the sensor applies a mild non-linearity, calibration offset, Gaussian noise,
quantization to 1%, 5% or 10% (round or floor) and rare isolated spikes.

    python bench/traces_alt.py --slots 300 --days 182 --seed 7 --out-dir /tmp/alt
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

READINGS_HEADER = ["device_id", "slot", "ts", "level"]
TRUTH_HEADER = ["device_id", "slot", "cycle_start", "true_empty_at"]
START = np.datetime64("2026-01-05T00:00:00", "s")  # a Monday
SUPPLY_LEFT_DAYS = 7.0  # an early top-up leaves at least this much supply
MIN_RISE = 0.25  # every refill raises the level by at least this much
EXTRA_DAYS = 240  # consumption is simulated this far past the end, to know when an open cycle would run out


# --- device kinds -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlotSpec:
    name: str
    cycle_days: tuple[float, float]  # nominal days from full to empty
    size: float  # mean fraction of the slot taken by one use (the unit, if discrete)
    cv: float = 0.5  # variation of one use's size
    discrete: bool = False  # uses take whole units (1 + Poisson(0.6) of them)
    chance: float = 1.0  # probability that a device of this kind has the slot
    chunks: float = 0.0  # one-off big uses per 182 days
    chunk: tuple[float, float] = (0.05, 0.15)


@dataclass(frozen=True)
class KindSpec:
    weight: float  # share of devices
    slots: tuple[SlotSpec, ...]
    diurnal: str
    weekly: str
    vacation: str  # "pause" (no use, reports go on), "off" (no use, no reports), "mixed", "continue"
    off_rate: float  # switched-off spells per 182 days
    modes: dict[str, float]  # report schedule -> weight
    intervals: tuple[float, ...]  # periodic report intervals, hours
    policy: tuple[float, float, float]  # refill after empty, in the last day, early top-up
    delay_h: float  # median delay of a refill after empty, hours
    full: float  # probability that a refill fills the slot
    refill_at: str  # "waking", "business", "shop"
    noise: tuple[float, float]  # sensor noise sd range
    sporadic: float = 1.0  # share of days with any use


# fmt: off
KINDS: dict[str, KindSpec] = {
    "printer": KindSpec(
        weight=0.13,
        slots=(
            SlotSpec("black", (25, 80), 0.004, 1.0, chunks=3.0, chunk=(0.04, 0.18)),
            SlotSpec("cyan", (40, 120), 0.003, 1.0, chunks=1.5),
            SlotSpec("magenta", (40, 120), 0.003, 1.0, chunks=1.5),
            SlotSpec("yellow", (40, 120), 0.003, 1.0, chunks=1.5),
        ),
        diurnal="office", weekly="office", vacation="mixed", off_rate=0.25,
        modes={"periodic": 0.7, "use": 0.3}, intervals=(1, 2, 3, 4, 6),
        policy=(0.45, 0.25, 0.30), delay_h=10.0, full=0.97, refill_at="business", noise=(0.002, 0.02),
    ),
    "homeprinter": KindSpec(
        weight=0.11,
        slots=(
            SlotSpec("black", (40, 120), 0.012, 1.2, chunks=1.0, chunk=(0.05, 0.2)),
            SlotSpec("color", (50, 125), 0.012, 1.2, chunks=1.0, chunk=(0.05, 0.2)),
        ),
        diurnal="evening", weekly="home", vacation="pause", off_rate=1.6,
        modes={"periodic": 0.5, "use": 0.3, "sparse": 0.2}, intervals=(6, 12, 24),
        policy=(0.70, 0.10, 0.20), delay_h=48.0, full=0.85, refill_at="waking", noise=(0.002, 0.03),
        sporadic=0.35,
    ),
    "fridge": KindSpec(
        weight=0.10,
        slots=(
            SlotSpec("milk", (6, 12), 0.08, 0.5, chunks=0.6),
            SlotSpec("eggs", (8, 21), 1 / 12, discrete=True, chance=0.7),
            SlotSpec("juice", (7, 16), 0.06, 0.6, chance=0.6, chunks=0.6, chunk=(0.1, 0.3)),
            SlotSpec("butter", (14, 35), 0.03, 0.5, chance=0.5),
        ),
        diurnal="meals", weekly="home", vacation="pause", off_rate=0.0,
        modes={"periodic": 0.5, "change": 0.5}, intervals=(2, 4, 6, 12),
        policy=(0.35, 0.20, 0.45), delay_h=20.0, full=0.5, refill_at="shop", noise=(0.005, 0.05),
    ),
    "coffee": KindSpec(
        weight=0.12,
        slots=(
            SlotSpec("beans", (6, 25), 0.03, 0.2),
            SlotSpec("milk", (6, 10), 0.05, 0.4, chance=0.6),
            SlotSpec("tablets", (50, 110), 0.1, discrete=True, chance=0.5),
        ),
        diurnal="morning", weekly="home", vacation="mixed", off_rate=0.0,
        modes={"use": 0.7, "periodic": 0.3}, intervals=(6, 12, 24),
        policy=(0.50, 0.25, 0.25), delay_h=6.0, full=0.7, refill_at="waking", noise=(0.003, 0.03),
    ),
    "soap": KindSpec(
        weight=0.10,
        slots=(SlotSpec("hand", (12, 45), 0.004, 0.3), SlotSpec("dish", (15, 40), 0.006, 0.4, chance=0.4)),
        diurnal="meals", weekly="home", vacation="pause", off_rate=0.0,
        modes={"change": 0.4, "periodic": 0.4, "sparse": 0.2}, intervals=(12, 24),
        policy=(0.50, 0.15, 0.35), delay_h=12.0, full=0.6, refill_at="waking", noise=(0.003, 0.04),
    ),
    "washer": KindSpec(
        weight=0.10,
        slots=(
            SlotSpec("detergent", (18, 60), 0.03, 0.3, chunks=0.5),
            SlotSpec("softener", (30, 90), 0.02, 0.3, chance=0.6),
        ),
        diurnal="evening", weekly="laundry", vacation="pause", off_rate=0.0,
        modes={"use": 0.6, "periodic": 0.4}, intervals=(12, 24),
        policy=(0.50, 0.20, 0.30), delay_h=24.0, full=0.5, refill_at="waking", noise=(0.003, 0.03),
    ),
    "dishwasher": KindSpec(
        weight=0.08,
        slots=(
            SlotSpec("detergent", (20, 45), 0.03, 0.2),
            SlotSpec("rinse", (40, 110), 0.01, 0.2, chance=0.8),
            SlotSpec("salt", (60, 120), 0.02, 0.3, chance=0.5),
        ),
        diurnal="evening", weekly="home", vacation="pause", off_rate=0.0,
        modes={"use": 0.6, "periodic": 0.4}, intervals=(12, 24),
        policy=(0.55, 0.15, 0.30), delay_h=24.0, full=0.8, refill_at="waking", noise=(0.003, 0.03),
    ),
    "petfeeder": KindSpec(
        weight=0.10,
        slots=(SlotSpec("kibble", (8, 35), 0.0, 0.08), SlotSpec("treats", (20, 60), 0.02, 0.6, chance=0.3)),
        diurnal="meals", weekly="flat", vacation="continue", off_rate=0.0,
        modes={"periodic": 0.6, "use": 0.4}, intervals=(1, 2, 3, 6),
        policy=(0.30, 0.30, 0.40), delay_h=3.0, full=0.6, refill_at="waking", noise=(0.002, 0.02),
    ),
    "waterfilter": KindSpec(
        weight=0.10,
        slots=(SlotSpec("filter", (45, 120), 0.0015, 1.0),),
        diurnal="meals", weekly="home", vacation="pause", off_rate=0.0,
        modes={"periodic": 0.5, "sparse": 0.3, "change": 0.2}, intervals=(12, 24),
        policy=(0.75, 0.10, 0.15), delay_h=120.0, full=1.0, refill_at="waking", noise=(0.002, 0.02),
    ),
}
# fmt: on


def diurnal_profile(name: str, rng: np.random.Generator) -> np.ndarray:
    """24 hourly weights, local time."""
    w = np.full(24, 0.2)
    w[0:6] = 0.02
    if name == "office":
        w[:] = 0.02
        w[8:18] = 1.0
        w[[7, 18, 19]] = 0.3
    elif name == "meals":
        w[6:9], w[12:14], w[17:21] = 1.5, 0.8, 1.2
    elif name == "morning":
        w[6:10], w[13:16], w[18:20] = 2.0, 0.8, 0.5
    elif name == "evening":
        w[7:10], w[10:17], w[17:22] = 0.6, 0.4, 1.2
    w = w * rng.uniform(0.7, 1.3, 24)
    return w / w.mean()


def weekly_profile(name: str, rng: np.random.Generator) -> np.ndarray:
    """7 daily weights, Monday first."""
    if name == "office":
        w = np.array([1, 1, 1, 1, 1, 0.05, 0.02])
    elif name == "laundry":
        w = np.full(7, 0.3)
        w[rng.choice(7, size=int(rng.integers(1, 4)), replace=False)] = 3.0
    elif name == "flat":
        w = np.ones(7)
    else:
        w = np.array([1, 1, 1, 1, 1, 1.4, 1.3])
    w = w * rng.uniform(0.8, 1.25, 7)
    return w / w.mean()


# --- one device ------------------------------------------------------------------------------------------------


@dataclass
class Device:
    device_id: str
    slots: list[str]
    times: np.ndarray  # report times, whole seconds since START, sorted
    levels: list[np.ndarray]  # per slot, reported level at each time
    cycles: list[list[tuple[int, int | None]]] = field(default_factory=list)  # per slot: (start s, empty s)


def spells(rng: np.random.Generator, rate: float, n_hours: int, median_h: float, sigma: float) -> list[tuple[int, int]]:
    """Random [a, b) hour intervals: Poisson(rate) of them, lognormal lengths."""
    out = []
    for _ in range(rng.poisson(rate)):
        a = int(rng.integers(0, n_hours))
        out.append((a, min(n_hours, a + max(1, int(rng.lognormal(math.log(median_h), sigma))))))
    return out


def mask_of(intervals: list[tuple[int, int]], n: int) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    for a, b in intervals:
        m[a:b] = True
    return m


class SlotSim:
    """Consumption of one slot over the hourly grid, and the customer's refills on it."""

    def __init__(self, use: np.ndarray) -> None:
        self.use = use
        self.cum = np.concatenate([[0.0], np.cumsum(use)])

    def cum_at(self, t: float | np.ndarray) -> float | np.ndarray:
        return np.interp(t, np.arange(len(self.cum)), self.cum)

    def when_used(self, t: float, amount: float) -> float:
        """Hour at which `amount` more has been used after hour t (inf if beyond the grid)."""
        target = float(self.cum_at(t)) + amount
        k = int(np.searchsorted(self.cum, target, side="left"))
        if k >= len(self.cum):
            return math.inf
        if k == 0:
            return 0.0
        return max(t, (k - 1) + (target - self.cum[k - 1]) / self.use[k - 1])


def generate_device(kind: str, index: int, seed: int, days: int, max_slots: int) -> Device:
    spec = KINDS[kind]
    rng = np.random.default_rng([seed, index, 0xA17])
    n_end = days * 24
    n = (days + EXTRA_DAYS) * 24
    hours = np.arange(n)
    hard = rng.random() < 0.35  # harder device: more regime changes, bursts, gaps, sparser reports
    scale = days / 182

    # usage intensity, hourly, mean about 1 in a regular week
    tz = int(rng.integers(-8, 3))
    local = hours + tz
    intensity = diurnal_profile(spec.diurnal, rng)[local % 24] * weekly_profile(spec.weekly, rng)[(local // 24) % 7]
    n_days = n // 24 + 2
    day_cv = rng.uniform(0.1, 0.6)
    day = rng.gamma(1 / day_cv**2, day_cv**2, n_days)
    if spec.sporadic < 1:
        day = day * (rng.random(n_days) < spec.sporadic) / spec.sporadic
    intensity = intensity * day[(local // 24).clip(0)]
    regime = np.ones(n)
    for _ in range(rng.poisson((1.6 if hard else 0.6) * scale)):
        at = int(rng.integers(24 * 5, n_end))
        factor = rng.choice([2.0, 1.5, 0.5, 3.0, 0.7], p=[0.4, 0.2, 0.2, 0.08, 0.12])
        ramp = np.clip((hours[at:] - at) / max(1.0, rng.uniform(0, 7 * 24)), 0, 1)
        regime[at:] *= 1 + (factor - 1) * ramp
    regime = regime.clip(0.35, 2.5)
    intensity = intensity * regime
    for a, b in spells(rng, (3.0 if hard else 1.0) * scale, n_end, 18, 0.9):
        intensity[a:b] *= rng.uniform(2.5, 6.0)
    vacations = spells(rng, (0.4 if kind == "printer" else 1.2) * scale, n_end, 8 * 24, 0.5)
    mode = spec.vacation
    if mode == "mixed":
        mode = "off" if rng.random() < 0.5 else "pause"
    if mode == "continue" and rng.random() < 0.3:
        mode = "pause"  # the pet went to the kennel
    off = spells(rng, spec.off_rate * scale, n_end, 18 * 24, 0.5)
    if mode == "off":
        off += vacations
    elif mode == "pause":
        intensity[mask_of(vacations, n)] = 0.0
    off_mask = mask_of(off, n)
    intensity[off_mask] = 0.0

    # which slots, and their consumption
    slot_specs = [s for s in spec.slots if rng.random() < s.chance][:max_slots] or [spec.slots[0]][:max_slots]
    meals = np.sort(rng.choice([6, 7, 8, 12, 17, 18, 19, 21], size=int(rng.integers(2, 4)), replace=False))
    sims = []
    for s in slot_specs:
        rate = 1 / rng.uniform(*s.cycle_days)  # per day, at intensity 1
        if s.size == 0.0:  # scheduled portions (pet feeder): fixed meal hours, steady unless paused/changed
            portion = rate / len(meals)
            fed = np.isin(local % 24, meals) & ~off_mask
            if mode == "pause":
                fed &= ~mask_of(vacations, n)
            use = np.where(fed, portion * regime * rng.gamma(1 / s.cv**2, s.cv**2, n), 0.0)
        else:
            lam = intensity * rng.uniform(0.85, 1.15) * rate / 24 / (s.size * (1.6 if s.discrete else 1.0))
            k = rng.poisson(lam)
            if s.discrete:
                use = s.size * (k + rng.poisson(0.6 * k))
            else:
                shape = 1 / s.cv**2
                use = np.where(k > 0, rng.gamma(np.maximum(k, 1) * shape, s.size / shape), 0.0)
            active = np.flatnonzero(intensity[:n_end] > 0.3)
            if len(active):
                for _ in range(rng.poisson(s.chunks * scale * (2 if hard else 1))):
                    use[rng.choice(active)] += rng.uniform(*s.chunk)
        sims.append(SlotSim(use))

    cycles = [simulate_refills(rng, spec, sim, n_end, hard, tz) for sim in sims]

    # report times
    times, schedule = report_times(rng, spec, hard, n_end, sims)
    gaps = spells(rng, (2.5 if hard else 0.8) * scale, n_end, 36, 1.0)
    if rng.random() < (0.5 if hard else 0.15):
        gaps += spells(rng, 1, n_end, 10 * 24, 0.5)  # a long outage
    dark = mask_of(gaps, n_end) | off_mask[:n_end]
    times = times[~dark[(times // 3600).astype(int)]]

    # the sensor
    quant = rng.choice([0.001, 0.05, 0.10], p=[0.3, 0.4, 0.3])
    floor = rng.random() < 0.4
    noise = math.exp(rng.uniform(math.log(spec.noise[0]), math.log(spec.noise[1])))
    if schedule == "change" and quant >= 0.05:
        noise = min(noise, 0.3 * quant)
    gamma = rng.uniform(0.8, 1.25) if rng.random() < 0.25 else 1.0
    offset = rng.uniform(-0.03, 0.03) if rng.random() < 0.2 else 0.0
    spike_p = rng.uniform(0.0005, 0.01) if rng.random() < 0.7 else 0.0

    t_hours = times / 3600.0
    true = [true_level(sim, cyc, t_hours) for sim, cyc in zip(sims, cycles, strict=True)]
    seen = [sense(rng, lv, gamma, offset, noise, quant, floor) for lv in true]
    keep = np.ones(len(times), dtype=bool)
    if schedule == "change" and len(times):
        keep = on_change(times, seen, heartbeat_s=int(rng.choice([24, 48, 72]) * 3600))
    times = times[keep]
    seen = [add_spikes(rng, lv[keep], spike_p, quant) for lv in seen]

    return Device(
        device_id=f"{kind}-{index:04d}",
        slots=[s.name for s in slot_specs],
        times=times,
        levels=seen,
        cycles=[[(round(a * 3600), None if e is None else round(e * 3600)) for a, _, e in c] for c in cycles],
    )


def next_allowed(rng: np.random.Generator, h_utc: float, how: str, shop_days: np.ndarray, tz: int) -> float:
    """The first moment at or after h_utc (hours from START) when this customer refills, in their local time."""
    h = h_utc + tz
    for d in range(30):
        day_start = math.floor(h / 24) * 24 + 24 * d
        dow = int(day_start // 24) % 7
        if how == "business":
            if dow >= 5:
                continue
            lo, hi = 9.0, 17.0
        elif how == "shop":
            if dow not in shop_days:
                continue
            lo, hi = 10.0, 19.0
        else:
            lo, hi = 7.5, 22.0
        t = max(h, day_start + lo)
        if t < day_start + hi:
            return t - tz + rng.uniform(0, min(2.0, hi - (t - day_start)))
    return h_utc


def simulate_refills(
    rng: np.random.Generator, spec: KindSpec, sim: SlotSim, n_end: int, hard: bool, tz: int
) -> list[tuple[float, float, float | None]]:
    """Cycles (start hour, level at start, true empty hour or None) until the trace ends."""
    p = rng.dirichlet(np.array(spec.policy) * 12 + 0.3)
    full_p = min(1.0, spec.full + rng.uniform(-0.15, 0.15)) if spec.full < 1 else 1.0
    shop_days = rng.choice(7, size=int(rng.integers(1, 3)), replace=False)
    delay_med = spec.delay_h * math.exp(rng.normal(0, 0.5))
    out: list[tuple[float, float, float | None]] = []
    t, level = 0.0, float(rng.uniform(0.4, 1.0))
    while True:
        empty = sim.when_used(t, level)
        policy = int(rng.choice(3, p=p))
        refill = math.inf
        ran_out = True
        if policy == 2:  # early top-up once below a personal threshold, with >= 7 days of supply left
            theta = rng.uniform(0.15, 0.6)
            if theta < level:
                h = sim.when_used(t, level - theta)
                if math.isfinite(h):
                    r = next_allowed(rng, h, spec.refill_at, shop_days, tz)
                    now = level - float(sim.cum_at(r) - sim.cum_at(t))
                    if r - t > 12 and empty - r >= SUPPLY_LEFT_DAYS * 24 and now <= 1 - MIN_RISE:
                        refill, ran_out = r, False
            if ran_out:
                policy = int(rng.choice(2, p=p[:2] / p[:2].sum()))
        if ran_out and policy == 1 and math.isfinite(empty):  # in the last day before running out
            r = empty - rng.uniform(1, 23)
            if r - t > 12:
                refill = r
            else:
                policy = 0
        if ran_out and policy == 0 and math.isfinite(empty):  # at or after running out
            if rng.random() < 0.15:
                delay = rng.uniform(0, 2)
            else:
                delay = rng.lognormal(math.log(delay_med), 1.0 if hard else 0.8)
            refill = next_allowed(rng, empty + delay, spec.refill_at, shop_days, tz)
        refill = round(refill * 3600) / 3600 if math.isfinite(refill) else refill
        if refill >= n_end:
            out.append((t, level, empty if empty < n_end else None))
            return out
        out.append((t, level, empty if ran_out else None))
        now = max(0.0, level - float(sim.cum_at(refill) - sim.cum_at(t)))
        if rng.random() < full_p:
            new = 1.0 if spec.refill_at == "business" or spec.full >= 1 else float(rng.uniform(0.92, 1.0))
        elif ran_out:  # partial: a bottle or a bag, not the whole slot
            new = float(rng.uniform(0.45, 0.9))
        else:
            new = now + rng.uniform(0.3, 0.6)
        week = float(sim.cum_at(refill) - sim.cum_at(max(0.0, refill - 7 * 24))) / 7
        new = max(new, 4.5 * week)  # a partial refill still buys a few days of supply
        t, level = refill, min(1.0, max(new, now + MIN_RISE))


def true_level(sim: SlotSim, cycles: list[tuple[float, float, float | None]], t: np.ndarray) -> np.ndarray:
    starts = np.array([c[0] for c in cycles])
    i = np.searchsorted(starts, t, side="right") - 1
    base = np.array([c[1] for c in cycles])[i]
    used = sim.cum_at(t) - sim.cum_at(starts[i])
    return np.maximum(0.0, base - used)


def report_times(
    rng: np.random.Generator, spec: KindSpec, hard: bool, n_end: int, sims: list[SlotSim]
) -> tuple[np.ndarray, str]:
    """Report times in seconds (before connectivity gaps and off spells), sorted and unique, and the schedule."""
    modes = list(spec.modes)
    weights = np.array([spec.modes[m] for m in modes])
    mode = modes[int(rng.choice(len(modes), p=weights / weights.sum()))]
    if hard and mode != "change" and rng.random() < 0.4:
        mode = "sparse"
    end_s = n_end * 3600
    first = rng.uniform(0, 6 * 3600)
    if mode == "periodic":
        step = float(rng.choice(spec.intervals)) * 3600
        t = first + np.arange(0, end_s / step + 1) * step
        t = t + rng.normal(0, 0.05 * step, len(t))
        t = t[rng.random(len(t)) >= rng.uniform(0, 0.5 if hard else 0.2)]
    elif mode == "use":
        used = np.flatnonzero(np.sum([s.use[:n_end] for s in sims], axis=0) > 0)
        t = used * 3600.0 + rng.uniform(600, 3500, len(used))
        beat = float(rng.choice([24, 24, 48, 72])) * 3600
        beats = first + np.arange(0, end_s / beat + 1) * beat
        t = np.concatenate([t, beats + rng.normal(0, 600, len(beats))])
    elif mode == "change":  # candidates every hour; on_change() keeps the ones that differ
        t = first + np.arange(0, end_s / 3600 + 1) * 3600.0 + rng.uniform(0, 300, int(end_s / 3600) + 1)
    else:  # sparse: gamma-distributed gaps of one to three days on average
        mean = rng.uniform(24, 72) * 3600
        gaps = rng.gamma(1.5, mean / 1.5, int(end_s / mean * 3) + 10)
        t = first + np.concatenate([[0.0], np.cumsum(gaps)])
    return np.unique(np.round(t[(t >= 0) & (t < end_s)]).astype(np.int64)), mode


def sense(
    rng: np.random.Generator, level: np.ndarray, gamma: float, offset: float, noise: float, quant: float, floor: bool
) -> np.ndarray:
    v = np.power(level, gamma) + offset + rng.normal(0, noise, len(level))
    v = np.clip(v, 0, 1)
    v = (np.floor(v / quant + 1e-9) if floor else np.round(v / quant)) * quant
    return np.round(np.clip(v, 0, 1), 3)


def on_change(times: np.ndarray, seen: list[np.ndarray], heartbeat_s: int) -> np.ndarray:
    """Keep a candidate report when any slot's value differs from the last one kept, or a heartbeat is due."""
    keep = np.zeros(len(times), dtype=bool)
    stack = np.stack(seen, axis=1)
    last = stack[0]
    last_t = times[0]
    keep[0] = True
    for j in range(1, len(times)):
        if times[j] - last_t >= heartbeat_s or np.any(stack[j] != last):
            keep[j] = True
            last, last_t = stack[j], times[j]
    return keep


def add_spikes(rng: np.random.Generator, level: np.ndarray, p: float, quant: float) -> np.ndarray:
    """Isolated one-off glitches: a reading of full, of empty, or far off the true value."""
    if p == 0 or len(level) < 3:
        return level
    hit = rng.random(len(level)) < p
    hit[1:] &= ~hit[:-1]  # never two in a row
    idx = np.flatnonzero(hit)
    kind = rng.integers(0, 3, len(idx))
    far = np.clip(level[idx] + rng.choice([-1, 1], len(idx)) * rng.uniform(0.2, 0.6, len(idx)), 0, 1)
    value = np.where(kind == 0, 1.0, np.where(kind == 1, 0.0, far))
    out = level.copy()
    out[idx] = np.round(np.round(value / quant) * quant, 3)
    return out


# --- all devices -----------------------------------------------------------------------------------------------


def generate(slots: int, days: int, seed: int) -> list[Device]:
    rng = np.random.default_rng([seed, 0x5EED])
    names = list(KINDS)
    weights = np.array([KINDS[k].weight for k in names])
    devices: list[Device] = []
    total = 0
    while total < slots:
        kind = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        device = generate_device(kind, len(devices) + 1, seed, days, slots - total)
        devices.append(device)
        total += len(device.slots)
    return devices


def iso(seconds: np.ndarray) -> np.ndarray:
    return np.char.add(np.datetime_as_string(START + seconds.astype("timedelta64[s]"), unit="s"), "Z")


def write(devices: list[Device], out_dir: Path) -> tuple[int, int, int]:
    out_dir.mkdir(parents=True, exist_ok=True)
    ids, slot_names, ts, levels = [], [], [], []
    for d in devices:
        for s, lv in zip(d.slots, d.levels, strict=True):
            ids.append(np.full(len(d.times), d.device_id))
            slot_names.append(np.full(len(d.times), s))
            ts.append(d.times)
            levels.append(lv)
    all_ids, all_slots = np.concatenate(ids), np.concatenate(slot_names)
    all_ts, all_lv = np.concatenate(ts), np.concatenate(levels)
    order = np.lexsort((all_slots, all_ids, all_ts))
    stamps = iso(all_ts[order])
    with (out_dir / "READINGS.csv").open("w", newline="", encoding="utf-8") as handle:
        handle.write(",".join(READINGS_HEADER) + "\n")
        lines = [
            f"{i},{s},{t},{v:.3f}\n"
            for i, s, t, v in zip(all_ids[order], all_slots[order], stamps, all_lv[order].tolist(), strict=True)
        ]
        handle.writelines(lines)
    cycles = ran_out = 0
    with (out_dir / "TRUTH.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(TRUTH_HEADER)
        for d in devices:
            for s, cyc in zip(d.slots, d.cycles, strict=True):
                for start, empty in cyc:
                    cycles += 1
                    ran_out += empty is not None
                    writer.writerow(
                        [
                            d.device_id,
                            s,
                            str(iso(np.array([start]))[0]),
                            "" if empty is None else str(iso(np.array([empty]))[0]),
                        ]
                    )
    return len(all_ts), cycles, ran_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=300, help="device-slots to generate (default 300)")
    parser.add_argument("--days", type=int, default=182, help="days to generate (default 182)")
    parser.add_argument("--seed", type=int, default=1, help="seed (default 1)")
    parser.add_argument("--out-dir", type=Path, required=True, help="where to write READINGS.csv and TRUTH.csv")
    args = parser.parse_args(argv)
    devices = generate(args.slots, args.days, args.seed)
    rows, cycles, ran_out = write(devices, args.out_dir)
    slots = sum(len(d.slots) for d in devices)
    print(
        f"{slots} slots on {len(devices)} devices, {args.days} days: {rows} readings, "
        f"{cycles} cycles, {ran_out} ran out -> {args.out_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

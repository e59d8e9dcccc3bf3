#!/usr/bin/env python
"""Seeded synthetic level traces, with their ground truth, for the forecasting backtest (bench/forecast.py).

N device-slots over D days, device kinds and behaviours mixed, with every pattern the forecaster must survive:

- sensor noise, one-off spikes (up, to zero, anywhere) and short dips (a bottle out of the fridge);
- levels quantized to 5% or 10% steps (rounded or floored), or reported to 0.001;
- irregular and missing reports: periodic, irregular and on-use cadences, lost messages, connectivity
  dropouts (no reports, consumption goes on) and devices switched off for weeks (no reports, no use);
- full and partial refills, and top-ups long before empty (a sustained rise starts a new cycle; a spike does not);
- consumption with daily and weekly patterns, bursts (print jobs), regime changes (usage doubling or halving
  mid-cycle) and pauses with no consumption (vacations).

The refills are part of the trace, fixed in advance and independent of any order: the true level follows the
slot's consumption, and the customer refills the slot when it ran out (at once or after a stockout of up to two
weeks), in the last day before it would have (then `true_empty_at` is when it would have run out: a delivery
was needed by then just the same), or tops it up while at least --topup-min-days of supply are left (then the
cycle never runs out). So a forecaster is judged on when it would have ordered, not on a world its orders change.

Outputs (`--out-dir`):

- `READINGS.csv`, contract §3: `device_id,slot,ts,level`, ts ISO 8601 UTC (`2026-01-05T06:00:00Z`), level the
  fraction as the device reported it (noisy, quantized, spiky, clipped to [0, 1]), rows sorted by ts;
- `TRUTH.csv`: `device_id,slot,cycle_start,true_empty_at`, one row per cycle, `true_empty_at` empty when the
  cycle ends by a top-up before running out or the trace ends first. The first cycle of a slot starts at the
  trace start; every other starts at a refill.

    python bench/traces.py --slots 300 --days 182 --seed 1 --out-dir /tmp/traces
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

START = np.datetime64("2026-01-05T00:00:00", "s")  # a Monday, UTC
HOURS_PER_DAY = 24
READINGS_HEADER = ["device_id", "slot", "ts", "level"]
TRUTH_HEADER = ["device_id", "slot", "cycle_start", "true_empty_at"]


@dataclass(frozen=True)
class Kind:
    """A device kind: its slots, how fast they empty, when they are used and how the device reports."""

    name: str
    weight: float  # share of devices
    slots: tuple[str, ...]
    slot_counts: tuple[int, ...]  # how many of `slots` a device of this kind has, drawn uniformly
    cycle_days: tuple[float, float]  # a full slot lasts this long at the base rate (log-uniform)
    weekly: tuple[float, ...]  # Mon..Sun use multipliers
    active_hours: tuple[int, int]  # use happens in [from, to) local = UTC hours
    burst_share: tuple[float, float]  # share of use that comes in bursts (print jobs, a party)
    bursts_per_day: tuple[float, float]
    cadences: tuple[str, ...]  # report cadences, drawn uniformly
    pauses_per_device: float  # expected vacations (no use, reports go on)
    off_per_device: float  # expected switched-off periods (no use, no reports)
    off_days: tuple[float, float]
    topup_probability: tuple[float, float]  # chance that a cycle ends by an early top-up
    near_empty_probability: float  # chance that a cycle that runs out is refilled in its last day instead


KINDS = (
    Kind(
        "printer",
        weight=0.30,
        slots=("black", "cyan", "magenta", "yellow"),
        slot_counts=(1, 4, 4, 4),
        cycle_days=(20, 110),
        weekly=(1.1, 1.2, 1.2, 1.2, 1.1, 0.1, 0.1),
        active_hours=(8, 18),
        burst_share=(0.3, 0.7),
        bursts_per_day=(0.3, 2.0),
        cadences=("periodic", "on_use", "irregular"),
        pauses_per_device=0.7,
        off_per_device=0.2,
        off_days=(3, 14),
        topup_probability=(0.0, 0.2),
        near_empty_probability=0.15,
    ),
    Kind(
        "homeprinter",
        weight=0.20,
        slots=("black", "color"),
        slot_counts=(1, 2, 2),
        cycle_days=(30, 150),
        weekly=(0.7, 0.7, 0.7, 0.7, 0.9, 1.6, 1.7),
        active_hours=(7, 23),
        burst_share=(0.5, 0.9),
        bursts_per_day=(0.1, 0.6),
        cadences=("on_use", "irregular", "periodic"),
        pauses_per_device=0.8,
        off_per_device=1.0,
        off_days=(7, 42),
        topup_probability=(0.0, 0.1),
        near_empty_probability=0.15,
    ),
    Kind(
        "fridge",
        weight=0.15,
        slots=("milk", "juice", "yogurt"),
        slot_counts=(1, 1, 2, 3),
        cycle_days=(7, 21),
        weekly=(0.9, 0.9, 0.9, 0.9, 1.0, 1.3, 1.3),
        active_hours=(6, 23),
        burst_share=(0.0, 0.3),
        bursts_per_day=(0.5, 2.0),
        cadences=("periodic", "periodic", "irregular"),
        pauses_per_device=1.0,
        off_per_device=0.05,
        off_days=(2, 6),
        topup_probability=(0.05, 0.4),
        near_empty_probability=0.25,
    ),
    Kind(
        "coffee",
        weight=0.15,
        slots=("beans",),
        slot_counts=(1,),
        cycle_days=(10, 35),
        weekly=(1.2, 1.2, 1.2, 1.2, 1.1, 0.5, 0.5),
        active_hours=(7, 18),
        burst_share=(0.0, 0.2),
        bursts_per_day=(0.2, 1.0),
        cadences=("periodic", "irregular", "sparse"),
        pauses_per_device=0.6,
        off_per_device=0.1,
        off_days=(3, 14),
        topup_probability=(0.0, 0.2),
        near_empty_probability=0.2,
    ),
    Kind(
        "dispenser",
        weight=0.20,
        slots=("soap", "detergent"),
        slot_counts=(1, 2),
        cycle_days=(15, 70),
        weekly=(1.0, 1.0, 1.0, 1.0, 1.0, 1.2, 1.2),
        active_hours=(6, 23),
        burst_share=(0.0, 0.4),
        bursts_per_day=(0.1, 1.0),
        cadences=("periodic", "sparse", "irregular"),
        pauses_per_device=0.8,
        off_per_device=0.05,
        off_days=(2, 7),
        topup_probability=(0.0, 0.2),
        near_empty_probability=0.2,
    ),
)


@dataclass
class SlotTrace:
    device_id: str
    slot: str
    ts: np.ndarray  # int64 seconds since START
    level: np.ndarray  # reported level
    cycle_start: list[float] = field(default_factory=list)  # seconds since START
    true_empty_at: list[float | None] = field(default_factory=list)


@dataclass
class Traces:
    slots: list[SlotTrace]
    days: int
    seed: int
    kinds: dict[str, int]  # devices per kind

    @property
    def readings(self) -> int:
        return sum(len(s.ts) for s in self.slots)

    @property
    def cycles(self) -> int:
        return sum(len(s.cycle_start) for s in self.slots)

    @property
    def ran_out(self) -> int:
        return sum(t is not None for s in self.slots for t in s.true_empty_at)

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        readings_path, truth_path = out_dir / "READINGS.csv", out_dir / "TRUTH.csv"
        ts = np.concatenate([s.ts for s in self.slots])
        level = np.concatenate([s.level for s in self.slots])
        index = np.concatenate([np.full(len(s.ts), i) for i, s in enumerate(self.slots)])
        # Slots are in (device_id, slot) order, so sorting by (ts, index) interleaves devices deterministically.
        order = np.lexsort((index, ts))
        ts_text = iso(ts[order])
        names = [f"{s.device_id},{s.slot}," for s in self.slots]
        with readings_path.open("w", encoding="utf-8", newline="") as handle:
            handle.write(",".join(READINGS_HEADER) + "\n")
            handle.writelines(
                f"{names[i]}{t},{v:.3f}\n"
                for i, t, v in zip(index[order].tolist(), ts_text, level[order].tolist(), strict=True)
            )
        with truth_path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(TRUTH_HEADER)
            for s in self.slots:
                starts = iso(np.rint(s.cycle_start).astype(np.int64))
                for start, empty in zip(starts, s.true_empty_at, strict=True):
                    writer.writerow([s.device_id, s.slot, start, "" if empty is None else iso_one(empty)])
        return readings_path, truth_path


def iso(seconds: np.ndarray) -> list[str]:
    """Seconds since START -> ['2026-01-05T06:00:00Z', ...]."""
    stamps = np.datetime_as_string(START + np.asarray(seconds, dtype=np.int64).astype("timedelta64[s]"), unit="s")
    return [f"{s}Z" for s in stamps.tolist()]


def iso_one(seconds: float) -> str:
    return iso(np.array([round(seconds)]))[0]


def generate(slots: int = 300, days: int = 182, seed: int = 1, topup_min_days: float = 7.0) -> Traces:
    """`slots` device-slots over `days` days; the same arguments give the same traces."""
    rng = np.random.default_rng(seed)
    hours = days * HOURS_PER_DAY
    weights = np.array([k.weight for k in KINDS])
    made: list[SlotTrace] = []
    kinds: dict[str, int] = {}
    number = 0
    while len(made) < slots:
        kind = KINDS[rng.choice(len(KINDS), p=weights / weights.sum())]
        count = min(int(rng.choice(kind.slot_counts)), slots - len(made))
        number += 1
        device_id = f"{kind.name}-{number:04d}"
        kinds[kind.name] = kinds.get(kind.name, 0) + 1
        made.extend(_device(rng, kind, device_id, kind.slots[:count], hours, topup_min_days))
    return Traces(slots=made, days=days, seed=seed, kinds=kinds)


def _periods(
    rng: np.random.Generator, expected: float, length_days: tuple[float, float], hours: int
) -> list[tuple[float, float]]:
    """Random [from, to) periods in hours, at most the trace long."""
    out = []
    for _ in range(rng.poisson(expected)):
        length = rng.uniform(*length_days) * HOURS_PER_DAY
        start = rng.uniform(0, max(1.0, hours - length))
        out.append((start, start + length))
    return out


def _mask(periods: list[tuple[float, float]], t_hours: np.ndarray) -> np.ndarray:
    inside = np.zeros(t_hours.shape, dtype=bool)
    for lo, hi in periods:
        inside |= (t_hours >= lo) & (t_hours < hi)
    return inside


def _device(
    rng: np.random.Generator,
    kind: Kind,
    device_id: str,
    slot_names: tuple[str, ...],
    hours: int,
    topup_min_days: float,
) -> list[SlotTrace]:
    t = np.arange(hours) + 0.5  # hour midpoints
    hour_of_day = np.arange(hours) % HOURS_PER_DAY
    weekday = (np.arange(hours) // HOURS_PER_DAY) % 7  # START is a Monday
    lo, hi = kind.active_hours
    active = ((hour_of_day >= lo) & (hour_of_day < hi)).astype(float)
    # Morning and evening peaks for home devices, flat office hours otherwise.
    shape = active * (
        1.0
        + 0.8 * np.exp(-0.5 * ((hour_of_day - (lo + 1.5)) / 1.5) ** 2)
        + 0.8 * np.exp(-0.5 * ((hour_of_day - (hi - 3)) / 1.5) ** 2)
    )
    profile = shape * np.array(kind.weekly)[weekday]
    profile *= (hours / HOURS_PER_DAY) / profile.sum()  # one unit of use per day on average

    # Device-level behaviour: regime changes, vacations, switched off, connectivity dropouts.
    regime = np.ones(hours)
    if rng.random() < 0.45:
        changes = 1 + int(rng.random() < 0.25)
        days = hours / HOURS_PER_DAY
        earliest = min(15.0, days / 4)
        for at in np.sort(rng.uniform(earliest, max(earliest, days - 10), size=changes)):
            regime[int(at * HOURS_PER_DAY) :] *= rng.choice([2.0, 2.0, 2.0, 0.5, 1.5, 3.0])
    pauses = _periods(rng, kind.pauses_per_device, (5, 21), hours)
    off = _periods(rng, kind.off_per_device, kind.off_days, hours)
    dropouts = _periods(rng, 0.4, (0.5, 6), hours)
    idle = _mask(pauses + off, t)
    use = profile * regime * ~idle

    burst_share = rng.uniform(*kind.burst_share)
    bursts_per_day = rng.uniform(*kind.bursts_per_day)
    n_bursts = rng.poisson(bursts_per_day * hours / HOURS_PER_DAY)
    burst_weights = profile * ~idle
    burst_hours = (
        rng.choice(hours, size=n_bursts, p=burst_weights / burst_weights.sum())
        if burst_weights.sum() > 0
        else np.zeros(0, dtype=int)
    )
    smooth_noise = rng.gamma(2.0, 0.5, size=hours)  # hour-to-hour variation, mean 1

    # How and when the device reports; the same instants for all its slots.
    report_h = _report_times(rng, rng.choice(kind.cadences), hours, use)
    keep = ~_mask(off + dropouts, report_h) & (rng.random(report_h.size) >= rng.uniform(0, 0.08))
    report_h = report_h[keep]
    noise_sd = rng.choice([0.0, 0.004, 0.01, 0.02, 0.035], p=[0.2, 0.25, 0.3, 0.15, 0.1])
    step = rng.choice([0.0, 0.05, 0.10], p=[0.45, 0.35, 0.2])
    floor = rng.random() < 0.4
    spike_rate = rng.choice([0.0, 0.002, 0.008, 0.025], p=[0.3, 0.3, 0.25, 0.15])
    dip_rate = 0.01 if kind.name == "fridge" else 0.0

    out = []
    for name in slot_names:
        base = 1.0 / math.exp(rng.uniform(math.log(kind.cycle_days[0]), math.log(kind.cycle_days[1])))
        demand = base * use * ((1 - burst_share) * smooth_noise)
        if burst_hours.size:
            sizes = rng.exponential(base * burst_share / bursts_per_day, n_bursts)
            np.add.at(demand, burst_hours, sizes * regime[burst_hours])
        cum = np.concatenate([[0.0], np.cumsum(demand)])
        starts, levels, empties = _cycles(rng, kind, cum, hours, topup_min_days)

        # The true level at each report, then what the sensor makes of it.
        ts_h = report_h[rng.random(report_h.size) >= 0.02]  # a slot now and then missing from a message
        ts_s = np.unique(np.rint(ts_h * 3600).astype(np.int64))
        ts_h = ts_s / 3600.0
        which = np.searchsorted(starts, ts_h, side="right") - 1
        grid = np.arange(hours + 1)
        used = np.interp(ts_h, grid, cum) - np.interp(np.array(starts), grid, cum)[which]
        true_level = np.maximum(0.0, np.array(levels)[which] - used)
        reported = true_level + rng.normal(0.0, noise_sd, ts_h.size) if noise_sd else true_level.copy()
        spikes = rng.random(ts_h.size) < spike_rate
        kinds_of_spike = rng.integers(0, 3, ts_h.size)
        reported = np.where(spikes & (kinds_of_spike == 0), reported + rng.uniform(0.25, 0.7, ts_h.size), reported)
        reported = np.where(spikes & (kinds_of_spike == 1), 0.0, reported)
        reported = np.where(spikes & (kinds_of_spike == 2), rng.uniform(0, 1, ts_h.size), reported)
        if dip_rate:
            for at in np.flatnonzero(rng.random(ts_h.size) < dip_rate):
                reported[at : at + int(rng.integers(1, 4))] = 0.0
        if step:
            reported = (np.floor(reported / step + 1e-9) if floor else np.round(reported / step)) * step
        reported = np.clip(reported, 0.0, 1.0)
        out.append(
            SlotTrace(
                device_id,
                name,
                ts_s,
                reported,
                [s * 3600 for s in starts],
                [None if e is None else e * 3600 for e in empties],
            )
        )
    return out


def _report_times(rng: np.random.Generator, cadence: str, hours: int, use: np.ndarray) -> np.ndarray:
    """Report instants in hours since START, sorted, in [0, hours)."""
    if cadence == "periodic":
        period = rng.choice([1.0, 2.0, 3.0, 4.0, 6.0, 12.0], p=[0.15, 0.15, 0.2, 0.2, 0.2, 0.1])
        base = np.arange(rng.uniform(0, period), hours, period)
        times = base + rng.normal(0, 0.05 * period, base.size)
    elif cadence == "irregular":
        mean = rng.uniform(1.5, 12.0)
        gaps = rng.exponential(mean, int(hours / mean * 1.5) + 10)
        times = np.cumsum(gaps)
    elif cadence == "sparse":  # battery devices: about once a day
        period = rng.choice([12.0, 24.0])
        base = np.arange(rng.uniform(0, period), hours, period)
        times = base + rng.normal(0, 1.5, base.size)
    else:  # on_use: after most hours with use, plus a daily heartbeat
        used = np.flatnonzero((use > 0) & (rng.random(hours) < 0.7))
        beats = np.arange(rng.uniform(0, 24), hours, 24.0)
        times = np.concatenate([used + rng.uniform(0.3, 1.0, used.size), beats])
    times = np.sort(times)
    return times[(times >= 0) & (times < hours)]


def _cycles(
    rng: np.random.Generator,
    kind: Kind,
    cum: np.ndarray,
    hours: int,
    topup_min_days: float,
) -> tuple[list[float], list[float], list[float | None]]:
    """The slot's cycles: start times (hours), levels at the start, true empty times (hours, None if none)."""
    grid = np.arange(hours + 1, dtype=float)

    def at(x: float) -> float:  # the first time cumulative use reaches x, inf if never in the trace
        j = int(np.searchsorted(cum, x, side="left"))
        if j > hours:
            return math.inf
        if j == 0:
            return 0.0
        return (j - 1) + (x - cum[j - 1]) / (cum[j] - cum[j - 1])

    topup_p = rng.uniform(*kind.topup_probability)
    full_p = rng.uniform(0.6, 0.95)
    starts: list[float] = []
    levels: list[float] = []
    empties: list[float | None] = []
    t0, level0 = 0.0, float(rng.uniform(0.45, 1.0))
    while True:
        c0 = float(np.interp(t0, grid, cum))
        empty = at(c0 + level0)
        starts.append(t0)
        levels.append(level0)
        window_lo = max(t0 + HOURS_PER_DAY, at(c0 + level0 - 0.6) if level0 > 0.6 else t0)
        window_hi = empty - topup_min_days * HOURS_PER_DAY
        if window_lo < window_hi and rng.random() < topup_p:
            top = rng.uniform(window_lo, min(window_hi, hours + 10 * HOURS_PER_DAY))
            empties.append(None)
            if top >= hours:
                break
            left = level0 - (float(np.interp(top, grid, cum)) - c0)
            t0, level0 = top, 1.0 if rng.random() < full_p else min(1.0, left + rng.uniform(0.3, 0.8))
            continue
        if empty >= hours:
            empties.append(None)  # the trace ends first
            break
        empties.append(empty)
        if rng.random() < kind.near_empty_probability:
            refill = max(t0 + 1.0, empty - rng.uniform(1.0, HOURS_PER_DAY))
        elif rng.random() < 0.35:
            refill = empty + rng.uniform(0.0, 6.0)
        else:
            refill = empty + min(14 * HOURS_PER_DAY, rng.exponential(2 * HOURS_PER_DAY))
        if refill >= hours:
            break
        left = max(0.0, level0 - (float(np.interp(refill, grid, cum)) - c0))
        t0, level0 = refill, 1.0 if rng.random() < full_p else min(1.0, left + rng.uniform(0.5, 0.9))
    return starts, levels, empties


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=300, help="device-slots (default 300)")
    parser.add_argument("--days", type=int, default=182, help="days (default 182)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--topup-min-days",
        type=float,
        default=7.0,
        help="an early top-up leaves at least this many days of supply (default 7)",
    )
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    traces = generate(args.slots, args.days, args.seed, args.topup_min_days)
    readings, truth = traces.write(args.out_dir)
    print(
        f"{len(traces.slots)} slots on {sum(traces.kinds.values())} devices ({traces.kinds}), {args.days} days: "
        f"{traces.readings} readings, {traces.cycles} cycles, {traces.ran_out} ran out "
        f"({time.perf_counter() - began:.1f} s)\n{readings}\n{truth}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

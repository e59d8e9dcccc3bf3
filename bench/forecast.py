#!/usr/bin/env python
"""Backtest of the forecasting and reorder code against synthetic traces with known ground truth.

One run:

1. generates seeded traces with bench/traces.py (READINGS.csv, TRUTH.csv), or takes --readings and --truth;
2. runs `replenish backtest READINGS.csv --lead-time-days L --out ORDERS.csv` (contract §3) as a subprocess and
   times it; a missing or failing command is reported as "not available" and the run goes on;
3. replays the same readings through two causal baselines: "order when below 20%" and a plain linear fit since
   the last detected refill;
4. scores the three order sets against the truth and prints one table: stockout rate, median and p90 days of
   supply left at delivery, duplicate and spurious orders, runtime.

Scoring: an order belongs to the cycle whose [cycle_start, next cycle_start) holds ordered_at; it is delivered at
ordered_at + L. In a cycle that runs out, the first order counts: a stockout if there is none or it is delivered
after true_empty_at, else (true_empty_at - delivery) is its days early. Every order after the first in any cycle
is a duplicate. The first order in a cycle that was topped up before running out is spurious. The first order in
a slot's last cycle, still open when the trace ends, is not scored ("open"): the slot may well run out after the
end. See bench/README.md.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import traces as tracegen  # noqa: E402  (bench/ is not a package)

DAY = 86_400.0
BELOW = 0.20  # baseline (a): order when the reported level is below this
RISE = 0.20  # baseline (b): a rise of more than this between two readings is a refill
FIT_MIN_READINGS = 3  # baseline (b): fit once the cycle has this many readings
TARGETS = {"stockout %": 5.0, "median days early": 2.5, "duplicates %": 0.5, "spurious %": 1.0, "runtime s": 60.0}


# --- reading the files -----------------------------------------------------------------------------------------


def parse_times(texts: list[str]) -> np.ndarray:
    """ISO 8601 strings -> float seconds since the epoch (UTC)."""
    if texts and all(len(t) == 20 and t.endswith("Z") for t in texts):  # the common case, vectorised
        return np.array([t[:19] for t in texts], dtype="datetime64[s]").astype(np.int64).astype(float)
    return np.array([datetime.fromisoformat(t).timestamp() for t in texts], dtype=float)


@dataclass
class Readings:
    keys: list[tuple[str, str]]  # (device_id, slot), sorted
    ts: list[np.ndarray]  # per key, seconds, in file order (= ts order)
    level: list[np.ndarray]
    rows: int
    first: float
    last: float


def read_readings(path: Path) -> Readings:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        if [h.strip() for h in header] != tracegen.READINGS_HEADER:
            raise SystemExit(f"{path}: header must be {','.join(tracegen.READINGS_HEADER)}, got {header}")
        columns = list(zip(*(row for row in reader if row), strict=True))
    if not columns:
        raise SystemExit(f"{path}: no readings")
    device, slot, ts_text, level_text = columns
    ts = parse_times(list(ts_text))
    level = np.array(level_text, dtype=float)
    names = np.char.add(np.char.add(np.array(device), "|"), np.array(slot))
    unique, inverse = np.unique(names, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(unique) + 1))
    keys = [tuple(str(u).split("|", 1)) for u in unique]
    return Readings(
        keys=keys,  # type: ignore[arg-type]
        ts=[ts[order[a:b]] for a, b in itertools.pairwise(bounds)],
        level=[level[order[a:b]] for a, b in itertools.pairwise(bounds)],
        rows=len(ts),
        first=float(ts.min()),
        last=float(ts.max()),
    )


@dataclass
class SlotTruth:
    start: np.ndarray  # cycle starts, seconds, sorted
    empty: np.ndarray  # true empty times, nan if the cycle did not run out


def read_truth(path: Path) -> dict[tuple[str, str], SlotTruth]:
    rows: dict[tuple[str, str], list[tuple[str, str]]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or [f.strip() for f in reader.fieldnames] != tracegen.TRUTH_HEADER:
            raise SystemExit(f"{path}: header must be {','.join(tracegen.TRUTH_HEADER)}")
        for row in reader:
            rows.setdefault((row["device_id"], row["slot"]), []).append((row["cycle_start"], row["true_empty_at"]))
    truth = {}
    for key, cycles in rows.items():
        start = parse_times([c[0] for c in cycles])
        empty = np.array([datetime.fromisoformat(c[1]).timestamp() if c[1] else math.nan for c in cycles])
        order = np.argsort(start, kind="stable")
        truth[key] = SlotTruth(start[order], empty[order])
    return truth


def read_orders(path: Path) -> dict[tuple[str, str], list[float]]:
    orders: dict[tuple[str, str], list[float]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or [f.strip() for f in reader.fieldnames] != ["device_id", "slot", "ordered_at"]:
            raise ValueError(f"{path.name}: header is {reader.fieldnames}, not device_id,slot,ordered_at")
        for row in reader:
            when = datetime.fromisoformat(row["ordered_at"].strip())
            if when.tzinfo is None:
                raise ValueError(f"{path.name}: ordered_at {row['ordered_at']!r} has no UTC offset")
            orders.setdefault((row["device_id"], row["slot"]), []).append(when.timestamp())
    return orders


def read_decisions(path: Path) -> dict[tuple[str, str], list[tuple[float, float, float]]]:
    """Per slot, each order's (ordered_at, empty_at_early, service level), seconds; orders without an early date
    are left out."""
    found: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if not row["empty_at_early"]:
                continue
            found.setdefault((row["device_id"], row["slot"]), []).append(
                (
                    datetime.fromisoformat(row["ordered_at"]).timestamp(),
                    datetime.fromisoformat(row["empty_at_early"]).timestamp(),
                    float(row["service_level"]),
                )
            )
    return found


RELIABILITY_MIN_CYCLES = 50
RELIABILITY_TARGET = (1.5, 5.0)  # % of cycles running out before the early date, at a 97% service level


def reliability(
    decisions: dict[tuple[str, str], list[tuple[float, float, float]]], truth: dict[tuple[str, str], SlotTruth]
) -> str:
    """Per device kind: the stated probability of running out before the early date (1 - service level) against
    the share of cycles whose first order's early date the truth beat. A cycle that was topped up counts when the
    top-up came after that date (it had not run out by then); one still open at the end, or topped up before the
    date, says nothing and is left out."""
    tally: dict[str, list[float]] = {}  # kind -> [cycles, ran out before early, sum of stated]
    for key, cycles in truth.items():
        kind = key[0].split("-", 1)[0]
        seen: set[int] = set()
        for ordered_at, early, level in sorted(decisions.get(key, [])):
            which = int(np.searchsorted(cycles.start, ordered_at, side="right")) - 1
            if which < 0 or which in seen:
                continue
            seen.add(which)
            empty = cycles.empty[which]
            if math.isnan(empty):
                ended = cycles.start[which + 1] if which + 1 < len(cycles.start) else math.nan
                if math.isnan(ended) or ended < early:
                    continue
                before = False
            else:
                before = bool(empty < early)
            row = tally.setdefault(kind, [0, 0, 0.0])
            row[0] += 1
            row[1] += before
            row[2] += 1.0 - level
    rows = []
    low, high = RELIABILITY_TARGET
    for kind, (count, before, stated) in sorted(tally.items(), key=lambda item: -item[1][0]):
        observed = 100.0 * before / count
        verdict = (
            "too few cycles"
            if count < RELIABILITY_MIN_CYCLES
            else ("ok" if low <= observed <= high else f"MISSED ({low:g}-{high:g}%)")
        )
        rows.append([kind, str(count), f"{100 * stated / count:.1f}%", f"{observed:.1f}% ({int(before)})", verdict])
    total = [sum(row[0] for row in tally.values()), sum(row[1] for row in tally.values())]
    if total[0]:
        rows.append(["all", str(int(total[0])), "", f"{100 * total[1] / total[0]:.1f}% ({int(total[1])})", ""])
    return (
        "reliability: the stated probability of running out before the early date against how often the first "
        "order's cycle did\n" + table(rows, ["device kind", "cycles", "stated", "observed", "target at >= 50 cycles"])
    )


# --- the baselines (causal: the decision at a reading's ts uses that reading and earlier ones only) ------------


def below_threshold(ts: np.ndarray, level: np.ndarray, lead_days: float) -> list[float]:
    """Order when the reported level is below 20%; re-arm once it is back above 20%. No other de-duplication."""
    del lead_days
    orders = []
    armed = True
    for t, v in zip(ts.tolist(), level.tolist(), strict=True):
        if v < BELOW:
            if armed:
                orders.append(t)
                armed = False
        elif v > BELOW:
            armed = True
    return orders


def linear_fit(ts: np.ndarray, level: np.ndarray, lead_days: float) -> list[float]:
    """Least squares level ~ a + b t over the readings since the last rise of more than 0.2 (or the first reading);
    order once per such cycle, when the fitted line reaches 0 within the lead time."""
    orders = []
    previous = math.inf
    ordered = False
    n = st = sy = stt = sty = 0.0
    origin = 0.0
    for t, v in zip(ts.tolist(), level.tolist(), strict=True):
        if n == 0 or v - previous > RISE:  # a new cycle starts at this reading
            n = st = sy = stt = sty = 0.0
            origin = t
            ordered = False
        previous = v
        x = (t - origin) / DAY
        n += 1
        st += x
        sy += v
        stt += x * x
        sty += x * v
        if ordered or n < FIT_MIN_READINGS:
            continue
        denominator = n * stt - st * st
        if denominator <= 1e-12:
            continue
        slope = (n * sty - st * sy) / denominator
        if slope >= 0:
            continue
        intercept = (sy - slope * st) / n
        if -intercept / slope <= x + lead_days:
            orders.append(t)
            ordered = True
    return orders


def run_baseline(
    decide: Callable[[np.ndarray, np.ndarray, float], list[float]], readings: Readings, lead_days: float
) -> tuple[dict[tuple[str, str], list[float]], float]:
    began = time.perf_counter()
    orders = {}
    for key, ts, level in zip(readings.keys, readings.ts, readings.level, strict=True):
        placed = decide(ts, level, lead_days)
        if placed:
            orders[key] = placed
    return orders, time.perf_counter() - began


# --- replenish backtest ----------------------------------------------------------------------------------------


def run_replenish(
    command: Path,
    readings: Path,
    out: Path,
    lead_days: float,
    timeout: float,
    pull_forward: float | None = None,
    decisions: Path | None = None,
    learning: bool = True,
) -> tuple[dict[tuple[str, str], list[float]] | None, float, str]:
    """(orders or None, wall seconds, a note saying why not, or what the command said). ``pull_forward``: the
    --pull-forward-days to pass (None: the command's default); ``decisions``: where --decisions writes."""
    argv = [str(command), "backtest", str(readings), "--lead-time-days", f"{lead_days:g}", "--out", str(out)]
    if pull_forward is not None:
        argv += ["--pull-forward-days", f"{pull_forward:g}"]
    if decisions is not None:
        argv += ["--decisions", str(decisions)]
    if not learning:
        argv += ["--no-learning"]
    if not command.exists():
        return None, 0.0, f"{command} does not exist"
    began = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - began, f"timed out after {timeout:g} s"
    except OSError as exc:
        return None, time.perf_counter() - began, f"could not start: {exc}"
    wall = time.perf_counter() - began
    said = (done.stderr.strip() or done.stdout.strip()).splitlines()
    if done.returncode != 0:
        return None, wall, f"exit code {done.returncode}" + (f": {said[-1]}" if said else "")
    if not out.is_file():
        return None, wall, f"exit code 0 but no {out.name} written"
    try:
        orders = read_orders(out)
    except (ValueError, KeyError, csv.Error) as exc:
        return None, wall, f"unreadable {out.name}: {exc}"
    return orders, wall, said[-1] if said else ""


# --- scoring ---------------------------------------------------------------------------------------------------


@dataclass
class Score:
    method: str
    available: bool = True
    note: str = ""
    runtime: float = math.nan
    orders: int = 0
    ran_out: int = 0
    late: int = 0  # first order delivered after true_empty_at
    missed: int = 0  # no order in the cycle at all
    early_days: list[float] = field(default_factory=list)  # over cycles with a timely first order
    late_days: list[float] = field(default_factory=list)
    duplicates: int = 0
    spurious: int = 0
    open_orders: int = 0  # first orders in a slot's last cycle that had not run out when the trace ended
    unmatched: int = 0  # orders for an unknown slot or before its first cycle
    stockout_by_group: dict[str, list[int]] = field(default_factory=dict)  # group -> [stockouts, ran out]
    stockout_cycles: set[tuple[tuple[str, str], int]] = field(default_factory=set)  # (slot, cycle index)

    @property
    def stockouts(self) -> int:
        return self.late + self.missed

    def pct(self, count: int, of: int) -> float:
        return 100.0 * count / of if of else math.nan


def score(
    method: str,
    orders: dict[tuple[str, str], list[float]],
    truth: dict[tuple[str, str], SlotTruth],
    lead_days: float,
    runtime: float,
) -> Score:
    result = Score(method, runtime=runtime)
    lead = lead_days * DAY
    for key, placed in orders.items():
        result.orders += len(placed)
        if key not in truth:
            result.unmatched += len(placed)
    for key, cycles in truth.items():
        group = key[0].split("-", 1)[0]
        tally = result.stockout_by_group.setdefault(group, [0, 0])
        placed = np.sort(np.asarray(orders.get(key, []), dtype=float))
        which = np.searchsorted(cycles.start, placed, side="right") - 1
        result.unmatched += int((which < 0).sum())
        last = len(cycles.start) - 1
        for i, empty in enumerate(cycles.empty.tolist()):
            mine = placed[which == i]
            result.duplicates += max(0, len(mine) - 1)
            if not math.isnan(empty):
                result.ran_out += 1
                tally[1] += 1
                if not len(mine):
                    result.missed += 1
                    tally[0] += 1
                    result.stockout_cycles.add((key, i))
                    continue
                left = (empty - (mine[0] + lead)) / DAY
                if left < 0:
                    result.late += 1
                    result.late_days.append(-left)
                    tally[0] += 1
                    result.stockout_cycles.add((key, i))
                else:
                    result.early_days.append(left)
            elif len(mine):
                if i == last:
                    result.open_orders += 1
                else:
                    result.spurious += 1
    return result


def blind_cycles(
    readings: Readings, truth: dict[tuple[str, str], SlotTruth], lead_days: float
) -> set[tuple[tuple[str, str], int]]:
    """Cycles (slot, index) that ran out with no reading in [cycle_start, true_empty_at - L]: no order placed on
    evidence from the cycle itself can arrive in time."""
    where = {key: i for i, key in enumerate(readings.keys)}
    found = set()
    for key, cycles in truth.items():
        ts = readings.ts[where[key]] if key in where else np.zeros(0)
        ran_out = np.flatnonzero(~np.isnan(cycles.empty))
        lo = np.searchsorted(ts, cycles.start[ran_out], side="left")
        hi = np.searchsorted(ts, cycles.empty[ran_out] - lead_days * DAY, side="right")
        found.update((key, int(index)) for index in ran_out[hi <= lo])
    return found


def actionable_stockouts(scores: list[Score], blind: set[tuple[tuple[str, str], int]], ran_out: int) -> str:
    """Each method's stockouts among the cycles that ran out and were not blind: the rate a forecaster controls."""
    actionable = ran_out - len(blind)
    parts = [
        f"{s.method} {fmt(s.pct(len(s.stockout_cycles - blind), actionable))}% "
        f"({len(s.stockout_cycles - blind)}/{actionable})"
        for s in scores
        if s.available
    ]
    return "stockouts among the cycles a forecaster can act on (not blind, above): " + "; ".join(parts)


def unavailable(method: str, note: str, runtime: float) -> Score:
    return Score(method, available=False, note=note, runtime=runtime)


def shipments(orders: dict[tuple[str, str], list[float]]) -> int:
    """Parcels: the orders of one device at one moment are one shipment (its lines share ordered_at)."""
    return len({(device, round(t)) for (device, _), placed in orders.items() for t in placed})


def frontier(
    args: argparse.Namespace,
    readings_path: Path,
    readings: Readings,
    truth: dict[tuple[str, str], SlotTruth],
    work: Path,
) -> str:
    """Shipments per device-month beside stockouts and days early, for each pull-forward horizon H."""
    lead = args.lead_time_days
    devices = len({device for device, _ in readings.keys})
    months = (readings.last - readings.first) / DAY / (365.25 / 12)
    rows: list[list[str]] = []
    base: tuple[float, float, float] | None = None
    for horizon in args.pull_forward:
        found, wall, note = run_replenish(
            args.replenish, readings_path, work / f"ORDERS-H{horizon:g}.csv", lead, args.timeout, horizon
        )
        if found is None:
            rows.append([f"{horizon:g}", "not available: " + note, *[""] * 10])
            continue
        scored = score(f"H={horizon:g}", found, truth, lead, wall)
        early = np.array(scored.early_days)
        per_month = shipments(found) / max(devices * months, 1e-9)
        stockout = scored.pct(scored.stockouts, scored.ran_out)
        median = float(np.median(early)) if early.size else math.nan
        if base is None:
            base = (per_month, stockout, median)
        rows.append(
            [
                f"{horizon:g}",
                str(shipments(found)),
                f"{per_month:.3f}",
                f"{100 * (per_month / base[0] - 1):+.1f}%",
                str(scored.orders),
                f"{fmt(stockout)}%",
                f"{stockout - base[1]:+.2f}",
                fmt(median, ".2f"),
                f"{median - base[2]:+.2f}",
                f"{fmt(scored.pct(scored.duplicates, scored.orders), '.2f')}%",
                f"{fmt(scored.pct(scored.spurious, scored.orders), '.2f')}%",
                fmt(wall, ".1f"),
            ]
        )
    header = [
        "H days",
        "shipments",
        "per device-month",
        "vs first",
        "order lines",
        "stockout %",
        "pts vs first",
        "median days early",
        "vs first",
        "duplicates",
        "spurious",
        "runtime s",
    ]
    return (
        f"shipments by pull-forward horizon H ({devices} devices, {months:.1f} months; a shipment is one device's "
        f"lines with the same ordered_at; targets at the default H: shipments -25% or more, stockouts +0.5 pts or "
        f"less, median days early +1 or less)\n" + table(rows, header)
    )


# --- output ----------------------------------------------------------------------------------------------------


def fmt(value: float, spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "-+-".join("-" * w for w in widths)

    def render(r: list[str]) -> str:
        return " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    return "\n".join([render(header), line, *(render(r) for r in rows)])


def score_rows(scores: list[Score]) -> list[list[str]]:
    rows = []
    for s in scores:
        if not s.available:
            rows.append([s.method, "not available", *[""] * (len(HEADER) - 3), fmt(s.runtime, ".2f")])
            continue
        early = np.array(s.early_days)
        rows.append(
            [
                s.method,
                str(s.orders),
                f"{fmt(s.pct(s.stockouts, s.ran_out))}% ({s.stockouts}/{s.ran_out})",
                f"{s.late}+{s.missed}",
                fmt(float(np.median(early)) if early.size else math.nan, ".2f"),
                fmt(float(np.percentile(early, 90)) if early.size else math.nan, ".2f"),
                fmt(float(np.median(s.late_days)) if s.late_days else math.nan, ".2f"),
                f"{s.duplicates} ({fmt(s.pct(s.duplicates, s.orders), '.2f')}%)",
                f"{s.spurious} ({fmt(s.pct(s.spurious, s.orders), '.2f')}%)",
                str(s.open_orders),
                fmt(s.runtime, ".2f"),
            ]
        )
    return rows


HEADER = [
    "method",
    "orders",
    "stockout %",
    "late+none",
    "median days early",
    "p90 days early",
    "median days late",
    "duplicates",
    "spurious",
    "open",
    "runtime s",
]


def verdict(s: Score) -> str:
    if not s.available:
        return "replenish backtest: not available"
    early = np.array(s.early_days)
    figures = {
        "stockout %": s.pct(s.stockouts, s.ran_out),
        "median days early": float(np.median(early)) if early.size else math.nan,
        "duplicates %": s.pct(s.duplicates, s.orders),
        "spurious %": s.pct(s.spurious, s.orders),
        "runtime s": s.runtime,
    }
    parts = []
    for name, limit in TARGETS.items():
        value = figures[name]
        ok = not math.isnan(value) and value <= limit
        parts.append(f"{name} {fmt(value, '.2f')} <= {limit:g} {'ok' if ok else 'MISSED'}")
    return "replenish backtest vs targets: " + "; ".join(parts)


# --- main ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=300, help="device-slots to generate (default 300)")
    parser.add_argument("--days", type=int, default=182, help="days to generate (default 182)")
    parser.add_argument("--seed", type=int, default=1, help="trace seed (default 1)")
    parser.add_argument("--lead-time-days", type=float, default=3.0, help="delivery lead time L (default 3)")
    parser.add_argument("--readings", type=Path, help="use this READINGS.csv instead of generating (with --truth)")
    parser.add_argument("--truth", type=Path, help="the TRUTH.csv that goes with --readings")
    parser.add_argument("--keep", type=Path, help="write the traces and every ORDERS file here and keep them")
    parser.add_argument(
        "--replenish",
        type=Path,
        default=ROOT / ".venv" / "bin" / "replenish",
        help="the replenish console script (default .venv/bin/replenish)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to allow replenish backtest")
    parser.add_argument(
        "--pull-forward",
        type=lambda text: [float(part) for part in text.split(",") if part.strip()],
        default=[0.0, 3.0, 7.0, 14.0],
        help="pull-forward horizons H (days) to compare, comma-separated; the first is the base (default 0,3,7,14; "
        "empty: skip)",
    )
    parser.add_argument(
        "--speed-slots",
        type=int,
        default=100_000,
        help="slots to re-forecast for the speed figure (default 100,000; 0 skips it)",
    )
    args = parser.parse_args(argv)
    if (args.readings is None) != (args.truth is None):
        parser.error("--readings and --truth go together")
    lead = args.lead_time_days

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-forecast-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        began = time.perf_counter()
        if args.readings is None:
            generated = tracegen.generate(args.slots, args.days, args.seed)
            readings_path, truth_path = generated.write(work)
            source = (
                f"generated by bench/traces.py --slots {args.slots} --days {args.days} --seed {args.seed} "
                f"({len(generated.slots)} slots on {sum(generated.kinds.values())} devices: "
                + ", ".join(f"{n} {k}" for k, n in sorted(generated.kinds.items()))
                + ")"
            )
        else:
            readings_path, truth_path = args.readings, args.truth
            source = f"{readings_path}, {truth_path}"
        generate_s = time.perf_counter() - began

        began = time.perf_counter()
        readings = read_readings(readings_path)
        truth = read_truth(truth_path)
        parse_s = time.perf_counter() - began

        scores = []
        orders_path = work / "ORDERS.csv"
        decisions_path = work / "DECISIONS.csv"
        found, wall, note = run_replenish(
            args.replenish, readings_path, orders_path, lead, args.timeout, decisions=decisions_path
        )
        method = "replenish backtest"
        scores.append(unavailable(method, note, wall) if found is None else score(method, found, truth, lead, wall))
        scores[-1].note = note
        # The same without learning from outcomes (forecasting.calibration): what the calibration changes.
        unlearned, wall, note = run_replenish(
            args.replenish, readings_path, work / "ORDERS-no-learning.csv", lead, args.timeout, learning=False
        )
        method = "replenish, no learning"
        scores.append(
            unavailable(method, note, wall) if unlearned is None else score(method, unlearned, truth, lead, wall)
        )
        for name, decide in (("below 20%", below_threshold), ("linear fit since refill", linear_fit)):
            placed, runtime = run_baseline(decide, readings, lead)
            scores.append(score(name, placed, truth, lead, runtime))
            if args.keep:
                write_orders(work / f"ORDERS-{decide.__name__}.csv", placed)

        cycles = sum(len(t.start) for t in truth.values())
        ran_out = sum(int((~np.isnan(t.empty)).sum()) for t in truth.values())
        short = sum(int(((t.empty - t.start) < lead * DAY).sum()) for t in truth.values())
        topped = sum(int(np.isnan(t.empty[:-1]).sum()) for t in truth.values())
        still_open = sum(int(np.isnan(t.empty[-1])) for t in truth.values())
        blind = blind_cycles(readings, truth, lead)
        days = (readings.last - readings.first) / DAY
        print(f"traces: {source}")
        print(
            f"  {len(truth)} slots, {days:.0f} days, {readings.rows} readings "
            f"({readings.rows / max(1, len(readings.keys)) / max(days, 1e-9):.1f} per slot-day); {cycles} cycles: "
            f"{ran_out} ran out, {topped} topped up before running out, {still_open} still open at the end"
        )
        print(
            f"  of the {ran_out} that ran out: {short} within L={lead:g} days of their start, {len(blind)} with no "
            f"reading from their start to L days before empty, blind (no order made on the cycle's own readings "
            f"arrives in time: {100 * len(blind) / max(ran_out, 1):.1f}% is a floor for the stockout rate)"
        )
        print(f"  generate {generate_s:.1f} s; reading the CSVs for the baselines and the scoring {parse_s:.1f} s")
        print()
        print(
            f"lead time L = {lead:g} days. stockout: no order in a cycle that ran out (none) or delivered after it "
            "did (late); days early: over cycles with a timely order; open: first orders in cycles still open at "
            "the end, not scored; runtime: replenish = the whole subprocess, baselines = their decision loop"
        )
        print(table(score_rows(scores), HEADER))
        print()
        for s in scores:
            if s.note:
                print(f"{s.method}: {s.note}")
            if s.unmatched:
                print(f"{s.method}: {s.unmatched} order(s) for no known slot or before its first cycle")
        print(verdict(scores[0]))
        print(actionable_stockouts(scores, blind, ran_out))
        print()
        groups = sorted({g for s in scores for g in s.stockout_by_group})
        if 1 < len(groups) <= 12:
            print("stockout % by device kind (stockouts/ran out)")
            rows = []
            for s in scores:
                if s.available:
                    rows.append(
                        [
                            s.method,
                            *(
                                f"{fmt(s.pct(*s.stockout_by_group.get(g, [0, 0])))}% "
                                f"({s.stockout_by_group.get(g, [0, 0])[0]}/{s.stockout_by_group.get(g, [0, 0])[1]})"
                                for g in groups
                            ),
                        ]
                    )
            print(table(rows, ["method", *groups]))
            print()
        if found is not None and decisions_path.is_file():
            print(reliability(read_decisions(decisions_path), truth))
            print()
        if args.pull_forward:
            print(frontier(args, readings_path, readings, truth, work))
            print()
        reproduce = [".venv/bin/python", "bench/forecast.py"]
        if args.readings is None:
            reproduce += ["--slots", str(args.slots), "--days", str(args.days), "--seed", str(args.seed)]
        else:
            reproduce += ["--readings", str(args.readings), "--truth", str(args.truth)]
        reproduce += ["--lead-time-days", f"{lead:g}"]
        print("reproduce: " + shlex.join(reproduce))
        print(
            "  which runs: "
            + shlex.join(
                [
                    str(args.replenish),
                    "backtest",
                    str(readings_path),
                    "--lead-time-days",
                    f"{lead:g}",
                    "--out",
                    str(orders_path),
                ]
            )
        )
        print(
            f"  kept in {work}"
            if args.keep
            else "  (in a temporary directory, removed now: --keep DIR keeps the files)"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.speed_slots:
        print()
        print(reforecast_speed(args.speed_slots, seed=args.seed))
    return 0


def reforecast_speed(slots: int, *, seed: int, readings_per_slot: int = 120) -> str:
    """Slots re-forecast per second: each slot a current cycle of noisy, bursty readings 2 hours apart."""
    sys.path.insert(0, str(ROOT / "src"))
    from replenish.forecasting import ReadingSeries, forecast_depletion

    rng = np.random.default_rng(seed)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    times = now.timestamp() - 7200.0 * np.arange(readings_per_slot)[::-1]
    use = rng.exponential(0.004, size=(slots, readings_per_slot))
    levels = np.clip(1.0 - np.cumsum(use, axis=1) + rng.normal(0, 0.01, use.shape), 0, 1)
    series = [ReadingSeries(times=times, levels=levels[i]) for i in range(slots)]
    started = time.perf_counter()
    for one in series:
        forecast_depletion(one, now=now)
    elapsed = time.perf_counter() - started
    return (
        f"re-forecast speed: {slots:,} slots x {readings_per_slot} readings in {elapsed:.1f} s = "
        f"{slots / elapsed:,.0f} slots/s on one core (forecast_depletion, the function the live service calls)"
    )


def write_orders(path: Path, orders: dict[tuple[str, str], list[float]]) -> None:
    rows = sorted((t, d, s) for (d, s), placed in orders.items() for t in placed)
    stamps = (
        tracegen.iso(np.array([round(t) for t, _, _ in rows], dtype=np.int64) - tracegen.START.astype(np.int64))
        if rows
        else []
    )
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["device_id", "slot", "ordered_at"])
        writer.writerows([d, s, stamp] for (_, d, s), stamp in zip(rows, stamps, strict=True))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Benchmark of the evaluation job: how long re-forecasting and deciding a fleet's slots takes.

One run:

1. a database: a temporary SQLite file (WAL, as `replenish` runs it), or with ``--database postgres`` a throwaway
   PostgreSQL cluster from deploy/postgres/postgresql.conf as tests/support/brokers.py starts it, fsync on (a production
   commit); migrated to the current schema;
2. a fleet (bench/fleet.py): S slots, 4 per printer, 2 printers per customer, D days of readings every 15 minutes
   up to ``now``, loaded with COPY (PostgreSQL) or executemany (SQLite);
3. for each ``--evaluator`` (default: ``due``, the scheduler's job; ``due-x2``: two evaluator processes at once;
   ``every-slot``: `replenish forecasts rebuild`), on its own copy of that database when more than one is asked
   for:
   a. first: the first full evaluation at ``now`` (no slot evaluated before: every forecast written, every slot
      that runs low decided);
   b. tick: ``--share`` of the slots get one new reading at now + 15 min through the ingest service (not timed
      with the evaluation; ingest marks due those whose reading cannot wait), then the evaluation at that moment;
      the note gives the slots with a new reading per second of it;
   c. with ``--soak-minutes M`` (evaluator ``due`` only): ticks like b., each 15 simulated minutes after the last
      (a slot that reaches empty is refilled), for M minutes of wall time, with this process's resident memory
      after each: its start, middle, end and least-squares slope after the first 10 %.

For each it prints slots/s, ms per slot, wall time, CPU seconds of this process and of the PostgreSQL server
(postmaster and its backends, from /proc), and the peak RSS of this process during the evaluation.

An evaluator is a callable(engine, now) -> a report with ``.slots``, ``.decisions`` (a count or a list) and
``.errors``: add one to EVALUATORS to time it. It may honour ``should_stop()`` (``--max-seconds``).

    .venv/bin/python bench/evaluate.py --database sqlite --slots 1000 --days 21
    .venv/bin/python bench/evaluate.py --database postgres --slots 5000 --days 21 --max-seconds 300
"""

from __future__ import annotations

import argparse
import copy
import logging
import multiprocessing
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sized
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "bench", ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from fleet import Fleet, add_tick_readings, build_fleet  # noqa: E402
from memory import memory_summary, resident_mb  # noqa: E402
from sqlalchemy import Engine  # noqa: E402

import replenish  # noqa: E402
import replenish.models  # noqa: E402  (every table: the services' queries join across them)
from replenish.automation.service import FleetRatesCache, evaluate_all, evaluate_due  # noqa: E402
from replenish.constants import DEFAULT_REORDER_MARGIN_DAYS  # noqa: E402
from replenish.db import make_engine, transaction  # noqa: E402
from replenish.devices.service import forget_windows, mark_slots_due  # noqa: E402
from replenish.forecasting.model import compile_ahead  # noqa: E402
from replenish.schema import create_schema  # noqa: E402

# A fixed moment: runs are comparable (weekday pattern, calendar month of the spending queries).
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------------------------
# Evaluators
# ---------------------------------------------------------------------------------------------------------------
class Report(Protocol):
    slots: int
    decisions: Any  # a count, or a list of decision ids
    errors: int


Evaluator = Callable[[Engine, datetime], Report]

_stop_at: float | None = None


def should_stop() -> bool:
    """True once the phase has run --max-seconds: an evaluator that checks it stops between slots."""
    return _stop_at is not None and time.monotonic() >= _stop_at


# Per database: the fleet's rates as the scheduler keeps them between passes (reread every 10 minutes).
_fleets: dict[str, FleetRatesCache] = {}


def fleet_of(engine: Engine) -> FleetRatesCache:
    return _fleets.setdefault(engine.url.render_as_string(hide_password=False), FleetRatesCache())


def due_job(engine: Engine, now: datetime) -> Report:
    """The scheduler job: the due slots, claimed in batches, many per transaction."""
    return evaluate_due(
        engine=engine, now=now, margin_days=DEFAULT_REORDER_MARGIN_DAYS, fleet=fleet_of(engine), should_stop=should_stop
    )


def every_slot(engine: Engine, now: datetime) -> Report:
    """`replenish forecasts rebuild`: every slot marked due, then the job."""
    return evaluate_all(engine=engine, now=now, margin_days=DEFAULT_REORDER_MARGIN_DAYS, should_stop=should_stop)


@dataclass
class ProcessesReport:
    slots: int
    decisions: int
    errors: int
    wall: float  # from the start signal to the last process's end (process start-up not counted)
    process_cpu: list[float]  # CPU seconds of each evaluator process
    interrupted: bool = False


def _evaluator_process(url: str, now: datetime, max_seconds: float | None, ready: Any, go: Any, results: Any) -> None:
    engine = make_engine(url)
    # Ready as a scheduler process that has run before: connected, the model loaded, the fleet's rates read.
    with engine.connect():
        pass
    compile_ahead()
    fleet = FleetRatesCache()
    fleet.get(engine=engine, now=now)
    ready.put(os.getpid())
    go.wait()
    deadline = time.monotonic() + max_seconds if max_seconds else None
    cpu0 = time.process_time()
    report = evaluate_due(
        engine=engine,
        now=now,
        margin_days=DEFAULT_REORDER_MARGIN_DAYS,
        fleet=fleet,
        should_stop=lambda: deadline is not None and time.monotonic() >= deadline,
    )
    results.put(
        (
            report.slots,
            len(report.decisions),
            report.errors,
            time.process_time() - cpu0,
            report.interrupted,
        )
    )
    engine.dispose()


def due_in_processes(count: int) -> Evaluator:
    """``count`` evaluator processes at once on one database, as ``count`` scheduler processes run the job."""

    def run(engine: Engine, now: datetime) -> Report:
        context = multiprocessing.get_context("spawn")
        ready, results, go = context.Queue(), context.Queue(), context.Event()
        url = engine.url.render_as_string(hide_password=False)
        max_seconds = _stop_at - time.monotonic() if _stop_at is not None else None
        processes = [
            context.Process(target=_evaluator_process, args=(url, now, max_seconds, ready, go, results))
            for _ in range(count)
        ]
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=120)
        started = time.perf_counter()
        go.set()
        outcomes = [results.get() for _ in processes]
        wall = time.perf_counter() - started
        for process in processes:
            process.join(30)
        return ProcessesReport(
            slots=sum(outcome[0] for outcome in outcomes),
            decisions=sum(outcome[1] for outcome in outcomes),
            errors=sum(outcome[2] for outcome in outcomes),
            wall=wall,
            process_cpu=[outcome[3] for outcome in outcomes],
            interrupted=any(outcome[4] for outcome in outcomes),
        )

    return run


EVALUATORS: dict[str, Evaluator] = {
    "due": due_job,
    "due-x2": due_in_processes(2),
    "every-slot": every_slot,
}


# ---------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------
def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def server_cpu_seconds(postmaster: int | None) -> float | None:
    """CPU seconds of a PostgreSQL server: the postmaster (with its reaped children: backends that ended) and the
    live processes under it."""
    if postmaster is None:
        return None
    own = _proc_stat(postmaster)
    if own is None:
        return None
    # Fields after the command: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14.
    ticks = sum(int(own[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == str(postmaster):
                ticks += int(stat[11]) + int(stat[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM), Linux: the next reading is the peak since now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Phase:
    evaluator: str
    name: str
    slots: int
    decisions: int
    errors: int
    wall: float
    cpu: float
    server_cpu: float | None
    peak_rss_mb: float
    note: str = ""


def measure(evaluator: str, name: str, fn: Evaluator, engine: Engine, now: datetime, *, postmaster: int | None,
            max_seconds: float | None) -> Phase:  # fmt: skip
    global _stop_at
    reset_peak_rss()
    server0 = server_cpu_seconds(postmaster)
    cpu0 = time.process_time()
    started = time.perf_counter()
    _stop_at = time.monotonic() + max_seconds if max_seconds else None
    try:
        report = fn(engine, now)
    finally:
        _stop_at = None
    wall = getattr(report, "wall", None) or time.perf_counter() - started
    cpu = time.process_time() - cpu0
    server1 = server_cpu_seconds(postmaster)
    decisions = report.decisions
    process_cpu = getattr(report, "process_cpu", None)
    return Phase(
        evaluator=evaluator,
        name=name,
        slots=report.slots,
        decisions=len(decisions) if isinstance(decisions, Sized) else int(decisions),
        errors=report.errors,
        wall=wall,
        cpu=cpu,
        server_cpu=server1 - server0 if server0 is not None and server1 is not None else None,
        peak_rss_mb=peak_rss_mb(),
        note="; ".join(
            filter(
                None,
                [
                    "stopped at --max-seconds" if getattr(report, "interrupted", False) else "",
                    f"evaluator processes' CPU s: {', '.join(f'{seconds:.1f}' for seconds in process_cpu)}"
                    if process_cpu
                    else "",
                ],
            )
        ),
    )


# ---------------------------------------------------------------------------------------------------------------
# Databases
# ---------------------------------------------------------------------------------------------------------------
class Databases:
    """Where the fleet is built, and a copy of it per evaluator."""

    def __init__(self, kind: str, stack: ExitStack, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.postmaster: int | None = None
        if kind == "postgres":
            from support import brokers  # tests/support/brokers.py

            # fsync and synchronous_commit as deploy/postgres/postgresql.conf has them: a production commit.
            self.server = stack.enter_context(brokers.running_postgres(overrides={}))
            self.url = self.server.create_migrated_database("fleet")
            pid_file = self.server.directory / "data" / "postmaster.pid"
            self.postmaster = int(pid_file.read_text().split()[0])
            version = subprocess.run(
                [brokers.postgres_bin_dir() / "postgres", "--version"], capture_output=True, text=True
            ).stdout.strip()
            self.label = f"{version}, throwaway cluster, deploy/postgres/postgresql.conf, fsync on"
        else:
            self.url = f"sqlite:///{workdir / 'fleet.db'}"
            engine = make_engine(self.url)
            try:
                create_schema(engine)
            finally:
                engine.dispose()
            self.label = f"SQLite {sqlite3.sqlite_version}, temporary file, WAL"

    def copy(self, name: str) -> str:
        """A copy of the built fleet's database (no connection to it may be open)."""
        if self.kind == "postgres":
            import psycopg

            with psycopg.connect(
                f"host=127.0.0.1 port={self.server.port} user=postgres dbname=postgres", autocommit=True
            ) as db:
                db.execute(f'CREATE DATABASE "{name}" TEMPLATE "fleet" STRATEGY FILE_COPY')
            return self.server.url(name)
        target = self.workdir / f"{name}.db"
        with sqlite3.connect(self.workdir / "fleet.db") as source, sqlite3.connect(target) as copy_:
            source.backup(copy_)
        return f"sqlite:///{target}"


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------
def table(phases: list[Phase]) -> str:
    header = (
        f"{'evaluator':<14} {'phase':<6} {'slots':>6} {'decided':>7} {'errors':>6} {'wall s':>8} {'slots/s':>8} "
        f"{'ms/slot':>8} {'CPU s':>7} {'CPU %':>6} {'PG CPU s':>8} {'peak RSS MB':>11}"
    )
    lines = [header, "-" * len(header)]
    for p in phases:
        rate = p.slots / p.wall if p.wall else 0.0
        per_slot = 1000 * p.wall / p.slots if p.slots else float("nan")
        server = f"{p.server_cpu:8.1f}" if p.server_cpu is not None else f"{'-':>8}"
        lines.append(
            f"{p.evaluator:<14} {p.name:<6} {p.slots:>6} {p.decisions:>7} {p.errors:>6} {p.wall:>8.1f} {rate:>8.1f} "
            f"{per_slot:>8.1f} {p.cpu:>7.1f} {100 * p.cpu / p.wall:>5.0f}% {server} {p.peak_rss_mb:>11.0f}"
            + (f"  {p.note}" if p.note else "")
        )
    return "\n".join(lines)


def source_state() -> str:
    source = Path(replenish.__file__).resolve().parent
    if not source.is_relative_to(ROOT):
        return f"replenish from {source}, not this checkout"
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"replenish from {source}"
    return f"replenish from {source} (git {head}{', src/ modified in the working tree' if dirty else ''})"


def soak(fleet: Fleet, engine: Engine, *, at: datetime, share: float, minutes: float) -> None:
    """Ticks, 15 simulated minutes apart, for ``minutes`` of wall time; this process's RSS after each."""
    samples: list[tuple[float, float]] = []
    ticks = readings = slots = decisions = errors = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < minutes * 60:
        at += fleet.interval
        tick = add_tick_readings(fleet.url, fleet, share=share, at=at, engine=engine, refill_empty=True)
        report = evaluate_due(engine=engine, now=at, margin_days=DEFAULT_REORDER_MARGIN_DAYS)
        ticks, readings, slots = ticks + 1, readings + tick.slots, slots + report.slots
        decisions, errors = decisions + len(report.decisions), errors + report.errors
        samples.append((time.monotonic() - started, resident_mb()))
    print(
        f"soak: {ticks} ticks in {elapsed / 60:.1f} min ({(at - NOW) / timedelta(days=1):.1f} simulated days), "
        f"{readings} new readings, {slots} due slots ({decisions} decided, {errors} errors; the other readings could "
        "wait: ingest screened them)",
        flush=True,
    )
    if len(samples) >= 10:
        print(f"soak: {memory_summary(samples, process='the evaluator (this process)')}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the evaluation job on a synthetic fleet: the first full evaluation, then a steady tick.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--slots", type=int, default=1000, help="slots in the fleet (4 per printer)")
    parser.add_argument("--days", type=float, default=21, help="days of readings every --interval-minutes")
    parser.add_argument("--interval-minutes", type=float, default=15)
    parser.add_argument("--share", type=float, default=0.05, help="share of the slots with a new reading at the tick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--evaluator",
        action="append",
        choices=sorted(EVALUATORS),
        help="evaluator to time (repeat for several, each on its own copy of the fleet; default: due)",
    )
    parser.add_argument(
        "--max-seconds", type=float, help="stop each evaluation after this long (evaluators that honour should_stop)"
    )
    parser.add_argument(
        "--soak-minutes", type=float, default=0, help="after the tick, tick on for this long and report memory (due)"
    )
    parser.add_argument(
        "--again",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the tick, every slot due again and evaluated in full twice: from the stored reading windows "
        "('again'), then with the windows dropped, reading each slot's whole history ('again-whole')",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (SQLite databases)")
    args = parser.parse_args(argv)
    args.evaluator = args.evaluator or ["due"]
    if not 0 < args.share <= 1:
        parser.error("--share must be in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="replenish-bench-evaluate-"))
    load = os.getloadavg()
    print(
        f"evaluation benchmark: {args.database}, S={args.slots}, D={args.days:g}, share={args.share:g}; "
        f"{source_state()}; Python {platform.python_version()}; "
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at start "
        "(other work may share the machine)",
        flush=True,
    )
    phases: list[Phase] = []
    with ExitStack() as stack:
        databases = Databases(args.database, stack, workdir)
        print(f"database: {databases.label}", flush=True)
        fleet: Fleet = build_fleet(
            databases.url,
            slots=args.slots,
            days=args.days,
            interval_minutes=args.interval_minutes,
            now=NOW,
            seed=args.seed,
        )
        compile_ahead()  # as in a scheduler process that has evaluated before (the x2 processes do it too)
        for index, name in enumerate(args.evaluator):
            url = databases.url
            if len(args.evaluator) > 1:
                started = time.perf_counter()
                url = databases.copy(f"eval_{index}")
                print(f"{name}: copy of the fleet in {time.perf_counter() - started:.1f} s", flush=True)
            own = copy.deepcopy(fleet)
            own.url = url
            engine = make_engine(url)
            try:
                phase = measure(
                    name, "first", EVALUATORS[name], engine, NOW, postmaster=databases.postmaster,
                    max_seconds=args.max_seconds,
                )  # fmt: skip
                phases.append(phase)
                print(table([phase]).splitlines()[-1], flush=True)
                at = NOW + own.interval
                tick = add_tick_readings(url, own, share=args.share, at=at)
                print(
                    f"{name}: tick at {at:%H:%M}: {tick.slots} slots in {tick.messages} messages ingested in "
                    f"{tick.seconds:.2f} s; {tick.due} of those slots due (the rest can wait: ingest screened them)",
                    flush=True,
                )
                if name == "due":
                    # The scheduler rereads the fleet's rates every 10 minutes, not at every pass: the tick runs
                    # with them fresh, and what the reread costs is printed apart.
                    started = time.perf_counter()
                    fleet_of(engine).get(engine=engine, now=at)
                    print(f"{name}: the fleet's rates reread in {time.perf_counter() - started:.2f} s", flush=True)
                phase = measure(
                    name, "tick", EVALUATORS[name], engine, at, postmaster=databases.postmaster,
                    max_seconds=args.max_seconds,
                )  # fmt: skip
                reported = f"{tick.slots} slots with a new reading: {tick.slots / phase.wall:,.0f}/s"
                phase.note = "; ".join(filter(None, [reported, phase.note]))
                phases.append(phase)
                print(table([phase]).splitlines()[-1], flush=True)
                if args.again and name != "every-slot":
                    for label, whole in (("again", False), ("again-whole", True)):
                        with transaction(engine) as session:
                            if whole:
                                forget_windows(session=session)
                            mark_slots_due(session=session, at=at)
                        phase = measure(
                            name, label, EVALUATORS[name], engine, at, postmaster=databases.postmaster,
                            max_seconds=args.max_seconds,
                        )  # fmt: skip
                        phases.append(phase)
                        print(table([phase]).splitlines()[-1], flush=True)
                if args.soak_minutes and name == "due":
                    soak(own, engine, at=at, share=args.share, minutes=args.soak_minutes)
            finally:
                engine.dispose()
    print()
    print(table(phases))
    print(
        f"\nCPU %: this process's CPU seconds / wall time (100% = one core of {os.cpu_count()}); PG CPU s: the "
        "PostgreSQL server's processes. Peak RSS: this process, during the evaluation."
    )
    if args.keep:
        print(f"work directory kept: {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(p.errors == 0 for p in phases) else 1


if __name__ == "__main__":
    sys.exit(main())

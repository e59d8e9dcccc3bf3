"""Pure, deterministic device models: no I/O, no wall clock.

A model owns a simulated clock. ``advance_to(t)`` runs the simulation from the model's current time up
to ``t`` and returns the MQTT messages the device would have sent meanwhile, in the order it would have
sent them. Everything random comes from a generator seeded at construction, and the simulation runs on a
fixed grid of instants (internal steps, report times, scheduled actions) anchored at ``start``; so the
same seed and arguments give the same messages however ``advance_to`` calls are sliced.

Payloads follow the device contract (docs/mqtt.md, section 1): every payload has
``seq`` (per device, grows with every message on any channel) and ``ts`` (ISO 8601 UTC with ``Z``).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import numpy as np

DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TELEMETRY = "telemetry"
EVENTS = "events"

# Relative activity by hour of day (UTC), index = hour 0..23, and by weekday (Monday first).
# fmt: off
_PRINTER_HOURS = (
    0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.3, 0.8, 1.0, 1.0, 1.0,
    0.7, 0.9, 1.0, 1.0, 0.9, 0.6, 0.4, 0.4, 0.3, 0.2, 0.05, 0.05,
)
_PRINTER_WEEKDAYS = (1.2, 1.2, 1.2, 1.2, 1.1, 0.35, 0.3)
_MILK_HOURS = (
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.8, 1.6, 1.4, 0.5, 0.2, 0.2,
    0.4, 0.3, 0.2, 0.3, 0.4, 0.6, 1.0, 1.1, 0.8, 0.5, 0.2, 0.05,
)
_EGG_HOURS = (
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.6, 1.6, 1.4, 0.6, 0.3, 0.3,
    0.6, 0.3, 0.0, 0.0, 0.1, 0.3, 0.9, 1.0, 0.4, 0.0, 0.0, 0.0,
)
# fmt: on
assert len(_PRINTER_HOURS) == len(_MILK_HOURS) == len(_EGG_HOURS) == 24


@dataclass(frozen=True)
class SlotSpec:
    """A consumable slot the platform must register for the device."""

    name: str
    unit: str
    capacity: float


@dataclass(frozen=True)
class SimMessage:
    """One message a device sends: published to ``devices/{device_id}/{channel}``."""

    channel: str  # "telemetry" or "events"
    payload: dict[str, Any]


def format_ts(t: datetime) -> str:
    """``2026-11-24T10:00:00Z`` (second precision, UTC)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(t: datetime, what: str) -> datetime:
    if t.tzinfo is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return t.astimezone(UTC)


class DeviceModel:
    """Base class: simulated clock, ``seq`` counter, periodic reports and scheduled actions.

    Subclasses override ``_step`` (what happens during one internal step), ``_report`` (the telemetry
    payload without ``seq``/``ts``, or None) and may call ``_schedule`` and ``_emit``.
    """

    kind: ClassVar[str] = "device"
    #: Granularity of the stochastic simulation (consumption, battery drain).
    step: ClassVar[timedelta] = timedelta(minutes=5)

    def __init__(
        self,
        device_id: str,
        *,
        start: datetime,
        seed: int = 0,
        report_interval: timedelta = timedelta(hours=1),
        slots: list[SlotSpec] | None = None,
    ) -> None:
        if not DEVICE_ID_PATTERN.match(device_id):
            raise ValueError(f"device_id must match {DEVICE_ID_PATTERN.pattern}: {device_id!r}")
        if report_interval <= timedelta(0):
            raise ValueError("report_interval must be positive")
        self.device_id = device_id
        self.start = _utc(start, "start")
        self.now = self.start
        self.seq = 1  # the seq of the next message
        self.report_interval = report_interval
        self.slots: list[SlotSpec] = list(slots or [])
        # Two independent streams: the physical process, and sensor noise / event details. Changing the
        # report interval then changes what is reported, never what happens.
        process_seed, noise_seed = np.random.SeedSequence(seed).spawn(2)
        self.rng = np.random.default_rng(process_seed)
        self.noise_rng = np.random.default_rng(noise_seed)
        self._next_step = self.start + self.step
        self._next_report = self.start  # a device reports as soon as it starts
        self._actions: list[tuple[datetime, int, Callable[[datetime], None]]] = []
        self._action_order = itertools.count()
        self._outbox: list[SimMessage] = []
        self._advanced = False  # has advance_to run (so everything up to self.now is done)?

    # -- public ------------------------------------------------------------------------------------

    def advance_to(self, t: datetime) -> list[SimMessage]:
        """Simulate up to ``t`` (inclusive) and return the messages sent meanwhile, oldest first."""
        t = _utc(t, "t")
        self._advanced = True
        while True:
            next_action = self._actions[0][0] if self._actions else None
            candidates = [self._next_step, self._next_report]
            if next_action is not None:
                candidates.append(next_action)
            moment = min(candidates)
            if moment > t:
                break
            # At equal instants: the step that ends there, then actions, then the report.
            if self._next_step == moment:
                self._step(moment - self.step, moment)
                self._next_step += self.step
            elif next_action == moment:
                _, _, action = heapq.heappop(self._actions)
                action(moment)
            else:
                report = self._report(moment)
                if report is not None:
                    self._emit(TELEMETRY, moment, report)
                self._next_report += self.report_interval
        self.now = max(self.now, t)
        messages, self._outbox = self._outbox, []
        return messages

    # -- for subclasses ----------------------------------------------------------------------------

    def _step(self, t0: datetime, t1: datetime) -> None:
        """Simulate the interval (t0, t1]."""

    def _report(self, t: datetime) -> dict[str, Any] | None:
        """Telemetry fields (besides ``seq`` and ``ts``) to report at ``t``, or None for no report."""
        return None

    def _emit(self, channel: str, t: datetime, fields: dict[str, Any]) -> None:
        self._outbox.append(SimMessage(channel, {"seq": self.seq, "ts": format_ts(t), **fields}))
        self.seq += 1

    def _event(self, t: datetime, event_type: str, **fields: Any) -> None:
        self._emit(EVENTS, t, {"type": event_type, **fields})

    def _schedule(self, at: datetime, action: Callable[[datetime], None]) -> None:
        """Run ``action(at)`` when the simulation reaches ``at`` (now, if ``at`` is already past)."""
        at = _utc(at, "at")
        if self._advanced and at <= self.now:
            action(self.now)  # already in the simulation's past: happens at once
            return
        heapq.heappush(self._actions, (max(at, self.start), next(self._action_order), action))


def _weekly_mean(hours: tuple[float, ...], weekdays: tuple[float, ...] = (1.0,) * 7) -> float:
    return float(np.mean([d * h for d in weekdays for h in hours]))


_PRINTER_MEAN_ACTIVITY = _weekly_mean(_PRINTER_HOURS, _PRINTER_WEEKDAYS)
_MILK_MEAN_ACTIVITY = _weekly_mean(_MILK_HOURS)
_EGG_MEAN_ACTIVITY = _weekly_mean(_EGG_HOURS)


class ConsumableModel(DeviceModel):
    """A device with slots whose contents are used up in bursts and refilled from outside."""

    slot_specs: ClassVar[tuple[SlotSpec, ...]] = ()
    DEFAULT_DAILY_USAGE: ClassVar[dict[str, float]] = {}
    # Slots counted in whole items (eggs), whose levels are whole numbers.
    WHOLE_UNIT_SLOTS: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        device_id: str,
        *,
        start: datetime,
        seed: int = 0,
        report_interval: timedelta = timedelta(hours=1),
        initial_levels: Mapping[str, float] | None = None,
        daily_usage: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(
            device_id, start=start, seed=seed, report_interval=report_interval, slots=list(self.slot_specs)
        )
        self.capacity = {s.name: s.capacity for s in self.slots}
        initial = dict(initial_levels or {})
        self._check_slots(initial)
        self.levels: dict[str, float] = {}
        for spec in self.slots:  # default: somewhere between a third full and full
            level = initial.get(spec.name, spec.capacity * float(self.rng.uniform(0.35, 1.0)))
            if not 0 <= level <= spec.capacity:
                raise ValueError(f"initial level of {spec.name!r} must be in [0, {spec.capacity}]")
            self.levels[spec.name] = float(round(level)) if spec.name in self.WHOLE_UNIT_SLOTS else float(level)
        usage = {**self.DEFAULT_DAILY_USAGE, **(daily_usage or {})}
        self._check_slots(usage)
        self.daily_usage = usage

    def refill(self, slot: str, t: datetime) -> None:
        """Fill ``slot`` to capacity at simulated time ``t`` (a delivery arrived)."""
        self._check_slots({slot: 0})
        self._schedule(t, functools.partial(self._fill, slot))

    def _fill(self, slot: str, _at: datetime) -> None:
        self.levels[slot] = float(self.capacity[slot])

    def _use(self, slot: str, amount: float) -> None:
        self.levels[slot] = max(0.0, self.levels[slot] - amount)

    def _check_slots(self, names: Mapping[str, object]) -> None:
        unknown = set(names) - set(self.capacity)
        if unknown:
            raise ValueError(f"unknown slot(s) for {self.kind}: {sorted(unknown)}")

    def _report(self, t: datetime) -> dict[str, Any] | None:
        return {"levels": {s.name: self._reading(s, self.levels[s.name]) for s in self.slots}}

    def _reading(self, spec: SlotSpec, level: float) -> float | int:
        return level


class PrinterModel(ConsumableModel):
    """An ink-jet printer: four cartridges drained by print jobs, busier on weekdays and office hours."""

    kind: ClassVar[str] = "printer"
    slot_specs: ClassVar[tuple[SlotSpec, ...]] = tuple(
        SlotSpec(name, "fraction", 1.0) for name in ("black", "cyan", "magenta", "yellow")
    )
    DEFAULT_DAILY_USAGE: ClassVar[dict[str, float]] = {
        "black": 0.04,
        "cyan": 0.02,
        "magenta": 0.018,
        "yellow": 0.022,
    }
    JOBS_PER_DAY: ClassVar[float] = 6.0
    COLOUR_JOB_SHARE: ClassVar[float] = 0.6
    NOISE: ClassVar[float] = 0.004

    def _step(self, t0: datetime, t1: datetime) -> None:
        activity = _PRINTER_HOURS[t0.hour] * _PRINTER_WEEKDAYS[t0.weekday()] / _PRINTER_MEAN_ACTIVITY
        expected_jobs = self.JOBS_PER_DAY * activity * (self.step / timedelta(days=1))
        for _ in range(int(self.rng.poisson(expected_jobs))):
            size = float(self.rng.gamma(2.0, 0.5))  # pages-ish, mean 1
            colour = bool(self.rng.random() < self.COLOUR_JOB_SHARE)
            for slot, per_day in self.daily_usage.items():
                amount = per_day / self.JOBS_PER_DAY * size
                if slot != "black":  # only colour jobs use colour ink, each colour in its own proportion
                    if not colour:
                        continue
                    amount *= float(self.rng.uniform(0.5, 1.5)) / self.COLOUR_JOB_SHARE
                self._use(slot, amount)

    def _reading(self, spec: SlotSpec, level: float) -> float:
        noisy = level + float(self.noise_rng.normal(0.0, self.NOISE)) if level > 0 else 0.0
        return round(min(max(noisy, 0.0), spec.capacity), 2)


class FridgeModel(ConsumableModel):
    """A smart fridge shelf: milk (weighed, litres) drunk at breakfast and in the evening, eggs counted."""

    kind: ClassVar[str] = "fridge"
    slot_specs: ClassVar[tuple[SlotSpec, ...]] = (
        SlotSpec("milk", "litre", 2.0),
        SlotSpec("eggs", "count", 12),
    )
    DEFAULT_DAILY_USAGE: ClassVar[dict[str, float]] = {"milk": 0.5, "eggs": 1.5}
    WHOLE_UNIT_SLOTS: ClassVar[frozenset[str]] = frozenset({"eggs"})
    MILK_PER_USE: ClassVar[float] = 0.2  # litres, mean
    MILK_NOISE: ClassVar[float] = 0.01  # litres

    def _step(self, t0: datetime, t1: datetime) -> None:
        days = self.step / timedelta(days=1)
        milk_activity = _MILK_HOURS[t0.hour] / _MILK_MEAN_ACTIVITY
        milk_uses = self.daily_usage["milk"] / self.MILK_PER_USE * milk_activity * days
        for _ in range(int(self.rng.poisson(milk_uses))):
            self._use("milk", float(self.rng.gamma(4.0, self.MILK_PER_USE / 4.0)))
        # eggs go one to three at a time (mean two)
        egg_uses = self.daily_usage["eggs"] / 2.0 * (_EGG_HOURS[t0.hour] / _EGG_MEAN_ACTIVITY) * days
        for _ in range(int(self.rng.poisson(egg_uses))):
            self._use("eggs", float(self.rng.integers(1, 4)))

    def _reading(self, spec: SlotSpec, level: float) -> float | int:
        if spec.name == "eggs":
            return int(level)
        noisy = level + float(self.noise_rng.normal(0.0, self.MILK_NOISE)) if level > 0 else 0.0
        return round(min(max(noisy, 0.0), spec.capacity), 2)


class WearableModel(DeviceModel):
    """A fall-detection pendant: fall events, the wearer's "I'm OK", the help button, and a slowly draining battery.
    With ``location`` (docs/mqtt.md, "Location"), its safety events say where the wearer is.

    It has no slots. Its periodic telemetry is a heartbeat: ``{"seq", "ts", "levels": {}, "battery"}``.
    """

    kind: ClassVar[str] = "wearable"
    LOW_BATTERY: ClassVar[float] = 0.2

    def __init__(
        self,
        device_id: str,
        *,
        start: datetime,
        seed: int = 0,
        fall_at: datetime | None = None,
        cancel_after: timedelta | None = None,
        help_at: datetime | None = None,
        location: dict[str, Any] | None = None,
        report_interval: timedelta = timedelta(minutes=15),
        battery: float = 1.0,
        battery_drain_per_day: float = 0.05,
    ) -> None:
        super().__init__(device_id, start=start, seed=seed, report_interval=report_interval, slots=[])
        if not 0 <= battery <= 1:
            raise ValueError("battery must be in [0, 1]")
        if cancel_after is not None and fall_at is None:
            raise ValueError("cancel_after needs fall_at")
        self.battery = battery
        self.battery_drain_per_day = battery_drain_per_day
        self.fall_at = _utc(fall_at, "fall_at") if fall_at is not None else None
        self.cancel_after = cancel_after
        self.help_at = _utc(help_at, "help_at") if help_at is not None else None
        self.location = dict(location) if location else None
        self._battery_low_sent = battery < self.LOW_BATTERY
        if self.fall_at is not None:
            self._schedule(self.fall_at, self._fall)
            if cancel_after is not None:
                self._schedule(max(self.fall_at, self.start) + cancel_after, self._cancel)
        if self.help_at is not None:
            self._schedule(self.help_at, self._help)

    def _where(self) -> dict[str, Any]:
        return {"location": dict(self.location)} if self.location else {}

    def _fall(self, t: datetime) -> None:
        confidence = round(float(self.noise_rng.uniform(0.85, 0.99)), 2)
        self._event(t, "fall_detected", confidence=confidence, **self._where())

    def _cancel(self, t: datetime) -> None:
        self._event(t, "fall_cancelled", **self._where())

    def _help(self, t: datetime) -> None:
        self._event(t, "help_requested", **self._where())

    def _step(self, t0: datetime, t1: datetime) -> None:
        days = self.step / timedelta(days=1)
        drain = self.battery_drain_per_day * days * float(self.rng.uniform(0.5, 1.5))
        self.battery = max(0.0, self.battery - drain)
        if self.battery < self.LOW_BATTERY and not self._battery_low_sent:
            self._battery_low_sent = True
            self._event(t1, "battery_low", battery=self.battery_reading)

    def _report(self, t: datetime) -> dict[str, Any] | None:
        return {"levels": {}, "battery": self.battery_reading}

    @property
    def battery_reading(self) -> float:
        """The battery as the device reports it: rounded down to a percent, so 0.199 reads 0.19."""
        return math.floor(self.battery * 100 + 1e-9) / 100

"""Device health: pure judgements of a device's state at a moment, with the hysteresis that keeps a flapping device
from raising fifty alarms.

Each rule says one of three things: the condition is established (``BAD``: raise an alarm, or keep it), it is
established to be over (``GOOD``: clear the alarm), or neither has lasted long enough to tell (``UNSURE``: leave the
alarm as it is). Raising needs the condition to hold for a debounce period; clearing needs it to be gone for a longer
one. A device that drops off and comes back every few seconds therefore raises one offline alarm and keeps it until
it has stayed online for the whole clearing period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from replenish.constants import DeviceKind

# How long each kind of device may stay silent before it counts as offline. A wearable is a safety device and
# sends a heartbeat every few minutes; a fridge reports its stock hourly; a printer may sit idle all day.
HEARTBEAT_WINDOWS: dict[str, timedelta] = {
    DeviceKind.WEARABLE: timedelta(minutes=15),
    DeviceKind.FRIDGE: timedelta(hours=3),
    DeviceKind.PRINTER: timedelta(hours=26),
    DeviceKind.OTHER: timedelta(hours=26),
}


class Judgement(StrEnum):
    BAD = "bad"
    GOOD = "good"
    UNSURE = "unsure"


@dataclass(frozen=True)
class HealthPolicy:
    # The offline status (a last will) must hold this long before an alarm: a reconnect within it is a blip.
    offline_debounce: timedelta = timedelta(seconds=60)
    # Back online (and heard from) this long before an offline alarm clears.
    clear_after: timedelta = timedelta(minutes=5)
    # Battery: an alarm below ``battery_low``, cleared only at or above ``battery_ok`` (hysteresis: a reading that
    # wobbles around one threshold does not raise and clear over and over).
    battery_low: float = 0.15
    battery_ok: float = 0.25
    # A sensor that reports exactly the same value this many times in a row, over at least this long, is suspect.
    stuck_readings: int = 48
    stuck_for: timedelta = timedelta(days=3)

    def heartbeat(self, kind: str) -> timedelta:
        return HEARTBEAT_WINDOWS.get(kind, HEARTBEAT_WINDOWS[DeviceKind.OTHER])


@dataclass(frozen=True)
class Presence:
    kind: str
    created_at: datetime
    online: bool | None  # the retained status the device last published; None: it never did
    status_changed_at: datetime | None
    last_seen_at: datetime | None


def offline(presence: Presence, *, policy: HealthPolicy, now: datetime) -> Judgement:
    heartbeat = policy.heartbeat(presence.kind)
    heard_from = presence.last_seen_at or presence.created_at
    silent = now - heard_from >= heartbeat
    # The last will (or the device) said offline, and nothing was heard from it since: for how long.
    changed_at = presence.status_changed_at
    said_offline_for = (
        now - changed_at
        if presence.online is False
        and changed_at is not None
        and (presence.last_seen_at is None or presence.last_seen_at <= changed_at)
        else None
    )
    if silent or (said_offline_for is not None and said_offline_for >= policy.offline_debounce):
        return Judgement.BAD
    if said_offline_for is not None or presence.last_seen_at is None:
        return Judgement.UNSURE
    if presence.online is True and presence.status_changed_at is not None:
        steady = now - presence.status_changed_at >= policy.clear_after
    else:
        # It never says online/offline: only its messages tell, and it was heard from within the heartbeat.
        steady = True
    return Judgement.GOOD if steady else Judgement.UNSURE


@dataclass(frozen=True)
class Battery:
    level: float | None  # the newest reading, 0..1
    level_at: datetime | None
    low_reported_at: datetime | None  # a battery_low event


def battery(state: Battery, *, policy: HealthPolicy) -> Judgement:
    low_report_is_newest = state.low_reported_at is not None and (
        state.level_at is None or state.level_at <= state.low_reported_at
    )
    if low_report_is_newest or (state.level is not None and state.level < policy.battery_low):
        return Judgement.BAD
    if state.level is not None and state.level >= policy.battery_ok:
        return Judgement.GOOD
    return Judgement.UNSURE


@dataclass(frozen=True)
class Sameness:
    """How long a slot's sensor has reported one exact value: ``count`` readings in a row since ``since``."""

    count: int
    since: datetime | None


def stuck(state: Sameness, *, policy: HealthPolicy, now: datetime, paused: bool) -> Judgement:
    """``paused``: the customer is away (a consent pause window) and nothing is being used: no judgement."""
    if paused:
        return Judgement.UNSURE
    if state.since is not None and state.count >= policy.stuck_readings and now - state.since >= policy.stuck_for:
        return Judgement.BAD
    if state.count <= 1:
        return Judgement.GOOD  # the value just changed
    return Judgement.UNSURE

"""Store a batch of incoming MQTT messages in one transaction: readings, events, status and dead letters."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BindParameter, Boolean, Float, Integer, Update, and_, bindparam, case, func, or_, tuple_, update
from sqlalchemy import select as select_columns  # Core's: sqlmodel's select is typed for at most four columns
from sqlmodel import Session, col, select

from replenish.alerts import service as alerts
from replenish.automation import service as automation
from replenish.columns import UTCDateTime, table_of
from replenish.constants import (
    DEAD_LETTER_KEEP_BYTES,
    DEAD_LETTERS_PER_DEVICE_HOUR,
    UNREGISTERED_SENDERS,
    Channel,
    DeadLetterReason,
    EventType,
)
from replenish.db import add_to_counters, insert_rows
from replenish.devices.models import Device, Slot
from replenish.devices.service import due_after_reading
from replenish.ingest.models import DeadLetter, DeadLetterOverflow, DeviceMessage, Reading
from replenish.ingest.schemas import (
    IncomingMessage,
    Parsed,
    ParsedEvent,
    ParsedStatus,
    ParsedTelemetry,
    Rejected,
    parse_message,
)
from replenish.observability import correlation

log = logging.getLogger(__name__)
HOUR = timedelta(hours=1)

MAX_CLOCK_AHEAD = timedelta(days=1)


@dataclass
class BatchResult:
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    status_updates: int = 0
    # Dead letters by category (DeadLetterReason): what the metrics count.
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    # Per device, the seqs of this batch that are stored (now or before: duplicates) and those refused for good (dead
    # letters whose seq could be read): what the ingestor confirms to the device (docs/mqtt.md, "Confirmations").
    stored_seqs: dict[str, list[int]] = field(default_factory=dict)
    refused_seqs: dict[str, list[int]] = field(default_factory=dict)

    def add(self, other: BatchResult) -> None:
        self.add_counts(other)
        for mine, theirs in ((self.stored_seqs, other.stored_seqs), (self.refused_seqs, other.refused_seqs)):
            for device_id, seqs in theirs.items():
                mine.setdefault(device_id, []).extend(seqs)

    def add_counts(self, other: BatchResult) -> None:
        """Add the counts only: a running total must not keep every seq it ever saw."""
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.dead_letters += other.dead_letters
        self.status_updates += other.status_updates
        for reason, count in other.dead_letter_reasons.items():
            self.dead_letter_reasons[reason] = self.dead_letter_reasons.get(reason, 0) + count

    def copy(self) -> BatchResult:
        result = BatchResult()
        result.add(self)
        return result

    @property
    def handled(self) -> int:
        return self.stored + self.duplicates + self.dead_letters + self.status_updates


def dead_letter(
    *,
    session: Session,
    message: IncomingMessage,
    reason: str,
    category: DeadLetterReason,
    device_id: str | None,
    allowance: DeadLetterAllowance | None = None,
) -> DeadLetter | None:
    """Keep a refused message: its topic, its first DEAD_LETTER_KEEP_BYTES and its size, and why. Beyond its
    sender's hourly allowance it is only counted (dead_letter_overflow): None."""
    with correlation.bound(correlation.for_raw_message(message.topic, message.payload)):
        # The topic is cut short: it is whatever the sender chose, and the dead letter keeps all of it.
        # %r: the topic and the reason carry the sender's text, which must not forge log lines.
        log.info("dead letter (%s) on %r: %r", category, message.topic[:200], reason[:500])
    if allowance is not None and not allowance.take(device_id=device_id, message=message):
        return None
    letter = DeadLetter(
        # MQTT forbids U+0000 in topics but the embedded broker passes it on, and PostgreSQL text cannot hold it: a
        # dead letter that cannot be written would be retried forever and stop its lane. Shown as paho shows bytes
        # that are not UTF-8.
        topic=message.topic[:1024].replace("\x00", "\ufffd"),
        device_id=device_id,
        payload=message.payload[:DEAD_LETTER_KEEP_BYTES],
        payload_size=len(message.payload),
        reason=reason[:2000],
        received_at=message.received_at,
    )
    session.add(letter)
    return letter


class DeadLetterAllowance:
    """How many dead letters each sender may still leave this hour, within one ingest transaction: the count of
    what it left is read once per sender and batch, then kept here; what goes beyond is counted and, at flush(),
    added to dead_letter_overflow. All unregistered (or unnamed) senders share one allowance, so that a flood under
    made-up device ids is bounded too."""

    def __init__(self, *, session: Session, per_hour: int, registered: set[str]) -> None:
        self._session = session
        self._per_hour = per_hour
        self._registered = registered
        self._left: dict[tuple[str, datetime], int] = {}
        self._over: dict[tuple[str, datetime], tuple[int, int, datetime]] = {}

    def sender(self, device_id: str | None) -> str:
        return device_id if device_id is not None and device_id in self._registered else UNREGISTERED_SENDERS

    def take(self, *, device_id: str | None, message: IncomingMessage) -> bool:
        sender = self.sender(device_id)
        hour = message.received_at.replace(minute=0, second=0, microsecond=0)
        key = (sender, hour)
        if key not in self._left:
            query = select(func.count()).where(DeadLetter.received_at >= hour, DeadLetter.received_at < hour + HOUR)
            if sender == UNREGISTERED_SENDERS:
                registered = select(Device.id).where(col(Device.id) == col(DeadLetter.device_id)).exists()
                query = query.where(or_(col(DeadLetter.device_id).is_(None), ~registered))
            else:
                query = query.where(DeadLetter.device_id == sender)
            self._left[key] = self._per_hour - int(self._session.exec(query).one())
        if self._left[key] > 0:
            self._left[key] -= 1
            return True
        count, size, _ = self._over.get(key, (0, 0, message.received_at))
        self._over[key] = (count + 1, size + len(message.payload), message.received_at)
        return False

    def flush(self) -> None:
        table = table_of(DeadLetterOverflow)
        for (sender, hour), (count, size, last_at) in self._over.items():
            add_to_counters(
                self._session,
                table,
                key={"sender": sender, "hour": hour},
                add={"dropped": count, "dropped_bytes": size},
                latest={"last_at": last_at},
            )
            log.warning("%d dead letters of %s not kept this hour (its allowance is %d)", count, sender, self._per_hour)
        self._over.clear()


def list_dead_letters(
    *, session: Session, device_id: str | None = None, limit: int = 100, offset: int = 0
) -> list[DeadLetter]:
    """Messages that did not fit the contract, newest first."""
    query = select(DeadLetter)
    if device_id:
        query = query.where(DeadLetter.device_id == device_id)
    return list(session.exec(query.order_by(col(DeadLetter.id).desc()).offset(offset).limit(limit)))


def dead_letter_overflow(*, session: Session, since: datetime) -> list[DeadLetterOverflow]:
    """Refused messages counted but not kept since a moment (their hour), by sender, most first."""
    return list(
        session.exec(
            select(DeadLetterOverflow)
            .where(DeadLetterOverflow.hour >= since.replace(minute=0, second=0, microsecond=0))
            .order_by(col(DeadLetterOverflow.dropped).desc())
        )
    )


def dead_letters_by_reason(*, session: Session, since: datetime) -> dict[str, int]:
    """How many messages were refused since a moment, by reason."""
    rows = session.exec(
        select(DeadLetter.reason, func.count()).where(DeadLetter.received_at >= since).group_by(DeadLetter.reason)
    )
    return {reason: count for reason, count in rows}


def messages_received(*, session: Session, since: datetime, most: int = 100_000) -> int:
    """How many device messages were stored since a moment (the ingest rate over a window), counting at most `most`.

    Only the newest `most` rows are read, through the primary key: received_at has no index, and one would cost
    every insert on the hottest table for a page an operator opens now and then. An answer of `most` means "at
    least"; the processes' Prometheus metrics give exact rates.
    """
    newest = select(DeviceMessage.received_at).order_by(col(DeviceMessage.id).desc()).limit(most).subquery()
    return int(session.exec(select(func.count()).select_from(newest).where(newest.c.received_at >= since)).one())


def ingest_batch(
    *,
    session: Session,
    messages: list[IncomingMessage],
    check_stored: bool = True,
    dead_letters_per_hour: int = DEAD_LETTERS_PER_DEVICE_HOUR,
) -> BatchResult:
    """Validate and store messages (each device's in seq order). Never raises for bad input: that becomes a dead
    letter.

    Safe beside other writers (the other ingest lane, other ingest processes of a shared subscription): what a
    message changes on its device or slot is written by conditional SQL updates, so an older message never
    overwrites what a newer one stored, whichever transaction commits last."""
    result = BatchResult()
    parsed = [(message, parse_message(message)) for message in messages]
    device_ids = {p.device_id for _, p in parsed if not isinstance(p, Rejected)}
    known = set(session.exec(select(Device.id).where(col(Device.id).in_(device_ids)))) if device_ids else set()
    slots = _slots_of(session=session, device_ids=known)
    # Without check_stored, a message stored before is left to the (device, seq) unique constraint: the batch then
    # fails, and the caller tries it again with the check (redeliveries are rare; the query costs every batch).
    seen = _stored_sequences(session=session, parsed=[p for _, p in parsed]) if check_stored else set()
    accepted: list[tuple[IncomingMessage, ParsedTelemetry | ParsedEvent]] = []
    seen_at: dict[str, datetime] = {}
    statuses: list[tuple[IncomingMessage, ParsedStatus]] = []

    # Which senders of refused messages are registered devices, each with its own allowance of dead letters.
    refused_senders = {p.device_id for _, p in parsed if isinstance(p, Rejected) and p.device_id} - device_ids
    registered = known | (
        set(session.exec(select(Device.id).where(col(Device.id).in_(refused_senders)))) if refused_senders else set()
    )
    allowance = DeadLetterAllowance(session=session, per_hour=dead_letters_per_hour, registered=registered)
    for message, item in parsed:
        outcome = _check(item, devices=known, slots=slots)
        if isinstance(outcome, Rejected):
            dead_letter(
                session=session,
                message=message,
                reason=outcome.reason,
                category=outcome.category,
                device_id=outcome.device_id,
                allowance=allowance,
            )
            result.dead_letters += 1
            result.dead_letter_reasons[outcome.category] = result.dead_letter_reasons.get(outcome.category, 0) + 1
            if outcome.device_id is not None and outcome.seq is not None:
                result.refused_seqs.setdefault(outcome.device_id, []).append(outcome.seq)
            continue
        seen_at[outcome.device_id] = _latest(seen_at.get(outcome.device_id), message.received_at)
        if isinstance(outcome, ParsedStatus):
            statuses.append((message, outcome))
            result.status_updates += 1
            continue
        key = (outcome.device_id, outcome.body.seq)
        result.stored_seqs.setdefault(outcome.device_id, []).append(outcome.body.seq)
        if key in seen:
            result.duplicates += 1
            continue
        seen.add(key)
        accepted.append((message, outcome))

    # In each device's own order (seq), not arrival order: a fall_cancelled delivered before its fall_detected
    # must still cancel it, and a slot's run of equal levels is counted in the device's order.
    accepted.sort(key=lambda entry: (entry[1].device_id, entry[1].body.seq))
    events = [
        (message, _message_row(message, item), item) for message, item in accepted if isinstance(item, ParsedEvent)
    ]
    if events:
        # An incident is read, then changed: one transaction at a time per device, whichever lane or process
        # holds its other messages. Every device of the batch, in id order, before any other row lock, so that
        # writers always lock devices before slots and in one order: no deadlock between them.
        session.execute(
            select(Device.id).where(col(Device.id).in_(seen_at)).order_by(Device.id).with_for_update(key_share=True)
        )
    devices = _DeviceChanges(seen_at=seen_at)
    for message, status in statuses:
        devices.note_status(status.device_id, online=status.online, at=message.received_at)
        if log.isEnabledFor(logging.DEBUG):
            with correlation.bound(correlation.for_raw_message(message.topic, message.payload)):
                log.debug("status of %s: %s", status.device_id, "online" if status.online else "offline")
    telemetry = [(message, item) for message, item in accepted if isinstance(item, ParsedTelemetry)]
    _store_telemetry(session=session, accepted=telemetry, slots=slots, devices=devices)
    # Events are few, and an alert needs the stored message and its device as objects.
    session.add_all([row for _, row, _ in events])
    session.flush()
    for message, row, event in events:
        if event.location_dropped is not None:
            # Safety first: the event is stored and acts; only its location is set aside, noted as a dead letter is.
            dead_letter(
                session=session,
                message=message,
                reason=f"{event.location_dropped}: the location was dropped, the event was kept",
                category=DeadLetterReason.LOCATION_DROPPED,
                device_id=row.device_id,
                allowance=allowance,
            )
        devices.note_battery(row.device_id, event.body.battery, ts=row.ts, received_at=row.received_at)
        if event.body.type == EventType.BATTERY_LOW:
            devices.note_battery_low(row.device_id, at=row.ts)
        # What an event causes here (an alert, its notifications) carries the message's correlation id.
        with correlation.bound(correlation.for_device_message(row.device_id, row.seq)):
            log.debug("stored event message %s (seq %d)", row.id, row.seq)
            device = session.get_one(Device, row.device_id)
            alerts.on_device_event(
                session=session,
                device=device,
                message=row,
                now=row.received_at,
                location=event.location,
                confidence=event.body.confidence,
            )
            if event.body.type == EventType.REORDER_REQUESTED:
                assert event.body.slot is not None  # _check refused it otherwise
                automation.order_now(
                    session=session,
                    slot=session.exec(
                        select(Slot).where(Slot.device_id == device.id, Slot.name == event.body.slot)
                    ).one(),
                    device=device,
                    now=row.received_at,
                    actor=f"device:{device.id}",
                    from_device=True,
                )
    devices.write(session=session)
    _write_slots(session=session, slots=slots)
    allowance.flush()
    result.stored = len(accepted)
    return result


@dataclass
class _SlotState:
    """What ingest needs of a slot, read without building a model object per slot per batch, and what the batch
    makes of its latest level and its run of equal readings."""

    id: str
    capacity: float
    unit: str
    level: float | None
    level_at: datetime | None
    stored_since: datetime | None  # same_level_since as read: a run to continue
    changed: bool = False
    run: int = 0  # readings in a row at the latest level, in this batch
    run_since: datetime | None = None
    continues: bool = True  # the run so far extends the stored one (no other level came in between)
    due: datetime | None = None  # when the readings of this batch make the slot due for evaluation
    earliest: datetime | None = None  # the earliest ts of the batch's readings (Slot.readings_changed_from)

    def note(self, level: float, *, ts: datetime, received_at: datetime) -> None:
        self.earliest = ts if self.earliest is None else min(self.earliest, ts)
        # The forecast sees a reading from its ts on (never before it has arrived): the slot is due from the first
        # of the batch's readings to become visible.
        visible_from = max(ts, received_at)
        self.due = visible_from if self.due is None else min(self.due, visible_from)
        # Messages may arrive out of order; the latest level is the one with the newest ts, but not one stamped
        # implausibly far ahead of its arrival (a device clock gone wrong), which would stick until that date.
        plausible = ts <= received_at + MAX_CLOCK_AHEAD
        if plausible and (self.level_at is None or ts >= self.level_at):
            same = self.level == level and (self.run > 0 or self.stored_since is not None)
            if same:
                self.run += 1
            else:
                self.run, self.continues = 1, False
            if self.run == 1:
                self.run_since = ts
            self.level, self.level_at, self.changed = level, ts, True


def _slots_of(*, session: Session, device_ids: set[str]) -> dict[tuple[str, str], _SlotState]:
    if not device_ids:
        return {}
    table = table_of(Slot)
    rows = session.execute(
        select_columns(
            table.c.device_id,
            table.c.name,
            table.c.id,
            table.c.capacity,
            table.c.unit,
            table.c.level,
            table.c.level_at,
            table.c.same_level_since,
        ).where(table.c.device_id.in_(device_ids))
    )
    return {(row[0], row[1]): _SlotState(*row[2:]) for row in rows}


def _store_telemetry(
    *,
    session: Session,
    accepted: list[tuple[IncomingMessage, ParsedTelemetry]],
    slots: dict[tuple[str, str], _SlotState],
    devices: _DeviceChanges,
) -> None:
    """The hot path: one bulk insert for the messages (their ids come back in order) and one for their readings,
    of plain values, no model object per row (building and flushing those cost more than the database's work)."""
    if not accepted:
        return
    rows = [
        {
            "device_id": item.device_id,
            "seq": item.body.seq,
            "channel": Channel.TELEMETRY,
            "event_type": None,
            "ts": item.body.ts or message.received_at,
            "received_at": message.received_at,
            "payload": item.raw,
        }
        for message, item in accepted
    ]
    ids = insert_rows(session, table_of(DeviceMessage), rows, return_ids=True)
    readings: list[dict[str, object]] = []
    debug = log.isEnabledFor(logging.DEBUG)
    for message_id, row, (_, item) in zip(ids, rows, accepted, strict=True):
        ts, received_at = row["ts"], row["received_at"]
        assert isinstance(ts, datetime) and isinstance(received_at, datetime)
        if debug:
            with correlation.bound(correlation.for_device_message(item.device_id, item.body.seq)):
                log.debug("stored telemetry message %s (seq %d)", message_id, item.body.seq)
        devices.note_battery(item.device_id, _battery_of(item.raw), ts=ts, received_at=received_at)
        for name, level in item.body.levels.items():
            slot = slots[(item.device_id, name)]
            readings.append({"slot_id": slot.id, "message_id": message_id, "ts": ts, "level": level})
            slot.note(level, ts=ts, received_at=received_at)
    insert_rows(session, table_of(Reading), readings)


def _write_slots(*, session: Session, slots: dict[tuple[str, str], _SlotState]) -> None:
    """Each slot with readings in the batch is marked due for evaluation (automation.service.evaluate_due), late
    readings included, unless its screen lets them wait (devices.service.due_after_reading): most readings need no
    evaluation of their own, and deciding so needs no statement of its own. Every mark counts (due_marks), so that
    a reading stored during the slot's evaluation is evaluated too. A changed slot's latest level is written only
    where it is the newest: another writer may have stored a newer one since this batch read the slot. A run of
    equal readings adds to the stored run when it continues it (SQL compares with the level as stored now, so two
    writers' runs add up). In id order: see ingest_batch."""
    read = sorted((slot for slot in slots.values() if slot.due is not None), key=lambda slot: slot.id)
    if not read:
        return
    table = table_of(Slot)
    new_level, new_level_at = bindparam("new_level", type_=Float), bindparam("new_level_at", type_=UTCDateTime)
    run, run_since = bindparam("run", type_=Integer), bindparam("run_since", type_=UTCDateTime)
    earliest = bindparam("earliest", type_=UTCDateTime)
    newer = and_(bindparam("changed", type_=Boolean), or_(table.c.level_at.is_(None), table.c.level_at <= new_level_at))
    newest_level = case((newer, new_level), else_=table.c.level)
    continued = and_(
        bindparam("continues", type_=Boolean), table.c.level == new_level, table.c.same_level_since.is_not(None)
    )
    session.execute(
        update(table)
        .where(table.c.id == bindparam("slot_id"))
        .values(
            level=newest_level,
            level_at=case((newer, new_level_at), else_=table.c.level_at),
            same_level_count=case(
                (and_(newer, continued), table.c.same_level_count + run),
                (newer, run),
                else_=table.c.same_level_count,
            ),
            same_level_since=case(
                (and_(newer, continued), table.c.same_level_since),
                (newer, run_since),
                else_=table.c.same_level_since,
            ),
            due_at=due_after_reading(level=newest_level, at=bindparam("due", type_=UTCDateTime)),
            due_marks=table.c.due_marks + 1,
            readings_changed_from=case(
                (
                    or_(table.c.readings_changed_from.is_(None), table.c.readings_changed_from > earliest),
                    earliest,
                ),
                else_=table.c.readings_changed_from,
            ),
        ),
        [
            {
                "slot_id": slot.id,
                "changed": slot.changed,
                "new_level": slot.level,
                "new_level_at": slot.level_at,
                "continues": slot.continues,
                "run": slot.run,
                "run_since": slot.run_since,
                "due": slot.due,
                "earliest": slot.earliest,
            }
            for slot in read
        ],
    )


@dataclass
class _DeviceChanges:
    """What a batch learnt of its devices, written by conditional SQL updates that only ever move each fact
    forward in time, whichever writer (lane, ingest process) commits last."""

    seen_at: dict[str, datetime]
    batteries: dict[str, tuple[float, datetime]] = field(default_factory=dict)
    battery_low_at: dict[str, datetime] = field(default_factory=dict)
    statuses: dict[str, tuple[bool, datetime]] = field(default_factory=dict)

    def note_battery(self, device_id: str, battery: float | None, *, ts: datetime, received_at: datetime) -> None:
        plausible = ts <= received_at + MAX_CLOCK_AHEAD
        newest = self.batteries.get(device_id)
        if battery is not None and plausible and (newest is None or ts >= newest[1]):
            self.batteries[device_id] = (battery, ts)

    def note_battery_low(self, device_id: str, *, at: datetime) -> None:
        self.battery_low_at[device_id] = _latest(self.battery_low_at.get(device_id), at)

    def note_status(self, device_id: str, *, online: bool, at: datetime) -> None:
        newest = self.statuses.get(device_id)
        if newest is None or at >= newest[1]:
            self.statuses[device_id] = (online, at)

    def write(self, *, session: Session) -> None:
        """In device id order: see ingest_batch."""
        table = table_of(Device)
        device = table.c.id == bindparam("device_id")

        def newer(column: Any, value: str, *, strictly: bool = False) -> Any:
            later = column < bindparam(value) if strictly else column <= bindparam(value)
            return or_(column.is_(None), later)

        updates: list[tuple[Update, dict[str, BindParameter[Any]], list[dict[str, Any]]]] = [
            (
                update(table).where(device, newer(table.c.last_seen_at, "at", strictly=True)),
                {"last_seen_at": bindparam("at")},
                [{"device_id": key, "at": at} for key, at in sorted(self.seen_at.items())],
            ),
            (
                update(table).where(device, newer(table.c.battery_at, "at")),
                {"battery": bindparam("value"), "battery_at": bindparam("at")},
                [{"device_id": key, "value": v, "at": at} for key, (v, at) in sorted(self.batteries.items())],
            ),
            (
                update(table).where(device, newer(table.c.battery_low_at, "at", strictly=True)),
                {"battery_low_at": bindparam("at")},
                [{"device_id": key, "at": at} for key, at in sorted(self.battery_low_at.items())],
            ),
            (
                update(table).where(device, newer(table.c.status_changed_at, "at")),
                {"online": bindparam("value"), "status_changed_at": bindparam("at")},
                [{"device_id": key, "value": v, "at": at} for key, (v, at) in sorted(self.statuses.items())],
            ),
        ]
        for statement, values, parameters in updates:
            if parameters:
                session.execute(statement.values(values), parameters)


def _stored_sequences(*, session: Session, parsed: list[Parsed]) -> set[tuple[str, int]]:
    keys = {(p.device_id, p.body.seq) for p in parsed if isinstance(p, ParsedTelemetry | ParsedEvent)}
    if not keys:
        return set()
    rows = session.exec(
        select(DeviceMessage.device_id, DeviceMessage.seq).where(
            tuple_(DeviceMessage.device_id, DeviceMessage.seq).in_(list(keys))
        )
    )
    return {(device_id, seq) for device_id, seq in rows}


def _check(item: Parsed, *, devices: set[str], slots: dict[tuple[str, str], _SlotState]) -> Parsed:
    if isinstance(item, Rejected):
        return item
    if item.device_id not in devices:
        return Rejected(
            f"unknown device {item.device_id!r}: register it first",
            item.device_id,
            category=DeadLetterReason.UNKNOWN_DEVICE,
            seq=None if isinstance(item, ParsedStatus) else item.body.seq,  # a status has none
        )
    if isinstance(item, ParsedEvent) and item.body.type == EventType.REORDER_REQUESTED:
        if item.body.slot is None:
            return Rejected(
                "a reorder_requested event must name its slot",
                item.device_id,
                category=DeadLetterReason.INVALID,
                seq=item.body.seq,
            )
        if (item.device_id, item.body.slot) not in slots:
            return Rejected(
                f"unknown slot {item.body.slot!r} for device {item.device_id!r}",
                item.device_id,
                category=DeadLetterReason.UNKNOWN_SLOT,
                seq=item.body.seq,
            )
    if isinstance(item, ParsedTelemetry):
        for name, level in item.body.levels.items():
            slot = slots.get((item.device_id, name))
            if slot is None:
                return Rejected(
                    f"unknown slot {name!r} for device {item.device_id!r}",
                    item.device_id,
                    category=DeadLetterReason.UNKNOWN_SLOT,
                    seq=item.body.seq,
                )
            if not 0 <= level <= slot.capacity:
                return Rejected(
                    f"level {level} of slot {name!r} is outside 0..{slot.capacity:g} {slot.unit}",
                    item.device_id,
                    category=DeadLetterReason.OUT_OF_RANGE,
                    seq=item.body.seq,
                )
    return item


def _message_row(message: IncomingMessage, item: ParsedEvent) -> DeviceMessage:
    return DeviceMessage(
        device_id=item.device_id,
        seq=item.body.seq,
        channel=Channel.EVENTS,
        event_type=item.body.type,
        ts=item.body.ts or message.received_at,
        received_at=message.received_at,
        payload=item.raw,
    )


def _battery_of(raw: dict[str, object]) -> float | None:
    """Telemetry may carry "battery" (0..1) beyond the contract's fields; anything else there is ignored, never a
    reason to refuse the message."""
    value = raw.get("battery")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return None


def _latest(current: datetime | None, candidate: datetime) -> datetime:
    return candidate if current is None or candidate > current else current

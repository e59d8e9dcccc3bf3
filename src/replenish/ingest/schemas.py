"""What a device may send (docs/mqtt.md, section 1), as pydantic models, and the parser that applies them."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from replenish.constants import (
    CONFIRM_MAX_RANGES,
    DEVICE_ID_RE,
    MAX_PAYLOAD_BYTES,
    TOPIC_PREFIX,
    Channel,
    DeadLetterReason,
)

MAX_EVENT_TYPE_LENGTH = 256
# Far beyond any payload the contract describes (two levels). A deeper document is refused by name here rather than
# by a RecursionError wherever the stack happens to be deepest (parsing, validating, or encoding it for the database).
MAX_JSON_DEPTH = 32
# Python refuses to convert longer integers; no field of the contract needs more than 20 digits.
MAX_INTEGER_DIGITS = 4300
# Epoch seconds outside this range are almost surely milliseconds or garbage, not a real clock.
_EPOCH_MIN = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
_EPOCH_MAX = datetime(2100, 1, 1, tzinfo=UTC).timestamp()


def _parse_ts(value: Any) -> datetime:
    if isinstance(value, bool):
        raise ValueError("ts must be an ISO 8601 string with offset or epoch seconds, not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value) or not _EPOCH_MIN <= value <= _EPOCH_MAX:
            raise ValueError("ts in epoch seconds must be between 2000 and 2100")
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"ts is not ISO 8601: {value[:64]!r}") from exc
        if parsed.tzinfo is None:
            raise ValueError("ts must carry a UTC offset, e.g. 2026-11-24T10:00:00Z")
        try:
            return parsed.astimezone(UTC)
        except OverflowError as exc:
            # 0001-01-01T00:00:00+01:00 has no UTC time; pydantic turns only ValueError into a validation error.
            raise ValueError(f"ts is out of range in UTC: {value[:64]!r}") from exc
    raise ValueError("ts must be an ISO 8601 string with offset or epoch seconds")


def _finite_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return float(value)


Timestamp = Annotated[datetime, BeforeValidator(_parse_ts)]
Number = Annotated[float, BeforeValidator(_finite_number)]
UnitInterval = Annotated[float, BeforeValidator(_finite_number), Field(ge=0, le=1)]


class _DeviceMessage(BaseModel):
    # Unknown fields are kept (devices may add fields); known ones are checked strictly.
    model_config = ConfigDict(extra="allow", strict=True)

    # Required: without it a QoS 1 redelivery could not be told from a new message.
    seq: int = Field(ge=0, le=2**63 - 1)
    ts: Timestamp | None = None


class TelemetryPayload(_DeviceMessage):
    # An empty map is a heartbeat: "any subset of its slots" includes none.
    levels: dict[str, Number]


class EventPayload(_DeviceMessage):
    # Any type is stored and shown; only the known ones act. The cap keeps it an identifier the database can
    # index (PostgreSQL refuses index entries of a few KB, which would stall the whole batch).
    type: str = Field(min_length=1, max_length=MAX_EVENT_TYPE_LENGTH)
    confidence: UnitInterval | None = None
    battery: UnitInterval | None = None
    # reorder_requested: which slot (required there, checked against the device's slots).
    slot: str | None = Field(None, min_length=1, max_length=64)


class Location(BaseModel):
    """Where a safety event happened (docs/mqtt.md, "Location"): a position (latitude and longitude, with its
    accuracy in metres) and/or a room, as the device knows it."""

    model_config = ConfigDict(extra="ignore", strict=True)

    latitude: Annotated[float, BeforeValidator(_finite_number), Field(ge=-90, le=90)] | None = None
    longitude: Annotated[float, BeforeValidator(_finite_number), Field(ge=-180, le=180)] | None = None
    accuracy: Annotated[float, BeforeValidator(_finite_number), Field(ge=0, le=1_000_000)] | None = None
    room: str | None = Field(None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _somewhere(self) -> Location:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("latitude and longitude come together")
        if self.latitude is None and self.room is None:
            raise ValueError("a location needs latitude and longitude, or a room")
        return self


def read_location(value: Any) -> tuple[Location | None, str | None]:
    """An event's ``location`` field: the location, or why it is dropped (the event itself still counts: a fall with
    a bad location is still a fall). Pure."""
    if value is None:
        return None, None
    try:
        return Location.model_validate(value), None
    except ValidationError as exc:
        return None, _describe(exc, prefix="location")


@dataclass(frozen=True)
class IncomingMessage:
    """A message as it came off the broker, before anything is trusted."""

    topic: str
    payload: bytes
    received_at: datetime


@dataclass(frozen=True)
class ParsedTelemetry:
    device_id: str
    body: TelemetryPayload
    raw: dict[str, Any]


@dataclass(frozen=True)
class ParsedEvent:
    device_id: str
    body: EventPayload
    raw: dict[str, Any]
    # Where the wearer is (docs/mqtt.md "Location"), or why the location it carried was dropped: the event stands.
    location: Location | None = None
    location_dropped: str | None = None


@dataclass(frozen=True)
class ParsedStatus:
    device_id: str
    online: bool


@dataclass(frozen=True)
class Rejected:
    reason: str
    device_id: str | None = None
    # Required: every rejection names its category (metrics count by it; the reason above is free text).
    category: DeadLetterReason = field(kw_only=True)
    # The message's seq when it can be read, so that the device is told not to send it again (docs/mqtt.md).
    seq: int | None = field(default=None, kw_only=True)


Parsed = ParsedTelemetry | ParsedEvent | ParsedStatus | Rejected


def _describe(error: ValidationError, *, prefix: str | None = None) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in ([prefix] if prefix else []) + list(item["loc"])) or "payload"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def split_topic(topic: str) -> tuple[str, str] | None:
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != TOPIC_PREFIX:
        return None
    return parts[1], parts[2]


def parse_message(message: IncomingMessage) -> Parsed:
    """Check one message against the contract. Pure: no database, no clock."""
    split = split_topic(message.topic)
    if split is None:
        return Rejected(
            f"topic {message.topic[:200]!r} is not devices/{{device_id}}/{{channel}}",
            category=DeadLetterReason.BAD_TOPIC,
        )
    device_id, channel = split
    if not DEVICE_ID_RE.match(device_id):
        return Rejected(
            f"device_id {device_id[:80]!r} does not match [A-Za-z0-9_-]{{1,64}}", category=DeadLetterReason.BAD_TOPIC
        )
    if channel not in (Channel.TELEMETRY, Channel.EVENTS, Channel.STATUS):
        return Rejected(f"unknown channel {channel[:40]!r}", device_id, category=DeadLetterReason.BAD_TOPIC)
    if len(message.payload) > MAX_PAYLOAD_BYTES:
        return Rejected(
            f"payload of {len(message.payload)} bytes exceeds {MAX_PAYLOAD_BYTES}",
            device_id,
            category=DeadLetterReason.TOO_LARGE,
        )
    try:
        text = message.payload.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected("payload is not UTF-8", device_id, category=DeadLetterReason.MALFORMED)

    if channel == Channel.STATUS:
        return _parse_status(device_id, text)

    try:
        document = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except _Unstorable as exc:
        return Rejected(f"payload cannot be stored: {exc}", device_id, category=DeadLetterReason.UNSTORABLE)
    except ValueError as exc:
        return Rejected(f"payload is not JSON: {exc}", device_id, category=DeadLetterReason.MALFORMED)
    except RecursionError:
        return Rejected(
            f"payload cannot be stored: JSON nested deeper than {MAX_JSON_DEPTH} levels",
            device_id,
            category=DeadLetterReason.UNSTORABLE,
        )
    if not isinstance(document, dict):
        return Rejected(
            f"payload must be a JSON object, got {type(document).__name__}",
            device_id,
            category=DeadLetterReason.MALFORMED,
        )
    unstorable = _unstorable(document)
    if unstorable:
        return Rejected(
            f"payload cannot be stored: {unstorable}",
            device_id,
            category=DeadLetterReason.UNSTORABLE,
            seq=_readable_seq(document),
        )
    try:
        if channel == Channel.TELEMETRY:
            return ParsedTelemetry(device_id, TelemetryPayload.model_validate(document), document)
        location, dropped = read_location(document.get("location"))
        return ParsedEvent(device_id, EventPayload.model_validate(document), document, location, dropped)
    except ValidationError as exc:
        return Rejected(
            f"invalid {channel} payload: {_describe(exc)}",
            device_id,
            category=DeadLetterReason.INVALID,
            seq=_readable_seq(document),
        )


def _readable_seq(document: dict[str, Any]) -> int | None:
    """The seq of a payload that breaks another rule, when the seq itself is valid (an integer >= 0, no boolean)."""
    seq = document.get("seq")
    return seq if type(seq) is int and 0 <= seq < 2**63 else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _Unstorable(ValueError):
    """Valid JSON that no database column can hold as it is: refused with its own reason, the same on SQLite and
    PostgreSQL (whose jsonb and text refuse it only at commit, which would dead-letter it as an internal error)."""


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        # 1e400 is valid JSON but only infinity as a float, and Infinity is not JSON.
        raise _Unstorable(f"number {literal[:40]} is out of range")
    return value


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise _Unstorable(f"integer of {len(literal)} digits is out of range")
    return int(literal)


def _unstorable(document: dict[str, Any]) -> str | None:
    """Why the parsed document cannot be stored as it came, if it cannot: too deep, or a string (key or value) with
    U+0000 or an unpaired surrogate (both only reachable through JSON escapes; neither is text PostgreSQL keeps)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
        elif isinstance(value, str):
            if "\x00" in value:
                return f"text {value[:40]!r} contains U+0000"
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return f"text {value[:40]!r} contains an unpaired surrogate"
    return None


def _parse_status(device_id: str, text: str) -> Parsed:
    try:
        value = json.loads(text)
    except ValueError as exc:
        return Rejected(
            f'status is not JSON (expected "online" or "offline"): {exc}',
            device_id,
            category=DeadLetterReason.MALFORMED,
        )
    except RecursionError:
        return Rejected(
            'status must be "online" or "offline", got JSON nested too deeply to read',
            device_id,
            category=DeadLetterReason.MALFORMED,
        )
    if value == "online":
        return ParsedStatus(device_id, True)
    if value == "offline":
        return ParsedStatus(device_id, False)
    return Rejected(
        f'status must be "online" or "offline", got {text.strip()[:40]!r}',
        device_id,
        category=DeadLetterReason.MALFORMED,
    )


def seq_ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Sorted, distinct seqs as [first, last] runs of consecutive numbers: [1, 2, 3, 7] -> [[1, 3], [7, 7]]."""
    ranges: list[list[int]] = []
    for seq in sorted(set(seqs)):
        if ranges and ranges[-1][1] == seq - 1:
            ranges[-1][1] = seq
        else:
            ranges.append([seq, seq])
    return ranges


def confirmation_payloads(*, stored: Iterable[int], refused: Iterable[int]) -> list[bytes]:
    """The messages on devices/{device_id}/stored that confirm these seqs of one device (docs/mqtt.md,
    "Confirmations"): ``{"stored": [[first, last], ...], "refused": [...]}``, at most CONFIRM_MAX_RANGES ranges each."""
    ranges = [("stored", run) for run in seq_ranges(stored)] + [("refused", run) for run in seq_ranges(refused)]
    payloads = []
    for start in range(0, len(ranges), CONFIRM_MAX_RANGES):
        document: dict[str, list[list[int]]] = {"stored": [], "refused": []}
        for key, run in ranges[start : start + CONFIRM_MAX_RANGES]:
            document[key].append(run)
        payloads.append(json.dumps(document, separators=(",", ":")).encode())
    return payloads

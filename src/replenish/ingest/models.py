from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

from replenish.columns import BigInt, JSONType, UTCDateTime


class DeviceMessage(SQLModel, table=True):
    """Every accepted telemetry or event message, once per (device_id, seq)."""

    __tablename__ = "device_messages"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_device_messages_device_seq"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInt)
    device_id: str = Field(foreign_key="devices.id", index=True)
    # Devices may count in epoch milliseconds: 64 bits.
    seq: int = Field(sa_type=BigInt)
    channel: str
    event_type: str | None = Field(default=None, index=True)
    ts: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(sa_type=UTCDateTime)
    payload: dict[str, Any] = Field(sa_type=JSONType)


class Reading(SQLModel, table=True):
    __tablename__ = "readings"
    # Covers the evaluator's read of a slot's window (slot_id, ts range, ordered by ts and id, levels): thousands of
    # readings per slot come from the index alone, instead of one table page per reading (a slot's readings are
    # spread over the table in arrival order). 13x faster on SQLite than an index on (slot_id, ts).
    __table_args__ = (Index("ix_readings_slot_window", "slot_id", "ts", "id", "level"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInt)
    slot_id: str = Field(foreign_key="slots.id")
    message_id: int = Field(foreign_key="device_messages.id", index=True, sa_type=BigInt)
    ts: datetime = Field(sa_type=UTCDateTime)
    level: float


class DeadLetterOverflow(SQLModel, table=True):
    """Dead letters not kept because their sender used up its hourly allowance: how many, per sender and hour."""

    __tablename__ = "dead_letter_overflow"

    sender: str = Field(primary_key=True)  # the device id, or UNREGISTERED_SENDERS
    hour: datetime = Field(sa_type=UTCDateTime, primary_key=True)
    dropped: int = 0
    dropped_bytes: int = Field(default=0, sa_type=BigInt)
    last_at: datetime = Field(sa_type=UTCDateTime)


class DeadLetter(SQLModel, table=True):
    """A message that did not fit the contract: its topic, the first DEAD_LETTER_KEEP_BYTES of its payload and the
    payload's full size (payload_size), and why."""

    __tablename__ = "dead_letters"

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInt)
    topic: str
    device_id: str | None = Field(default=None, index=True)
    payload: bytes = Field(sa_type=LargeBinary)
    payload_size: int
    reason: str
    received_at: datetime = Field(sa_type=UTCDateTime, index=True)

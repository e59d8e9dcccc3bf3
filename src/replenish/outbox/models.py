from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from replenish.columns import BigInt, JSONType, UTCDateTime


class OutboxMessage(SQLModel, table=True):
    """An effect on the outside world, written in the transaction that decided it (transactional outbox)."""

    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInt)
    kind: str
    # Messages of one stream (e.g. one order) are delivered in the order they were written: a cancellation must
    # never overtake the order it cancels while that one waits out a retry.
    stream: str = Field(index=True)
    idempotency_key: str = Field(unique=True)
    payload: dict[str, Any] = Field(sa_type=JSONType)
    created_at: datetime = Field(sa_type=UTCDateTime)
    available_at: datetime = Field(sa_type=UTCDateTime, index=True)
    attempts: int = 0
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    # A dispatcher delivering it holds it until then; another dispatcher (another process) leaves it alone, and
    # takes it over only if the holder died before it was delivered.
    claimed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Which dispatcher holds it: one whose lease ran out must not clear the claim of the one that took over.
    claimed_by: str | None = None
    # A safety notification or a command the wearer waits for: the events ingest process delivers these at once.
    urgent: bool = False
    last_error: str | None = None
    # The correlation id of what caused it (observability/correlation.py): the dispatcher logs its delivery with it.
    correlation_id: str | None = None

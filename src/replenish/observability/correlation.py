"""The correlation id: one string an operator can grep from a device message to the order or notification it caused.

A message's id is derived from what identifies it already: ``{device_id}:{seq}`` for telemetry and events (unique in
device_messages, and the same for a redelivery), a digest of topic and payload for what never gets that far (a dead
letter, a status). The id of the code path at hand lives in a context variable: log records carry it (logging.py),
decisions and outbox rows store it (so the scheduler and the dispatcher, later and in other processes, carry it on).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_current: ContextVar[str | None] = ContextVar("replenish_correlation_id", default=None)

# Long enough that two different raw messages do not collide in practice; short enough to read and grep.
_DIGEST_HEX_CHARS = 16


def current() -> str | None:
    """The correlation id of the work in progress in this thread (or task), if any."""
    return _current.get()


@contextmanager
def bound(correlation_id: str | None) -> Iterator[None]:
    """Run the block with this correlation id (None: with none), then restore the one before."""
    token = _current.set(correlation_id)
    try:
        yield
    finally:
        _current.reset(token)


def for_device_message(device_id: str, seq: int) -> str:
    return f"{device_id}:{seq}"


def for_raw_message(topic: str, payload: bytes) -> str:
    """A message without a trusted (device_id, seq): the same bytes on the same topic get the same id."""
    digest = hashlib.sha256(topic.encode("utf-8", errors="replace") + b"\0" + payload).hexdigest()
    return f"msg-{digest[:_DIGEST_HEX_CHARS]}"

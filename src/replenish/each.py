"""Periodic jobs that work through items (orders, customers, incidents, pages of devices), each in a transaction of its
own, so that one item that fails holds up no other.

Each job's scheduled.py keeps one EachAlone at module level: one per process, which is what its memory of failing
items is about (what this process saw fail). A job runs one pass at a time (the scheduler's max_instances=1)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import Engine

from replenish.db import transaction

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one item's transaction gave: its value, or that it failed (and was rolled back)."""

    value: T | None = None
    failed: bool = False


class EachAlone:
    """Runs items of a job one transaction each. A failure is logged with its traceback the first time, and only as
    a debug line while the same item keeps failing, until it succeeds again, which is logged too: a customer whose
    retention fails every hour shows up once in the log, not 24 times a day.

    ``expected`` exceptions (say, a concurrent writer that got there first) are logged on one warning line, with
    the database's own message and not the statement's parameters, never with a traceback, and do not count as
    failing. A job runs its items inside ``one_pass()``: failing items the pass did not run (gone meanwhile, or no
    longer due) are forgotten at its end."""

    def __init__(self, job: str, *, log: logging.Logger, expected: tuple[type[Exception], ...] = ()) -> None:
        self._job = job
        self._log = log
        self._expected = expected
        self._failing: set[str] = set()
        self._ran: set[str] | None = None  # the keys of the pass under way
        self._lock = threading.Lock()

    def run(self, engine: Engine, key: str, act: Callable[..., T]) -> Outcome[T]:
        """``act(session=...)`` in a transaction of its own: a service function with its other arguments bound
        (``functools.partial(service.remind, order_id=..., now=...)``)."""
        with self._lock:
            if self._ran is not None:
                self._ran.add(key)
        try:
            with transaction(engine) as session:
                value = act(session=session)
        except self._expected as exc:
            # The driver's message (a unique key's values, say), not SQLAlchemy's, which carries the parameters.
            reason = getattr(exc, "orig", None) or exc
            self._log.warning(
                "%s %s: not done (%s: %s); tried again next time", self._job, key, type(exc).__name__, reason
            )
            return Outcome(failed=True)
        except Exception:
            with self._lock:
                first = key not in self._failing
                self._failing.add(key)
            if first:
                self._log.exception("%s %s failed; the others go on, and it is tried again next time", self._job, key)
            else:
                self._log.debug("%s %s failed again", self._job, key, exc_info=True)
            return Outcome(failed=True)
        with self._lock:
            recovered = key in self._failing
            self._failing.discard(key)
        if recovered:
            self._log.info("%s %s succeeded again", self._job, key)
        return Outcome(value=value)

    @contextmanager
    def one_pass(self) -> Iterator[None]:
        """One pass of the job over its items: at its end, failing items it did not run are forgotten."""
        with self._lock:
            self._ran = set()
        try:
            yield
        finally:
            with self._lock:
                self._failing &= self._ran or set()
                self._ran = None

    @property
    def failing(self) -> frozenset[str]:
        """The items whose last attempt failed."""
        with self._lock:
            return frozenset(self._failing)

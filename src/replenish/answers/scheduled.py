"""The follow-up job: reminders of unanswered requests, what their deadlines do, and the nudge after a delivery
that the slot does not show; each order in its own transaction, so that one that fails (answered in the same
moment, say) does not hold up the others."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Engine
from sqlmodel import Session

from replenish.answers import service
from replenish.constants import NoAnswer
from replenish.db import transaction

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class FollowUpReport:
    reminded: list[str] = field(default_factory=list)
    nudged: list[str] = field(default_factory=list)
    unanswered: dict[str, NoAnswer] = field(default_factory=dict)  # order id -> what on_no_answer did
    errors: int = 0


def follow_up(*, engine: Engine, now: datetime) -> FollowUpReport:
    report = FollowUpReport()
    with Session(engine) as session:
        reminders = service.reminders_due(session=session, now=now)
        deadlines = service.deadlines_due(session=session, now=now)
        nudges = service.nudges_due(session=session, now=now)
    # Deadlines first: a request whose reminder and deadline both came due (the platform was down) is not reminded
    # of a deadline that has passed.
    for order_id in deadlines:
        outcome = _alone(
            engine, report, order_id, lambda s, o=order_id: service.act_on_no_answer(session=s, order_id=o, now=now)
        )
        if outcome is not None:
            report.unanswered[order_id] = outcome
    for order_id in reminders:
        if order_id not in report.unanswered and _alone(
            engine, report, order_id, lambda s, o=order_id: service.remind(session=s, order_id=o, now=now)
        ):
            report.reminded.append(order_id)
    for order_id in nudges:
        if _alone(engine, report, order_id, lambda s, o=order_id: service.nudge(session=s, order_id=o, now=now)):
            report.nudged.append(order_id)
    return report


def _alone(engine: Engine, report: FollowUpReport, order_id: str, act: Callable[[Session], T]) -> T | None:
    """One order's step in a transaction of its own; a failure is counted and logged, and tried again next time."""
    try:
        with transaction(engine) as session:
            return act(session)
    except Exception:
        report.errors += 1
        log.exception("order %s: follow-up failed; trying again next time", order_id)
        return None

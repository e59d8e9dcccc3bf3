"""The follow-up job: reminders of unanswered requests, what their deadlines do, the nudge after a delivery that
the slot does not show, and each customer's daily digest; each in its own transaction, so that one that fails
(answered in the same moment, say) does not hold up the others."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TypeVar

from sqlalchemy import Engine
from sqlmodel import Session

from replenish.answers import service
from replenish.consent import service as consent
from replenish.constants import NoAnswer
from replenish.each import EachAlone
from replenish.notifications import service as notifications

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class FollowUpReport:
    reminded: list[str] = field(default_factory=list)
    nudged: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)  # customers who were sent their daily digest
    unanswered: dict[str, NoAnswer] = field(default_factory=dict)  # order id -> what on_no_answer did
    errors: int = 0


def follow_up(*, engine: Engine, now: datetime) -> FollowUpReport:
    report = FollowUpReport()
    with Session(engine) as session:
        reminders = service.reminders_due(session=session, now=now)
        deadlines = service.deadlines_due(session=session, now=now)
        nudges = service.nudges_due(session=session, now=now)
        digest_waiting = notifications.customers_with_digest_waiting(session=session)
    # Deadlines first: a request whose reminder and deadline both came due (the platform was down) is not reminded
    # of a deadline that has passed.
    with _FOLLOW_UPS.one_pass():
        for order_id in deadlines:
            outcome = _alone(
                engine,
                report,
                f"deadline of order {order_id}",
                partial(service.act_on_no_answer, order_id=order_id, now=now),
            )
            if outcome is not None:
                report.unanswered[order_id] = outcome
        for order_id in reminders:
            if order_id not in report.unanswered and _alone(
                engine, report, f"reminder of order {order_id}", partial(service.remind, order_id=order_id, now=now)
            ):
                report.reminded.append(order_id)
        for order_id in nudges:
            if _alone(
                engine, report, f"nudge for order {order_id}", partial(service.nudge, order_id=order_id, now=now)
            ):
                report.nudged.append(order_id)
        for customer_id in digest_waiting:
            if _alone(
                engine, report, f"digest for customer {customer_id}", partial(_digest, customer_id=customer_id, now=now)
            ):
                report.digests.append(customer_id)
    return report


def _digest(*, session: Session, customer_id: str, now: datetime) -> bool:
    version, document = consent.current_document(session=session, customer_id=customer_id)
    return bool(
        notifications.send_digest(
            session=session, customer_id=customer_id, document=document, consent_version=version, now=now
        )
    )


_FOLLOW_UPS = EachAlone("follow-up:", log=log)


def _alone(engine: Engine, report: FollowUpReport, key: str, act: Callable[..., T]) -> T | None:
    """One order's (or customer's) step in a transaction of its own; a failure is counted, and tried again next
    time."""
    outcome = _FOLLOW_UPS.run(engine, key, act)
    report.errors += outcome.failed
    return outcome.value

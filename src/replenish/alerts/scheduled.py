"""The escalation job: first every channel that failed to reach a contact falls back to their next one (and with none
left, their incident is due at once); then every safety incident whose time has come takes its next step. Each in
its own transaction, so that one that fails (a concurrent escalator took the step first) does not hold up the
others."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session

from replenish.alerts import service
from replenish.db import transaction
from replenish.each import EachAlone

log = logging.getLogger(__name__)

# A concurrent escalator that took the step first (unique per incident and level), or changed the incident while it
# was being stepped: expected, and the incident is looked at again on the next pass.
_ESCALATIONS = EachAlone("escalation of alert", log=log, expected=(StaleDataError, IntegrityError))
_ATTEMPTS = EachAlone("escalation attempt", log=log, expected=(StaleDataError, IntegrityError))
# What REPLENISH_SMS_RECEIPT_TIMEOUT_SECONDS is by default.
RECEIPT_TIMEOUT = timedelta(seconds=30)


def escalate_due(*, engine: Engine, now: datetime, receipt_timeout: timedelta = RECEIPT_TIMEOUT) -> list[str]:
    """Fall back where a channel failed, then step every incident due for escalation at ``now``; the ids of those
    that took a step."""
    with Session(engine) as session:
        settled = service.attempts_to_settle(session=session, now=now, receipt_timeout=receipt_timeout)
    if settled.reached:
        with transaction(engine) as session:
            service.mark_reached(session=session, attempt_ids=settled.reached, now=now)
    with _ATTEMPTS.one_pass():
        for attempt_id in settled.failed:
            check = partial(service.check_attempt, attempt_id=attempt_id, now=now, receipt_timeout=receipt_timeout)
            _ATTEMPTS.run(engine, attempt_id, check)
    with Session(engine) as session:
        due = service.due_for_escalation(session=session, now=now)
    stepped = []
    with _ESCALATIONS.one_pass():
        for alert_id in due:
            step = partial(service.escalate, alert_id=alert_id, now=now)
            if _ESCALATIONS.run(engine, alert_id, step).value is not None:
                stepped.append(alert_id)
    return stepped

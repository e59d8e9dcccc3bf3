"""The insights job: the fleet's usage norms and the forecasts' reliability refreshed, then each customer's monthly
digest once it is due, every customer in a transaction of their own."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from sqlalchemy import Engine
from sqlmodel import Session

from replenish.consent import service as consent
from replenish.constants import NoticeKind
from replenish.db import transaction
from replenish.each import EachAlone
from replenish.insights import service
from replenish.notifications import service as notifications
from replenish.outcomes import service as outcomes

log = logging.getLogger(__name__)

_DIGESTS = EachAlone("monthly digest for customer", log=log)


@dataclass
class InsightsReport:
    norms: int = 0
    reliability: int = 0  # device kinds
    digests: list[str] = field(default_factory=list)  # customers sent their monthly digest
    errors: int = 0


def refresh_and_send(*, engine: Engine, now: datetime) -> InsightsReport:
    report = InsightsReport()
    with transaction(engine) as session:
        report.norms = service.refresh_norms(session=session, now=now)
        report.reliability = outcomes.refresh_reliability(session=session, now=now)
    with Session(engine) as session:
        customer_ids = service.customers_owed_a_digest(session=session, now=now)
    with _DIGESTS.one_pass():
        for customer_id in customer_ids:
            outcome = _DIGESTS.run(engine, customer_id, partial(_digest, customer_id=customer_id, now=now))
            report.errors += outcome.failed
            if outcome.value:
                report.digests.append(customer_id)
    return report


def _digest(*, session: Session, customer_id: str, now: datetime) -> bool:
    """The customer's monthly digest, if it is due: sent on their channels and recorded, in one transaction."""
    version, document = consent.current_document(session=session, customer_id=customer_id)
    month = service.digest_due(session=session, customer_id=customer_id, document=document, now=now)
    if month is None:
        return False
    composed = None
    if document.insights.monthly_digest:
        composed = service.compose_digest(session=session, customer_id=customer_id, document=document, now=now)
    # Handled either way: turned off, or with nothing to report, it is not looked at again until next month.
    service.record_digest(session=session, customer_id=customer_id, month=month, sent=composed is not None, now=now)
    if composed is None:
        return False
    subject, body = composed
    notifications.notify_customer(
        session=session,
        customer_id=customer_id,
        document=document,
        consent_version=version,
        subject=subject,
        body=body,
        now=now,
        kind=NoticeKind.MONTHLY_DIGEST,
        app_path="/app",
    )
    return True

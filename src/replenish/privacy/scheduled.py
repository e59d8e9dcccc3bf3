"""The retention job: each customer's telemetry beyond what their consent keeps removed, every customer in their own
transaction; then expired sign-ups and unanswered invitations, and the e-mails that carried their links."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import Engine, delete
from sqlmodel import Session, col, select

from replenish.constants import INVITATION_NOTICE_PREFIX, SIGN_UP_LINK_HOURS, SIGN_UP_NOTICE_PREFIX
from replenish.customers.models import Customer, PendingSignUp
from replenish.db import transaction
from replenish.each import EachAlone
from replenish.households.models import Invitation
from replenish.outbox.models import OutboxMessage
from replenish.privacy.service import apply_retention

log = logging.getLogger(__name__)

_CUSTOMERS = EachAlone("retention for customer", log=log)


def retention(*, engine: Engine, now: datetime) -> dict[str, int]:
    """How many rows of each kind were removed."""
    with Session(engine) as session:
        customer_ids = list(session.exec(select(Customer.id)))
    totals: dict[str, int] = {}
    with _CUSTOMERS.one_pass():
        for customer_id in customer_ids:
            outcome = _CUSTOMERS.run(engine, customer_id, partial(apply_retention, customer_id=customer_id, now=now))
            for name, count in (outcome.value or {}).items():
                totals[name] = totals.get(name, 0) + count
    # A sign-up keeps an address, in its row and in the e-mail the outbox sent: both go once its link expired.
    with transaction(engine) as session:
        expired = session.exec(delete(PendingSignUp).where(col(PendingSignUp.expires_at) <= now))
        sent = session.exec(
            delete(OutboxMessage).where(
                col(OutboxMessage.stream).startswith(f"notification:{SIGN_UP_NOTICE_PREFIX}"),
                col(OutboxMessage.created_at) <= now - timedelta(hours=SIGN_UP_LINK_HOURS),
            )
        )
        if expired.rowcount or sent.rowcount:
            totals["sign_ups"] = expired.rowcount
            totals["sign_up_emails"] = sent.rowcount
    # An invitation nobody accepted keeps an address the owner typed: it goes, with its e-mail, once its link no
    # longer works (expired or revoked).
    with transaction(engine) as session:
        unanswered = list(
            session.exec(
                select(Invitation.id).where(
                    col(Invitation.accepted_at).is_(None),
                    (col(Invitation.expires_at) <= now) | col(Invitation.revoked_at).is_not(None),
                )
            )
        )
        if unanswered:
            mails = session.exec(
                delete(OutboxMessage).where(
                    col(OutboxMessage.stream).in_([f"notification:{INVITATION_NOTICE_PREFIX}{i}" for i in unanswered])
                )
            )
            session.exec(delete(Invitation).where(col(Invitation.id).in_(unanswered)))
            totals["invitations"] = len(unanswered)
            totals["invitation_emails"] = mails.rowcount
    return totals

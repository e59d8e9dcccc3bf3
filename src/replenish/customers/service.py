from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlmodel import Session, col, delete, func, select

from replenish.auth import service as auth
from replenish.auth.models import Account
from replenish.consent import service as consent
from replenish.consent.schemas import ConsentDocument
from replenish.constants import (
    MAX_LIVE_SIGN_UPS,
    SIGN_UP_LINK_HOURS,
    SIGN_UP_NOTICE_PREFIX,
    SIGN_UP_PAGE_PATH,
    AccountRole,
)
from replenish.customers.models import Customer, PendingSignUp
from replenish.db import get_or_raise
from replenish.errors import Conflict, Gone, NotFound
from replenish.notifications import service as notifications


def create(
    *,
    session: Session,
    name: str,
    email: str,
    consent_document: ConsentDocument,
    actor: str,
    now: datetime,
    password: str | None = None,
) -> Customer:
    """The customer, version 1 of their consent, and (with a password) the account they sign in with."""
    email = email.lower()
    if session.exec(select(Customer.id).where(Customer.email == email)).first():
        raise Conflict(f"a customer with email {email!r} exists already", field="email")
    customer = Customer(name=name, email=email, created_at=now)
    session.add(customer)
    session.flush()
    consent.record(session=session, customer_id=customer.id, document=consent_document, actor=actor, now=now)
    if password is not None:
        auth.create_account(
            session=session, email=email, password=password, role=AccountRole.CUSTOMER, customer_id=customer.id, now=now
        )
    return customer


def request_sign_up(*, session: Session, email: str, now: datetime, channel: str = "email") -> None:
    """Mail the address a link to finish signing up, or, when the address has an account already, a note saying so.
    Either way the caller learns nothing, and the work is the same (both lookups, one sign-up row, one e-mail). At
    most MAX_LIVE_SIGN_UPS links per address are live at once: beyond, nothing more is mailed (the answer is still
    the same), so that nobody can flood an inbox through the platform."""
    email = email.lower()
    live = session.exec(
        select(func.count())
        .select_from(PendingSignUp)
        .where(PendingSignUp.email == email, col(PendingSignUp.expires_at) > now)
    ).one()
    if live >= MAX_LIVE_SIGN_UPS:
        return
    has_account = session.exec(select(Account.id).where(Account.email == email)).first() is not None
    is_customer = session.exec(select(Customer.id).where(Customer.email == email)).first() is not None
    token = secrets.token_urlsafe(24)
    pending = PendingSignUp(
        token_hash=auth.hash_token(token),
        email=email,
        created_at=now,
        expires_at=now + timedelta(hours=SIGN_UP_LINK_HOURS),
    )
    session.add(pending)  # for a taken address too: it counts toward the limit, and its link is never sent
    if has_account or is_customer:
        notifications.enqueue_delivery(
            session=session,
            notification_id=f"{SIGN_UP_NOTICE_PREFIX}{pending.id}",
            customer_id=None,
            channel=channel,
            address=email,
            subject="Someone tried to sign up with your address",
            body="Replenish was asked to create an account for this address, which has one already. If it was you, "
            "sign in instead (or ask your operator to reset your password). If not, you need do nothing: no account "
            "was created or changed.",
            app_path="/app/sign-in",
            now=now,
        )
        return
    notifications.enqueue_delivery(
        session=session,
        notification_id=f"{SIGN_UP_NOTICE_PREFIX}{pending.id}",
        customer_id=None,
        channel=channel,
        address=email,
        subject="Finish signing up to Replenish",
        body=f"Follow the link to choose your name and password and create your account. It works once, for "
        f"{SIGN_UP_LINK_HOURS} hours. If you did not sign up, ignore this e-mail: nothing is created without it.",
        links=[("Finish signing up", token)],
        link_path=SIGN_UP_PAGE_PATH,
        now=now,
    )


def read_sign_up(*, session: Session, token: str, now: datetime, lock: bool = False) -> PendingSignUp:
    """The pending sign-up a link stands for: NotFound for a link that never was or was used, Gone once expired.
    With ``lock``, held until the transaction ends: two confirmations of one link do not race."""
    query = select(PendingSignUp).where(PendingSignUp.token_hash == auth.hash_token(token))
    pending = session.exec(query.with_for_update() if lock else query).first()
    if pending is None:
        raise NotFound("sign-up link", "given")
    if pending.expires_at <= now:
        raise Gone("this sign-up link has expired: sign up again for a new one")
    return pending


def confirm_sign_up(
    *, session: Session, token: str, name: str, password: str, consent_document: ConsentDocument, now: datetime
) -> Customer:
    """Create the customer and account a sign-up link stands for, with the name, password and consent given now;
    every link sent to the address then stops working. Conflict when the address got an account meanwhile."""
    pending = read_sign_up(session=session, token=token, now=now, lock=True)
    session.exec(delete(PendingSignUp).where(col(PendingSignUp.email) == pending.email))
    return create(
        session=session,
        name=name,
        email=pending.email,
        consent_document=consent_document,
        actor="sign-up",
        now=now,
        password=password,
    )


def get(*, session: Session, customer_id: str) -> Customer:
    return get_or_raise(session, Customer, customer_id, entity="customer")


def list_customers(*, session: Session, limit: int = 100, offset: int = 0) -> list[Customer]:
    return list(
        session.exec(select(Customer).order_by(col(Customer.created_at), col(Customer.id)).offset(offset).limit(limit))
    )

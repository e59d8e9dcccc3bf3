from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlmodel import Session, col, delete, select

from replenish.auth import service as auth
from replenish.auth.models import Account
from replenish.consent import service as consent
from replenish.consent.schemas import ConsentDocument
from replenish.constants import SIGN_UP_LINK_HOURS, SIGN_UP_PAGE_PATH, AccountRole, OutboxKind
from replenish.customers.models import Customer, PendingSignUp
from replenish.db import get_or_raise
from replenish.errors import Conflict, Gone, NotFound
from replenish.outbox import service as outbox


def create(
    *,
    session: Session,
    name: str,
    email: str,
    consent_document: ConsentDocument,
    actor: str,
    now: datetime,
    password: str | None = None,
    password_hash: str | None = None,
) -> Customer:
    """The customer, version 1 of their consent, and (with a password, or its hash) the account they sign in with."""
    email = email.lower()
    if session.exec(select(Customer.id).where(Customer.email == email)).first():
        raise Conflict(f"a customer with email {email!r} exists already", field="email")
    customer = Customer(name=name, email=email, created_at=now)
    session.add(customer)
    session.flush()
    consent.record(session=session, customer_id=customer.id, document=consent_document, actor=actor, now=now)
    if password is not None or password_hash is not None:
        auth.create_account(
            session=session,
            email=email,
            password=password,
            password_hash=password_hash,
            role=AccountRole.CUSTOMER,
            customer_id=customer.id,
            now=now,
        )
    return customer


def request_sign_up(
    *,
    session: Session,
    name: str,
    email: str,
    password: str,
    consent_document: ConsentDocument,
    now: datetime,
    channel: str = "email",
) -> None:
    """Mail the address a link that creates the account, or, when the address has an account already, a note saying
    so. Either way the caller learns nothing, and the work (hashing the password, one e-mail) is the same."""
    email = email.lower()
    password_hash = auth.hash_password(password)
    taken = (
        session.exec(select(Account.id).where(Account.email == email)).first()
        or session.exec(select(Customer.id).where(Customer.email == email)).first()
    )
    if taken:
        _mail(
            session=session,
            email=email,
            reference=f"sign-up-taken:{secrets.token_hex(8)}",
            subject="Someone tried to sign up with your address",
            body="Replenish was asked to create an account for this address, which has one already. If it was you, "
            "sign in instead (or ask your operator to reset your password). If not, you need do nothing: no account "
            "was created or changed.",
            links=[],
            app_path="/app/sign-in",
            channel=channel,
            now=now,
        )
        return
    # Only the newest request for an address works: an older link in the inbox stops working.
    session.exec(delete(PendingSignUp).where(col(PendingSignUp.email) == email))
    token = secrets.token_urlsafe(24)
    pending = PendingSignUp(
        token_hash=auth.hash_token(token),
        email=email,
        name=name,
        password_hash=password_hash,
        consent=consent_document.model_dump(mode="json"),
        created_at=now,
        expires_at=now + timedelta(hours=SIGN_UP_LINK_HOURS),
    )
    session.add(pending)
    _mail(
        session=session,
        email=email,
        reference=f"sign-up:{pending.id}",
        subject="Finish signing up to Replenish",
        body=f"Follow the link to create your account, {name}. It works once, for {SIGN_UP_LINK_HOURS} hours. If you "
        "did not sign up, ignore this e-mail: nothing is created without the link.",
        links=[{"label": "Finish signing up", "token": token, "path": SIGN_UP_PAGE_PATH}],
        app_path=None,
        channel=channel,
        now=now,
    )


def read_sign_up(*, session: Session, token: str, now: datetime) -> PendingSignUp:
    """The pending sign-up a link stands for: NotFound for a link that never was or was used, Gone once expired."""
    pending = session.exec(select(PendingSignUp).where(PendingSignUp.token_hash == auth.hash_token(token))).first()
    if pending is None:
        raise NotFound("sign-up link", "given")
    if pending.expires_at <= now:
        raise Gone("this sign-up link has expired: sign up again for a new one")
    return pending


def confirm_sign_up(*, session: Session, token: str, now: datetime) -> Customer:
    """Create the customer and account a sign-up link stands for; the link then stops working."""
    pending = read_sign_up(session=session, token=token, now=now)
    session.delete(pending)
    return create(
        session=session,
        name=pending.name,
        email=pending.email,
        consent_document=ConsentDocument.model_validate(pending.consent),
        actor="sign-up",
        now=now,
        password_hash=pending.password_hash,
    )


def _mail(
    *,
    session: Session,
    email: str,
    reference: str,
    subject: str,
    body: str,
    links: list[dict[str, str]],
    app_path: str | None,
    channel: str,
    now: datetime,
) -> None:
    # A notification of no customer (there is none yet), sent by e-mail through the outbox like any other.
    outbox.enqueue(
        session=session,
        kind=OutboxKind.NOTIFICATION,
        stream=reference,
        idempotency_key=reference,
        payload={
            "notification_id": reference,
            "customer_id": None,
            "channel": channel,
            "address": email,
            "subject": subject,
            "body": body,
            "links": links,
            "app_path": app_path,
        },
        now=now,
    )


def get(*, session: Session, customer_id: str) -> Customer:
    return get_or_raise(session, Customer, customer_id, entity="customer")


def list_customers(*, session: Session, limit: int = 100, offset: int = 0) -> list[Customer]:
    return list(
        session.exec(select(Customer).order_by(col(Customer.created_at), col(Customer.id)).offset(offset).limit(limit))
    )

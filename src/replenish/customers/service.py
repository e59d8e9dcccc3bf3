from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from replenish.auth import service as auth
from replenish.consent import service as consent
from replenish.consent.schemas import ConsentDocument
from replenish.constants import AccountRole
from replenish.customers.models import Customer
from replenish.db import get_or_raise
from replenish.errors import Conflict


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


def get(*, session: Session, customer_id: str) -> Customer:
    return get_or_raise(session, Customer, customer_id, entity="customer")


def list_customers(*, session: Session, limit: int = 100, offset: int = 0) -> list[Customer]:
    return list(
        session.exec(select(Customer).order_by(col(Customer.created_at), col(Customer.id)).offset(offset).limit(limit))
    )

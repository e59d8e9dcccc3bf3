"""The customer's row lock: taken first by every writer of what one customer's decisions depend on."""

from __future__ import annotations

from sqlmodel import Session

from replenish.customers.models import Customer
from replenish.errors import NotFound


def lock_customer(*, session: Session, customer_id: str) -> None:
    """Lock the customer's row until the transaction ends (PostgreSQL; SQLite serialises writers anyway).

    Consent changes, decisions and the customer placing an order for one customer take it first, so that a decision
    never commits under a consent version that a concurrent change has already replaced (which would leave an order
    the revocation never saw), and no two of them both spend the same part of the monthly cap.
    """
    if session.get(Customer, customer_id, with_for_update=True, populate_existing=True) is None:
        raise NotFound("customer", customer_id)

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlmodel import Field, SQLModel

from replenish.columns import UTCDateTime, new_id, written_after

if TYPE_CHECKING:
    from replenish.orders.models import Order


class OrderLink(SQLModel, table=True):
    """A one-tap link in a customer's notification: approve, decline or cancel one order.

    The link's token is 192 random bits that exist only in the message sent; the database keeps its SHA-256, so a
    database dump approves nothing. A link is bound to its order, its action and the consent version it was sent
    under, expires with the request it belongs to, and works once.
    """

    __tablename__ = "order_links"

    id: str = Field(default_factory=new_id, primary_key=True)
    token_hash: str = Field(unique=True)
    order_id: str = Field(foreign_key="orders.id", index=True)
    customer_id: str = Field(foreign_key="customers.id", index=True)
    action: str  # constants.LinkAction
    notice: str  # constants.NoticeKind of the message that carried it
    consent_version: int
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    order: Order | None = written_after("Order")

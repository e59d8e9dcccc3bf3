from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlmodel import Field, SQLModel

from replenish.columns import UTCDateTime, new_id, written_after

if TYPE_CHECKING:
    from replenish.automation.models import Decision
    from replenish.orders.models import Order


class PushSubscription(SQLModel, table=True):
    """A browser (or app) the customer subscribed to Web Push: the push service's endpoint and the keys that encrypt
    messages for it (RFC 8291). The consent's "webpush" channel reaches every one of them."""

    __tablename__ = "push_subscriptions"

    id: str = Field(default_factory=new_id, primary_key=True)
    customer_id: str = Field(foreign_key="customers.id", index=True)
    endpoint: str = Field(unique=True, max_length=2048)
    p256dh: str = Field(max_length=200)
    auth: str = Field(max_length=100)
    user_agent: str | None = Field(default=None, max_length=300)
    created_at: datetime = Field(sa_type=UTCDateTime)


class Notification(SQLModel, table=True):
    __tablename__ = "notifications"

    id: str = Field(default_factory=new_id, primary_key=True)
    customer_id: str = Field(foreign_key="customers.id", index=True)
    subject: str
    body: str
    channel: str = "log"
    address: str | None = None  # the e-mail address or webhook URL; none for the log
    decision_id: str | None = Field(default=None, foreign_key="decisions.id")
    alert_id: str | None = Field(default=None, foreign_key="alerts.id")
    alarm_id: str | None = Field(default=None, foreign_key="device_alarms.id")
    order_id: str | None = Field(default=None, foreign_key="orders.id", index=True)
    # What it is about (constants.NoticeKind); null for notifications from before kinds were recorded.
    kind: str | None = None
    # Quiet hours: it goes out then. Daily digest: it waits for the digest (for_digest), then names it (digest_id).
    deliver_after: datetime | None = Field(default=None, sa_type=UTCDateTime)
    for_digest: bool = Field(default=False, index=True)
    digest_id: str | None = None
    consent_version: int
    created_at: datetime = Field(sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # SMS and calls: the provider's id for the message, and what its delivery receipt said (receipt_at: delivered or
    # answered; failed_at and failure: it was not).
    provider_id: str | None = Field(default=None, index=True, max_length=100)
    receipt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    failed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    failure: str | None = Field(default=None, max_length=500)
    decision: Decision | None = written_after("Decision")
    order: Order | None = written_after("Order")

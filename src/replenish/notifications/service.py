"""Notifications: a row per recipient and channel, and its delivery through the outbox, in the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from sqlmodel import Session, col, select

from replenish.consent.schemas import ConsentDocument, QuietHours
from replenish.constants import NoticeKind, OutboxKind
from replenish.db import get_or_raise
from replenish.notifications.models import Notification, PushSubscription
from replenish.notifications.schemas import PushSubscriptionCreate
from replenish.notifications.timing import DIGEST_KINDS, next_digest_at, quiet_until
from replenish.outbox import service as outbox


def notify_customer(
    *,
    session: Session,
    customer_id: str,
    document: ConsentDocument,
    consent_version: int,
    subject: str,
    body: str,
    now: datetime,
    decision_id: str | None = None,
    alert_id: str | None = None,
    alarm_id: str | None = None,
    urgent: bool = False,
    kind: NoticeKind | None = None,
    order_id: str | None = None,
    links: list[tuple[str, str]] | None = None,
    app_path: str | None = None,
) -> list[Notification]:
    """Tell the customer, on every channel their consent names (webpush: each browser they subscribed). ``links``
    are one-tap answers, (label, token) pairs the dispatcher turns into URLs; ``app_path``, the web app's page
    about it."""
    deliver = partial(
        send,
        session=session,
        customer_id=customer_id,
        subject=subject,
        body=body,
        consent_version=consent_version,
        now=now,
        decision_id=decision_id,
        alert_id=alert_id,
        alarm_id=alarm_id,
        urgent=urgent,
        kind=kind,
        order_id=order_id,
        links=links,
        app_path=app_path,
    )
    sent = []
    for_digest = document.daily_digest and not urgent and kind in DIGEST_KINDS
    for channel in document.notification_channels:
        quiet = None
        if channel.quiet_hours is not None and not urgent:
            hours = channel.quiet_hours
            quiet = quiet_until(now, start=hours.start, end=hours.end, zone=document.zone)
        if channel.type == "webpush":
            sent += [
                deliver(
                    deliver_after=quiet,
                    for_digest=for_digest,
                    channel="webpush",
                    address=browser.endpoint,
                    push_keys=(browser.p256dh, browser.auth),
                )
                for browser in push_subscriptions(session=session, customer_id=customer_id)
            ]
        else:
            sent.append(
                deliver(deliver_after=quiet, for_digest=for_digest, channel=channel.type, address=channel.address)
            )
    return sent


def get(*, session: Session, notification_id: str, customer_id: str | None = None) -> Notification:
    """The notification; given ``customer_id``, only if it is that customer's (another's answers as a missing one)."""
    return get_or_raise(session, Notification, notification_id, entity="notification", customer_id=customer_id)


def get_push_subscription(
    *, session: Session, subscription_id: str, customer_id: str | None = None
) -> PushSubscription:
    """The browser's subscription; given ``customer_id``, only if it is that customer's."""
    return get_or_raise(session, PushSubscription, subscription_id, entity="push subscription", customer_id=customer_id)


def push_subscriptions(*, session: Session, customer_id: str) -> list[PushSubscription]:
    return list(
        session.exec(
            select(PushSubscription)
            .where(PushSubscription.customer_id == customer_id)
            .order_by(col(PushSubscription.created_at))
        )
    )


def send(
    *,
    session: Session,
    customer_id: str,
    channel: str,
    address: str | None,
    subject: str,
    body: str,
    consent_version: int,
    now: datetime,
    decision_id: str | None = None,
    alert_id: str | None = None,
    alarm_id: str | None = None,
    acknowledge_token: str | None = None,
    urgent: bool = False,
    kind: NoticeKind | None = None,
    order_id: str | None = None,
    links: list[tuple[str, str]] | None = None,
    app_path: str | None = None,
    push_keys: tuple[str, str] | None = None,
    deliver_after: datetime | None = None,
    for_digest: bool = False,
    details: dict[str, Any] | None = None,
) -> Notification:
    """One notification to one address (the customer's, or an emergency contact's on the customer's behalf).

    ``acknowledge_token`` and the tokens of ``links`` travel in the outbox message only, for the dispatcher to build
    the links, and are wiped from it once delivered; the notification row keeps the text without them.
    ``deliver_after``: the end of the channel's quiet hours, when it goes out. ``for_digest``: no message now; the
    daily digest carries it.
    """
    notification = Notification(
        customer_id=customer_id,
        subject=subject,
        body=body,
        channel=channel,
        address=address,
        consent_version=consent_version,
        decision_id=decision_id,
        alert_id=alert_id,
        alarm_id=alarm_id,
        order_id=order_id,
        kind=kind,
        created_at=now,
        deliver_after=deliver_after,
        for_digest=for_digest,
    )
    session.add(notification)
    if for_digest:
        return notification
    enqueue_delivery(
        session=session,
        notification_id=notification.id,
        customer_id=customer_id,
        channel=channel,
        address=address,
        subject=subject,
        body=body,
        now=now,
        alert_id=alert_id,
        acknowledge_token=acknowledge_token,
        kind=kind,
        order_id=order_id,
        links=links,
        app_path=app_path,
        push_keys=push_keys,
        urgent=urgent,
        available_at=deliver_after,
        details=details,
    )
    return notification


def enqueue_delivery(
    *,
    session: Session,
    notification_id: str,
    customer_id: str | None,
    channel: str,
    address: str | None,
    subject: str,
    body: str,
    now: datetime,
    alert_id: str | None = None,
    acknowledge_token: str | None = None,
    kind: NoticeKind | None = None,
    order_id: str | None = None,
    links: list[tuple[str, str]] | None = None,
    link_path: str | None = None,
    app_path: str | None = None,
    push_keys: tuple[str, str] | None = None,
    urgent: bool = False,
    available_at: datetime | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """The outbox message the dispatcher turns into one delivery on one channel: for a notification row, or for a
    mail with no customer behind it yet (a sign-up). ``links`` are (label, token); their pages are under
    ``link_path`` (default: the one-tap answer pages)."""
    outbox.enqueue(
        session=session,
        kind=OutboxKind.NOTIFICATION,
        stream=f"notification:{notification_id}",
        idempotency_key=f"notification:{notification_id}",
        payload={
            "notification_id": notification_id,
            "customer_id": customer_id,
            "channel": channel,
            "address": address,
            "subject": subject,
            "body": body,
            "alert_id": alert_id,
            "acknowledge_token": acknowledge_token,
            "kind": kind,
            "order_id": order_id,
            "links": [
                {"label": label, "token": token, **({"path": link_path} if link_path else {})}
                for label, token in links or ()
            ],
            "app_path": app_path,
            "push_keys": {"p256dh": push_keys[0], "auth": push_keys[1]} if push_keys else None,
            # What a structured receiver (the monitoring centre) is sent besides the text.
            **({"details": details} if details else {}),
        },
        now=now,
        urgent=urgent,
        available_at=available_at,
    )


def subscribe(
    *,
    session: Session,
    customer_id: str,
    subscription: PushSubscriptionCreate,
    user_agent: str | None,
    now: datetime,
) -> PushSubscription:
    """Remember a browser's push subscription for the customer; the same endpoint again (a browser subscribing
    anew, or after another account used it) becomes this customer's, with the new keys."""
    endpoint = str(subscription.endpoint)
    found = session.exec(select(PushSubscription).where(PushSubscription.endpoint == endpoint)).first()
    if found is None:
        found = PushSubscription(customer_id=customer_id, endpoint=endpoint, p256dh="", auth="", created_at=now)
    found.customer_id = customer_id
    found.p256dh, found.auth = subscription.keys.p256dh, subscription.keys.auth
    found.user_agent = (user_agent or "")[:300] or None
    session.add(found)
    session.flush()
    return found


def forget_subscription(*, session: Session, endpoint: str, customer_id: str | None = None) -> bool:
    """Forget a subscription by its endpoint (the customer's own, when customer_id is given)."""
    query = select(PushSubscription).where(PushSubscription.endpoint == endpoint)
    if customer_id is not None:
        query = query.where(PushSubscription.customer_id == customer_id)
    found = session.exec(query).first()
    if found is None:
        return False
    session.delete(found)
    return True


# --- the daily digest -----------------------------------------------------------------------------------------


# A waiting notice whose channel the customer removed before the digest went: it goes in no digest.
DROPPED_FROM_DIGEST = "-"


def customers_with_digest_waiting(*, session: Session) -> list[str]:
    return list(
        session.exec(
            select(Notification.customer_id)
            .where(col(Notification.for_digest).is_(True), col(Notification.digest_id).is_(None))
            .distinct()
        )
    )


def send_digest(
    *, session: Session, customer_id: str, document: ConsentDocument, consent_version: int, now: datetime
) -> list[Notification]:
    """The customer's waiting low-priority notices as one message per channel and address, once the first digest
    time after the oldest of them has come; each notice then names its digest. Nothing before that time."""
    waiting = list(
        session.exec(
            select(Notification)
            .where(
                Notification.customer_id == customer_id,
                col(Notification.for_digest).is_(True),
                col(Notification.digest_id).is_(None),
            )
            .order_by(col(Notification.created_at), col(Notification.id))
            .with_for_update()
        )
    )
    if not waiting or now < next_digest_at(waiting[0].created_at, at=document.digest_time, zone=document.zone):
        return []
    # Where the customer's consent sends notices now: a channel or browser removed since gets no digest.
    browsers = {browser.endpoint: browser for browser in push_subscriptions(session=session, customer_id=customer_id)}
    quiet: dict[tuple[str, str | None], QuietHours | None] = {}
    for channel in document.notification_channels:
        if channel.type == "webpush":
            quiet |= {("webpush", endpoint): channel.quiet_hours for endpoint in browsers}
        else:
            quiet[(channel.type, channel.address)] = channel.quiet_hours
    groups: dict[tuple[str, str | None], list[Notification]] = {}
    for notice in waiting:
        if (notice.channel, notice.address) in quiet:
            groups.setdefault((notice.channel, notice.address), []).append(notice)
        else:
            notice.digest_id = DROPPED_FROM_DIGEST
            session.add(notice)
    digests = []
    for (channel_type, address), notices in groups.items():
        browser = browsers.get(address or "") if channel_type == "webpush" else None
        hours = quiet[(channel_type, address)]
        digest = send(
            session=session,
            customer_id=customer_id,
            channel=channel_type,
            address=address,
            subject=f"Your daily digest: {len(notices)} update{'s' if len(notices) != 1 else ''}",
            body="\n".join(f"- {notice.subject}: {notice.body}" for notice in notices),
            consent_version=consent_version,
            now=now,
            kind=NoticeKind.DIGEST,
            push_keys=(browser.p256dh, browser.auth) if browser is not None else None,
            deliver_after=quiet_until(now, start=hours.start, end=hours.end, zone=document.zone) if hours else None,
        )
        for notice in notices:
            notice.digest_id = digest.id
            session.add(notice)
        digests.append(digest)
    return digests


def record_receipt(
    *, session: Session, provider_id: str, reached: bool | None, status: str, error: str | None, now: datetime
) -> Notification | None:
    """A delivery receipt for the SMS or call with this provider id: reached (delivered, answered) or not (failed,
    undelivered, busy, no answer); an interim status (queued, ringing) changes nothing. The first final word stands.
    None when no notification has that id."""
    notification = session.exec(select(Notification).where(Notification.provider_id == provider_id)).first()
    if notification is None or reached is None or notification.receipt_at or notification.failed_at:
        return notification
    if reached:
        notification.receipt_at = now
    else:
        notification.failed_at = now
        notification.failure = f"the provider reported {status}" + (f" ({error})" if error else "")
    session.add(notification)
    return notification

"""Notifications leave through the outbox: this handler (registered for OutboxKind.NOTIFICATION in runtime.py) sends
each to its channel with its links made absolute, and marks the notification sent."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from replenish.constants import ACKNOWLEDGE_PAGE_PATH, ANSWER_PAGE_PATH
from replenish.notifications.channels import Channels, Delivery, Link
from replenish.notifications.models import Notification
from replenish.notifications.telephony import ProviderRefused
from replenish.outbox.models import OutboxMessage


class NotificationHandler:
    def __init__(self, *, channels: Channels, public_url: str) -> None:
        self._channels = channels
        # Where people reach the platform from outside: the base of the links in notifications.
        self._public_url = public_url.rstrip("/")
        # The provider's id of an SMS or call just sent, until its delivery is recorded (the dispatcher calls
        # record_delivery right after deliver, with the stored row).
        self._provider_ids: dict[int, str] = {}
        # Refusals of the same kind: final, recorded on the notification rather than retried.
        self._refusals: dict[int, str] = {}

    def deliver(self, message: OutboxMessage) -> None:
        try:
            provider_id = self._channels.send(self.delivery(message))
        except ProviderRefused as refused:
            # A wrong number, a service that will not take it: sending again changes nothing. The notification is
            # failed for good (an escalation falls back at once) and the message leaves the queue.
            if message.id is None:
                raise
            self._refusals[message.id] = f"it could not be sent: {refused}"
            return
        if provider_id is not None and message.id is not None:
            self._provider_ids[message.id] = provider_id

    def delivery(self, message: OutboxMessage) -> Delivery:
        payload = message.payload
        token = payload.get("acknowledge_token")
        links = [
            Link(link["label"], f"{self._public_url}{link.get('path', ANSWER_PAGE_PATH)}/{link['token']}")
            for link in payload.get("links") or ()
            if link.get("token")
        ]
        if payload.get("app_path"):
            links.append(Link("Open in the app", f"{self._public_url}{payload['app_path']}"))
        return Delivery(
            notification_id=payload["notification_id"],
            idempotency_key=message.idempotency_key,
            channel=payload.get("channel", "log"),
            address=payload.get("address"),
            subject=payload["subject"],
            body=payload["body"],
            acknowledge_url=f"{self._public_url}{ACKNOWLEDGE_PAGE_PATH}/{token}" if token else None,
            alert_id=payload.get("alert_id"),
            kind=payload.get("kind"),
            order_id=payload.get("order_id"),
            links=tuple(links),
            push_keys=(payload["push_keys"]["p256dh"], payload["push_keys"]["auth"])
            if payload.get("push_keys")
            else None,
            details=payload.get("details"),
        )

    def record_delivery(self, *, session: Session, message: OutboxMessage, now: datetime) -> None:
        if message.payload.get("acknowledge_token") or message.payload.get("links"):
            # Delivered: a token need not be kept anywhere but in the recipient's hands (a hash stays with the
            # escalation step or the order's link).
            message.payload = {
                **message.payload,
                "acknowledge_token": None,
                "links": [{**link, "token": None} for link in message.payload.get("links") or ()],
            }
        provider_id = self._provider_ids.pop(message.id, None) if message.id is not None else None
        refusal = self._refusals.pop(message.id, None) if message.id is not None else None
        notification = session.get(Notification, message.payload["notification_id"])
        if notification is not None:
            if refusal is not None:
                notification.failed_at = now
                notification.failure = refusal[:500]
            else:
                notification.sent_at = now
                notification.provider_id = provider_id or notification.provider_id
            session.add(notification)

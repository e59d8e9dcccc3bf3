"""Where a notification goes: the log, a webhook (JSON POST), e-mail (SMTP), Web Push, an SMS or a voice call (through
the configured telephony provider, notifications.telephony), or any service apprise speaks to (chat: Telegram,
Signal, Matrix, Slack, ...; the address is an apprise URL). The outbox dispatcher calls a channel at least once per
notification, retrying with backoff while it raises; every delivery carries the notification's idempotency key (the
webhook's `Idempotency-Key` header, the e-mail's Message-ID), so a receiver can drop a retry. A channel returns the
provider's id for what it sent when a delivery receipt will follow (SMS, calls).

A webhook must carry our own JSON and headers, and an e-mail needs only the standard library, so these two are
written here rather than through apprise.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import smtplib
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from replenish.constants import APPRISE_HOSTED_SCHEMES, APPRISE_SERVICE_SCHEMES
from replenish.notifications.push import PushMessage, SubscriptionGone, WebPushSender
from replenish.notifications.telephony import ProviderRefused, TelephonyProvider
from replenish.orders.signatures import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from replenish.tls import client_tls

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Link:
    """A link the message offers: a one-tap answer (Approve, Decline, Cancel) or the app's page about it."""

    label: str
    url: str


@dataclass(frozen=True)
class Delivery:
    """One notification, ready to send: what the dispatcher reads from the outbox."""

    notification_id: str
    idempotency_key: str
    channel: str
    address: str | None
    subject: str
    body: str
    # The link an emergency contact follows to acknowledge; none for other notifications.
    acknowledge_url: str | None = None
    alert_id: str | None = None
    kind: str | None = None
    order_id: str | None = None
    # The customer's one-tap answers and the app's page: each needs no sign-in but a confirmation.
    links: tuple[Link, ...] = ()
    # webpush: the subscription's keys (p256dh, auth); the address is its push service endpoint.
    push_keys: tuple[str, str] | None = None
    # What a structured receiver (the monitoring centre) gets besides the text.
    details: Mapping[str, Any] | None = None

    def link_lines(self) -> str:
        return "\n".join(f"{link.label}: {link.url}" for link in self.links)

    def text(self) -> str:
        text = self.body
        if self.links:
            text += f"\n\n{self.link_lines()}"
        if self.acknowledge_url is not None:
            text += f"\n\nTo let everyone know you are handling it, acknowledge here: {self.acknowledge_url}"
        return text

    def json(self) -> dict[str, Any]:
        return {
            "type": "notification",
            "kind": self.kind,
            "notification_id": self.notification_id,
            "alert_id": self.alert_id,
            "order_id": self.order_id,
            "subject": self.subject,
            "body": self.body,
            "acknowledge_url": self.acknowledge_url,
            "links": [{"label": link.label, "url": link.url} for link in self.links],
        }


class Channel(Protocol):
    def send(self, delivery: Delivery) -> str | None:
        """Deliver, or raise so that the dispatcher tries again later. The provider's id when a receipt will follow."""
        ...


class LogChannel:
    """The platform's log, for trials and demos. Never the acknowledgement link (whoever reads the log could
    acknowledge in the contact's name), and the customer's one-tap links only where the operator asked for them
    (``show_links``, the demo): whoever reads the log could approve or cancel with them."""

    def __init__(self, *, show_links: bool = False) -> None:
        self._show_links = show_links

    def send(self, delivery: Delivery) -> None:
        withheld = " (acknowledgement link not logged)" if delivery.acknowledge_url else ""
        links = ""
        if delivery.links:
            links = f"\n{delivery.link_lines()}" if self._show_links else " (one-tap links not logged)"
        log.warning(
            "notification %s: %s — %s%s%s", delivery.notification_id, delivery.subject, delivery.body, withheld, links
        )


class UndeliverableAddress(Exception):
    """The address is refused by policy (a private network); retrying will not help, but the dispatcher keeps the
    error on the message for an operator to see."""


class WebhookChannel:
    """POSTs the notification as JSON. A 2xx answer is a delivery; anything else is retried."""

    def __init__(self, *, client: httpx.Client, allow_private_networks: bool) -> None:
        self._client = client
        self._allow_private = allow_private_networks

    def send(self, delivery: Delivery) -> None:
        if delivery.address is None:
            raise UndeliverableAddress("a webhook notification without a URL")
        if not self._allow_private:
            refuse_private_destinations(delivery.address)
        response = self._client.post(
            delivery.address, json=delivery.json(), headers={"Idempotency-Key": delivery.idempotency_key}
        )
        response.raise_for_status()


def refuse_private_destinations(url: str) -> None:
    """A customer-supplied URL must not reach into the platform's own network (SSRF): every address the host name
    resolves to must be a public one."""
    host = urlsplit(url).hostname
    if not host:
        raise UndeliverableAddress(f"no host in {url!r}")
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host!r}: {exc}") from exc
    private = sorted(address for address in addresses if not _is_public(address))
    if private:
        raise UndeliverableAddress(
            f"{host!r} resolves to a non-public address ({', '.join(private)}); set "
            "REPLENISH_WEBHOOK_ALLOW_PRIVATE_NETWORKS=true to allow it"
        )


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address (mapped, 6to4, NAT64) are judged by the IPv4 address inside.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return embedded.is_global
    return ip.is_global


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout: float = 10.0


class EmailChannel:
    def __init__(self, settings: SmtpSettings | None) -> None:
        self._settings = settings

    def send(self, delivery: Delivery) -> None:
        if self._settings is None:
            raise RuntimeError("e-mail is not configured: set REPLENISH_SMTP_HOST")
        if delivery.address is None:
            raise UndeliverableAddress("an e-mail notification without an address")
        smtp = self._settings
        message = EmailMessage()
        message["From"] = smtp.sender
        message["To"] = delivery.address
        message["Subject"] = " ".join(delivery.subject.split())  # no line breaks from a device name in a header
        # The same Message-ID on a retry, so that a mail system can recognise a repeat.
        message["Message-ID"] = f"<{delivery.idempotency_key.replace(':', '.')}@replenish.invalid>"
        message.set_content(delivery.text())
        with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as client:
            if smtp.starttls:
                client.starttls()
            if smtp.username is not None:
                client.login(smtp.username, smtp.password or "")
            client.send_message(message)


class WebPushChannel:
    """Web Push to one subscribed browser: the service worker shows the title, the body and the one-tap answers
    as the notification's actions; a tap opens the first link (or the app). A subscription the push service says
    is gone is forgotten (``on_gone``) and the notification counts as delivered: there is nobody left to retry for.
    """

    def __init__(self, sender: WebPushSender | None, *, on_gone: Callable[[str], None]) -> None:
        self._sender = sender
        self._on_gone = on_gone

    def send(self, delivery: Delivery) -> None:
        if self._sender is None:
            raise RuntimeError("Web Push is not configured")
        if delivery.address is None or delivery.push_keys is None:
            raise UndeliverableAddress("a webpush notification without its subscription")
        answers = [link for link in delivery.links if link.label != "Open in the app"]
        opens = next((link.url for link in delivery.links if link.label == "Open in the app"), None)
        message = PushMessage(
            title=delivery.subject,
            body=delivery.body,
            url=opens,
            actions=[
                {"action": str(index), "title": link.label, "url": link.url} for index, link in enumerate(answers)
            ],
            tag=delivery.order_id or delivery.alert_id,
        )
        try:
            self._sender.send(
                endpoint=delivery.address, p256dh=delivery.push_keys[0], auth=delivery.push_keys[1], message=message
            )
        except SubscriptionGone:
            log.info("notification %s: the browser's push subscription is gone", delivery.notification_id)
            self._on_gone(delivery.address)


class SmsChannel:
    """A text through the telephony provider: the subject, the acknowledgement link (first: a long text is cut at the
    end), then the message."""

    def __init__(self, provider: TelephonyProvider | None, *, status_callback: str) -> None:
        self._provider = provider
        self._callback = status_callback

    def send(self, delivery: Delivery) -> str | None:
        if self._provider is None:
            raise ProviderRefused("SMS is not configured: set REPLENISH_SMS_PROVIDER and its credentials")
        if delivery.address is None:
            raise UndeliverableAddress("an SMS without a number")
        text = delivery.subject
        if delivery.acknowledge_url is not None:
            text += f"\nAcknowledge: {delivery.acknowledge_url}"
        text += f"\n{delivery.body}"
        if delivery.links:
            text += f"\n{delivery.link_lines()}"
        return self._provider.send_sms(to=delivery.address, body=text, status_callback=self._callback)


_URL = re.compile(r":?\s*https?://\S+")


class VoiceChannel:
    """A call that reads the message (links left out: nobody can follow a link read aloud)."""

    def __init__(self, provider: TelephonyProvider | None, *, status_callback: str) -> None:
        self._provider = provider
        self._callback = status_callback

    def send(self, delivery: Delivery) -> str | None:
        if self._provider is None:
            raise ProviderRefused("voice calls are not configured: set REPLENISH_SMS_PROVIDER and its credentials")
        if delivery.address is None:
            raise UndeliverableAddress("a call without a number")
        say = _URL.sub("", f"{delivery.subject}. {delivery.body}")
        return self._provider.call(to=delivery.address, say=say, status_callback=self._callback)


class AppriseChannel:
    """Any service apprise speaks to; the address is its apprise URL (tgram://bottoken/ChatID, signal://..., ...)."""

    def __init__(self, *, allow_private_networks: bool) -> None:
        self._allow_private = allow_private_networks

    def send(self, delivery: Delivery) -> str | None:
        import apprise  # a tenth of a second to import: only in the processes that send through it

        address = delivery.address or ""
        parts = urlsplit(address)
        if parts.scheme not in APPRISE_SERVICE_SCHEMES | APPRISE_HOSTED_SCHEMES:
            raise ProviderRefused(f"the {parts.scheme or 'given'}:// service is not one a contact may be reached by")
        if parts.scheme in APPRISE_HOSTED_SCHEMES and not self._allow_private:
            try:
                refuse_private_destinations(f"http://{parts.hostname or ''}")
            except UndeliverableAddress as refused:
                raise ProviderRefused(str(refused)) from None
        notifier = apprise.Apprise()
        # The URL may hold a service's secret (a bot token): errors name its scheme only.
        if not notifier.add(address):
            raise ProviderRefused(f"apprise does not understand the {parts.scheme or 'given'}:// address")
        if not notifier.notify(title=delivery.subject, body=delivery.text()):
            raise ProviderRefused(f"the {parts.scheme}:// service did not take the message")
        return None


class MonitoringCentreChannel:
    """The monitoring centre that calls emergency services: a signed JSON POST of the incident (docs/api.md,
    "Monitoring centre"), which the centre acknowledges through its `acknowledge_url`. Any 2xx is a delivery;
    anything else fails the attempt, and the escalation falls back to the operators' log at once."""

    def __init__(self, *, client: httpx.Client, url: str | None, secret: str | None) -> None:
        self._client = client
        self._url = url
        self._secret = secret

    def send(self, delivery: Delivery) -> str | None:
        if self._url is None:
            raise ProviderRefused("no monitoring centre is configured (REPLENISH_MONITORING_CENTRE_URL)")
        body = json.dumps(
            {
                "type": "emergency",
                "notification_id": delivery.notification_id,
                "alert_id": delivery.alert_id,
                "subject": delivery.subject,
                "message": delivery.body,
                "acknowledge_url": delivery.acknowledge_url,
                **(delivery.details or {}),
            },
            separators=(",", ":"),
        ).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": delivery.idempotency_key}
        if self._secret is not None:
            timestamp = int(time.time())  # the receiver judges a replay by its own clock: this one must be real
            headers |= {
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign(self._secret, timestamp=timestamp, body=body),
            }
        response = self._client.post(self._url, content=body, headers=headers)
        if response.status_code >= 300:
            raise ProviderRefused(f"the monitoring centre answered {response.status_code}")
        return None


class Channels:
    """Every channel by name, as consent names them (`log`, `webhook`, `email`, `webpush`, `sms`, `voice`,
    `apprise`)."""

    def __init__(
        self,
        *,
        smtp: SmtpSettings | None,
        allow_private_webhooks: bool,
        timeout: float = 10.0,
        webpush: WebPushSender | None = None,
        on_push_gone: Callable[[str], None] = lambda endpoint: None,
        log_links: bool = False,
        telephony: TelephonyProvider | None = None,
        status_callback: str = "",
        monitoring_centre_url: str | None = None,
        monitoring_centre_secret: str | None = None,
    ) -> None:
        # A dead endpoint must not hold up the others' deliveries for long: connecting gets 3 s.
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)), verify=client_tls())
        self._channels: dict[str, Channel] = {
            "log": LogChannel(show_links=log_links),
            "webhook": WebhookChannel(client=self._client, allow_private_networks=allow_private_webhooks),
            "email": EmailChannel(smtp),
            "webpush": WebPushChannel(webpush, on_gone=on_push_gone),
            "sms": SmsChannel(telephony, status_callback=status_callback),
            "voice": VoiceChannel(telephony, status_callback=status_callback),
            "apprise": AppriseChannel(allow_private_networks=allow_private_webhooks),
            "monitoring_centre": MonitoringCentreChannel(
                client=self._client, url=monitoring_centre_url, secret=monitoring_centre_secret
            ),
        }

    def send(self, delivery: Delivery) -> str | None:
        channel = self._channels.get(delivery.channel)
        if channel is None:
            raise UndeliverableAddress(f"unknown channel {delivery.channel!r}")
        return channel.send(delivery)

    def close(self) -> None:
        self._client.close()

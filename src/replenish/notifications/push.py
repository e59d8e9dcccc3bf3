"""Web Push: notifications to the browsers a customer subscribed, with the standard protocol (RFC 8030), payloads
encrypted as RFC 8291 requires (aes128gcm) and the sender identified by VAPID (RFC 8292), through pywebpush.

The VAPID key pair identifies this platform to every push service: the browsers subscribed with its public key, so
it must stay the same across restarts and be the same in every process (REPLENISH_WEBPUSH_VAPID_PRIVATE_KEY). A
single-process run without one keeps a generated key in its data directory.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from py_vapid import Vapid02

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

KEY_FILE_NAME = "vapid-private.pem"
# How long a push service keeps a message for a browser that is offline: a decision is still worth a day.
PUSH_TTL_SECONDS = 24 * 3600


def load_vapid(*, configured: str | None, key_file: Path) -> Vapid02:
    """The platform's VAPID key: the configured one (PEM, or one line of base64url as `replenish vapid-key` prints
    it), or the one kept in key_file (made on first use, owner-only)."""
    if configured:
        if "-----BEGIN" in configured:
            return Vapid02.from_pem(configured.encode())
        return Vapid02.from_string(configured.strip())
    if key_file.exists():
        return Vapid02.from_file(str(key_file))
    vapid = Vapid02()
    vapid.generate_keys()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under a name of this process's own, then linked into place: processes of one deployment that
    # start together (two schedulers) race to make the key, and the one that loses reads the winner's, complete.
    written = key_file.with_name(f".{key_file.name}.{os.getpid()}")
    descriptor = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(vapid.private_pem())
    try:
        os.link(written, key_file)
    except FileExistsError:
        return Vapid02.from_file(str(key_file))
    finally:
        written.unlink()
    log.info("made a VAPID key for Web Push in %s (set REPLENISH_WEBPUSH_VAPID_PRIVATE_KEY to share one)", key_file)
    return vapid


def new_private_key() -> str:
    """A fresh VAPID private key as one line of base64url (the raw 32-byte scalar): for an .env file."""
    vapid = Vapid02()
    vapid.generate_keys()
    scalar = vapid.private_key.private_numbers().private_value.to_bytes(32, "big")
    return base64.urlsafe_b64encode(scalar).rstrip(b"=").decode()


def application_server_key(vapid: Vapid02) -> str:
    """The public key as browsers take it for PushManager.subscribe: the uncompressed point, base64url."""
    raw = vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class PushMessage:
    """What the service worker shows: a title, a body, where a tap leads, and the one-tap answers."""

    title: str
    body: str
    url: str | None
    actions: list[dict[str, str]]
    tag: str | None = None

    def json(self) -> str:
        return json.dumps(
            {"title": self.title, "body": self.body, "url": self.url, "actions": self.actions, "tag": self.tag}
        )


class SubscriptionGone(Exception):
    """The push service says the subscription no longer exists (404/410): the browser unsubscribed."""


class WebPushSender:
    """Sends one encrypted message to one subscription; raises to be retried, SubscriptionGone when it is gone."""

    def __init__(self, *, vapid: Vapid02, subject: str, timeout: float, check_endpoint: Callable[[str], None]):
        self._vapid = vapid
        self._subject = subject
        self._timeout = timeout
        self._check_endpoint = check_endpoint

    @functools.cached_property
    def _session(self) -> requests.Session:
        # Imported by the first push, as pywebpush is: a process that never sends one does not load it.
        import requests

        session = requests.Session()
        # The endpoint is checked, not where it might redirect to: a redirect is refused rather than followed
        # (a push service never redirects; an endpoint that does is someone aiming the platform elsewhere).
        session.max_redirects = 0
        return session

    def send(self, *, endpoint: str, p256dh: str, auth: str, message: PushMessage) -> None:
        # Loaded by the first push (pywebpush brings aiohttp: about 90 ms): an ingest process never sends one.
        from pywebpush import WebPushException, webpush

        self._check_endpoint(endpoint)
        try:
            webpush(
                subscription_info={"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}},
                data=message.json(),
                vapid_private_key=self._vapid,
                vapid_claims={"sub": self._subject},
                timeout=self._timeout,
                ttl=PUSH_TTL_SECONDS,
                requests_session=self._session,
            )
        except WebPushException as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (404, 410):
                raise SubscriptionGone(endpoint) from exc
            raise

"""SMS and voice calls through a provider's HTTP API, with its delivery receipts.

`TelephonyProvider` is what the channels need: send a text, place a call that reads a message, and read a signed
status callback. `TwilioProvider` speaks Twilio's REST API (form-encoded POSTs to `Messages.json` and `Calls.json`
under the account, HTTP basic auth with the account SID and auth token) and checks its callbacks' `X-Twilio-Signature`
(base64 HMAC-SHA1, keyed with the auth token, of the callback URL followed by each form field's name and value,
sorted by name). Other providers with the same shape (several offer Twilio-compatible APIs) work through `api_url`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from xml.sax.saxutils import escape

import httpx

# What a receipt's status means. SMS: delivered, or failed/undelivered. A call: answered (in-progress), finished
# (completed), or not answered at all.
DELIVERED = frozenset({"delivered", "in-progress", "completed", "answered"})
FAILED = frozenset({"failed", "undelivered", "busy", "no-answer", "canceled"})


# How long a call rings before it counts as not answered (REPLENISH_SMS_RECEIPT_TIMEOUT_SECONDS must be longer).
CALL_RING_SECONDS = 25


class ProviderRefused(Exception):
    """The provider answered, and refused: a wrong number, an account without credit. Retrying will not help; the
    escalation falls back to the contact's next channel at once."""


@dataclass(frozen=True)
class Receipt:
    """A status callback, read: which message or call, and whether it reached the person (None: not yet known)."""

    provider_id: str
    status: str
    reached: bool | None
    error: str | None = None


class TelephonyProvider(Protocol):
    name: str

    def send_sms(self, *, to: str, body: str, status_callback: str) -> str:
        """The provider's id for the message, once it took it; ProviderRefused, or another error to retry."""
        ...

    def call(self, *, to: str, say: str, status_callback: str) -> str:
        """The provider's id for the call that reads ``say`` to whoever answers."""
        ...

    def receipt(self, *, url: str, form: Mapping[str, str], signature: str | None) -> Receipt | None:
        """The callback's receipt, or None when its signature does not hold."""
        ...


class TwilioProvider:
    name = "twilio"

    def __init__(self, *, account_sid: str, auth_token: str, sender: str, client: httpx.Client, api_url: str) -> None:
        self._sid = account_sid
        self._token = auth_token
        self._sender = sender
        self._client = client
        self._base = f"{api_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}"

    def send_sms(self, *, to: str, body: str, status_callback: str) -> str:
        # A text is at most 1,600 characters: the message is cut there (its link comes first in our texts).
        return self._post(
            "Messages.json", {"To": to, "From": self._sender, "Body": body[:1600], "StatusCallback": status_callback}
        )

    def call(self, *, to: str, say: str, status_callback: str) -> str:
        twiml = f'<Response><Say>{escape(say)}</Say><Pause length="1"/><Say>{escape(say)}</Say></Response>'
        return self._post(
            "Calls.json",
            {
                "To": to,
                "From": self._sender,
                "Twiml": twiml,
                "StatusCallback": status_callback,
                "StatusCallbackEvent": "answered completed",
                # Rings for at most this long, inside the receipt timeout: an answer after it counts as one.
                "Timeout": str(CALL_RING_SECONDS),
            },
        )

    def _post(self, resource: str, form: dict[str, str]) -> str:
        response = self._client.post(f"{self._base}/{resource}", data=form, auth=(self._sid, self._token))
        if 400 <= response.status_code < 500 and response.status_code != 429:
            try:
                detail = response.json().get("message", response.text)
            except ValueError:
                detail = response.text
            raise ProviderRefused(f"{self.name} refused it ({response.status_code}): {str(detail)[:200]}")
        response.raise_for_status()
        sid = response.json().get("sid")
        if not isinstance(sid, str) or not sid:
            raise RuntimeError(f"{self.name} answered without an id: {response.text[:200]}")
        return sid

    def receipt(self, *, url: str, form: Mapping[str, str], signature: str | None) -> Receipt | None:
        # As bytes: compare_digest refuses non-ASCII text, which a forged header may carry.
        if signature is None or not hmac.compare_digest(sign(self._token, url, form).encode(), signature.encode()):
            return None
        provider_id = form.get("MessageSid") or form.get("CallSid") or ""
        status = (form.get("MessageStatus") or form.get("CallStatus") or "").lower()
        reached = True if status in DELIVERED else False if status in FAILED else None
        error = form.get("ErrorCode") or form.get("ErrorMessage")
        return Receipt(provider_id=provider_id, status=status, reached=reached, error=error)


def sign(token: str, url: str, form: Mapping[str, str]) -> str:
    """Twilio's request signature: base64(HMAC-SHA1(token, url + name1 + value1 + name2 + value2 ...)), names sorted."""
    data = url + "".join(f"{name}{form[name]}" for name in sorted(form))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()

"""Fulfilment partners' signed webhooks: HMAC-SHA256 over the timestamp and the body, with a secret per partner.

The scheme Stripe and GitHub use: the partner sends ``X-Replenish-Timestamp: <unix seconds>`` and
``X-Replenish-Signature: sha256=<hex of HMAC-SHA256(secret, "<timestamp>." + body)>``. The timestamp is signed with
the body, so a captured request cannot be replayed once it is older than the tolerance. Pure: no clock, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime

SIGNATURE_HEADER = "X-Replenish-Signature"
TIMESTAMP_HEADER = "X-Replenish-Timestamp"
SCHEME = "sha256="


class SignatureRefused(Exception):
    """Why a partner's request is not believed (answered 401 with this reason)."""


def sign(secret: str, *, timestamp: int, body: bytes) -> str:
    """The header value a partner sends with this body at this time."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SCHEME}{digest}"


def verify(
    *,
    secrets: Mapping[str, str],
    partner: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: datetime,
    tolerance_seconds: float,
) -> None:
    """Raise SignatureRefused unless the partner is known, the signature is its secret's over this timestamp and
    body, and the timestamp is within the tolerance of now (either way: a partner's clock may run ahead)."""
    secret = secrets.get(partner)
    if secret is None:
        raise SignatureRefused(f"unknown fulfilment partner {partner!r}")
    if not timestamp or not signature:
        raise SignatureRefused(f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required")
    try:
        moment = int(timestamp)
    except ValueError:
        raise SignatureRefused(f"{TIMESTAMP_HEADER} must be whole Unix seconds") from None
    # As bytes: compare_digest refuses non-ASCII text, which a forged header may carry.
    if not hmac.compare_digest(sign(secret, timestamp=moment, body=body).encode(), signature.strip().encode()):
        raise SignatureRefused("the signature does not match the body and timestamp")
    age = now.timestamp() - moment
    if abs(age) > tolerance_seconds:
        raise SignatureRefused(f"the timestamp is {age:.0f} s from now, beyond {tolerance_seconds:g} s: a replay?")

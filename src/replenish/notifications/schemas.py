"""The shapes of Web Push subscriptions at the API and the web app."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator


def _key_bytes(value: str, *, size: int, name: str) -> str:
    try:
        decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} must be base64url") from None
    if len(decoded) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(decoded)}")
    return value


class PushKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p256dh: str = Field(max_length=200, description="The browser's P-256 public key, base64url (65 bytes).")
    auth: str = Field(max_length=100, description="The browser's authentication secret, base64url (16 bytes).")

    @field_validator("p256dh")
    @classmethod
    def _point(cls, value: str) -> str:
        return _key_bytes(value, size=65, name="p256dh")

    @field_validator("auth")
    @classmethod
    def _secret(cls, value: str) -> str:
        return _key_bytes(value, size=16, name="auth")


class PushSubscriptionCreate(BaseModel):
    """A browser's PushSubscription, as `subscription.toJSON()` gives it (expirationTime is ignored)."""

    model_config = ConfigDict(extra="ignore")

    endpoint: AnyHttpUrl = Field(max_length=2048, description="The push service's URL for this browser.")
    keys: PushKeys
    customer_id: str | None = Field(None, description="Operators: whose browser it is.")


class PushSubscriptionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    customer_id: str
    endpoint: str
    user_agent: str | None
    created_at: datetime


class PushKey(BaseModel):
    application_server_key: str = Field(
        description="The platform's VAPID public key, base64url: PushManager.subscribe's applicationServerKey."
    )

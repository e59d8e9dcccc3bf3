"""What the API's handlers need of the platform that serves them, handed to every request.

The application itself (routes, middleware, error handlers, the web app) is the same for every platform, so a
process builds it once (replenish.api.app.application) and each platform's server wraps it in a ``PlatformApp``
that puts the platform's ``ApiState`` into each request's scope. FastAPI resolves a route's dependencies and
response models on the application's first request, about a tenth of a second of CPU: a process that serves
several platforms one after another (the tests start hundreds) pays it once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from replenish.clock import Clock
from replenish.mqtt.probe import BrokerProbe

if TYPE_CHECKING:
    from replenish.notifications.telephony import TelephonyProvider

_SCOPE_KEY = "replenish.api_state"


@dataclass(frozen=True)
class ApiState:
    engine: Engine
    clock: Clock
    broker: BrokerProbe
    session_lifetime: timedelta
    # How often the web app's pages ask for what changed (REPLENISH_WEB_LIVE_SECONDS).
    web_live_seconds: float
    # Fulfilment partners' webhook secrets (REPLENISH_FULFILMENT_PARTNER_SECRETS) and the replay window.
    fulfilment_secrets: Mapping[str, str]
    fulfilment_tolerance_seconds: float
    # Web Push: the VAPID public key browsers subscribe with (None: Web Push is off).
    push_public_key: str | None
    # Where a sign-up's link goes: "email", or "log" where no SMTP server is configured.
    sign_up_channel: str
    # The SMS and voice provider, whose delivery receipts the API checks and records (None: not configured), and
    # the URL it posts them to (what its signature covers).
    telephony: TelephonyProvider | None = None
    provider_status_url: str = ""


class PlatformApp:
    """The process's application, serving one platform: every request carries that platform's state."""

    def __init__(self, application: ASGIApp, state: ApiState) -> None:
        self.application = application
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            scope[_SCOPE_KEY] = self.state
        await self.application(scope, receive, send)


def api_state(connection: HTTPConnection) -> ApiState:
    """The state of the platform serving this request."""
    state: ApiState = connection.scope[_SCOPE_KEY]
    return state

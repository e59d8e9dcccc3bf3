"""Web Push in the app: the service worker (served from /app/ for its scope) and this browser's subscription, which
the toggle on the consent page makes and removes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import ValidationError

from replenish.api.state import api_state
from replenish.consent import service as consent
from replenish.consent.schemas import NotificationChannel
from replenish.constants import Capability
from replenish.customers.locks import lock_customer
from replenish.db import transaction
from replenish.errors import InvalidRequest
from replenish.notifications import service as notifications
from replenish.notifications.schemas import PushSubscriptionCreate
from replenish.web.pages import PREFIX, WebPrincipal, customer_of, now_of
from replenish.web.rendering import STATIC_DIR
from replenish.web.session import check_csrf

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/sw.js", include_in_schema=False)
def service_worker() -> FileResponse:
    """The service worker, served from /app/ so that its scope is the whole app."""
    return FileResponse(STATIC_DIR / "sw.js", media_type="text/javascript")


@router.post("/push/subscribe")
async def push_subscribe(request: Request, principal: WebPrincipal) -> dict[str, str]:
    """This browser's push subscription (the toggle on the consent page), and the webpush channel in the consent
    when it is not there yet (a new version)."""
    check_csrf(request, request.headers.get("x-csrf-token"))
    customer_id = customer_of(principal)
    principal.require(Capability.READ_MESSAGES)
    try:
        body = PushSubscriptionCreate.model_validate_json(await request.body())
    except ValidationError as exc:
        raise InvalidRequest(f"not a push subscription: {exc.errors()[0]['msg']}") from None
    now = now_of(request)
    with transaction(api_state(request).engine) as session:
        notifications.subscribe(
            session=session,
            customer_id=customer_id,
            subscription=body,
            user_agent=request.headers.get("user-agent"),
            now=now,
        )
        # Read under the customer's lock: a consent saved in another tab at the same moment is not lost, and the
        # channel is added once.
        lock_customer(session=session, customer_id=customer_id)
        _, document = consent.current_document(session=session, customer_id=customer_id)
        if not any(channel.type == "webpush" for channel in document.notification_channels):
            channels = [*document.notification_channels, NotificationChannel(type="webpush")]
            consent.record(
                session=session,
                customer_id=customer_id,
                document=document.model_copy(update={"notification_channels": channels}),
                actor=principal.actor,
                now=now,
            )
    return {"status": "subscribed"}


@router.post("/push/unsubscribe")
async def push_unsubscribe(request: Request, principal: WebPrincipal) -> dict[str, str]:
    check_csrf(request, request.headers.get("x-csrf-token"))
    principal.require(Capability.READ_MESSAGES)
    try:
        endpoint = str((await request.json())["endpoint"])
    except (ValueError, KeyError, TypeError):
        raise InvalidRequest("send the subscription's endpoint", field="endpoint") from None
    with transaction(api_state(request).engine) as session:
        notifications.forget_subscription(session=session, endpoint=endpoint, customer_id=customer_of(principal))
    return {"status": "unsubscribed"}

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool

from replenish.api.deps import ClockDep, CurrentPrincipal, EngineDep, Limit, Offset, ReadSession, requires
from replenish.api.state import api_state
from replenish.auth.service import Principal
from replenish.constants import Capability
from replenish.db import transaction
from replenish.errors import ErrorBody, InvalidRequest, NotFound, SignatureRejected
from replenish.notifications import service
from replenish.notifications.models import Notification, PushSubscription
from replenish.notifications.schemas import PushKey, PushSubscriptionCreate, PushSubscriptionRead
from replenish.notifications.telephony import Receipt
from replenish.orders.service import explain_decision

router = APIRouter(prefix="/notifications", tags=["notifications"])
push_router = APIRouter(prefix="/push", tags=["notifications"])
# The telephony provider's delivery receipts: signed by the provider, no bearer token.
providers_router = APIRouter(prefix="/providers", tags=["notifications"])
# The notifications go to the household's owner, on the channels of their consent: a member or carer answers 403 (a
# carer hears of their wearer's incidents as an emergency contact).
MessageReader = Annotated[Principal, requires(Capability.READ_MESSAGES)]


class NotificationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    customer_id: str
    subject: str
    body: str
    channel: str = Field(description="log, email, webhook or webpush")
    address: str | None = Field(
        description="The e-mail address, webhook URL or push endpoint it went to; none for the log."
    )
    decision_id: str | None
    alert_id: str | None
    alarm_id: str | None = Field(description="The device health alarm it is about, if any.")
    order_id: str | None = Field(None, description="The order it is about, if any.")
    kind: str | None = Field(
        None,
        description="What it is about: low, approval_request, approval_reminder, no_answer, order_placed, "
        "order_shipped, order_delivered, delivery_nudge, safety, device_health, order_changed, digest (null: sent "
        "before kinds were recorded).",
    )
    deliver_after: datetime | None = Field(
        None, description="It came in the channel's quiet hours: it goes out at their end."
    )
    for_digest: bool = Field(False, description="It waits for (or went in) the customer's daily digest.")
    digest_id: str | None = Field(None, description="The digest notification that carried it.")
    consent_version: int
    created_at: datetime
    sent_at: datetime | None


class NotificationDetail(NotificationRead):
    explanation: dict[str, Any] | None = Field(
        description="For a notification a decision sent (a slot running low under notify_only): the decision as an "
        "order's explanation gives it. Null for an alert's or alarm's notification: the alert or alarm says why."
    )


@router.get("", response_model=list[NotificationRead], summary="Notifications sent or queued, newest first")
def list_notifications(
    session: ReadSession,
    principal: MessageReader,
    customer_id: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[NotificationRead]:
    query = select(Notification)
    customer_id = principal.scope(customer_id)
    if customer_id:
        query = query.where(Notification.customer_id == customer_id)
    rows = session.exec(
        query.order_by(col(Notification.created_at).desc(), col(Notification.id)).offset(offset).limit(limit)
    )
    return [NotificationRead.model_validate(row) for row in rows]


@router.get("/{notification_id}", response_model=NotificationDetail, summary="A notification and why it was sent")
def get_notification(notification_id: str, session: ReadSession, principal: MessageReader) -> NotificationDetail:
    notification = service.get(session=session, notification_id=notification_id, customer_id=principal.visible_customer)
    explanation = (
        explain_decision(session=session, decision_id=notification.decision_id) if notification.decision_id else None
    )
    return NotificationDetail(**NotificationRead.model_validate(notification).model_dump(), explanation=explanation)


@push_router.get("/key", response_model=PushKey, summary="The public key browsers subscribe to Web Push with")
def push_key(request: Request, principal: CurrentPrincipal) -> PushKey:
    key = api_state(request).push_public_key
    if key is None:
        raise NotFound("web push key", "-")
    return PushKey(application_server_key=key)


@push_router.post(
    "/subscriptions",
    response_model=PushSubscriptionRead,
    status_code=status.HTTP_201_CREATED,
    summary="Subscribe a browser to the customer's Web Push notifications",
)
def subscribe(
    body: PushSubscriptionCreate, request: Request, principal: MessageReader, engine: EngineDep, clock: ClockDep
) -> PushSubscriptionRead:
    """The consent's `webpush` notification channel reaches every subscribed browser (add `{"type": "webpush"}`
    to `notification_channels`). The same endpoint again replaces its keys."""
    customer_id = principal.scope(body.customer_id)
    if customer_id is None:
        raise InvalidRequest("an operator must say whose browser it is", field="customer_id")
    principal.check_access(customer_id, entity="customer", key=customer_id)
    with transaction(engine) as session:
        found = service.subscribe(
            session=session,
            customer_id=customer_id,
            subscription=body,
            user_agent=request.headers.get("user-agent"),
            now=clock.now(),
        )
        return PushSubscriptionRead.model_validate(found)


@push_router.get("/subscriptions", response_model=list[PushSubscriptionRead], summary="Subscribed browsers")
def list_subscriptions(
    session: ReadSession, principal: MessageReader, customer_id: str | None = None
) -> list[PushSubscriptionRead]:
    query = select(PushSubscription)
    scope = principal.scope(customer_id)
    if scope:
        query = query.where(PushSubscription.customer_id == scope)
    return [PushSubscriptionRead.model_validate(row) for row in session.exec(query.order_by(col(PushSubscription.id)))]


@push_router.delete(
    "/subscriptions/{subscription_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Unsubscribe a browser"
)
def unsubscribe(subscription_id: str, principal: MessageReader, engine: EngineDep) -> Response:
    with transaction(engine) as session:
        found = service.get_push_subscription(
            session=session, subscription_id=subscription_id, customer_id=principal.visible_customer
        )
        session.delete(found)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@providers_router.post(
    "/{provider}/status",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="A delivery receipt from the SMS and voice provider",
    openapi_extra={"security": [{}]},
    responses={401: {"model": ErrorBody, "description": "The provider's signature does not hold."}},
)
async def provider_status(provider: str, request: Request) -> Response:
    """Where the provider (Twilio, or one with its API) posts the status of each text and call (form fields
    `MessageSid`/`MessageStatus` or `CallSid`/`CallStatus`, `ErrorCode`), signed with `X-Twilio-Signature`. A text
    delivered or a call answered confirms its notification; failed, undelivered, busy or no answer fails it, and an
    emergency contact's next channel is tried at once. A wrong or missing signature answers 401 and changes nothing;
    a receipt for a message the platform does not know is accepted and ignored."""
    state = api_state(request)
    telephony = state.telephony
    if telephony is None or provider != telephony.name:
        raise NotFound("provider", provider)
    form = {key: value for key, value in (await request.form()).items() if isinstance(value, str)}
    receipt = telephony.receipt(
        url=state.provider_status_url, form=form, signature=request.headers.get("x-twilio-signature")
    )
    if receipt is None:
        raise SignatureRejected("the provider's signature does not hold")
    if receipt.provider_id:
        await run_in_threadpool(_record_receipt, state.engine, state.clock.now(), receipt)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _record_receipt(engine: Engine, now: datetime, receipt: Receipt) -> None:
    with transaction(engine) as session:
        service.record_receipt(
            session=session,
            provider_id=receipt.provider_id,
            reached=receipt.reached,
            status=receipt.status,
            error=receipt.error,
            now=now,
        )

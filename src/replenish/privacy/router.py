from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from replenish.api.deps import ClockDep, EngineDep, requires
from replenish.auth.service import Principal
from replenish.constants import Capability
from replenish.db import transaction
from replenish.privacy import service

router = APIRouter(prefix="/customers/{customer_id}", tags=["data rights"])
# The household's owner (or an operator): a member or carer answers 403.
DataOwner = Annotated[Principal, requires(Capability.MANAGE_DATA)]


@router.get(
    "/export",
    summary="Everything stored about the customer, as one JSON document",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/json": {}}, "description": "The export, streamed."}},
)
def export(customer_id: str, principal: DataOwner, engine: EngineDep, clock: ClockDep) -> StreamingResponse:
    """The customer record, the household's accounts (members' and carers' too), invitations and shared devices,
    tokens (never their secrets), every consent version, devices and slots, forecasts, every stored message and
    reading, dead letters of their devices, decisions, orders and their history, alerts, notifications and the audit
    events about them. Streamed: telemetry can be large. The household's owner's (or an operator's)."""
    principal.check_access(customer_id, entity="customer", key=customer_id)
    now = clock.now()
    with transaction(engine) as session:  # the audit record commits before the first byte goes out
        service.record_export(session=session, customer_id=customer_id, actor=principal.actor, now=now)
    return StreamingResponse(
        service.export(engine=engine, customer_id=customer_id, now=now),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{service.export_filename(customer_id)}"'},
    )


class AccountDeletion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    confirm: str = Field(description="The customer's e-mail address, to show that this is meant.")
    password: SecretStr | None = Field(
        None, description="The customer's password (a customer deleting their own account); not for an operator."
    )


@router.delete("", summary="Delete the customer and everything about them")
def delete_customer(
    customer_id: str,
    principal: DataOwner,
    engine: EngineDep,
    clock: ClockDep,
    body: AccountDeletion | None = None,
) -> dict[str, int]:
    """Irreversible; the household's owner's (or an operator's). Orders not yet shipped are cancelled first
    (fulfilment is told); then the customer, the household's accounts (members' and carers' too), invitations and
    tokens, consent, devices, telemetry, forecasts, decisions, orders, alerts and notifications are deleted. The
    audit log keeps its events without the e-mail addresses. Answers what was removed, per kind. A wrong password
    counts as a failed sign-in; after 10 within 15 minutes the answer is 429."""
    principal.check_access(customer_id, entity="customer", key=customer_id)
    now = clock.now()
    with transaction(engine) as session:
        refused = service.check_deletion(
            session=session,
            customer_id=customer_id,
            principal=principal,
            confirm=body.confirm if body else "",
            password=body.password.get_secret_value() if body and body.password else "",
            now=now,
        )
        if refused is None:
            return service.delete_customer(session=session, customer_id=customer_id, actor=principal.actor, now=now)
    raise refused  # after the commit: a wrong password stays counted

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from replenish.api.deps import CurrentPrincipal, Limit, Offset, ReadSession
from replenish.audit import service
from replenish.constants import AuditAction

router = APIRouter(prefix="/audit", tags=["audit"])


class AuditEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    action: AuditAction
    customer_id: str | None
    subject_type: str
    subject_id: str
    detail: dict[str, Any]


@router.get("", response_model=list[AuditEventRead], summary="The audit log, newest first")
def list_audit_events(
    session: ReadSession,
    principal: CurrentPrincipal,
    customer_id: str | None = None,
    action: AuditAction | None = None,
    subject_id: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[AuditEventRead]:
    """Sign-ins, tokens, consent changes, decisions and order status changes. A customer sees those about
    them; an operator sees everything (failed sign-ins for unknown e-mails included)."""
    events = service.list_events(
        session=session,
        customer_id=principal.scope(customer_id),
        action=action,
        subject_id=subject_id,
        limit=limit,
        offset=offset,
    )
    return [AuditEventRead.model_validate(event) for event in events]

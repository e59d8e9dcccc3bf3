from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from replenish.api.deps import Limit, Offset, ReadSession, requires
from replenish.audit import service
from replenish.auth.service import Principal
from replenish.constants import AuditAction, Capability

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
    principal: Annotated[Principal, requires(Capability.READ_AUDIT)],
    customer_id: str | None = None,
    action: AuditAction | None = None,
    subject_id: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[AuditEventRead]:
    """Sign-ins, tokens, consent changes, decisions and order status changes. A customer sees those about
    them (the household's owner; a member or carer: 403); an operator sees everything (failed sign-ins for unknown
    e-mails included). Each record names who acted: the owner as `customer:…`, a member as `member:…`, a carer as
    `carer:…`; `auth.access_denied` records an act refused for the caller's role."""
    events = service.list_events(
        session=session,
        customer_id=principal.scope(customer_id),
        action=action,
        subject_id=subject_id,
        limit=limit,
        offset=offset,
    )
    return [AuditEventRead.model_validate(event) for event in events]

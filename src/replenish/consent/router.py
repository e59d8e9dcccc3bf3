from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from sqlmodel import Session

from replenish.api.deps import ClockDep, EngineDep, ReadSession, requires
from replenish.auth.service import Principal
from replenish.consent import service
from replenish.consent.models import ConsentVersion
from replenish.consent.schemas import ConsentDocument, ConsentRead, ConsentUpdate
from replenish.constants import Capability
from replenish.customers import service as customers
from replenish.db import transaction

Reader = Annotated[Principal, requires(Capability.READ_CONSENT)]
Changer = Annotated[Principal, requires(Capability.CHANGE_CONSENT)]

router = APIRouter(prefix="/customers/{customer_id}/consent", tags=["consent"])


def _customer(session: Session, principal: Principal, customer_id: str) -> None:
    principal.check_access(customer_id, entity="customer", key=customer_id)
    customers.get(session=session, customer_id=customer_id)


def _read(version: ConsentVersion) -> ConsentRead:
    return ConsentRead(
        customer_id=version.customer_id,
        version=version.version,
        created_at=version.created_at,
        created_by=version.created_by,
        document=ConsentDocument.model_validate(version.document),
    )


@router.get("", response_model=ConsentRead, summary="Current consent")
def get_consent(customer_id: str, session: ReadSession, principal: Reader) -> ConsentRead:
    _customer(session, principal, customer_id)
    return _read(service.current(session=session, customer_id=customer_id))


@router.put("", response_model=ConsentRead, summary="Change consent (creates a new version)")
def put_consent(
    customer_id: str, body: ConsentUpdate, principal: Changer, engine: EngineDep, clock: ClockDep
) -> ConsentRead:
    """Replaces the consent document. The old version stays, so every past decision can still be explained. Only
    the household's owner changes it (a member or carer: 403)."""
    with transaction(engine) as session:
        _customer(session, principal, customer_id)
        version = service.record(
            session=session,
            customer_id=customer_id,
            document=ConsentDocument.model_validate(body.model_dump()),
            actor=principal.actor,
            now=clock.now(),
        )
        return _read(version)


@router.get("/versions", response_model=list[ConsentRead], summary="Every consent version, oldest first")
def consent_versions(customer_id: str, session: ReadSession, principal: Reader) -> list[ConsentRead]:
    _customer(session, principal, customer_id)
    return [_read(v) for v in service.history(session=session, customer_id=customer_id)]

from __future__ import annotations

from fastapi import APIRouter, status

from replenish.api.deps import ClockDep, EngineDep, Limit, Offset, ReadSession
from replenish.customers import service
from replenish.customers.schemas import CustomerCreate, CustomerRead
from replenish.db import transaction

router = APIRouter(prefix="/customers", tags=["customers"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CustomerRead, summary="Create a customer")
def create_customer(body: CustomerCreate, engine: EngineDep, clock: ClockDep) -> CustomerRead:
    """Creates the customer and version 1 of their consent (by default: ask first for everything)."""
    with transaction(engine) as session:
        customer = service.create(
            session=session,
            name=body.name,
            email=body.email,
            consent_document=body.consent,
            actor="api",
            now=clock.now(),
        )
        return CustomerRead.model_validate(customer)


@router.get("", response_model=list[CustomerRead], summary="List customers")
def list_customers(session: ReadSession, limit: Limit = 100, offset: Offset = 0) -> list[CustomerRead]:
    return [CustomerRead.model_validate(c) for c in service.list_customers(session=session, limit=limit, offset=offset)]


@router.get("/{customer_id}", response_model=CustomerRead, summary="Get a customer")
def get_customer(customer_id: str, session: ReadSession) -> CustomerRead:
    return CustomerRead.model_validate(service.get(session=session, customer_id=customer_id))

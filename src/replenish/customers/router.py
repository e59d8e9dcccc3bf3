from __future__ import annotations

from fastapi import APIRouter, status

from replenish.api.deps import (
    ClockDep,
    CurrentOperator,
    CurrentPrincipal,
    EngineDep,
    Limit,
    Offset,
    OptionalPrincipal,
    ReadSession,
)
from replenish.customers import service
from replenish.customers.schemas import CustomerCreate, CustomerRead
from replenish.db import transaction
from replenish.errors import Forbidden, InvalidRequest

router = APIRouter(prefix="/customers", tags=["customers"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CustomerRead,
    summary="Sign up, or create a customer",
    # The bearer token is optional here: without one this is sign-up.
    openapi_extra={"security": [{}]},
)
def create_customer(
    body: CustomerCreate, principal: OptionalPrincipal, engine: EngineDep, clock: ClockDep
) -> CustomerRead:
    """Without a token this is sign-up: a password is required, and the new customer signs in with their e-mail
    and it. An operator may create a customer without a password. Creates version 1 of the customer's consent (by
    default: ask first for everything)."""
    if principal is not None and not principal.is_operator:
        raise Forbidden("a signed-in customer cannot create another customer")
    if principal is None and body.password is None:
        raise InvalidRequest("a password is required to sign up", field="password")
    with transaction(engine) as session:
        customer = service.create(
            session=session,
            name=body.name,
            email=body.email,
            consent_document=body.consent,
            actor=principal.actor if principal else "sign-up",
            now=clock.now(),
            password=body.password.get_secret_value() if body.password else None,
        )
        return CustomerRead.model_validate(customer)


@router.get("", response_model=list[CustomerRead], summary="List customers (operators only)")
def list_customers(
    session: ReadSession, operator: CurrentOperator, limit: Limit = 100, offset: Offset = 0
) -> list[CustomerRead]:
    return [CustomerRead.model_validate(c) for c in service.list_customers(session=session, limit=limit, offset=offset)]


@router.get("/{customer_id}", response_model=CustomerRead, summary="Get a customer")
def get_customer(customer_id: str, session: ReadSession, principal: CurrentPrincipal) -> CustomerRead:
    principal.check_access(customer_id, entity="customer", key=customer_id)
    return CustomerRead.model_validate(service.get(session=session, customer_id=customer_id))

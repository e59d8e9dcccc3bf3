from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

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
from replenish.api.state import api_state
from replenish.customers import service
from replenish.customers.schemas import CustomerCreate, CustomerRead, SignUpConfirm, SignUpRequested
from replenish.db import transaction
from replenish.errors import ErrorBody, Forbidden, InvalidRequest

router = APIRouter(prefix="/customers", tags=["customers"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CustomerRead | SignUpRequested,
    summary="Sign up, or create a customer",
    # The bearer token is optional here: without one this is sign-up.
    openapi_extra={"security": [{}]},
    responses={
        201: {"model": CustomerRead, "description": "An operator created the customer."},
        202: {"model": SignUpRequested, "description": "Sign-up: a link to finish it was mailed to the address."},
    },
)
def create_customer(
    body: CustomerCreate,
    principal: OptionalPrincipal,
    engine: EngineDep,
    clock: ClockDep,
    request: Request,
    response: Response,
) -> CustomerRead | SignUpRequested:
    """Without a token this is sign-up, and only `email` is used: the answer is always 202, and the address gets a
    link to finish signing up (the page it opens, or `POST /api/v1/sign-ups/{token}` with the name, password and
    consent), or, when it has an account already, a note saying so. Nobody learns from sign-up whether an address
    is registered, and nobody but the address's owner chooses its password. A password here is refused (422).
    An operator creates the customer at once (201), with or without a password; its consent starts at version 1 (by
    default: ask first for everything)."""
    if principal is not None and not principal.is_operator:
        raise Forbidden("a signed-in customer cannot create another customer")
    with transaction(engine) as session:
        if principal is None:
            if body.password is not None:
                raise InvalidRequest(
                    "choose the password with the link mailed to the address, not here", field="password"
                )
            service.request_sign_up(
                session=session, email=body.email, now=clock.now(), channel=api_state(request).sign_up_channel
            )
            response.status_code = status.HTTP_202_ACCEPTED
            return SignUpRequested(email=body.email.lower())
        customer = service.create(
            session=session,
            name=body.name,
            email=body.email,
            consent_document=body.consent,
            actor=principal.actor,
            now=clock.now(),
            password=body.password.get_secret_value() if body.password else None,
        )
        return CustomerRead.model_validate(customer)


sign_ups = APIRouter(prefix="/sign-ups", tags=["customers"])


@sign_ups.post(
    "/{token}",
    status_code=status.HTTP_201_CREATED,
    response_model=CustomerRead,
    summary="Finish signing up: the link mailed to the address",
    openapi_extra={"security": [{}]},
    responses={410: {"model": ErrorBody, "description": "The link expired: sign up again."}},
)
def confirm_sign_up(token: str, body: SignUpConfirm, engine: EngineDep, clock: ClockDep) -> CustomerRead:
    """Creates the customer and account for the address the link was mailed to, with the name, password and consent
    given here; the customer then signs in with the e-mail and this password. The link works once (every link sent
    to the address stops working): 404 after that or for a link that never was, 410 once expired, 409 when the
    address got an account meanwhile."""
    with transaction(engine) as session:
        customer = service.confirm_sign_up(
            session=session,
            token=token,
            name=body.name,
            password=body.password.get_secret_value(),
            consent_document=body.consent,
            now=clock.now(),
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

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, Response, status

from replenish.api.deps import ClockDep, EngineDep, ReadSession, requires
from replenish.api.state import api_state
from replenish.auth.schemas import Me
from replenish.auth.service import Principal
from replenish.constants import AccountRole, Capability, HouseholdRole
from replenish.db import transaction
from replenish.errors import ErrorBody, InvalidRequest
from replenish.households import service
from replenish.households.schemas import (
    InvitationAccept,
    InvitationCreate,
    InvitationRead,
    InvitationView,
    MemberRead,
    MemberUpdate,
)

router = APIRouter(prefix="/household", tags=["households"])
# The link mailed to the invited address is their credential: no account yet, no bearer token.
invitations_router = APIRouter(prefix="/invitations", tags=["households"])
# The household's owner (or an operator naming the customer): a member or carer answers 403.
Owner = Annotated[Principal, requires(Capability.MANAGE_HOUSEHOLD)]


def _household(principal: Principal, customer_id: str | None) -> str:
    scope = principal.scope(customer_id)
    if scope is None:
        raise InvalidRequest("an operator must say whose household: customer_id", field="customer_id")
    return scope


@router.get("/members", response_model=list[MemberRead], summary="The household's people, the owner first")
def list_members(session: ReadSession, principal: Owner, customer_id: str | None = None) -> list[MemberRead]:
    """The caller's household; an operator sees every household's, or one with `customer_id`."""
    return service.list_members(session=session, customer_id=principal.scope(customer_id))


@router.patch(
    "/members/{account_id}", response_model=MemberRead, summary="Change a member's role, limit or shared devices"
)
def update_member(
    account_id: str,
    body: MemberUpdate,
    principal: Owner,
    engine: EngineDep,
    clock: ClockDep,
    customer_id: str | None = None,
) -> MemberRead:
    """Takes effect at their next request: a device no longer shared answers 404 to them from then on. The owner's
    own account cannot be changed here (409)."""
    with transaction(engine) as session:
        return service.update_member(
            session=session,
            customer_id=_household(principal, customer_id),
            account_id=account_id,
            request=body,
            actor=principal.actor,
            now=clock.now(),
        )


@router.delete(
    "/members/{account_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove someone from the household"
)
def remove_member(
    account_id: str, principal: Owner, engine: EngineDep, clock: ClockDep, customer_id: str | None = None
) -> Response:
    """Every token of theirs stops working at once; their account and shares go. The owner cannot be removed (409):
    deleting the whole household is `DELETE /customers/{id}`."""
    with transaction(engine) as session:
        service.remove_member(
            session=session,
            customer_id=_household(principal, customer_id),
            account_id=account_id,
            actor=principal.actor,
            now=clock.now(),
        )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/invitations", response_model=list[InvitationRead], summary="The household's invitations, newest first")
def list_invitations(session: ReadSession, principal: Owner, customer_id: str | None = None) -> list[InvitationRead]:
    found = service.list_invitations(session=session, customer_id=principal.scope(customer_id))
    return [InvitationRead.model_validate(invitation) for invitation in found]


@router.post(
    "/invitations",
    response_model=InvitationRead,
    status_code=status.HTTP_201_CREATED,
    summary="Invite someone to the household as a member or a carer",
)
def invite(
    body: InvitationCreate,
    request: Request,
    principal: Owner,
    engine: EngineDep,
    clock: ClockDep,
    customer_id: str | None = None,
) -> InvitationRead:
    """Mails the address a link (it works once, for 7 days) to a page where they choose their name and password
    (or `POST /api/v1/invitations/{token}`). A member sees the supplies and approves orders up to `approval_limit`;
    a carer sees only `device_ids` (a wearable: its incidents and health) and acknowledges. A new invitation for the
    same address replaces the one still waiting. At most 20 invitations in 24 hours, 3 to one address (429)."""
    with transaction(engine) as session:
        invitation = service.invite(
            session=session,
            customer_id=_household(principal, customer_id),
            request=body,
            actor=principal.actor,
            now=clock.now(),
            channel=api_state(request).sign_up_channel,
        )
        return InvitationRead.model_validate(invitation)


@router.delete(
    "/invitations/{invitation_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke a waiting invitation"
)
def revoke_invitation(
    invitation_id: str, principal: Owner, engine: EngineDep, clock: ClockDep, customer_id: str | None = None
) -> Response:
    """Its link stops working at once. Revoking twice, or one already accepted, changes nothing."""
    with transaction(engine) as session:
        service.revoke_invitation(
            session=session,
            customer_id=_household(principal, customer_id),
            invitation_id=invitation_id,
            actor=principal.actor,
            now=clock.now(),
        )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_LINK: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "A link that never was (forged), was used, or was revoked."},
    410: {"model": ErrorBody, "description": "The invitation expired: ask the owner for a new one."},
}


@invitations_router.get(
    "/{token}",
    response_model=InvitationView,
    summary="What an invitation's link is about",
    openapi_extra={"security": [{}]},
    responses=_LINK,
)
def read_invitation(token: str, session: ReadSession, clock: ClockDep) -> InvitationView:
    return service.view_invitation(
        session=session, invitation=service.read_invitation(session=session, token=token, now=clock.now())
    )


@invitations_router.post(
    "/{token}",
    response_model=Me,
    status_code=status.HTTP_201_CREATED,
    summary="Accept an invitation: choose a name and password",
    openapi_extra={"security": [{}]},
    responses=_LINK | {409: {"model": ErrorBody, "description": "The address has an account already."}},
)
def accept_invitation(token: str, body: InvitationAccept, engine: EngineDep, clock: ClockDep) -> Me:
    """Creates the invited person's account in the household, with the role, limit and devices of the invitation;
    they then sign in with the e-mail and this password. The link works once."""
    with transaction(engine) as session:
        account = service.accept(
            session=session, token=token, name=body.name, password=body.password.get_secret_value(), now=clock.now()
        )
        return Me(
            account_id=account.id,
            email=account.email,
            role=AccountRole(account.role),
            customer_id=account.customer_id,
            household_role=HouseholdRole(account.household_role or HouseholdRole.OWNER),
            approval_limit=account.approval_limit,
        )

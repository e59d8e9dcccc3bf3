"""The household page (its owner's): who is in it and with what role, inviting someone as a member or a carer,
changing what they see and may approve, and removing them, through the same service calls as the API's
`/household` routes. The page the invitation's link opens is in `invitations`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlmodel import Session

from replenish.api.state import api_state
from replenish.auth.service import Principal
from replenish.constants import Capability, DeviceKind, HouseholdRole
from replenish.db import transaction
from replenish.devices import service as devices
from replenish.errors import DomainError
from replenish.households import service as households
from replenish.households.schemas import InvitationCreate, MemberUpdate
from replenish.web.pages import (
    PREFIX,
    FormData,
    WebPrincipal,
    customer_of,
    not_found_page,
    now_of,
    redirect_to,
    render_page,
)
from replenish.web.session import CSRF_FIELD, check_csrf

router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _household_page(
    request: Request,
    principal: Principal,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    customer_id = customer_of(principal)
    principal.require(Capability.MANAGE_HOUSEHOLD)
    now = now_of(request)
    with Session(api_state(request).engine) as session:
        members = households.list_members(session=session, customer_id=customer_id)
        invitations = households.list_invitations(session=session, customer_id=customer_id)
        found = devices.list_devices(session=session, customer_id=customer_id, limit=500)
    waiting = [i for i in invitations if i.accepted_at is None and i.revoked_at is None and i.expires_at > now]
    context = {
        "title": "Household",
        "principal": principal,
        "members": members,
        "invitations": waiting,
        "devices": found,
        "names": {device.id: device.name for device in found},
        "wearables": {device.id for device in found if device.kind == DeviceKind.WEARABLE},
        "errors": errors or {},
        "values": values or {},
        "roles": (HouseholdRole.MEMBER, HouseholdRole.CARER),
    }
    return render_page(request, "household.html", context, status_code=status_code)


@router.get("/household", response_class=HTMLResponse)
def household_page(request: Request, principal: WebPrincipal) -> HTMLResponse:
    return _household_page(request, principal)


def _errors(exc: Exception, prefix: str = "") -> dict[str, str]:
    if isinstance(exc, ValidationError):
        found: dict[str, str] = {}
        for error in exc.errors(include_url=False):
            field = str(error["loc"][0]) if error["loc"] else "form"
            found.setdefault(prefix + field, error["msg"].removeprefix("Value error, "))
        return found
    assert isinstance(exc, DomainError)
    return {prefix + (exc.field or "form"): exc.message}


@router.post("/household/invitations", response_class=HTMLResponse)
async def invite(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    check_csrf(request, form.get(CSRF_FIELD))
    customer_id = customer_of(principal)
    principal.require(Capability.MANAGE_HOUSEHOLD)
    role = form.get("role", "")
    device_ids = [str(value) for value in (await request.form()).getlist("device_ids")]
    values: dict[str, Any] = dict(form) | {"device_ids": device_ids}
    try:
        body = InvitationCreate.model_validate(
            {
                "email": form.get("email", "").strip(),
                "role": role,
                "name": form.get("name", "").strip() or None,
                "approval_limit": (form.get("approval_limit", "").strip() or None) if role == "member" else None,
                "device_ids": device_ids,
            }
        )
        with transaction(api_state(request).engine) as session:
            households.invite(
                session=session,
                customer_id=customer_id,
                request=body,
                actor=principal.actor,
                now=now_of(request),
                channel=api_state(request).sign_up_channel,
            )
    except (ValidationError, DomainError) as exc:
        return _household_page(request, principal, errors=_errors(exc), values=values, status_code=422)
    return redirect_to(f"{PREFIX}/household?invited={body.email}")


@router.post("/household/invitations/{invitation_id}/revoke")
def revoke(request: Request, invitation_id: str, principal: WebPrincipal, form: FormData) -> Response:
    check_csrf(request, form.get(CSRF_FIELD))
    customer_id = customer_of(principal)
    principal.require(Capability.MANAGE_HOUSEHOLD)
    with transaction(api_state(request).engine) as session, not_found_page():
        households.revoke_invitation(
            session=session,
            customer_id=customer_id,
            invitation_id=invitation_id,
            actor=principal.actor,
            now=now_of(request),
        )
    return redirect_to(f"{PREFIX}/household")


@router.post("/household/members/{account_id}", response_class=HTMLResponse)
async def update_member(request: Request, account_id: str, principal: WebPrincipal, form: FormData) -> Response:
    check_csrf(request, form.get(CSRF_FIELD))
    customer_id = customer_of(principal)
    principal.require(Capability.MANAGE_HOUSEHOLD)
    role = form.get("role", "")
    device_ids = [str(value) for value in (await request.form()).getlist("device_ids")]
    try:
        body = MemberUpdate.model_validate(
            {
                "role": role or None,
                "approval_limit": (form.get("approval_limit", "").strip() or None) if role == "member" else None,
                "device_ids": device_ids,
            }
        )
        with transaction(api_state(request).engine) as session:
            households.update_member(
                session=session,
                customer_id=customer_id,
                account_id=account_id,
                request=body,
                actor=principal.actor,
                now=now_of(request),
            )
    except (ValidationError, DomainError) as exc:
        return _household_page(request, principal, errors=_errors(exc, prefix=f"{account_id}:"), status_code=422)
    return redirect_to(f"{PREFIX}/household?saved=1")


@router.post("/household/members/{account_id}/remove")
def remove_member(request: Request, account_id: str, principal: WebPrincipal, form: FormData) -> Response:
    check_csrf(request, form.get(CSRF_FIELD))
    customer_id = customer_of(principal)
    principal.require(Capability.MANAGE_HOUSEHOLD)
    try:
        with transaction(api_state(request).engine) as session, not_found_page():
            households.remove_member(
                session=session,
                customer_id=customer_id,
                account_id=account_id,
                actor=principal.actor,
                now=now_of(request),
            )
    except DomainError as refused:
        return _household_page(request, principal, errors=_errors(refused, prefix=f"{account_id}:"), status_code=409)
    return redirect_to(f"{PREFIX}/household?removed=1")

"""The page an invitation's link opens: who invites you, to what, and a form to choose your name and password.
Following the link creates nothing (a mail scanner fetches links); the form creates the account through the same
service call as `POST /api/v1/invitations/{token}`. A forged, used, revoked or expired link gets a page that says
so, and nothing is created."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Form, Request, status
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session

from replenish.api.state import api_state
from replenish.constants import INVITATION_PAGE_PATH, HouseholdRole
from replenish.db import transaction
from replenish.errors import Conflict, Gone, NotFound
from replenish.households import service as households
from replenish.households.schemas import InvitationAccept, InvitationView
from replenish.web.pages import new_account_page
from replenish.web.session import check_same_origin

router = APIRouter(prefix=INVITATION_PAGE_PATH, include_in_schema=False)

_REFUSED = {
    NotFound: (
        status.HTTP_404_NOT_FOUND,
        "This invitation link does not work: it was used already, revoked, or never was. Ask the household's owner "
        "for a new one.",
    ),
    Gone: (status.HTTP_410_GONE, "This invitation has expired: ask the household's owner for a new one."),
    Conflict: (status.HTTP_409_CONFLICT, ""),  # its own message: the address has an account, or the devices went
}


def _intro(view: InvitationView) -> str:
    if view.role is HouseholdRole.CARER:
        what = f"as a carer: you will see {', '.join(view.device_names)}, its alerts and health"
    else:
        what = "as a member: you will see the household's supplies"
        what += f" and may approve orders up to {view.approval_limit}" if view.approval_limit else ""
    return f"{view.household} invites you to their household {what}."


def _page(
    request: Request,
    *,
    title: str,
    message: str | None = None,
    view: InvitationView | None = None,
    name: str = "",
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return new_account_page(
        request,
        title=title,
        message=message,
        email=view.email if view else None,
        intro=_intro(view) if view else None,
        submit="Join the household",
        name=name,
        errors=errors,
        status_code=status_code,
    )


def _refused(request: Request, refused: Exception) -> HTMLResponse:
    code, message = _REFUSED[type(refused)]
    if isinstance(refused, Conflict):
        message = f"{refused.message[0].upper()}{refused.message[1:]}."
    return _page(request, title="Nothing created", message=message, status_code=code)


def _view(request: Request, token: str) -> InvitationView:
    state = api_state(request)
    with Session(state.engine) as session:
        invitation = households.read_invitation(session=session, token=token, now=state.clock.now())
        return households.view_invitation(session=session, invitation=invitation)


@router.get("/{token}", response_class=HTMLResponse)
def invitation_page(request: Request, token: str) -> HTMLResponse:
    try:
        view = _view(request, token)
    except (NotFound, Gone) as refused:
        return _refused(request, refused)
    return _page(request, title="Join the household", view=view)


@router.post("/{token}", response_class=HTMLResponse)
def accept(
    request: Request, token: str, name: Annotated[str, Form()] = "", password: Annotated[str, Form()] = ""
) -> HTMLResponse:
    check_same_origin(request)
    state = api_state(request)
    try:
        form = InvitationAccept.model_validate({"name": name.strip(), "password": password})
    except ValidationError as invalid:
        errors = {str(error["loc"][0]): error["msg"] for error in invalid.errors(include_url=False)}
        try:
            view = _view(request, token)
        except (NotFound, Gone) as refused:
            return _refused(request, refused)
        return _page(
            request,
            title="Join the household",
            view=view,
            name=name,
            errors=errors,
            status_code=HTTPStatus.UNPROCESSABLE_ENTITY,
        )
    try:
        with transaction(state.engine) as session:
            account = households.accept(
                session=session,
                token=token,
                name=form.name,
                password=form.password.get_secret_value(),
                now=state.clock.now(),
            )
            email = account.email
    except (NotFound, Gone, Conflict) as refused:
        return _refused(request, refused)
    except (IntegrityError, StaleDataError):
        return _refused(request, NotFound("invitation link", "given"))  # the same link accepted twice at once
    return _page(request, title="Welcome to the household", message=f"Sign in with {email} and your new password.")

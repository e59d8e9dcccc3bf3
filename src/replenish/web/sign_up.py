"""Signing up in the web app: a form that asks for the e-mail address only (`POST /api/v1/customers` without a
token, the same service call), and the page the mailed link opens. Following the link creates nothing (a mail scanner
fetches links); its form, where the owner of the address chooses their name and password, creates the account through
the same service call as `POST /api/v1/sign-ups/{token}`."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Form, Request, status
from fastapi.responses import HTMLResponse
from pydantic import EmailStr, TypeAdapter, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from replenish.api.state import api_state
from replenish.constants import SIGN_UP_PAGE_PATH
from replenish.customers import service as customers
from replenish.customers.schemas import SignUpConfirm
from replenish.db import transaction
from replenish.errors import Conflict, Gone, NotFound
from replenish.web.pages import new_account_page
from replenish.web.rendering import templates
from replenish.web.session import check_same_origin

router = APIRouter(prefix=SIGN_UP_PAGE_PATH, include_in_schema=False)

_USED = "This link does not work: it was used already, or the account exists. Sign in instead."
_REFUSED = {
    NotFound: (status.HTTP_404_NOT_FOUND, _USED),
    Gone: (status.HTTP_410_GONE, "This link has expired: sign up again for a new one."),
    Conflict: (status.HTTP_409_CONFLICT, "This address has an account already: sign in instead."),
}


_EMAIL = TypeAdapter(EmailStr)


@router.get("", response_class=HTMLResponse)
def asknew_account_page(request: Request) -> HTMLResponse:
    return templates.TemplateResponse(request, "sign_up_ask.html", {"title": "Create an account", "principal": None})


@router.post("", response_class=HTMLResponse)
def ask(request: Request, email: Annotated[str, Form()] = "") -> HTMLResponse:
    check_same_origin(request)
    try:
        address = _EMAIL.validate_python(email.strip())
    except ValidationError:
        context = {"title": "Create an account", "principal": None, "email": email, "error": "Enter an e-mail address."}
        return templates.TemplateResponse(
            request, "sign_up_ask.html", context, status_code=HTTPStatus.UNPROCESSABLE_ENTITY
        )
    state = api_state(request)
    engine, clock = state.engine, state.clock
    with transaction(engine) as session:
        customers.request_sign_up(session=session, email=address, now=clock.now(), channel=state.sign_up_channel)
    return new_account_page(
        request,
        title="Check your e-mail",
        message=f"A link to finish signing up is on its way to {address.lower()}. It works once, for 24 hours.",
    )


def _refused(request: Request, refused: Exception) -> HTMLResponse:
    code, message = _REFUSED[type(refused)]
    return new_account_page(request, title="Nothing created", message=message, status_code=code)


@router.get("/{token}", response_class=HTMLResponse)
def sign_upnew_account_page(request: Request, token: str) -> HTMLResponse:
    state = api_state(request)
    engine, clock = state.engine, state.clock
    with transaction(engine) as session:
        try:
            pending = customers.read_sign_up(session=session, token=token, now=clock.now())
        except (NotFound, Gone) as refused:
            return _refused(request, refused)
        return new_account_page(request, title="Finish signing up", email=pending.email)


@router.post("/{token}", response_class=HTMLResponse)
def sign_up(
    request: Request, token: str, name: Annotated[str, Form()] = "", password: Annotated[str, Form()] = ""
) -> HTMLResponse:
    check_same_origin(request)
    state = api_state(request)
    engine, clock = state.engine, state.clock
    try:
        form = SignUpConfirm.model_validate({"name": name.strip(), "password": password})
    except ValidationError as invalid:
        errors = {str(error["loc"][0]): error["msg"] for error in invalid.errors(include_url=False)}
        with transaction(engine) as session:
            try:
                pending = customers.read_sign_up(session=session, token=token, now=clock.now())
            except (NotFound, Gone) as refused:
                return _refused(request, refused)
        return new_account_page(
            request,
            title="Finish signing up",
            email=pending.email,
            name=name,
            errors=errors,
            status_code=HTTPStatus.UNPROCESSABLE_ENTITY,
        )
    try:
        with transaction(engine) as session:
            customer = customers.confirm_sign_up(
                session=session,
                token=token,
                name=form.name,
                password=form.password.get_secret_value(),
                consent_document=form.consent,
                now=clock.now(),
            )
            email = customer.email
    except (NotFound, Gone, Conflict) as refused:
        return _refused(request, refused)
    except (IntegrityError, StaleDataError):
        # The same link confirmed twice at once (or the address taken meanwhile): one of them created the account.
        return _refused(request, Conflict("taken"))
    return new_account_page(
        request, title="Your account is ready", message=f"Sign in with {email} and your new password."
    )

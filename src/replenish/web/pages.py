"""What the web app's page modules share: the /app prefix, the signed-in principal, the 404 page's exception, and
rendering a page, reading the clock and the posted form, and redirecting after a form."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse

from replenish.api.state import api_state
from replenish.auth.service import Principal
from replenish.clock import Clock
from replenish.constants import PASSWORD_MIN_LENGTH
from replenish.errors import NotFound
from replenish.web.rendering import templates
from replenish.web.session import CSRF_FIELD, csrf_token, require_principal, session_secret, signed_in

PREFIX = "/app"
WebPrincipal = Annotated[Principal, Depends(require_principal)]


class PageNotFound(Exception):
    """Answered with the app's 404 page: missing and another customer's look the same."""


@contextmanager
def not_found_page() -> Iterator[None]:
    """What the services do not find (missing, or another customer's: the getters filter by the principal's
    customer) is the app's 404 page."""
    try:
        yield
    except NotFound:
        raise PageNotFound from None


def render_page(request: Request, name: str, context: dict[str, Any], *, status_code: int = 200) -> HTMLResponse:
    """The template with what every page needs (the principal, the CSRF token, live updates) under its context."""
    principal = context.get("principal") or signed_in(request)
    secret = session_secret(request)
    return templates.TemplateResponse(
        request,
        name,
        {
            "principal": principal,
            "csrf_field": CSRF_FIELD,
            "csrf": csrf_token(secret) if secret else "",
            "live_page": "",
            "live_seconds": api_state(request).web_live_seconds,
        }
        | context,
        status_code=status_code,
    )


def new_account_page(
    request: Request,
    *,
    title: str,
    message: str | None = None,
    email: str | None = None,
    intro: str | None = None,
    submit: str = "Create my account",
    name: str = "",
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """The page where someone who holds a mailed link (a sign-up, an invitation) chooses their name and password, or
    reads why the link does nothing; nobody is signed in on it."""
    context = {
        "title": title,
        "principal": None,
        "message": message,
        "email": email,
        "intro": intro,
        "submit": submit,
        "name": name,
        "errors": errors,
        "min_length": PASSWORD_MIN_LENGTH,
    }
    return templates.TemplateResponse(request, "sign_up.html", context, status_code=status_code)


def now_of(request: Request) -> datetime:
    """Now, by the clock of the platform serving the request."""
    clock: Clock = api_state(request).clock
    return clock.now()


def redirect_to(path: str) -> RedirectResponse:
    """After a form: 303, so that the browser gets the page and a reload never repeats the action."""
    return RedirectResponse(path, status_code=status.HTTP_303_SEE_OTHER)


async def read_form(request: Request) -> dict[str, str]:
    """The posted form's text fields (a form with dynamic field names: one per device and slot)."""
    return {key: value for key, value in (await request.form()).items() if isinstance(value, str)}


FormData = Annotated[dict[str, str], Depends(read_form)]


def customer_of(principal: Principal) -> str:
    """The signed-in customer's id, for the pages that are a customer's own (consent, push, their data)."""
    if principal.customer_id is None:
        raise PageNotFound  # operators manage a customer's consent through the API, on the customer's behalf
    return principal.customer_id

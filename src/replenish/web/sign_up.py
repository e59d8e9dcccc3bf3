"""The page the sign-up e-mail's link opens: following it creates nothing (a mail scanner fetches links); its one
button creates the account, through the same service call as `POST /api/v1/sign-ups/{token}`."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.responses import HTMLResponse

from replenish.constants import SIGN_UP_PAGE_PATH
from replenish.customers import service as customers
from replenish.db import transaction
from replenish.errors import Conflict, Gone, NotFound
from replenish.web.rendering import templates
from replenish.web.session import check_same_origin

router = APIRouter(prefix=SIGN_UP_PAGE_PATH, include_in_schema=False)

_REFUSED = {
    NotFound: (status.HTTP_404_NOT_FOUND, "This link does not work: it was used already, or a newer one was sent."),
    Gone: (status.HTTP_410_GONE, "This link has expired: sign up again for a new one."),
    Conflict: (status.HTTP_409_CONFLICT, "This address has an account already: sign in instead."),
}


def _page(request: Request, *, title: str, message: str, confirm: bool = False, status_code: int = 200) -> HTMLResponse:
    context = {"title": title, "principal": None, "message": message, "confirm": confirm}
    return templates.TemplateResponse(request, "sign_up.html", context, status_code=status_code)


@router.get("/{token}", response_class=HTMLResponse)
def sign_up_page(request: Request, token: str) -> HTMLResponse:
    engine, clock = request.app.state.engine, request.app.state.clock
    with transaction(engine) as session:
        try:
            pending = customers.read_sign_up(session=session, token=token, now=clock.now())
        except (NotFound, Gone) as refused:
            code, message = _REFUSED[type(refused)]
            return _page(request, title="Link not valid", message=message, status_code=code)
        return _page(
            request,
            title="Finish signing up",
            message=f"Create the account of {pending.name} for {pending.email}, with the password you chose.",
            confirm=True,
        )


@router.post("/{token}", response_class=HTMLResponse)
def sign_up(request: Request, token: str) -> HTMLResponse:
    check_same_origin(request)
    engine, clock = request.app.state.engine, request.app.state.clock
    try:
        with transaction(engine) as session:
            customer = customers.confirm_sign_up(session=session, token=token, now=clock.now())
            email = customer.email
    except (NotFound, Gone, Conflict) as refused:
        code, message = _REFUSED[type(refused)]
        return _page(request, title="Nothing created", message=message, status_code=code)
    return _page(request, title="Your account is ready", message=f"Sign in with {email} and your password.")

"""Your data: everything stored about the signed-in customer as one download (the API's export, audited), and
deleting their account with everything about it (the API's deletion); customers only."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from replenish.api.state import api_state
from replenish.constants import Capability
from replenish.db import transaction
from replenish.errors import TooManyRequests
from replenish.privacy import service as privacy
from replenish.web.pages import PREFIX, FormData, WebPrincipal, customer_of, now_of, redirect_to, render_page
from replenish.web.session import COOKIE_NAME, CSRF_FIELD, check_csrf

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/data", response_class=HTMLResponse)
def data_page(request: Request, principal: WebPrincipal) -> HTMLResponse:
    """Everything stored about you as one download, and deleting your account with everything about it."""
    customer_of(principal)
    principal.require(Capability.MANAGE_DATA)
    return render_page(request, "data.html", {"title": "Your data", "principal": principal, "errors": {}})


@router.get("/data/export")
def data_export(request: Request, principal: WebPrincipal) -> Response:
    """The API's export (the same document, the same audit record), as a download."""
    customer_id = customer_of(principal)
    principal.require(Capability.MANAGE_DATA)
    engine, now = api_state(request).engine, now_of(request)
    with transaction(engine) as session:
        privacy.record_export(session=session, customer_id=customer_id, actor=principal.actor, now=now)
    return StreamingResponse(
        privacy.export(engine=engine, customer_id=customer_id, now=now),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{privacy.export_filename(customer_id)}"'},
    )


@router.post("/data/delete")
def data_delete(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """The API's deletion: the e-mail typed out and the password, then everything goes; the session with it."""
    check_csrf(request, form.get(CSRF_FIELD))
    customer_id = customer_of(principal)
    principal.require(Capability.MANAGE_DATA)
    now = now_of(request)
    with transaction(api_state(request).engine) as session:
        refused = privacy.check_deletion(
            session=session,
            customer_id=customer_id,
            principal=principal,
            confirm=form.get("confirm", ""),
            password=form.get("password", ""),
            now=now,
        )
        if refused is None:
            privacy.delete_customer(session=session, customer_id=customer_id, actor=principal.actor, now=now)
    if refused is not None:  # the wrong password is counted (committed) all the same
        field = "password" if refused.field == "password" or isinstance(refused, TooManyRequests) else "confirm"
        message = (
            str(refused).capitalize() + "."
            if isinstance(refused, TooManyRequests)
            else {
                "confirm": "Type the e-mail address of your account exactly.",
                "password": "That is not your password.",
            }[field]
        )
        context = {
            "title": "Your data",
            "principal": principal,
            "errors": {field: message},
            "confirm": form.get("confirm", ""),
        }
        return render_page(request, "data.html", context)
    response = redirect_to(f"{PREFIX}/sign-in?deleted=1")
    response.delete_cookie(COOKIE_NAME, path=PREFIX)
    return response

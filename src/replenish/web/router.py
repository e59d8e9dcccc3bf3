"""The customer web app under /app: server-rendered pages over the same services the API uses.

Pages read through the domain services with the signed-in principal's scope, exactly as the API's routes do, so a
customer sees only their own devices and orders and another customer's answers 404; a member or carer sees what
their household role allows, and an act beyond it is a 403 page. Forms post back here (with the session's CSRF
token) and redirect, so a reload never repeats an action.

One module per group of pages, each with its own router (`supplies`, `orders`, `push`, `live`, `alerts`, `consent`,
`household`, `fleet`, `data`, `sign_in`; the sign-up, invitation and one-tap answer pages in `sign_up`,
`invitations` and `answers`); what they share is in `pages`. This module mounts them on the API's application,
with the catch-all that answers the app's 404 page.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from replenish.api.headers import ResponseHeaders
from replenish.constants import ANSWER_PAGE_PATH
from replenish.errors import RoleForbidden
from replenish.web import alerts as alert_pages
from replenish.web import answers as answer_pages
from replenish.web import consent as consent_pages
from replenish.web import data as data_pages
from replenish.web import fleet as fleet_pages
from replenish.web import household as household_pages
from replenish.web import invitations as invitation_pages
from replenish.web import live as live_pages
from replenish.web import orders as order_pages
from replenish.web import push as push_pages
from replenish.web import sign_in as sign_in_pages
from replenish.web import sign_up as sign_up_pages
from replenish.web import supplies as supply_pages
from replenish.web.pages import PREFIX, PageNotFound, render_page
from replenish.web.rendering import STATIC_DIR
from replenish.web.session import CsrfRejected, SignInRequired

# Only the catch-all: included after every other router under /app, which it would otherwise shadow.
router = APIRouter(prefix=PREFIX, include_in_schema=False)
# The pages' routers in the order they are matched (no two of them answer the same path: only the catch-all above,
# last, overlaps them).
PAGE_ROUTERS = (
    supply_pages.router,
    order_pages.router,
    push_pages.router,
    live_pages.router,
    alert_pages.router,
    consent_pages.router,
    household_pages.router,
    fleet_pages.router,
    data_pages.router,
    sign_in_pages.router,
)


# Pages carry a customer's data: not kept in caches (nor shown from one after signing out), never framed by
# another site (a one-click Approve under someone else's page), and nothing loaded from anywhere else.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "Referrer-Policy": "same-origin",
}


def _page_headers(path: str) -> Mapping[str, str]:
    if (path == PREFIX or path.startswith(f"{PREFIX}/")) and not path.startswith(f"{PREFIX}/static/"):
        return PAGE_HEADERS
    if path.startswith(f"{ANSWER_PAGE_PATH}/"):
        # The link's token is in the address: same-origin keeps it from any other site as a referrer (and unlike
        # no-referrer, lets the page's own form send its Origin, which the POST checks).
        return PAGE_HEADERS
    return {}


def is_page(path: str) -> bool:
    """A path of the web app's pages (the API answers its errors as JSON, the pages as pages)."""
    return path == PREFIX or path.startswith(f"{PREFIX}/")


def forbidden_page(request: Request, refused: RoleForbidden) -> HTMLResponse:
    """An act beyond the signed-in person's household role: nothing was changed, and the page says why."""
    context = {"title": "Not for your role", "message": f"Nothing was changed: {refused.message}."}
    return render_page(request, "message.html", context, status_code=status.HTTP_403_FORBIDDEN)


def install(app: FastAPI) -> None:
    """Mount the web app on the API's application: its pages, its static files, and how its errors look."""
    # The static files first: the pages' routers end with a catch-all that answers the app's 404 page.
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC_DIR), name="web-static")
    app.include_router(sign_up_pages.router)  # before the pages' catch-all under the same /app prefix
    app.include_router(invitation_pages.router)
    for page_router in PAGE_ROUTERS:
        app.include_router(page_router)
    app.include_router(router)  # the catch-all, after every other route under /app
    app.include_router(answer_pages.router)

    app.add_middleware(ResponseHeaders, headers_for=_page_headers)

    @app.exception_handler(SignInRequired)
    async def _sign_in_first(request: Request, exc: SignInRequired) -> Response:
        return RedirectResponse(f"{PREFIX}/sign-in?next={quote(exc.next_path)}", status_code=status.HTTP_303_SEE_OTHER)

    @app.exception_handler(PageNotFound)
    async def _not_found(request: Request, exc: PageNotFound) -> Response:
        return render_page(request, "not_found.html", {"title": "Not found"}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(CsrfRejected)
    async def _csrf(request: Request, exc: CsrfRejected) -> Response:
        context = {"title": "Form expired", "message": "This form has expired: go back, reload the page and try again."}
        return render_page(request, "message.html", context, status_code=status.HTTP_403_FORBIDDEN)


@router.get("/{rest:path}", response_class=HTMLResponse)
def unknown_page(rest: str) -> HTMLResponse:
    raise PageNotFound

"""The pages a customer's one-tap links open, without signing in: what the link would do and one button to do it.

Following a link changes nothing (a mail scanner that fetches every link approves nothing); the button posts back
here and acts through the same order transition as the API and the app. A link that does nothing (forged, expired,
used, answered since, or sent under an older consent) says why, and an audit record keeps it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.responses import HTMLResponse

from replenish.answers import service as answers
from replenish.answers.service import LinkRefused, LinkView
from replenish.api.state import api_state
from replenish.constants import ANSWER_PAGE_PATH, LinkAction
from replenish.db import transaction
from replenish.web.rendering import templates
from replenish.web.session import check_same_origin

router = APIRouter(prefix=ANSWER_PAGE_PATH, include_in_schema=False)

_CONFIRM = {LinkAction.APPROVE: "Approve order", LinkAction.DECLINE: "Decline order", LinkAction.CANCEL: "Cancel order"}
_QUESTION = {
    LinkAction.APPROVE: "Approve this order?",
    LinkAction.DECLINE: "Decline this order?",
    LinkAction.CANCEL: "Cancel this order?",
}
_DONE = {
    LinkAction.APPROVE: ("Approved", "It is ordered and on its way to the supplier."),
    LinkAction.DECLINE: ("Declined", "Nothing is ordered. You can order it from the app whenever you like."),
    LinkAction.CANCEL: ("Cancelled", "It never reached the supplier, and nothing is charged."),
}
_REFUSED_STATUS = {
    "unknown": status.HTTP_404_NOT_FOUND,
    "expired": status.HTTP_410_GONE,
    "used": status.HTTP_410_GONE,
    "answered": status.HTTP_409_CONFLICT,
    "consent_changed": status.HTTP_409_CONFLICT,
}


def _render(
    request: Request,
    *,
    title: str,
    view: LinkView | None = None,
    message: str | None = None,
    confirm: str | None = None,
    order_id: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    context = {
        "title": title,
        "principal": None,
        "view": view,
        "message": message,
        "confirm": confirm,
        "order_id": order_id or (view.order.id if view else None),
    }
    return templates.TemplateResponse(request, "answer.html", context, status_code=status_code)


def _refused(request: Request, refusal: LinkRefused) -> HTMLResponse:
    order_id = refusal.link.order_id if refusal.link is not None and refusal.problem != "unknown" else None
    title = "Link not valid" if refusal.problem == "unknown" else "Nothing changed"
    return _render(
        request, title=title, message=refusal.message, order_id=order_id, status_code=_REFUSED_STATUS[refusal.problem]
    )


@router.get("/{token}", response_class=HTMLResponse)
def answer_page(request: Request, token: str) -> HTMLResponse:
    state = api_state(request)
    engine, clock = state.engine, state.clock
    with transaction(engine) as session:  # commits only the audit record of a refused link
        try:
            view = answers.read_link(session=session, token=token, now=clock.now())
        except LinkRefused as refusal:
            failed = refusal
        else:
            return _render(request, title=_QUESTION[view.action], view=view, confirm=_CONFIRM[view.action])
    return _refused(request, failed)


@router.post("/{token}", response_class=HTMLResponse)
def answer(request: Request, token: str) -> HTMLResponse:
    check_same_origin(request)
    state = api_state(request)
    engine, clock = state.engine, state.clock
    with transaction(engine) as session:
        try:
            view = answers.use_link(session=session, token=token, now=clock.now())
        except LinkRefused as refusal:
            failed = refusal
        else:
            title, message = _DONE[view.action]
            return _render(request, title=title, view=view, message=message)
    return _refused(request, failed)

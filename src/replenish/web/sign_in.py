"""Signing in and out of the web app: the API's sign-in (same rate limit, audit and token lifetime), the token kept
in an HttpOnly cookie scoped to /app (the cookie and CSRF machinery is in session.py); signing out revokes it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from replenish.api.state import api_state
from replenish.auth import service as auth
from replenish.db import transaction
from replenish.errors import TooManyRequests
from replenish.web.pages import PREFIX, now_of, redirect_to, render_page
from replenish.web.session import COOKIE_NAME, CSRF_FIELD, check_csrf, check_same_origin, signed_in

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_page(request: Request, next: str = PREFIX) -> Response:
    if signed_in(request) is not None:
        return redirect_to(_safe_next(next))
    return render_page(request, "sign_in.html", {"title": "Sign in", "next": _safe_next(next), "email": ""})


@router.post("/sign-in", response_class=HTMLResponse)
def sign_in(
    request: Request,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = PREFIX,
) -> Response:
    """The API's sign-in (same rate limit, audit and token lifetime), the token kept in an HttpOnly cookie."""
    check_same_origin(request)
    errors: dict[str, str] = {}
    if not email.strip():
        errors["email"] = "Enter the e-mail address you signed up with."
    if not password:
        errors["password"] = "Enter your password."
    issued = None
    if not errors:
        try:
            with transaction(api_state(request).engine) as session:
                issued = auth.sign_in(
                    session=session,
                    email=email,
                    password=password,
                    now=now_of(request),
                    lifetime=api_state(request).session_lifetime,
                )
        except TooManyRequests as exc:
            errors["email"] = str(exc).capitalize() + "."
        else:
            if issued is None:
                errors["password"] = "That e-mail and password do not match an account."
    if issued is None:
        context = {"title": "Sign in", "next": _safe_next(next), "email": email, "errors": errors}
        # 200, not 401: the form is shown again with its errors, and a browser logs every 4xx as a console error.
        return render_page(request, "sign_in.html", context)
    token, secret = issued
    previous = signed_in(request)
    if previous is not None:  # signing in again in the same browser: the old session ends, not just its cookie
        with transaction(api_state(request).engine) as session:
            auth.revoke_token(
                session=session, account_id=previous.account_id, token_id=previous.token_id, now=now_of(request)
            )
    response = redirect_to(_safe_next(next))
    max_age = int((token.expires_at - now_of(request)).total_seconds()) if token.expires_at else None
    response.set_cookie(
        COOKIE_NAME,
        secret,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=PREFIX,
    )
    return response


@router.post("/sign-out")
def sign_out(request: Request, csrf: Annotated[str | None, Form(alias=CSRF_FIELD)] = None) -> Response:
    check_csrf(request, csrf)
    principal = signed_in(request)
    if principal is not None:
        with transaction(api_state(request).engine) as session:
            auth.revoke_token(
                session=session, account_id=principal.account_id, token_id=principal.token_id, now=now_of(request)
            )
    response = redirect_to(f"{PREFIX}/sign-in")
    response.delete_cookie(COOKIE_NAME, path=PREFIX)
    return response


def _safe_next(path: str) -> str:
    """Only a page of this app: never a redirect to another site, nor out of /app."""
    inside = path == PREFIX or path.startswith(f"{PREFIX}/") or path.startswith(f"{PREFIX}?")
    return path if inside and ".." not in path and "//" not in path and "\\" not in path else PREFIX

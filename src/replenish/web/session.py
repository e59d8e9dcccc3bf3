"""Signing in to the web app: the API's own sign-in tokens, carried in a cookie, and a CSRF token per sign-in.

The cookie holds the same kind of token `POST /api/v1/auth/token` issues, so the web app and the API share one set
of session rules: the same lifetime, revocation on sign-out or password change, and the same scoping of every
object to its customer. The cookie is HttpOnly and SameSite=Strict; every form also carries a CSRF token derived
from the session's secret, checked on each POST.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request
from sqlmodel import Session

from replenish.api.state import api_state
from replenish.auth import service as auth
from replenish.auth.service import Principal

COOKIE_NAME = "replenish_session"
CSRF_FIELD = "csrf_token"
_CSRF_LABEL = b"replenish web form"


class SignInRequired(Exception):
    """The page needs a signed-in user; the app answers with a redirect to the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class CsrfRejected(Exception):
    """A form came without the CSRF token of the session that sent it."""


def session_secret(request: Request) -> str | None:
    return request.cookies.get(COOKIE_NAME)


def csrf_token(secret: str) -> str:
    """The session's CSRF token: a keyed hash of its secret, so only a page served to that session carries it."""
    return hmac.new(secret.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def signed_in(request: Request) -> Principal | None:
    secret = session_secret(request)
    if not secret:
        return None
    with Session(api_state(request).engine) as session:
        return auth.principal_for(session=session, secret=secret, now=api_state(request).clock.now())


def require_principal(request: Request) -> Principal:
    principal = signed_in(request)
    if principal is None:
        # Back to the page after signing in; a form's POST cannot be repeated by a GET, so that one goes home.
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(back if request.method == "GET" else "/app")
    return principal


def check_same_origin(request: Request) -> None:
    """Refuse a form posted from another site. SameSite=Strict keeps the session cookie off such requests, but a
    sign-in form posted from elsewhere would set a cookie (signing the victim in to the attacker's account)."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise CsrfRejected
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise CsrfRejected


def check_csrf(request: Request, submitted: str | None) -> None:
    check_same_origin(request)
    secret = session_secret(request)
    if not secret or not submitted or not hmac.compare_digest(csrf_token(secret), submitted):
        raise CsrfRejected

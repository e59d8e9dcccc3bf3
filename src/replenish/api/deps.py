from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.security import OAuth2PasswordBearer
from pydantic import AwareDatetime, BeforeValidator
from sqlalchemy import Engine
from sqlmodel import Session

from replenish.api.state import api_state
from replenish.auth import service as auth
from replenish.auth.service import Principal
from replenish.clock import Clock
from replenish.constants import Capability
from replenish.errors import Forbidden, Unauthorized

TOKEN_URL = "/api/v1/auth/token"
_bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


# The dependencies that only read the request or check what another one returned are async: FastAPI runs a sync
# one in a worker thread, a hop that costs more than the work. Those that reach the database stay sync.
async def get_engine(request: Request) -> Engine:
    engine: Engine = api_state(request).engine
    return engine


async def get_clock(request: Request) -> Clock:
    clock: Clock = api_state(request).clock
    return clock


def read_session(engine: Annotated[Engine, Depends(get_engine)]) -> Iterator[Session]:
    """A session for reads only; writes open their own transaction so they commit before answering."""
    with Session(engine) as session:
        yield session


def optional_principal(
    engine: Annotated[Engine, Depends(get_engine)],
    clock: Annotated[Clock, Depends(get_clock)],
    token: Annotated[str | None, Depends(_bearer)],
) -> Principal | None:
    """The caller, when they sent a bearer token; a token that is not (or no longer) valid is refused."""
    if token is None:
        return None
    with Session(engine) as session:
        principal = auth.principal_for(session=session, secret=token, now=clock.now())
    if principal is None:
        raise Unauthorized("the bearer token is unknown, expired or revoked: sign in again")
    return principal


async def current_principal(principal: Annotated[Principal | None, Depends(optional_principal)]) -> Principal:
    if principal is None:
        raise Unauthorized(f"sign in first: send Authorization: Bearer <token> (tokens come from {TOKEN_URL})")
    return principal


async def current_operator(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.is_operator:
        raise Forbidden("only an operator may do this")
    return principal


def requires(capability: Capability) -> Any:
    """A dependency: the caller, when their household role allows ``capability`` (a 403 naming the role, kept in the
    audit log, when it does not). Operators and owners may do anything a route otherwise lets them."""

    async def allowed(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        principal.require(capability)
        return principal

    return Depends(allowed)


EngineDep = Annotated[Engine, Depends(get_engine)]
ClockDep = Annotated[Clock, Depends(get_clock)]
ReadSession = Annotated[Session, Depends(read_session)]
Limit = Annotated[int, Query(ge=1, le=1000, description="Most items to return.")]
# Bounded: a 64-bit offset overflows the databases' OFFSET (a 500); nobody pages past a million items.
MAX_OFFSET = 1_000_000
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip, for paging (at most 1,000,000).")]
OptionalPrincipal = Annotated[Principal | None, Depends(optional_principal)]
CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
CurrentOperator = Annotated[Principal, Depends(current_operator)]


_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _not_a_number(value: Any) -> Any:
    # Pydantic reads a number as epoch seconds: `since=0.5` would mean 1970, silently.
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("expected an ISO 8601 time with a UTC offset, e.g. 2026-11-24T10:00:00Z, not a number")
    return value


#: A time in a query: ISO 8601 with its UTC offset, never a bare number.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_not_a_number)]

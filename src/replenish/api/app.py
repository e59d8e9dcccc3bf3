"""The FastAPI application: routers of every domain under /api/v1, errors as clear 4xx answers."""

from __future__ import annotations

import functools
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from starlette.concurrency import run_in_threadpool

from replenish import __version__
from replenish.alerts.router import acknowledgement_page_router, acknowledgements_router
from replenish.alerts.router import router as alerts_router
from replenish.api.deps import EngineDep
from replenish.api.headers import ResponseHeaders
from replenish.api.state import ApiState, PlatformApp, api_state
from replenish.audit import service as audit
from replenish.audit.router import router as audit_router
from replenish.auth.router import router as auth_router
from replenish.catalogue.router import router as catalogue_router
from replenish.consent.router import router as consent_router
from replenish.constants import AuditAction
from replenish.customers.router import router as customers_router
from replenish.customers.router import sign_ups as sign_ups_router
from replenish.db import transaction
from replenish.devices.router import router as devices_router
from replenish.errors import DomainError, ErrorBody, RoleForbidden, TooManyRequests, Unauthorized, UnprocessableBody
from replenish.health.router import router as alarms_router
from replenish.households.router import invitations_router
from replenish.households.router import router as household_router
from replenish.ingest.router import router as dead_letters_router
from replenish.mqtt.probe import OK
from replenish.notifications.router import providers_router, push_router
from replenish.notifications.router import router as notifications_router
from replenish.orders.router import fulfilment_router, shipments_router, slot_orders_router
from replenish.orders.router import router as orders_router
from replenish.outcomes.router import router as outcomes_router
from replenish.privacy.router import router as privacy_router
from replenish.web import router as web

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
NO_SNIFFING = {"X-Content-Type-Options": "nosniff"}

DESCRIPTION = """
Replenish ingests device telemetry over MQTT, forecasts when each consumable runs out, and acts exactly as far
as the customer has consented: order, ask first, notify, or nothing. Every order explains itself: the readings,
the forecast, the rule and the consent version behind it.

Authentication: every route but sign-in (`POST /api/v1/auth/token`), sign-up (`POST /api/v1/customers`, then `POST
/api/v1/sign-ups/{token}` with the link mailed to the address), the links sent to emergency contacts
(`/api/v1/acknowledgements/{token}`) and fulfilment partners' signed events needs `Authorization: Bearer <token>`: a
token from signing in, or a personal API token (`POST /api/v1/auth/tokens`). A customer sees and changes only their
own customer record, consent, devices, orders, alerts and notifications; anything of another customer's answers 404,
exactly like something that does not exist. Operators see everything; some routes (dead letters, fulfilment updates,
the customer list) are theirs only and answer 403 to a customer.

Households: the owner (who signed up) invites members and carers (`POST /api/v1/household/invitations`). A member
sees the supplies and approves orders up to their limit; a carer sees only the devices shared with them (a
wearable), their incidents and health. A device a member or carer does not see answers 404; an act beyond their
role answers 403 naming the role (`role`), and is kept in the audit log.

Errors: 401 without a valid token, 403 for a route the caller's role may not use, 404 for an unknown object,
409 for a state change that is not allowed (e.g. approving a declined order), 422 for an invalid request, naming
the field (`detail[].loc`, or `field`).
"""


class Readiness(BaseModel):
    """/readyz's answer, 200 or 503 alike."""

    status: str = Field(description='"ok" when every dependency answered, "unavailable" otherwise.')
    database: str = Field(description='"ok", or the class of the error the database driver raised.')
    broker: str = Field(
        description='"ok" when the MQTT broker answered a CONNECT (any CONNACK but "server unavailable"), or what '
        "went wrong in a few words. Checked at most every couple of seconds; later probes get the same answer."
    )
    failed: list[str] = Field(description='The dependencies that did not answer: "database", "broker"; empty if none.')


def create_app(state: ApiState) -> PlatformApp:
    """The API and the web app, serving one platform's database, clock and broker."""
    return PlatformApp(application(), state)


@functools.cache
def application() -> FastAPI:
    """The application every platform in this process serves (replenish.api.state says why one)."""
    # The docs' pages (/docs, /redoc) with their scripts and styles served from the package, not from a CDN: they
    # work offline and load nothing from anywhere else.
    app = FastAPIOffline(title="Replenish", version=__version__, description=DESCRIPTION)

    # Every answer is what its Content-Type says: a browser never guesses a script out of an uploaded body.
    app.add_middleware(ResponseHeaders, headers_for=lambda path: NO_SNIFFING)

    @app.exception_handler(DomainError)
    async def _domain_error(request: Request, exc: DomainError) -> JSONResponse:
        headers = None
        if isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        elif isinstance(exc, TooManyRequests):
            headers = {"Retry-After": str(exc.retry_after_seconds)}
        return JSONResponse(status_code=exc.status_code, content=exc.body(), headers=headers)

    @app.exception_handler(RoleForbidden)
    async def _role_forbidden(request: Request, exc: RoleForbidden) -> Response:
        await run_in_threadpool(_record_refusal, request, exc)
        if web.is_page(request.url.path):
            return web.forbidden_page(request, exc)
        return JSONResponse(status_code=exc.status_code, content=exc.body())

    @app.exception_handler(StaleDataError)
    @app.exception_handler(IntegrityError)
    async def _integrity_error(request: Request, exc: Exception) -> JSONResponse:
        # Two requests raced for the same unique thing (an e-mail, a device id, a consent version); one won.
        return JSONResponse(
            status_code=409,
            content={"detail": "a concurrent request changed this first; read it again and retry", "field": None},
        )

    def error(description: str) -> dict[str, Any]:
        return {"model": ErrorBody, "description": description}

    responses: dict[int | str, dict[str, Any]] = {
        400: error("The request body could not be read (a malformed form or multipart body)."),
        401: error("No valid bearer token (also for a wrong e-mail or password at sign-in)."),
        403: error(
            "The caller's role may not do this: an operator's route, or an act beyond the caller's household role "
            "(`role` names it; the refusal is in the audit log)."
        ),
        404: error("No such object, or it is another customer's."),
        409: error("The object's state does not allow this change, or a concurrent request changed it first."),
        422: {
            "model": UnprocessableBody,
            "description": "The request does not fit its schema (`detail`: a list of issues), or breaks a business "
            "rule (`detail`: which, `field`: where).",
        },
    }
    for router in (
        auth_router,
        customers_router,
        consent_router,
        devices_router,
        orders_router,
        shipments_router,
        slot_orders_router,
        alerts_router,
        alarms_router,
        notifications_router,
        push_router,
        dead_letters_router,
        audit_router,
        privacy_router,
        catalogue_router,
        household_router,
        outcomes_router,
    ):
        app.include_router(router, prefix=API_PREFIX, responses=responses)
    unauthenticated: dict[int | str, dict[str, Any]] = {status: responses[status] for status in (400, 404, 409, 422)}
    app.include_router(fulfilment_router, prefix=API_PREFIX, responses=unauthenticated)
    app.include_router(sign_ups_router, prefix=API_PREFIX, responses=unauthenticated)
    app.include_router(acknowledgements_router, prefix=API_PREFIX, responses=unauthenticated)
    app.include_router(invitations_router, prefix=API_PREFIX, responses=unauthenticated)
    app.include_router(providers_router, prefix=API_PREFIX, responses=unauthenticated)
    app.include_router(acknowledgement_page_router)

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="The database and the MQTT broker answer",
        description="200 when both answer, 503 naming the one that did not (`failed`). No authentication, as for "
        "/healthz: for orchestrators and load balancers.",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "A dependency did not answer; `failed` names it."}},
    )
    def readyz(request: Request, engine: EngineDep) -> JSONResponse:
        database = OK
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:
            # The error class only: a driver's message can carry the host and user of the database.
            database = type(exc).__name__
        answers = {"database": database, "broker": api_state(request).broker.check()}
        failed = [name for name, answer in answers.items() if answer != OK]
        readiness = Readiness(status="unavailable" if failed else "ok", failed=failed, **answers)
        return JSONResponse(status_code=503 if failed else 200, content=readiness.model_dump())

    web.install(app)
    return app


def _record_refusal(request: Request, refused: RoleForbidden) -> None:
    """Who tried what beyond their role, kept whatever became of the request's own transaction (rolled back). A
    database that cannot take the record now does not turn the 403 into a 500: the refusal is logged instead."""
    try:
        _write_refusal(request, refused)
    except Exception:
        log.exception("could not keep the refusal of %s %s for %s", request.method, request.url.path, refused.actor)


def _write_refusal(request: Request, refused: RoleForbidden) -> None:
    state = api_state(request)
    with transaction(state.engine) as session:
        audit.record(
            session=session,
            at=state.clock.now(),
            actor=refused.actor,
            action=AuditAction.ACCESS_DENIED,
            customer_id=refused.customer_id,
            subject_type=refused.subject_type or "customer",
            subject_id=refused.subject_id or refused.customer_id or "",
            detail={"role": refused.role, "request": f"{request.method} {request.url.path}", "reason": refused.message},
        )

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import Engine
from sqlmodel import Session

from replenish.api.deps import ClockDep, CurrentPrincipal, EngineDep, ReadSession
from replenish.api.state import api_state
from replenish.audit import service as audit
from replenish.auth import service
from replenish.auth.schemas import (
    Me,
    PasswordChange,
    PersonalTokenCreate,
    PersonalTokenCreated,
    TokenIssued,
    TokenRead,
)
from replenish.auth.service import Principal
from replenish.constants import (
    AuditAction,
    TokenKind,
)
from replenish.db import transaction
from replenish.errors import ErrorBody, Unauthorized

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/token",
    response_model=TokenIssued,
    summary="Sign in: e-mail and password for a bearer token",
    responses={429: {"model": ErrorBody, "description": "Too many failed sign-ins for the e-mail; see Retry-After."}},
    openapi_extra={"security": []},
)
def sign_in(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request, engine: EngineDep, clock: ClockDep
) -> TokenIssued:
    """OAuth2's password flow: a form with `username` (the e-mail) and `password`. The token expires after
    REPLENISH_SESSION_HOURS; a wrong e-mail and a wrong password get the same 401. Both outcomes go to the audit
    log."""
    with transaction(engine) as session:
        issued = service.sign_in(
            session=session,
            email=form.username,
            password=form.password,
            now=clock.now(),
            lifetime=api_state(request).session_lifetime,
        )
    if issued is None:
        raise Unauthorized("incorrect e-mail or password")
    token, secret = issued
    return TokenIssued(access_token=secret, expires_at=token.expires_at)


@router.post("/password", response_model=TokenIssued, summary="Change the password; every token stops working")
def change_password(
    body: PasswordChange, principal: CurrentPrincipal, request: Request, engine: EngineDep, clock: ClockDep
) -> TokenIssued:
    """Every token of the account is revoked, this one and personal tokens included; the answer is a new sign-in
    token."""
    now = clock.now()
    _reauthenticate(engine, principal, body.current_password.get_secret_value(), now)
    with transaction(engine) as session:
        account = service.set_password(
            session=session, email=principal.email, password=body.new_password.get_secret_value(), now=now
        )
        assert account is not None
        token, secret = service.issue_token(
            session=session,
            account=account,
            kind=TokenKind.SESSION,
            name="sign-in",
            now=now,
            lifetime=api_state(request).session_lifetime,
        )
        audit.record(
            session=session,
            at=now,
            actor=principal.actor,
            action=AuditAction.PASSWORD_CHANGED,
            customer_id=principal.customer_id,
            subject_type="account",
            subject_id=account.id,
        )
        return TokenIssued(access_token=secret, expires_at=token.expires_at)


def _reauthenticate(engine: Engine, principal: Principal, password: str, now: datetime) -> None:
    """The caller's password again, under the sign-in's limit and audit: a failure is committed, then refused."""
    with transaction(engine) as session:
        refused = service.check_password(session=session, principal=principal, password=password, now=now)
    if refused is not None:
        raise refused


def _record_token_event(
    session: Session, principal: Principal, action: AuditAction, token_id: str, now: datetime, **detail: str
) -> None:
    audit.record(
        session=session,
        at=now,
        actor=principal.actor,
        action=action,
        customer_id=principal.customer_id,
        subject_type="token",
        subject_id=token_id,
        detail=detail,
    )


@router.post("/sign-out", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke the token of this request")
def sign_out(principal: CurrentPrincipal, engine: EngineDep, clock: ClockDep) -> None:
    now = clock.now()
    with transaction(engine) as session:
        service.revoke_token(session=session, account_id=principal.account_id, token_id=principal.token_id, now=now)
        _record_token_event(session, principal, AuditAction.SIGN_OUT, principal.token_id, now)


@router.get("/me", response_model=Me, summary="Who the token stands for")
def me(principal: CurrentPrincipal) -> Me:
    return Me(
        account_id=principal.account_id,
        email=principal.email,
        role=principal.role,
        customer_id=principal.customer_id,
        household_role=principal.household_role,
        approval_limit=principal.approval_limit,
        device_ids=sorted(principal.visible_devices) if principal.visible_devices is not None else None,
    )


@router.get("/tokens", response_model=list[TokenRead], summary="The caller's tokens, newest first (no secrets)")
def list_tokens(principal: CurrentPrincipal, session: ReadSession) -> list[TokenRead]:
    return [TokenRead.model_validate(t) for t in service.list_tokens(session=session, account_id=principal.account_id)]


@router.post(
    "/tokens",
    status_code=status.HTTP_201_CREATED,
    response_model=PersonalTokenCreated,
    summary="Create a personal API token (its secret is shown once)",
)
def create_token(
    body: PersonalTokenCreate, principal: CurrentPrincipal, engine: EngineDep, clock: ClockDep
) -> PersonalTokenCreated:
    lifetime = timedelta(days=body.expires_in_days) if body.expires_in_days is not None else None
    now = clock.now()
    _reauthenticate(engine, principal, body.password.get_secret_value(), now)
    with transaction(engine) as session:
        account = service.get_account(session=session, account_id=principal.account_id)
        token, secret = service.issue_token(
            session=session, account=account, kind=TokenKind.PERSONAL, name=body.name, now=now, lifetime=lifetime
        )
        _record_token_event(session, principal, AuditAction.TOKEN_CREATED, token.id, now, name=token.name)
        return PersonalTokenCreated(**TokenRead.model_validate(token).model_dump(), token=secret)


@router.delete("/tokens/{token_id}", response_model=TokenRead, summary="Revoke one of the caller's tokens")
def revoke_token(token_id: str, principal: CurrentPrincipal, engine: EngineDep, clock: ClockDep) -> TokenRead:
    """It stops working at once. Another account's token answers 404."""
    now = clock.now()
    with transaction(engine) as session:
        token = service.revoke_token(session=session, account_id=principal.account_id, token_id=token_id, now=now)
        _record_token_event(session, principal, AuditAction.TOKEN_REVOKED, token.id, now)
        return TokenRead.model_validate(token)

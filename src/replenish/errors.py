"""Domain errors. Services raise these; the API turns them into clear 4xx answers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every 4xx from a business rule."""

    detail: str
    field: str | None = Field(None, description="The request field the error concerns, when one does.")


class ValidationIssue(BaseModel):
    """One invalid part of a request, as FastAPI reports it."""

    loc: list[str | int]
    msg: str
    type: str


class UnprocessableBody(BaseModel):
    """A 422: either the request does not fit its schema (``detail`` lists each issue, FastAPI's shape) or it fits
    and breaks a business rule (``detail`` says which, ``field`` names the field)."""

    detail: str | list[ValidationIssue]
    field: str | None = Field(None, description="With a business rule: the request field it concerns, if one.")


class DomainError(Exception):
    status_code = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        """The answer's JSON: ErrorBody's fields, and any a subclass adds."""
        return {"detail": self.message, "field": self.field}


class NotFound(DomainError):
    status_code = 404

    def __init__(self, entity: str, key: str) -> None:
        super().__init__(f"{entity} {key!r} not found")


class Conflict(DomainError):
    status_code = 409


class Gone(DomainError):
    """It existed and no longer works (an expired link)."""

    status_code = 410


class InvalidRequest(DomainError):
    status_code = 422


class PayloadTooLarge(DomainError):
    status_code = 413


class SignatureRejected(DomainError):
    """A signed request (a fulfilment partner's webhook) whose signature does not hold: 401, no Bearer challenge."""

    status_code = 401


class Unauthorized(DomainError):
    """No valid credentials: answered with `WWW-Authenticate: Bearer`."""

    status_code = 401


class Forbidden(DomainError):
    status_code = 403


class TooManyRequests(DomainError):
    """Answered with Retry-After (seconds)."""

    status_code = 429

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class RoleForbidden(Forbidden):
    """An act beyond the caller's household role: a 403 naming the role, and an audit record of who tried what (the
    app writes it in a transaction of its own, since the request's own is rolled back)."""

    def __init__(
        self,
        message: str,
        *,
        role: str,
        actor: str,
        customer_id: str | None,
        subject_type: str | None = None,
        subject_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.role = role
        self.actor = actor
        self.customer_id = customer_id
        self.subject_type = subject_type
        self.subject_id = subject_id

    def body(self) -> dict[str, Any]:
        return super().body() | {"role": self.role}

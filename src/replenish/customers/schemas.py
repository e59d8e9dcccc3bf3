from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, EmailStr, Field, SecretStr

from replenish.consent.schemas import ConsentDocument
from replenish.constants import PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH


class CustomerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    email: EmailStr
    password: SecretStr | None = Field(
        None,
        min_length=PASSWORD_MIN_LENGTH,
        max_length=PASSWORD_MAX_LENGTH,
        description="Signs in with the e-mail. Given by an operator (or left out: no account); a customer signing up "
        "chooses it with the link mailed to the address (POST /api/v1/sign-ups/{token}), not here.",
    )
    consent: ConsentDocument = Field(
        default_factory=ConsentDocument, description="Initial consent (version 1). Default: ask first for everything."
    )


class CustomerRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    email: str
    created_at: datetime


class SignUpRequested(BaseModel):
    """The same answer whether or not the address has an account: what happens next is in the e-mail."""

    email: str
    detail: str = Field(
        "Check your e-mail: a link to finish signing up (your name and password) is on its way. It works once, "
        "for 24 hours.",
        description="What to do next.",
    )


class SignUpConfirm(BaseModel):
    """What the owner of the address chooses when following the link: nobody else could have chosen it for them."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    password: SecretStr = Field(
        min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH, description="Signs in with the e-mail."
    )
    consent: ConsentDocument = Field(
        default_factory=ConsentDocument, description="Initial consent (version 1). Default: ask first for everything."
    )

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, SecretStr, ValidationInfo, field_validator

from replenish.constants import PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH, HouseholdRole

InvitedRole = Literal[HouseholdRole.MEMBER, HouseholdRole.CARER]
MAX_SHARED_DEVICES = 100

Limit = Field(
    ge=0,
    validate_default=True,
    max_digits=12,
    decimal_places=2,
    description="A member's: the most one order may cost for them to approve or place it (in the catalogue's "
    "currency). Not for a carer.",
    examples=["40.00"],
)
Shared = Field(
    validate_default=True,
    max_length=MAX_SHARED_DEVICES,
    description="Devices of the household to share: a carer sees only these (typically a wearable), a member sees "
    "these as well as every device that is not a wearable.",
    examples=[["grandma-pendant"]],
)


class InvitationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr = Field(description="Where the invitation's link is mailed; the invited person signs in with it.")
    role: InvitedRole = Field(description="member or carer.")
    name: str | None = Field(None, min_length=1, max_length=100, description="How the household sees them.")
    approval_limit: Annotated[Decimal | None, Limit] = None
    device_ids: Annotated[list[str] | None, Shared] = None

    @field_validator("approval_limit")
    @classmethod
    def _limit_fits_the_role(cls, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
        role = info.data.get("role")
        if role is HouseholdRole.CARER and value is not None:
            raise ValueError("a carer does not approve orders: leave it empty")
        if role is HouseholdRole.MEMBER and value is None:
            raise ValueError("say up to what a member may approve (0: nothing with a price)")
        return value

    @field_validator("device_ids")
    @classmethod
    def _a_carer_sees_something(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if info.data.get("role") is HouseholdRole.CARER and not value:
            raise ValueError("a carer sees only the devices shared with them: share at least one")
        return value


class InvitationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    customer_id: str
    email: str
    role: HouseholdRole
    name: str | None
    approval_limit: Decimal | None
    device_ids: list[str]
    invited_by: str
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None
    revoked_at: datetime | None


class InvitationView(BaseModel):
    """What the invited person sees before accepting: who invites them, to what, and until when."""

    household: str = Field(description="The household's name (the customer's).")
    email: str
    role: HouseholdRole
    device_names: list[str] = Field(description="The devices shared with them.")
    approval_limit: Decimal | None
    expires_at: datetime


class InvitationAccept(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    password: SecretStr = Field(
        min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH, description="Signs in with the e-mail."
    )


class MemberRead(BaseModel):
    account_id: str
    customer_id: str
    email: str
    name: str | None
    role: HouseholdRole
    approval_limit: Decimal | None
    device_ids: list[str] = Field(description="The devices shared with them (a member sees the supplies besides).")
    created_at: datetime


class MemberUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: InvitedRole | None = None
    name: str | None = Field(None, min_length=1, max_length=100)
    approval_limit: Annotated[Decimal | None, Limit] = None
    device_ids: Annotated[list[str] | None, Shared] = None

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from replenish.constants import PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH, AccountRole, HouseholdRole, TokenKind


class TokenIssued(BaseModel):
    """OAuth2's token response, plus when the token stops working."""

    access_token: str = Field(description="Send it as `Authorization: Bearer <access_token>`.")
    token_type: str = "bearer"
    expires_at: datetime | None = Field(description="When the token stops working; null for a token that does not.")


class Me(BaseModel):
    account_id: str
    email: str
    role: AccountRole
    customer_id: str | None = Field(description="The customer this account acts for; null for an operator.")
    household_role: HouseholdRole | None = Field(
        None, description="owner, member or carer in the customer's household; null for an operator."
    )
    approval_limit: Decimal | None = Field(None, description="A member's: the most one order may cost to approve.")
    device_ids: list[str] | None = Field(
        None, description="The devices a member or carer sees; null: every device of the household (the owner)."
    )


class PersonalTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: SecretStr = Field(
        description="The account's password again: a sign-in token alone, stolen, cannot mint a lasting one."
    )
    name: str = Field(min_length=1, max_length=100, description="What the token is for, e.g. 'home automation'.")
    expires_in_days: float | None = Field(
        None, gt=0, le=3650, description="Lifetime in days; null for a token that works until revoked."
    )


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: SecretStr
    new_password: SecretStr = Field(min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH)


class TokenRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: TokenKind
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class PersonalTokenCreated(TokenRead):
    token: str = Field(description="The secret, shown this once: only a hash of it is kept.")

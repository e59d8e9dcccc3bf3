"""Accounts, passwords and bearer tokens. Like every service here it never commits: the caller owns the transaction."""

from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from pwdlib import PasswordHash
from sqlmodel import Session, col, select

from replenish.audit import service as audit
from replenish.auth.models import AccessToken, Account, DeviceShare
from replenish.constants import (
    FAILED_SIGN_IN_WINDOW_SECONDS,
    MAX_FAILED_SIGN_INS,
    PASSWORD_MAX_LENGTH,
    ROLE_CAPABILITIES,
    TOKEN_PREFIX,
    AccountRole,
    AuditAction,
    Capability,
    DeviceKind,
    HouseholdRole,
    OrderStatus,
    TokenKind,
)
from replenish.db import get_or_raise
from replenish.devices.models import Device
from replenish.errors import Conflict, DomainError, Forbidden, NotFound, RoleForbidden, TooManyRequests

# Argon2id with pwdlib's recommended parameters.
_passwords = PasswordHash.recommended()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the e-mail is unknown, so that a wrong e-mail takes as long as a wrong password. Made
    on first use, or by warm_up() as the API starts: a process that signs nobody in (ingest, the scheduler) does not
    spend an Argon2 hash on it."""
    return _passwords.hash(secrets.token_urlsafe(16))


def warm_up() -> None:
    """Make the dummy hash now, so that the first sign-in with an unknown address takes no longer than the others."""
    _dummy_hash()


@dataclass(frozen=True)
class Principal:
    """Who is calling, resolved from their bearer token."""

    account_id: str
    email: str
    role: AccountRole
    customer_id: str | None
    token_id: str
    household_role: HouseholdRole | None = None  # none for an operator
    approval_limit: Decimal | None = None  # a member's, per order
    # The devices of their household a member or a carer sees (their alerts, alarms, orders with them); None: every
    # device in scope (the owner's, an operator's).
    visible_devices: frozenset[str] | None = None

    @property
    def is_operator(self) -> bool:
        return self.role is AccountRole.OPERATOR

    @property
    def actor(self) -> str:
        """How the caller appears in histories and audit records."""
        return actor_name(role=self.role, household_role=self.household_role, email=self.email)

    def can(self, capability: Capability) -> bool:
        if self.is_operator:
            return True  # an operator acts for any customer
        # Never fail open: principal_for gives every customer's account its role, and refuses one it cannot read.
        return self.household_role is not None and capability in ROLE_CAPABILITIES[self.household_role]

    def forbidden(
        self, capability: Capability, *, subject_type: str | None = None, subject_id: str | None = None
    ) -> RoleForbidden:
        """The 403 for an act beyond the caller's household role (the app records it in the audit log)."""
        return RoleForbidden(
            f"a {self.household_role} may not {capability}: ask the household's owner",
            role=str(self.household_role),
            actor=self.actor,
            customer_id=self.customer_id,
            subject_type=subject_type,
            subject_id=subject_id,
        )

    def require(
        self, capability: Capability, *, subject_type: str | None = None, subject_id: str | None = None
    ) -> None:
        if not self.can(capability):
            raise self.forbidden(capability, subject_type=subject_type, subject_id=subject_id)

    def check_spend(self, amount: Decimal | None, *, subject_type: str, subject_id: str) -> None:
        """A member approves or places an order only up to their limit, and only one whose price is known."""
        self.require(Capability.ORDER, subject_type=subject_type, subject_id=subject_id)
        if self.household_role is not HouseholdRole.MEMBER:
            return
        limit = self.approval_limit or Decimal(0)
        if amount is None or amount > limit:
            told = "its price is not known" if amount is None else f"{amount} is over your limit of {limit}"
            raise RoleForbidden(
                f"a member may approve or place orders up to {limit}; {told}: ask the household's owner",
                role=HouseholdRole.MEMBER,
                actor=self.actor,
                customer_id=self.customer_id,
                subject_type=subject_type,
                subject_id=subject_id,
            )

    def check_order_change(self, *, order_id: str, status: str, price: Decimal | None, to: OrderStatus) -> None:
        """Approving (or releasing) spends: up to a member's limit. Declining or cancelling needs the right to order."""
        if to is OrderStatus.PLACED and status != OrderStatus.PLACED:
            self.check_spend(price, subject_type="order", subject_id=order_id)
        else:
            self.require(Capability.ORDER, subject_type="order", subject_id=order_id)

    @property
    def visible_customer(self) -> str | None:
        """The one customer whose objects this caller may read or act on; None for an operator, who may any."""
        if self.is_operator:
            return None
        if self.customer_id is None:  # a customer's account always names its customer: never read as "any"
            raise Forbidden("this account belongs to no customer")
        return self.customer_id

    def may_access(self, customer_id: str) -> bool:
        return self.is_operator or self.customer_id == customer_id

    def check_access(self, customer_id: str, *, entity: str, key: str) -> None:
        """Another customer's object answers exactly as a missing one does: its existence is not given away."""
        if not self.may_access(customer_id):
            raise NotFound(entity, key)

    def scope(self, customer_id: str | None) -> str | None:
        """The customer a listing is limited to: the caller's own for a customer, any or none for an operator."""
        if self.is_operator:
            return customer_id
        if customer_id is not None and customer_id != self.customer_id:
            raise NotFound("customer", customer_id)
        return self.customer_id


def actor_name(*, role: str, household_role: str | None, email: str) -> str:
    """How an account appears in histories and audit records: an operator and a household's owner by their account's
    role ("customer:ada@example.com"), an invited member or carer by their household role ("carer:carl@...")."""
    if household_role in (HouseholdRole.MEMBER, HouseholdRole.CARER):
        return f"{household_role}:{email}"
    return f"{role}:{email}"


def hash_token(token: str) -> str:
    # Tokens are 256 random bits: a fast hash is enough, and lets each request find its token by an index.
    return hashlib.sha256(token.encode()).hexdigest()


def create_account(
    *,
    session: Session,
    email: str,
    password: str,
    role: AccountRole,
    customer_id: str | None,
    now: datetime,
    household_role: HouseholdRole | None = None,
    name: str | None = None,
    approval_limit: Decimal | None = None,
) -> Account:
    """An operator's account, or one of a customer's household (its owner unless ``household_role`` says else)."""
    email = email.lower()
    if session.exec(select(Account.id).where(Account.email == email)).first():
        raise Conflict(f"an account with email {email!r} exists already", field="email")
    if role is AccountRole.CUSTOMER:
        household_role = household_role or HouseholdRole.OWNER
    account = Account(
        email=email,
        password_hash=_passwords.hash(password),
        role=role,
        customer_id=customer_id,
        created_at=now,
        household_role=household_role,
        name=name,
        approval_limit=approval_limit,
    )
    session.add(account)
    session.flush()
    actor = actor_name(role=role, household_role=household_role, email=email)
    audit.record(
        session=session,
        at=now,
        actor=actor,
        action=AuditAction.ACCOUNT_CREATED,
        customer_id=customer_id,
        subject_type="account",
        subject_id=account.id,
        detail={"role": role} | ({"household_role": household_role} if household_role else {}),
    )
    return account


def find_account(*, session: Session, email: str) -> Account | None:
    return session.exec(select(Account).where(Account.email == email.lower())).first()


def set_password(*, session: Session, email: str, password: str, now: datetime) -> Account | None:
    """Give the account with this e-mail a new password and revoke its tokens; None when there is no such account."""
    account = find_account(session=session, email=email)
    if account is None:
        return None
    account.password_hash = _passwords.hash(password)
    session.add(account)
    revoke_all(session=session, account_id=account.id, now=now)
    return account


def get_account(*, session: Session, account_id: str) -> Account:
    return get_or_raise(session, Account, account_id, entity="account")


def authenticate(*, session: Session, email: str, password: str) -> Account | None:
    """The account with this e-mail and password, or None (which of the two was wrong is not told)."""
    account = find_account(session=session, email=email)
    if account is None:
        _passwords.verify(password, _dummy_hash())
        return None
    valid, new_hash = _passwords.verify_and_update(password, account.password_hash)
    if not valid:
        return None
    if new_hash is not None:  # hashed with older parameters: upgrade while the password is at hand
        account.password_hash = new_hash
        session.add(account)
    return account


def issue_token(
    *, session: Session, account: Account, kind: TokenKind, name: str, now: datetime, lifetime: timedelta | None
) -> tuple[AccessToken, str]:
    """A new token and its secret; the secret is not stored and cannot be shown again."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = AccessToken(
        account_id=account.id,
        kind=kind,
        name=name,
        token_hash=hash_token(secret),
        created_at=now,
        expires_at=now + lifetime if lifetime is not None else None,
    )
    session.add(token)
    session.flush()
    return token, secret


def sign_in(
    *, session: Session, email: str, password: str, now: datetime, lifetime: timedelta
) -> tuple[AccessToken, str] | None:
    """A sign-in token and its secret for the right e-mail and password, or None (which of the two was wrong is
    not told). Both outcomes go to the audit log; after MAX_FAILED_SIGN_INS failures for one e-mail within the window,
    every attempt for it is refused (TooManyRequests) until the window has passed. The API's sign-in and the web
    app's both come here."""
    email = email.strip().lower()[:320]  # the longest an address can be
    known = find_account(session=session, email=email)
    subject = known.id if known else email
    window = timedelta(seconds=FAILED_SIGN_IN_WINDOW_SECONDS)
    failures = audit.count_since(
        session=session, action=AuditAction.SIGN_IN_FAILED, subject_id=subject, since=now - window
    )
    if failures >= MAX_FAILED_SIGN_INS:
        raise TooManyRequests(
            f"too many failed sign-ins for this e-mail: try again in {FAILED_SIGN_IN_WINDOW_SECONDS // 60} minutes",
            retry_after_seconds=FAILED_SIGN_IN_WINDOW_SECONDS,
        )
    account = None
    if len(password) <= PASSWORD_MAX_LENGTH:  # no hashing of megabytes
        account = authenticate(session=session, email=email, password=password)
    if account is None:
        # Kept whether or not the e-mail exists; a customer sees the failed attempts on their own account.
        audit.record(
            session=session,
            at=now,
            actor=f"anonymous:{email}",
            action=AuditAction.SIGN_IN_FAILED,
            customer_id=known.customer_id if known else None,
            subject_type="account",
            subject_id=subject,
        )
        return None
    issued = issue_token(
        session=session, account=account, kind=TokenKind.SESSION, name="sign-in", now=now, lifetime=lifetime
    )
    audit.record(
        session=session,
        at=now,
        actor=actor_name(role=account.role, household_role=account.household_role, email=account.email),
        action=AuditAction.SIGN_IN,
        customer_id=account.customer_id,
        subject_type="account",
        subject_id=account.id,
    )
    return issued


def check_password(*, session: Session, principal: Principal, password: str, now: datetime) -> DomainError | None:
    """Why the signed-in caller's password, asked again before something grave (a personal token, a new password,
    deleting the account), is refused, or None when it is right. A wrong one counts as a failed sign-in, recorded in
    the session (the caller commits it, then raises the answer), and the sign-in's limit applies: with a stolen
    token, guessing the password here is no easier than at the sign-in."""
    window = timedelta(seconds=FAILED_SIGN_IN_WINDOW_SECONDS)
    failures = audit.count_since(
        session=session, action=AuditAction.SIGN_IN_FAILED, subject_id=principal.account_id, since=now - window
    )
    if failures >= MAX_FAILED_SIGN_INS:
        return TooManyRequests(
            f"too many wrong passwords: try again in {FAILED_SIGN_IN_WINDOW_SECONDS // 60} minutes",
            retry_after_seconds=FAILED_SIGN_IN_WINDOW_SECONDS,
        )
    if len(password) <= PASSWORD_MAX_LENGTH and authenticate(session=session, email=principal.email, password=password):
        return None
    audit.record(
        session=session,
        at=now,
        actor=principal.actor,
        action=AuditAction.SIGN_IN_FAILED,
        customer_id=principal.customer_id,
        subject_type="account",
        subject_id=principal.account_id,
    )
    return Forbidden("the password is not right", field="password")


def principal_for(*, session: Session, secret: str, now: datetime) -> Principal | None:
    """The caller this token stands for, or None when it is unknown, revoked or expired."""
    found = session.exec(
        select(AccessToken, Account)
        .join(Account, col(Account.id) == col(AccessToken.account_id))
        .where(AccessToken.token_hash == hash_token(secret))
    ).first()
    if found is None:
        return None
    token, account = found
    if token.revoked_at is not None or (token.expires_at is not None and token.expires_at <= now):
        return None
    if account.role not in set(AccountRole) or (account.role == AccountRole.CUSTOMER and account.customer_id is None):
        return None  # never fail open: a customer account without its customer sees nothing
    household_role = None
    if account.role == AccountRole.CUSTOMER:
        if account.household_role not in set(HouseholdRole):
            return None  # nor one whose role is unknown
        household_role = HouseholdRole(account.household_role)
    return Principal(
        account_id=account.id,
        email=account.email,
        role=AccountRole(account.role),
        customer_id=account.customer_id,
        token_id=token.id,
        household_role=household_role,
        approval_limit=account.approval_limit,
        visible_devices=_visible_devices(session=session, account=account, role=household_role),
    )


def _visible_devices(*, session: Session, account: Account, role: HouseholdRole | None) -> frozenset[str] | None:
    if role not in (HouseholdRole.MEMBER, HouseholdRole.CARER):
        return None
    shared = set(session.exec(select(DeviceShare.device_id).where(DeviceShare.account_id == account.id)))
    if role is HouseholdRole.MEMBER:
        # The supplies: every device of the household but its wearables, which their wearer shares one by one.
        shared |= set(
            session.exec(
                select(Device.id).where(Device.customer_id == account.customer_id, Device.kind != DeviceKind.WEARABLE)
            )
        )
    return frozenset(shared)


def list_tokens(*, session: Session, account_id: str) -> list[AccessToken]:
    return list(
        session.exec(
            select(AccessToken)
            .where(AccessToken.account_id == account_id)
            .order_by(col(AccessToken.created_at).desc(), col(AccessToken.id))
        )
    )


def revoke_token(*, session: Session, account_id: str, token_id: str, now: datetime) -> AccessToken:
    """Revoke one of the account's own tokens; it stops working at once. Revoking twice is harmless."""
    token = session.get(AccessToken, token_id)
    if token is None or token.account_id != account_id:
        raise NotFound("token", token_id)
    if token.revoked_at is None:
        token.revoked_at = now
        session.add(token)
    return token


def revoke_all(*, session: Session, account_id: str, now: datetime) -> int:
    """Revoke every token of the account (its password changed, it is being deleted). Returns how many."""
    tokens = session.exec(
        select(AccessToken).where(AccessToken.account_id == account_id, col(AccessToken.revoked_at).is_(None))
    ).all()
    for token in tokens:
        token.revoked_at = now
        session.add(token)
    return len(tokens)

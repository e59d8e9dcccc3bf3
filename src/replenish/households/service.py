"""Households: the owner invites members and carers, changes what each may see and do, and removes them.

Who may do what is `constants.ROLE_CAPABILITIES`, enforced where each act happens (the API's routes and the web
pages, through `auth.service.Principal`); the devices a member or carer sees are computed as their token is
resolved, so that a change here takes effect at their next request. Like every service it never commits.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from sqlmodel import Session, col, delete, select, update

from replenish.audit import service as audit
from replenish.auth import service as auth
from replenish.auth.models import AccessToken, Account, DeviceShare
from replenish.constants import (
    INVITATION_LINK_DAYS,
    INVITATION_NOTICE_PREFIX,
    INVITATION_PAGE_PATH,
    MAX_INVITATIONS_PER_ADDRESS_DAY,
    MAX_INVITATIONS_PER_DAY,
    AccountRole,
    AuditAction,
    HouseholdRole,
)
from replenish.customers import service as customers
from replenish.devices.models import Device
from replenish.errors import Conflict, Gone, InvalidRequest, NotFound, TooManyRequests
from replenish.households.models import Invitation
from replenish.households.schemas import InvitationCreate, InvitationView, MemberRead, MemberUpdate
from replenish.notifications import service as notifications


def _cents(amount: Decimal | None) -> Decimal | None:
    return None if amount is None else amount.quantize(Decimal("0.01"))


def _check_devices(*, session: Session, customer_id: str, device_ids: Sequence[str]) -> list[str]:
    """The ids, each once, when every one is a device of the household (422 naming the first that is not)."""
    wanted = list(dict.fromkeys(device_ids))
    found = set(session.exec(select(Device.id).where(Device.customer_id == customer_id, col(Device.id).in_(wanted))))
    for device_id in wanted:
        if device_id not in found:
            raise InvalidRequest(f"device {device_id!r} is not one of the household's devices", field="device_ids")
    return wanted


def _device_names(*, session: Session, device_ids: Sequence[str]) -> list[str]:
    names = dict(session.exec(select(Device.id, Device.name).where(col(Device.id).in_(list(device_ids)))).all())
    return [names.get(device_id, device_id) for device_id in device_ids]


def _role_words(role: HouseholdRole, approval_limit: Decimal | None, device_names: Sequence[str]) -> str:
    shared = ", ".join(device_names)
    if role is HouseholdRole.CARER:
        return f"as a carer: you will see {shared}, its alerts and health, and be able to acknowledge them"
    words = "as a member: you will see the household's supplies and may approve orders"
    words += f" up to {approval_limit}" if approval_limit else " (none with a price, until the owner says so)"
    return words + (f"; {shared} shared with you too" if shared else "")


def invite(
    *, session: Session, customer_id: str, request: InvitationCreate, actor: str, now: datetime, channel: str
) -> Invitation:
    """Mail ``request.email`` a link to join the household. Whether the address has an account somewhere is not
    told to the inviter (the invited person learns it when accepting). A new invitation for the same address
    replaces the one still waiting."""
    customer = customers.get(session=session, customer_id=customer_id)
    email = str(request.email).lower()
    if (
        email == customer.email
        or session.exec(select(Account.id).where(Account.customer_id == customer_id, Account.email == email)).first()
    ):
        raise Conflict(f"{email} is in the household already", field="email")
    device_ids = _check_devices(session=session, customer_id=customer_id, device_ids=request.device_ids or [])
    day = now - timedelta(days=1)
    sent = list(
        session.exec(
            select(Invitation.email).where(Invitation.customer_id == customer_id, col(Invitation.created_at) > day)
        )
    )
    if len(sent) >= MAX_INVITATIONS_PER_DAY:
        raise TooManyRequests(
            f"{MAX_INVITATIONS_PER_DAY} invitations in 24 hours at most: try again later", retry_after_seconds=3600
        )
    if sent.count(email) >= MAX_INVITATIONS_PER_ADDRESS_DAY:
        raise TooManyRequests(
            f"{MAX_INVITATIONS_PER_ADDRESS_DAY} invitations to {email} in 24 hours at most: try again later",
            retry_after_seconds=3600,
        )
    session.exec(
        update(Invitation)
        .where(
            col(Invitation.customer_id) == customer_id,
            col(Invitation.email) == email,
            col(Invitation.accepted_at).is_(None),
            col(Invitation.revoked_at).is_(None),
            col(Invitation.expires_at) > now,
        )
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    token = secrets.token_urlsafe(24)
    invitation = Invitation(
        customer_id=customer_id,
        email=email,
        role=request.role,
        name=request.name,
        approval_limit=_cents(request.approval_limit),
        device_ids=device_ids,
        token_hash=auth.hash_token(token),
        invited_by=actor,
        created_at=now,
        expires_at=now + timedelta(days=INVITATION_LINK_DAYS),
    )
    session.add(invitation)
    session.flush()
    role = HouseholdRole(request.role)
    notifications.enqueue_delivery(
        session=session,
        notification_id=f"{INVITATION_NOTICE_PREFIX}{invitation.id}",
        customer_id=None,
        channel=channel,
        address=email,
        subject=f"{customer.name} invites you to their household on Replenish",
        body=f"{customer.name} invites you to join their household on Replenish "
        f"{_role_words(role, request.approval_limit, _device_names(session=session, device_ids=device_ids))}. "
        f"Follow the link to choose your name and password. It works once, for {INVITATION_LINK_DAYS} days. If you "
        "do not know them, ignore this e-mail: nothing is created without it.",
        links=[("Join the household", token)],
        link_path=INVITATION_PAGE_PATH,
        now=now,
    )
    audit.record(
        session=session,
        at=now,
        actor=actor,
        action=AuditAction.MEMBER_INVITED,
        customer_id=customer_id,
        subject_type="invitation",
        subject_id=invitation.id,
        detail={"role": role, "device_ids": device_ids},
    )
    return invitation


def list_invitations(*, session: Session, customer_id: str | None) -> list[Invitation]:
    """The household's invitations, newest first (None: every household's, for an operator)."""
    query = select(Invitation)
    if customer_id is not None:
        query = query.where(Invitation.customer_id == customer_id)
    return list(session.exec(query.order_by(col(Invitation.created_at).desc(), col(Invitation.id))))


def revoke_invitation(*, session: Session, customer_id: str, invitation_id: str, actor: str, now: datetime) -> None:
    """Its link stops working at once. Revoking twice, or one already accepted, changes nothing."""
    invitation = session.get(Invitation, invitation_id)
    if invitation is None or invitation.customer_id != customer_id:
        raise NotFound("invitation", invitation_id)
    if invitation.accepted_at is not None or invitation.revoked_at is not None:
        return
    invitation.revoked_at = now
    session.add(invitation)
    audit.record(
        session=session,
        at=now,
        actor=actor,
        action=AuditAction.INVITATION_REVOKED,
        customer_id=customer_id,
        subject_type="invitation",
        subject_id=invitation.id,
    )


def read_invitation(*, session: Session, token: str, now: datetime, lock: bool = False) -> Invitation:
    """The invitation a link stands for: NotFound for a link that never was (a forged one), was used or was revoked;
    Gone once expired. With ``lock``, held until the transaction ends: two acceptances of one link do not race."""
    query = select(Invitation).where(Invitation.token_hash == auth.hash_token(token))
    invitation = session.exec(query.with_for_update() if lock else query).first()
    if invitation is None or invitation.accepted_at is not None or invitation.revoked_at is not None:
        raise NotFound("invitation link", "given")
    if invitation.expires_at <= now:
        raise Gone("this invitation has expired: ask the household's owner for a new one")
    return invitation


def view_invitation(*, session: Session, invitation: Invitation) -> InvitationView:
    return InvitationView(
        household=customers.get(session=session, customer_id=invitation.customer_id).name,
        email=invitation.email,
        role=HouseholdRole(invitation.role),
        device_names=_device_names(session=session, device_ids=invitation.device_ids),
        approval_limit=invitation.approval_limit,
        expires_at=invitation.expires_at,
    )


def accept(*, session: Session, token: str, name: str, password: str, now: datetime) -> Account:
    """The account the invitation stands for, with the name and password chosen now; the link stops working.
    Conflict when the address has an account already (an account belongs to one household)."""
    invitation = read_invitation(session=session, token=token, now=now, lock=True)
    if session.exec(select(Account.id).where(Account.email == invitation.email)).first():
        raise Conflict(
            f"{invitation.email} has an account already, and an account belongs to one household: ask the owner to "
            "invite another address",
            field="email",
        )
    role = HouseholdRole(invitation.role)
    account = auth.create_account(
        session=session,
        email=invitation.email,
        password=password,
        role=AccountRole.CUSTOMER,
        customer_id=invitation.customer_id,
        now=now,
        household_role=role,
        name=name,
        approval_limit=invitation.approval_limit,
    )
    # Devices removed since the invitation are not shared; a carer with none left would see nothing.
    shared = _share(session=session, account=account, device_ids=invitation.device_ids, now=now)
    if role is HouseholdRole.CARER and not shared:
        raise Conflict("the devices this invitation shared are gone: ask the household's owner for a new one")
    invitation.accepted_at = now
    invitation.account_id = account.id
    session.add(invitation)
    audit.record(
        session=session,
        at=now,
        actor=auth.actor_name(role=account.role, household_role=role, email=account.email),
        action=AuditAction.MEMBER_JOINED,
        customer_id=invitation.customer_id,
        subject_type="account",
        subject_id=account.id,
        detail={"role": role, "invitation_id": invitation.id},
    )
    return account


def _share(*, session: Session, account: Account, device_ids: Sequence[str], now: datetime) -> list[str]:
    assert account.customer_id is not None
    existing = set(
        session.exec(
            select(Device.id).where(Device.customer_id == account.customer_id, col(Device.id).in_(list(device_ids)))
        )
    )
    kept = [device_id for device_id in device_ids if device_id in existing]
    session.exec(delete(DeviceShare).where(col(DeviceShare.account_id) == account.id))
    for device_id in kept:
        session.add(DeviceShare(account_id=account.id, device_id=device_id, created_at=now))
    return kept


def _shares(*, session: Session, account_ids: Sequence[str]) -> dict[str, list[str]]:
    shares: dict[str, list[str]] = {account_id: [] for account_id in account_ids}
    for account_id, device_id in session.exec(
        select(DeviceShare.account_id, DeviceShare.device_id)
        .where(col(DeviceShare.account_id).in_(list(account_ids)))
        .order_by(col(DeviceShare.device_id))
    ):
        shares[account_id].append(device_id)
    return shares


def _member(account: Account, device_ids: list[str]) -> MemberRead:
    assert account.customer_id is not None
    return MemberRead(
        account_id=account.id,
        customer_id=account.customer_id,
        email=account.email,
        name=account.name,
        role=HouseholdRole(account.household_role or HouseholdRole.OWNER),
        approval_limit=account.approval_limit,
        device_ids=device_ids,
        created_at=account.created_at,
    )


def list_members(*, session: Session, customer_id: str | None) -> list[MemberRead]:
    """The household's accounts, the owner first (None: every household's, for an operator)."""
    query = select(Account).where(Account.role == AccountRole.CUSTOMER)
    if customer_id is not None:
        query = query.where(Account.customer_id == customer_id)
    accounts = list(session.exec(query.order_by(col(Account.customer_id), col(Account.created_at))))
    shares = _shares(session=session, account_ids=[account.id for account in accounts])
    members = [_member(account, shares[account.id]) for account in accounts]
    return sorted(members, key=lambda member: (member.customer_id, member.role is not HouseholdRole.OWNER))


def _get_member(*, session: Session, customer_id: str, account_id: str) -> Account:
    account = session.get(Account, account_id)
    if account is None or account.customer_id != customer_id:
        raise NotFound("member", account_id)
    if account.household_role in (None, HouseholdRole.OWNER):
        raise Conflict("the household's owner cannot be changed or removed here", field="account_id")
    return account


def update_member(
    *, session: Session, customer_id: str, account_id: str, request: MemberUpdate, actor: str, now: datetime
) -> MemberRead:
    """Change a member's or carer's role, limit or shared devices: it takes effect at their next request."""
    account = _get_member(session=session, customer_id=customer_id, account_id=account_id)
    changed = request.model_dump(exclude_unset=True, mode="json")
    role = HouseholdRole(request.role or account.household_role or HouseholdRole.MEMBER)
    limit = request.approval_limit if "approval_limit" in request.model_fields_set else account.approval_limit
    if role is HouseholdRole.CARER:
        limit = None  # a carer does not approve
    elif limit is None:
        raise InvalidRequest("say up to what a member may approve: approval_limit", field="approval_limit")
    if request.device_ids is not None:
        device_ids = _check_devices(session=session, customer_id=customer_id, device_ids=request.device_ids)
        _share(session=session, account=account, device_ids=device_ids, now=now)
    else:
        device_ids = _shares(session=session, account_ids=[account.id])[account.id]
    if role is HouseholdRole.CARER and not device_ids:
        raise InvalidRequest("a carer sees only the devices shared with them: share at least one", field="device_ids")
    account.household_role = role
    account.approval_limit = _cents(limit)
    if request.name is not None:
        account.name = request.name
    session.add(account)
    audit.record(
        session=session,
        at=now,
        actor=actor,
        action=AuditAction.MEMBER_CHANGED,
        customer_id=customer_id,
        subject_type="account",
        subject_id=account.id,
        detail=changed,
    )
    return _member(account, device_ids)


def remove_member(*, session: Session, customer_id: str, account_id: str, actor: str, now: datetime) -> None:
    """The member or carer leaves the household: every token of theirs stops working at once, and their account,
    shares and sign-in go. What they did stays in the audit log and the orders' histories."""
    account = _get_member(session=session, customer_id=customer_id, account_id=account_id)
    role = account.household_role
    session.exec(delete(DeviceShare).where(col(DeviceShare.account_id) == account.id))
    session.exec(delete(AccessToken).where(col(AccessToken.account_id) == account.id))
    session.exec(
        update(Invitation)
        .where(col(Invitation.account_id) == account.id)
        .values(account_id=None)
        .execution_options(synchronize_session=False)
    )
    session.delete(account)
    audit.record(
        session=session,
        at=now,
        actor=actor,
        action=AuditAction.MEMBER_REMOVED,
        customer_id=customer_id,
        subject_type="account",
        subject_id=account_id,
        detail={"role": role},
    )

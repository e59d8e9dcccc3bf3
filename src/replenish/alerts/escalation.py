"""Who a safety incident reaches, and when: pure functions of the wearer's consent, the incident's state and a time.

The chain follows personal emergency response services and the escalation policies of PagerDuty and Opsgenie: a
cancel window in which the wearer can call off a fall ("I'm OK"), then each emergency contact in the order the wearer
chose, each given the escalation timeout to acknowledge before the next is asked, then emergency services, last and
only if the wearer consented. A help request skips the cancel window.

No database, no clock: the service keeps the state (how many steps were taken, when the next one is due) in the
database, so that a restart resumes the chain where it stood, and asks these functions what to do.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from replenish.consent.schemas import ConsentDocument
from replenish.constants import TargetKind

EMERGENCY_SERVICES = "emergency services"


@dataclass(frozen=True)
class Target:
    """One step of the chain: an emergency contact, or emergency services. Who it is (what `due` compares) is its
    kind, name and first channel; the channels after it and the household account are how they are reached."""

    kind: TargetKind
    name: str
    channel: str
    address: str | None
    fallbacks: tuple[tuple[str, str | None], ...] = field(default=(), compare=False)
    account_id: str | None = field(default=None, compare=False)

    def channels(self) -> list[tuple[str, str | None]]:
        return [(self.channel, self.address), *self.fallbacks]


@dataclass(frozen=True)
class Policy:
    targets: tuple[Target, ...]
    cancel_window: timedelta
    timeout: timedelta

    @classmethod
    def from_consent(cls, document: ConsentDocument, *, device_id: str) -> Policy:
        """The chain for an incident on ``device_id``: the contacts the wearer chose for that wearable."""
        targets = [
            Target(
                kind=TargetKind.CONTACT,
                name=contact.name,
                channel=contact.channel,
                address=contact.address,
                fallbacks=tuple(contact.channels()[1:]),
                account_id=contact.account_id,
            )
            for contact in document.emergency_contacts
            if contact.covers(device_id)
        ]
        if document.emergency_services_allowed:
            # The monitoring centre calls emergency services (REPLENISH_MONITORING_CENTRE_URL); where none is
            # configured, or it fails, the request falls back to the operators' log, where the on-call operator calls.
            targets.append(
                Target(
                    kind=TargetKind.EMERGENCY_SERVICES,
                    name=EMERGENCY_SERVICES,
                    channel="monitoring_centre",
                    address=None,
                    fallbacks=(("log", None),),
                )
            )
        return cls(
            targets=tuple(targets),
            cancel_window=timedelta(seconds=document.fall_cancel_window_seconds),
            timeout=timedelta(seconds=document.escalation_timeout_seconds),
        )


@dataclass(frozen=True)
class Step:
    """What is due now: ask ``target`` (the ``level``-th step, counting from 1), then look again at ``next_at``."""

    level: int
    target: Target
    next_at: datetime


@dataclass(frozen=True)
class Exhausted:
    """Everyone in the chain was asked and nobody acknowledged within the timeout (or the chain is empty)."""


def first_escalation_at(*, opened_at: datetime, cancel_window: timedelta, skip_cancel_window: bool) -> datetime:
    return opened_at if skip_cancel_window else opened_at + cancel_window


def due(*, policy: Policy, asked: Collection[Target], now: datetime) -> Step | Exhausted:
    """The step to take now that the incident's next escalation time has come: the first target of the chain, as the
    wearer's consent has it now, who has not been asked yet (``asked``).

    Against the current chain, not a position in it: a contact added or removed mid-escalation neither makes anyone
    be asked twice nor skips anyone. One step at a time, even after an outage longer than several timeouts: each
    contact gets the full timeout to answer from the moment they were asked, rather than being skipped because the
    platform was down.
    """
    # Emergency services are one step however they were reached (a log line before there was a monitoring centre).
    services_asked = any(target.kind is TargetKind.EMERGENCY_SERVICES for target in asked)
    for target in policy.targets:
        already = services_asked if target.kind is TargetKind.EMERGENCY_SERVICES else target in asked
        if not already:
            return Step(level=len(asked) + 1, target=target, next_at=now + policy.timeout)
    return Exhausted()

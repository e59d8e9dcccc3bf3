"""When a customer is asked, reminded, and when an order leaves: pure functions of the forecast, the consent and a
time. No database, no clock: the service stores what these return and the scheduler acts on it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from replenish.constants import LinkAction, NoAnswer

# However late a request comes, the customer gets at least this long to answer before on_no_answer acts.
MIN_ANSWER_WINDOW = timedelta(hours=1)
# A request that keeps waiting keeps its links this long (or until it is answered, whichever comes first).
WAITING_LINK_LIFETIME = timedelta(days=14)


def latest_useful_answer(*, empty_at_early: datetime | None, lead_time_days: float) -> datetime | None:
    """The last moment an order can still arrive before the slot may be empty: the forecast's early empty date
    (its 1 - service level quantile) minus the lead time. None without a forecast date."""
    if empty_at_early is None:
        return None
    return empty_at_early - timedelta(days=lead_time_days)


@dataclass(frozen=True)
class AnswerWindow:
    answer_by: datetime | None
    remind_at: datetime | None


def answer_window(*, latest_useful: datetime | None, now: datetime, reminder_before: timedelta) -> AnswerWindow:
    """The request's deadline (never sooner than MIN_ANSWER_WINDOW from now) and its reminder: reminder_before ahead
    of the deadline, or halfway there when the request came later than that. No deadline without a forecast date
    (an order the customer asked for over a limit): it waits for the answer."""
    if latest_useful is None:
        return AnswerWindow(answer_by=None, remind_at=None)
    answer_by = max(latest_useful, now + MIN_ANSWER_WINDOW)
    if reminder_before <= timedelta(0):
        return AnswerWindow(answer_by=answer_by, remind_at=None)
    return AnswerWindow(answer_by=answer_by, remind_at=max(answer_by - reminder_before, now + (answer_by - now) / 2))


def hand_off_at(
    *, now: datetime, cancel_window: timedelta, latest_useful: datetime | None, reachable: datetime | None = None
) -> datetime:
    """When an automatic order goes to fulfilment: the customer's cancel window after the announcement can reach
    them (``reachable``: the end of their quiet hours; default now), shortened so that it still leaves by the
    latest useful moment (at once when that has passed)."""
    room = (max(reachable, now) - now if reachable is not None else timedelta(0)) + cancel_window
    if latest_useful is not None:
        room = min(room, max(latest_useful - now, timedelta(0)))
    return now + room


def link_expires_at(
    *,
    action: LinkAction,
    now: datetime,
    answer_by: datetime | None,
    hand_off_at: datetime | None,
    on_no_answer: NoAnswer,
) -> datetime:
    """A link lives as long as the answer it gives can still matter.

    Approve and decline: until the deadline when on_no_answer decides then; a request that keeps waiting (or has no
    deadline) stays answerable for WAITING_LINK_LIFETIME. Cancel: until the order leaves for fulfilment; after that
    the app still cancels it, through fulfilment."""
    if action is LinkAction.CANCEL:
        return hand_off_at or now
    if answer_by is not None and on_no_answer is not NoAnswer.KEEP_WAITING and answer_by > now:
        return answer_by
    return max(answer_by or now, now) + WAITING_LINK_LIFETIME

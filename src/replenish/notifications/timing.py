"""When a notification may go out: quiet hours and the daily digest, pure functions of the consent's choices, its
time zone and a moment."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from replenish.constants import NoticeKind

# Notices that can wait for the daily digest, when the customer asked for one: nothing in them needs an answer or
# has a window that closes.
DIGEST_KINDS = frozenset(
    {NoticeKind.LOW, NoticeKind.ORDER_SHIPPED, NoticeKind.ORDER_DELIVERED, NoticeKind.DELIVERY_NUDGE}
)


def quiet_until(moment: datetime, *, start: time, end: time, zone: ZoneInfo) -> datetime | None:
    """The end of the quiet hours ``moment`` falls in (start inclusive, end exclusive, across midnight when end is
    earlier than start), or None outside them."""
    local = moment.astimezone(zone)
    now = local.time().replace(tzinfo=None)
    overnight = end < start
    inside = (start <= now or now < end) if overnight else (start <= now < end)
    if not inside:
        return None
    day = local.date() if now < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, zone).astimezone(moment.tzinfo)


def reachable_at(moment: datetime, *, quiet_hours: list[tuple[time, time] | None], zone: ZoneInfo) -> datetime:
    """When a non-urgent notice sent at ``moment`` first reaches the customer: at once on a channel without quiet
    hours now, otherwise when the first channel's quiet hours end."""
    ends = []
    for hours in quiet_hours:
        end = quiet_until(moment, start=hours[0], end=hours[1], zone=zone) if hours else None
        if end is None:
            return moment
        ends.append(end)
    return min(ends, default=moment)


def next_digest_at(after: datetime, *, at: time, zone: ZoneInfo) -> datetime:
    """The first digest time strictly after ``after``."""
    local = after.astimezone(zone)
    candidate = datetime.combine(local.date(), at, zone)
    if candidate <= local:
        candidate = datetime.combine(local.date() + timedelta(days=1), at, zone)
    return candidate.astimezone(after.tzinfo)

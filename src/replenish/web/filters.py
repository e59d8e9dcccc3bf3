"""How the web app's templates show values: moments, shares, statuses, durations and places."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Undefined

from replenish.alerts import where


def _missing(value: Any) -> bool:
    """A value a stored forecast or policy may not have (an older version wrote it): shown as "-"."""
    return value is None or value == "" or isinstance(value, Undefined)


def when(value: Any) -> str:
    """A moment (a datetime, or ISO 8601 text as stored in forecasts) as "Thu 26 Nov 14:05 UTC"."""
    if _missing(value):
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return f"{moment.astimezone(UTC):%a %d %b %H:%M} UTC"


def percent(value: Any) -> str:
    return "-" if _missing(value) else f"{float(value):.0%}"


def status(value: Any) -> str:
    return "-" if _missing(value) else str(value).replace("_", " ")


def days(value: Any) -> str:
    if _missing(value):
        return "-"
    count = round(float(value), 1)  # a tenth of a day (under three hours) is as close as anyone plans
    return f"{count:g} day" + ("" if count == 1 else "s")


FILTERS = {
    "when": when,
    "percent": percent,
    "status": status,
    "days": days,
    "place": where.place,  # an incident's location in words
    "map_url": where.map_url,
}

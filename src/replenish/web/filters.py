"""How the web app's templates show values: moments, shares, statuses and durations."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def when(value: Any) -> str:
    """A moment (a datetime, or ISO 8601 text as stored in forecasts) as "Thu 26 Nov 14:05 UTC"."""
    if value is None or value == "":
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return f"{moment:%a %d %b %H:%M} UTC"


def percent(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0%}"


def status(value: Any) -> str:
    return str(value).replace("_", " ")


def days(value: Any) -> str:
    count = float(value)
    return f"{count:g} day" + ("" if count == 1 else "s")


FILTERS = {"when": when, "percent": percent, "status": status, "days": days}

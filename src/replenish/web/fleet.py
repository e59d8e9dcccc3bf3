"""The operators' fleet page: devices offline or low on battery, dead letters with their reasons, the ingest rate,
and how reliable the forecasts have been. A customer gets the 404 page."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from replenish.api.state import api_state
from replenish.constants import AlarmStatus
from replenish.health import service as health
from replenish.ingest import service as ingest
from replenish.outcomes import service as outcomes
from replenish.web.pages import PREFIX, PageNotFound, WebPrincipal, now_of, render_page

router = APIRouter(prefix=PREFIX, include_in_schema=False)
FLEET_RATE_WINDOWS = (timedelta(minutes=5), timedelta(hours=1))
FLEET_COUNT_MOST = 100_000


@router.get("/fleet", response_class=HTMLResponse)
def fleet_page(request: Request, principal: WebPrincipal) -> HTMLResponse:
    """Operators: devices offline or low on battery (their open health alarms), dead letters with their reasons,
    the ingest rate, and per device kind the stated probability of running out before the early date against how
    often the ended cycles did (outcomes.reliability)."""
    if not principal.is_operator:
        raise PageNotFound
    now = now_of(request)
    with Session(api_state(request).engine) as session:
        open_alarms = [
            alarm
            for status in (AlarmStatus.ACTIVE, AlarmStatus.ACKNOWLEDGED)
            for alarm in health.list_alarms(session=session, status=status, limit=500)
        ]
        dead = ingest.list_dead_letters(session=session, limit=50)
        reasons = ingest.dead_letters_by_reason(session=session, since=now - timedelta(days=1))
        overflow = ingest.dead_letter_overflow(session=session, since=now - timedelta(days=1))
        reliability, reliability_at = outcomes.kept_reliability(session=session)
        rates = [
            (window, ingest.messages_received(session=session, since=now - window, most=FLEET_COUNT_MOST))
            for window in FLEET_RATE_WINDOWS
        ]
    context = {
        "title": "Fleet",
        "principal": principal,
        "alarms": open_alarms,
        "dead_letters": dead,
        "reasons": sorted(reasons.items(), key=lambda item: -item[1]),
        "overflow": overflow,
        "rates": rates,
        "count_most": FLEET_COUNT_MOST,
        "reliability": reliability,
        "reliability_at": reliability_at,
        "reliability_days": outcomes.RELIABILITY_DAYS,
    }
    return render_page(request, "fleet.html", context)

"""A slot's level history and forecast as a small SVG drawn on the server: no chart library, nothing to load.

Pure: readings, the stored forecast, the orders and "now" in; the SVG's markup out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup, escape

from replenish.insights.usage import figure

WIDTH, HEIGHT = 640, 170
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 10, 22
HISTORY = timedelta(days=21)
MAX_AHEAD = timedelta(days=30)


@dataclass(frozen=True)
class ChartOrder:
    created_at: datetime
    status: str


def _parse(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def slot_chart(
    *,
    title: str,
    readings: Sequence[tuple[datetime, float]],
    forecast: dict[str, Any] | None,
    orders: Sequence[ChartOrder],
    lead_time_days: float,
    now: datetime,
) -> Markup:
    """Levels (fractions of the slot's capacity) over the last three weeks, the forecast from when it was computed to
    empty with its band (early to late empty date), the lead time from now, and the orders placed."""
    empty_at = _parse((forecast or {}).get("empty_at"))
    early = _parse((forecast or {}).get("empty_at_early"))
    late = _parse((forecast or {}).get("empty_at_late"))
    computed = _parse((forecast or {}).get("computed_at"))  # level_now is the level then
    level_now = (forecast or {}).get("level_now")
    lead_end = now + timedelta(days=lead_time_days)
    start = now - HISTORY
    end = max(lead_end, min(max(filter(None, [empty_at, late, now])), now + MAX_AHEAD)) + timedelta(days=1)
    span = (end - start).total_seconds()

    def x(moment: datetime) -> float:
        clamped = min(max(moment, start), end)
        return LEFT + (WIDTH - LEFT - RIGHT) * (clamped - start).total_seconds() / span

    def y(level: float) -> float:
        return TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - min(max(level, 0.0), 1.0))

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
        f'<rect class="lead" x="{x(now):.1f}" y="{TOP}" width="{x(lead_end) - x(now):.1f}" '
        f'height="{HEIGHT - TOP - BOTTOM}"><title>lead time: an order placed now arrives by then</title></rect>',
    ]
    for level in (0.0, 0.5, 1.0):
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(level):.1f}" y2="{y(level):.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 4}" y="{y(level) + 4:.1f}" text-anchor="end">{level:.0%}</text>')
    for day in range(0, int(span // 86_400) + 1, 7):
        moment = start + timedelta(days=day)
        parts.append(
            f'<text class="axis" x="{x(moment):.1f}" y="{HEIGHT - 6}" text-anchor="middle">{moment:%d %b}</text>'
        )
    if computed is not None and isinstance(level_now, int | float) and empty_at is not None:
        band_late = late or end
        band_early = early or empty_at
        parts.append(
            f'<polygon class="band" points="{x(computed):.1f},{y(level_now):.1f} {x(band_early):.1f},{y(0):.1f} '
            f'{x(band_late):.1f},{y(0):.1f}"><title>forecast band: empty between {band_early:%d %b} and '
            f"{'later' if late is None else f'{late:%d %b}'}</title></polygon>"
        )
        parts.append(
            f'<line class="forecast" x1="{x(computed):.1f}" y1="{y(level_now):.1f}" x2="{x(empty_at):.1f}" '
            f'y2="{y(0):.1f}"/>'
        )
    shown = [(moment, level) for moment, level in readings if moment >= start]
    if shown:
        points = " ".join(f"{x(moment):.1f},{y(level):.1f}" for moment, level in shown)
        parts.append(f'<polyline class="level" points="{points}"/>')
    for order in orders:
        if order.created_at >= start:
            parts.append(
                f'<circle class="order {escape(order.status)}" cx="{x(order.created_at):.1f}" cy="{y(0):.1f}" r="4">'
                f"<title>order {escape(order.status)} {order.created_at:%d %b %H:%M}</title></circle>"
            )
    parts.append(f'<line class="now" x1="{x(now):.1f}" x2="{x(now):.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


USE_WIDTH, USE_HEIGHT = 640, 120


def use_chart(
    *, title: str, weeks: Sequence[tuple[datetime, float, bool]], unit_label: str, axis_unit: str = ""
) -> Markup:
    """Use per week as bars, oldest first: (week start, amount, whether readings cover the whole week). A week only
    partly covered is drawn hollow: its bar may be short only because readings were missing. ``axis_unit`` follows
    the top of the scale ("%", " l")."""
    top = max((amount for _, amount, _ in weeks), default=0.0) or 1.0
    inner = USE_WIDTH - LEFT - RIGHT
    slot = inner / max(len(weeks), 1)
    parts = [
        f'<svg class="chart use" viewBox="0 0 {USE_WIDTH} {USE_HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
        f'<text class="axis" x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">{figure(top)}{escape(axis_unit)}</text>',
        f'<line class="grid" x1="{LEFT}" x2="{USE_WIDTH - RIGHT}" y1="{USE_HEIGHT - BOTTOM}" '
        f'y2="{USE_HEIGHT - BOTTOM}"/>',
    ]
    for number, (start, amount, whole) in enumerate(weeks):
        height = (USE_HEIGHT - TOP - BOTTOM) * amount / top
        x = LEFT + number * slot + slot * 0.15
        y = USE_HEIGHT - BOTTOM - height
        parts.append(
            f'<rect class="week{"" if whole else " partial"}" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" '
            f'height="{height:.1f}"><title>week of {start:%d %b}: {figure(amount)} {escape(unit_label)}'
            f"{'' if whole else ' (readings missing for part of it)'}</title></rect>"
        )
        parts.append(
            f'<text class="axis" x="{x + slot * 0.35:.1f}" y="{USE_HEIGHT - 6}" text-anchor="middle">'
            f"{start:%d %b}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))

"""Where the wearer is, in words and as a map link: what every message of a safety incident says. Pure."""

from __future__ import annotations

from typing import Any

from replenish.constants import MAP_LINK


def map_url(location: dict[str, Any] | None) -> str | None:
    if not location or location.get("latitude") is None or location.get("longitude") is None:
        return None
    return MAP_LINK.format(latitude=location["latitude"], longitude=location["longitude"])


def place(location: dict[str, Any] | None) -> str | None:
    """ "in the bathroom, at 52.520000, 13.405000 (within 12 m)", or None without a location."""
    if not location:
        return None
    parts = []
    if location.get("room"):
        parts.append(f"in the {location['room']}")
    if map_url(location) is not None:
        position = f"at {location['latitude']:.6f}, {location['longitude']:.6f}"
        if location.get("accuracy") is not None:
            position += f" (within {location['accuracy']:.0f} m)"
        parts.append(position)
    return ", ".join(parts)


def describe(location: dict[str, Any] | None) -> str | None:
    """What a message says: "Where: in the bathroom, at 52.520000, 13.405000 (within 12 m): <map link>."."""
    text = place(location)
    if text is None:
        return None
    url = map_url(location)
    return f"Where: {text}" + (f": {url}" if url else "") + "."

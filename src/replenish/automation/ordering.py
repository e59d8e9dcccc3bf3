"""What one order line asks for: which product (the customer's choice, or a substitute when it is unavailable), how
many packs, and at what price. Pure: the live service reads the catalogue and the consent, and hands them in.

A line whose product and substitutes are all unavailable still becomes a line: it asks first, and says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from replenish.forecasting import Forecast


@dataclass(frozen=True)
class Offer:
    """A product as an order sees it: a catalogue product's current version, or a free SKU the catalogue does not
    list (no version, no pack size: one unit is one fill of the slot; its price the slot's own)."""

    sku: str
    version_id: str | None = None
    name: str | None = None
    pack_size: float | None = None  # in the slot's unit
    price: Decimal | None = None  # of one pack
    currency: str | None = None  # of the price; None for a free SKU at the slot's unit price
    available: bool = True

    @property
    def label(self) -> str:
        return f"{self.name} ({self.sku})" if self.name else self.sku


@dataclass(frozen=True)
class Sizing:
    """How a slot sizes its orders: a fixed number of units, or (``up_to_days`` set) enough whole packs to cover its
    expected use over that many days."""

    capacity: float
    unit: str
    fixed_quantity: int
    up_to_days: float | None = None


@dataclass(frozen=True)
class LinePlan:
    offer: Offer
    quantity: int
    # Why this product and this quantity, for the decision's explanation.
    explanation: tuple[str, ...]
    # Why it must ask first however the consent lets it order (an unavailable product, a price over the cap).
    asks: tuple[str, ...]

    @property
    def total_price(self) -> Decimal | None:
        return self.offer.price * self.quantity if self.offer.price is not None else None


def choose_offer(chosen: Offer, substitutes: Sequence[Offer]) -> tuple[Offer, str | None, str | None]:
    """The product to order: the customer's choice while it is available, else the first available substitute.
    Returns it, a note saying a substitute stands in, and a reason to ask first when nothing available is left
    (the customer's choice is then what the request names)."""
    if chosen.available:
        return chosen, None, None
    for substitute in substitutes:
        if substitute.available:
            return substitute, f"{chosen.label} is unavailable: substitute {substitute.label} instead", None
    if substitutes:
        return chosen, None, f"{chosen.label} and its substitutes are unavailable"
    return chosen, None, f"{chosen.label} is unavailable and no substitute is allowed"


def size(
    sizing: Sizing, *, offer: Offer, forecast: Forecast | None, max_quantity: int | None
) -> tuple[int, str | None]:
    """How many units of ``offer`` one order asks for, and why (None: the slot's fixed quantity, as always).

    Order-up-to: the whole packs that cover the expected use over ``up_to_days`` (the forecast's mean rate), at
    least one, at most the consent's maximum per order (an order sized by the platform stays within it; a fixed
    quantity over it asks first, see policy.within_limits). Without a rate yet, the fixed quantity."""
    if sizing.up_to_days is None:
        return sizing.fixed_quantity, None
    rate = forecast.rate_per_day if forecast is not None and forecast.status == "ok" else None
    if rate is None or not math.isfinite(rate) or rate <= 0:
        return sizing.fixed_quantity, f"no use rate known yet: the slot's {sizing.fixed_quantity} unit(s)"
    pack = offer.pack_size or sizing.capacity
    use = rate * sizing.capacity * sizing.up_to_days
    # A hair under a whole pack is that pack: floating error must not add one.
    packs = max(1, math.ceil(use / pack - 1e-9))
    covers = "covers" if packs == 1 else "cover"
    why = f"{packs} x {pack:g} {sizing.unit} {covers} {use:.3g} {sizing.unit} of use over {sizing.up_to_days:g} days"
    if max_quantity is not None and packs > max_quantity:
        why = f"{why}, cut to the consent's maximum of {max_quantity} per order"
        packs = max_quantity
    return packs, why


def plan_line(
    *,
    chosen: Offer,
    substitutes: Sequence[Offer],
    sizing: Sizing,
    forecast: Forecast | None,
    max_quantity: int | None,
    quantity: int | None = None,
) -> LinePlan:
    """The line an order for the slot would be: product, quantity (``quantity``: the customer's own, as asked)
    and price, with why, and what makes it ask first. The consent's limits on price and quantity are
    policy.within_limits's to weigh."""
    offer, substituted, unavailable = choose_offer(chosen, substitutes)
    explanation = [substituted] if substituted else []
    if quantity is None:
        quantity, sized = size(sizing, offer=offer, forecast=forecast, max_quantity=max_quantity)
        if sized:
            explanation.append(sized)
    return LinePlan(
        offer=offer, quantity=quantity, explanation=tuple(explanation), asks=(unavailable,) if unavailable else ()
    )

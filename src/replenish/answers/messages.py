"""What the customer reads: subjects and bodies of the order notices, pure functions of the order's facts. Times are
shown in the consent's time zone, as the customer lives them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from replenish.constants import NoAnswer


@dataclass(frozen=True)
class OrderFacts:
    """The order as a message describes it."""

    device_name: str
    slot_name: str
    product_sku: str
    quantity: int
    total_price: Decimal | None
    zone: ZoneInfo
    empty_at_early: datetime | None = None
    # The other lines of its shipment (device and slot), as they stand when the message is written.
    box: tuple[str, ...] = ()

    @property
    def what(self) -> str:
        price = f" ({self.total_price})" if self.total_price is not None else ""
        return f"{self.quantity} x {self.product_sku}{price} for {self.device_name} {self.slot_name}"

    def at(self, moment: datetime) -> str:
        local = moment.astimezone(self.zone)
        return f"{local:%a %d %b %H:%M} ({self.zone.key})"

    def day(self, moment: datetime) -> str:
        return f"{moment.astimezone(self.zone):%a %d %b}"

    def one_box(self) -> str:
        return f" It comes in one box with {', '.join(self.box)}." if self.box else ""

    def runs_low(self) -> str:
        if self.empty_at_early is None:
            return ""
        return f" {self.device_name} {self.slot_name} may run out by {self.at(self.empty_at_early)}."


_WITHOUT_ANSWER = {
    NoAnswer.KEEP_WAITING: "we keep waiting for you and order nothing",
    NoAnswer.DECLINE: "we decline it",
    NoAnswer.APPROVE: "we place it (within your spending cap and quantity limit)",
}


def approval_request(facts: OrderFacts, *, answer_by: datetime | None, on_no_answer: NoAnswer) -> tuple[str, str]:
    subject = f"Approve? {facts.device_name} {facts.slot_name}: {facts.quantity} x {facts.product_sku}"
    if answer_by is None:
        deadline = "It waits for your answer."
    else:
        deadline = (
            f"Answer by {facts.at(answer_by)} for it to arrive in time; "
            f"without an answer by then, {_WITHOUT_ANSWER[on_no_answer]}."
        )
    return subject, f"Shall we order {facts.what}?{facts.runs_low()}{facts.one_box()} {deadline}"


def approval_reminder(facts: OrderFacts, *, answer_by: datetime, on_no_answer: NoAnswer) -> tuple[str, str]:
    subject = f"Reminder: approve {facts.device_name} {facts.slot_name}?"
    body = (
        f"We still need your answer about {facts.what}.{facts.runs_low()} Answer by {facts.at(answer_by)}; "
        f"without an answer by then, {_WITHOUT_ANSWER[on_no_answer]}."
    )
    if on_no_answer is NoAnswer.KEEP_WAITING:
        body += " It may then run out before a delivery can arrive."
    return subject, body


def no_answer(facts: OrderFacts, *, outcome: NoAnswer, reason: str | None = None) -> tuple[str, str]:
    if outcome is NoAnswer.DECLINE:
        return (
            f"Not ordered: {facts.device_name} {facts.slot_name}",
            f"Nobody answered in time, so {facts.what} was declined, as your settings say. Order it from the app "
            "whenever you like.",
        )
    if outcome is NoAnswer.APPROVE:
        return (
            f"Ordered: {facts.device_name} {facts.slot_name}",
            f"Nobody answered in time, so we ordered {facts.what}, as your settings say.",
        )
    why = f" ({reason})" if reason else ""
    return (
        f"Still waiting: {facts.device_name} {facts.slot_name}",
        f"The last useful moment to order {facts.what} has passed without an answer{why}. We keep waiting and order "
        f"nothing until you answer; it may run out before a delivery can arrive.{facts.runs_low()}",
    )


def order_placed(facts: OrderFacts, *, hand_off_at: datetime, arriving_at: datetime, now: datetime) -> tuple[str, str]:
    subject = f"Ordered: {facts.quantity} x {facts.product_sku} for {facts.device_name}"
    cancel = (
        f"; cancel until {facts.at(hand_off_at)}, before it goes to the supplier"
        if hand_off_at > now
        else "; it has gone to the supplier, and can still be cancelled in the app until it ships"
    )
    body = f"Ordered: {facts.what}, arriving about {facts.day(arriving_at)}{cancel}.{facts.runs_low()}{facts.one_box()}"
    return subject, body


def shipped(facts: OrderFacts, *, arriving_at: datetime) -> tuple[str, str]:
    return (
        f"Shipped: {facts.quantity} x {facts.product_sku} for {facts.device_name}",
        f"{facts.what} has shipped, arriving about {facts.day(arriving_at)}.",
    )


def delivered(facts: OrderFacts) -> tuple[str, str]:
    return (
        f"Delivered: {facts.quantity} x {facts.product_sku} for {facts.device_name}",
        f"{facts.what} has been delivered. {facts.device_name} shows the refill once it is in.",
    )


def delivery_nudge(facts: OrderFacts, *, delivered_at: datetime, level_share: float | None) -> tuple[str, str]:
    reads = (
        f"; {facts.device_name} still reads {level_share:.0%} for {facts.slot_name}" if level_share is not None else ""
    )
    return (
        f"Did it go in? {facts.device_name} {facts.slot_name}",
        f"Your {facts.product_sku} arrived on {facts.day(delivered_at)}{reads}. Once it is in, the forecasts pick up "
        "the new level by themselves; if it did not arrive, tell us in the app.",
    )

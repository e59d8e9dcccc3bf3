from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from replenish.constants import (
    APPRISE_HOSTED_SCHEMES,
    APPRISE_SERVICE_SCHEMES,
    DEFAULT_PULL_FORWARD_DAYS,
    ConsentMode,
    NoAnswer,
)

DEFAULT_FALL_CANCEL_WINDOW_SECONDS = 60
DEFAULT_ESCALATION_TIMEOUT_SECONDS = 120
DEFAULT_WEARABLE_SILENCE_MINUTES = 60
DEFAULT_TELEMETRY_RETENTION_DAYS = 365
DEFAULT_APPROVAL_REMINDER_HOURS = 6.0
# Amazon's Dash Replenishment gives 24 hours; two keep an order quick while leaving time to see the message.
DEFAULT_CANCEL_WINDOW_MINUTES = 120
DEFAULT_DELIVERY_NUDGE_HOURS = 24.0


# A wall-clock time of day in the consent's time zone, written "HH:MM" or "HH:MM:SS". JSON Schema's "time" format
# wants an offset ("08:00:00Z"), which a time of day in a named zone does not have: the schema says what is sent.
LocalTime = Annotated[
    time,
    WithJsonSchema(
        {"type": "string", "pattern": r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d+)?)?$", "examples": ["08:00"]}
    ),
]


class PauseWindow(BaseModel):
    """Dates the customer is away: nothing is ordered for the slots it covers, and their forecasts count the days
    as days of no use. Dates are whole days in the consent's time zone, both ends included."""

    model_config = ConfigDict(extra="forbid")

    start: date
    end: date
    targets: list[str] = Field(
        default_factory=list,
        description="Device ids and 'device_id/slot_name' it covers; empty: every device and slot.",
        examples=[["fridge-1/milk"]],
    )
    note: str | None = Field(None, max_length=200, examples=["skiing"])

    @model_validator(mode="after")
    def _ordered(self) -> PauseWindow:
        if self.end < self.start:
            raise ValueError("a pause window cannot end before it starts")
        return self

    def covers(self, *, device_id: str, slot_name: str) -> bool:
        return not self.targets or device_id in self.targets or f"{device_id}/{slot_name}" in self.targets

    def interval(self, zone: ZoneInfo) -> tuple[datetime, datetime]:
        """The window as a half-open interval: from the first day's midnight to the midnight after the last, in the
        consent's time zone."""
        return (
            datetime.combine(self.start, time(), zone),
            datetime.combine(self.end + timedelta(days=1), time(), zone),
        )


class QuietHours(BaseModel):
    """Hours of the day (the consent's time zone) when a channel stays quiet: a notification that comes then waits
    until they end. Safety notifications (a fall, a help request) ignore them."""

    model_config = ConfigDict(extra="forbid")

    start: LocalTime = Field(description="When the quiet begins, e.g. 22:00.", examples=["22:00"])
    end: LocalTime = Field(description="When it ends, e.g. 07:00 (the next morning when earlier than start).")

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet hours must start and end at different times")
        return self


class NotificationChannel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["log", "email", "webhook", "webpush"]
    address: str | None = Field(
        None,
        description="The e-mail address (email) or URL (webhook); none for log, and for webpush, which reaches "
        "every browser the customer subscribed (POST /api/v1/push/subscriptions, or the consent page's toggle).",
    )
    quiet_hours: QuietHours | None = Field(None, description="When this channel stays quiet; none: never.")

    @model_validator(mode="after")
    def _address_fits_the_type(self) -> NotificationChannel:
        _check_address(self.type, self.address)
        return self


ContactChannelType = Literal["email", "webhook", "log", "sms", "voice", "apprise"]
_CHANNEL_WORDS = (
    "How they are asked: sms or voice (a phone number in E.164, through the configured SMS provider), e-mail, a "
    "webhook, apprise (an apprise URL: chat services such as Telegram, Signal, Matrix or Slack), or the platform's "
    "log (for trials and demos)."
)
_ADDRESS_WORDS = "The phone number (+4915112345678), e-mail address, webhook URL or apprise URL; none for the log."


class ContactChannel(BaseModel):
    """One more way to reach an emergency contact, tried when the one before fails."""

    model_config = ConfigDict(extra="forbid")

    channel: ContactChannelType = Field(description=_CHANNEL_WORDS)
    address: str | None = Field(None, description=_ADDRESS_WORDS)

    @model_validator(mode="after")
    def _address_fits_the_channel(self) -> ContactChannel:
        _check_address(self.channel, self.address)
        return self


class EmergencyContact(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    channel: ContactChannelType = Field(description=_CHANNEL_WORDS)
    address: str | None = Field(None, description=_ADDRESS_WORDS)
    fallbacks: list[ContactChannel] = Field(
        default_factory=list,
        max_length=4,
        description="Further channels, tried in order at once when the one before fails (the provider refuses it, "
        "it bounces, or an SMS or call has no delivery receipt within 30 s) instead of waiting for the step's "
        "timeout.",
    )
    device_ids: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="The wearables whose incidents they are asked about; empty: every wearable of the household.",
    )
    account_id: str | None = Field(
        None,
        description="A person of the household (a carer's or member's account, who must see the wearables): the web "
        "app shows them the incident, its timeline and the acknowledge button as well.",
    )

    @model_validator(mode="after")
    def _address_fits_the_channel(self) -> EmergencyContact:
        _check_address(self.channel, self.address)
        return self

    def channels(self) -> list[tuple[str, str | None]]:
        """Every way to reach them, in the order they are tried."""
        return [(self.channel, self.address), *((fallback.channel, fallback.address) for fallback in self.fallbacks)]

    def covers(self, device_id: str) -> bool:
        return not self.device_ids or device_id in self.device_ids


class _Email(BaseModel):
    value: EmailStr


class _Url(BaseModel):
    value: AnyHttpUrl


# E.164: a plus, the country code and the number, 8 to 15 digits in all.
_PHONE = re.compile(r"^\+[1-9]\d{7,14}$")
# An apprise URL: a service's scheme and what it needs (apprise itself checks the rest when it sends).
_APPRISE_URL = re.compile(r"^[a-z][a-z0-9+.-]{1,30}://\S+$")


def _check_address(kind: str, address: str | None) -> None:
    if kind in ("log", "webpush"):
        if address is not None:
            raise ValueError(f"a {kind} channel takes no address")
        return
    if kind in ("sms", "voice"):
        if not address or not _PHONE.match(address):
            article = "an" if kind == "sms" else "a"
            raise ValueError(f"{article} {kind} channel needs a phone number in E.164 form, e.g. +4915112345678")
        return
    if kind == "apprise":
        if not address or not _APPRISE_URL.match(address):
            raise ValueError("an apprise channel needs an apprise URL, e.g. tgram://bottoken/ChatID")
        scheme = address.split("://", 1)[0]
        if scheme not in APPRISE_SERVICE_SCHEMES | APPRISE_HOSTED_SCHEMES:
            allowed = ", ".join(sorted(APPRISE_SERVICE_SCHEMES | APPRISE_HOSTED_SCHEMES))
            raise ValueError(f"{scheme}:// is not a service a contact may be reached by; one of {allowed}")
        return
    if not address:
        raise ValueError(f"an {kind} channel needs an address" if kind == "email" else f"a {kind} channel needs a URL")
    (_Email if kind == "email" else _Url).model_validate({"value": address})


SlotPriceCap = Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=2)]


@dataclass(frozen=True)
class OrderLimits:
    """The consent's limits on automatic orders, as automation.policy.within_limits applies them."""

    monthly_spending_cap: Decimal | None = None
    max_quantity_per_order: int | None = None
    # The slot's own cap on what one order may cost (ConsentDocument.slot_price_caps).
    slot_price_cap: Decimal | None = None


class InsightSettings(BaseModel):
    """Which insights about their use the customer wants (insights): on the supplies page, and in the monthly digest
    on their notification channels."""

    model_config = ConfigDict(extra="forbid")

    usage_changes: bool = Field(
        True, description="Say when a slot's use changes markedly ('milk use doubled in the last two weeks')."
    )
    costs: bool = Field(True, description="Say what each slot's supplies cost a month at the current use.")
    maintenance: bool = Field(
        True,
        description="Hint when the readings suggest a look: a slot used far faster than others of its kind (only "
        "customers who allow fleet learning set the norm), or a delivery that does not show on a sensor repeating "
        "one value.",
    )
    monthly_digest: bool = Field(
        True,
        description="Once a month, at digest_time on the 1st (the consent's time zone), a summary of last month's "
        "use per slot with the insights above, on the notification channels.",
    )


class ConsentDocument(BaseModel):
    """What the customer lets the platform do. The most specific mode wins: slot, then device, then default."""

    model_config = ConfigDict(extra="forbid")

    default_mode: ConsentMode = Field(
        ConsentMode.ASK_FIRST, description="Mode for every slot without a more specific rule."
    )
    device_modes: dict[str, ConsentMode] = Field(
        default_factory=dict, description="Per device: device id → mode.", examples=[{"printer-1": "auto_order"}]
    )
    slot_modes: dict[str, ConsentMode] = Field(
        default_factory=dict,
        description="Per slot: 'device_id/slot_name' → mode.",
        examples=[{"fridge-1/milk": "notify_only"}],
    )
    monthly_spending_cap: Decimal | None = Field(
        None,
        ge=0,
        max_digits=12,
        decimal_places=2,
        description="Most that orders placed in a calendar month (consent time zone) may cost, in the currency of "
        "the slots' prices. An order the platform would place by itself over it waits for approval instead; orders "
        "the customer approves count toward the month too.",
    )
    max_quantity_per_order: int | None = Field(
        None, ge=1, description="Most units one automatic order may ask for; a bigger one waits for approval."
    )
    slot_price_caps: dict[str, SlotPriceCap] = Field(
        default_factory=dict,
        description="Per slot: 'device_id/slot_name' → most one order the platform places by itself for it may "
        "cost, in the currency of its prices. A dearer one (a price rise, a substitute, a bigger order) waits for "
        "approval instead, and says why.",
        examples=[{"printer-1/black": "40.00"}],
    )
    pull_forward_days: float = Field(
        DEFAULT_PULL_FORWARD_DAYS,
        ge=0,
        le=60,
        description="One box instead of several parcels: when a slot orders, the customer's other slots that would "
        "order by themselves within this many days join its shipment (each a line of its own, under its own mode "
        "and limits, explained: 'pulled forward: cyan may run out ... 6 days after black'). 0: only those due now. "
        "The default is the horizon measured best on the bench traces (bench/README.md, 'Shipments').",
    )
    pause_windows: list[PauseWindow] = Field(default_factory=list, max_length=50)
    timezone: str = Field("UTC", description="IANA time zone of pause dates and calendar months.")
    on_revoke: Literal["cancel", "hold"] = Field(
        "cancel",
        description="When a change takes ordering away from a slot, its open orders not yet shipped are cancelled "
        "with the reason (cancel), or held (hold): fulfilment is told to hold placed ones until the customer "
        "approves or cancels them, and orders awaiting approval keep waiting.",
    )
    on_no_answer: NoAnswer = Field(
        NoAnswer.KEEP_WAITING,
        description="What happens to an order awaiting approval when its latest useful answer time (the forecast's "
        "early empty date minus the lead time) passes unanswered: keep_waiting (nothing is ordered, the request "
        "stays open and the customer is told), decline, or approve (only within the spending cap and quantity "
        "limit; otherwise it keeps waiting and says why). The order's history records which it was, and under "
        "which consent version.",
    )
    approval_reminder_hours: float = Field(
        DEFAULT_APPROVAL_REMINDER_HOURS,
        ge=0,
        le=168,
        description="How long before the latest useful answer time a reminder goes out for an unanswered request "
        "(at the latest halfway there, when the request came later than that); 0: no reminder.",
    )
    cancel_window_minutes: int = Field(
        DEFAULT_CANCEL_WINDOW_MINUTES,
        ge=0,
        le=2880,
        description="How long an automatic order waits, announced with a one-tap cancel link, before it is handed "
        "to fulfilment; shortened when the slot's early empty date leaves no room. A cancel inside the window never "
        "reaches fulfilment. 0: handed over at once.",
    )
    delivery_nudge_hours: float = Field(
        DEFAULT_DELIVERY_NUDGE_HOURS,
        ge=0,
        le=720,
        description="When a delivered order's slot shows no refill this long after delivery, the customer gets one "
        "nudge ('your ink arrived on Tuesday; the printer still reads 3 %'); 0: never.",
    )
    daily_digest: bool = Field(
        False,
        description="Low-priority notices (a slot running low under notify_only, shipped, delivered, the nudge after "
        "a delivery) come together once a day, at digest_time, instead of one by one. Requests, announcements of "
        "orders, reminders and safety notifications always come at once.",
    )
    digest_time: LocalTime = Field(
        time(8, 0), description="When the daily digest (and the monthly one) goes out (the consent's time zone)."
    )
    insights: InsightSettings = Field(
        default_factory=InsightSettings, description="Which insights about their use the customer wants."
    )
    notification_channels: list[NotificationChannel] = Field(
        default_factory=lambda: [NotificationChannel(type="log")],
        min_length=1,
        max_length=10,
        description="Where the customer's own notifications go: the log, e-mail (SMTP) or a webhook (JSON POST).",
    )
    emergency_contacts: list[EmergencyContact] = Field(
        default_factory=list,
        max_length=10,
        description="Whom a fall or help request escalates to, in this order: each is asked (e-mail or webhook, "
        "with a link to acknowledge) and given escalation_timeout_seconds before the next one is.",
    )
    emergency_services_allowed: bool = Field(
        False,
        description="Whether emergency services may be called, last, when no contact acknowledges (the request "
        "goes to the operators, who place the call).",
    )
    fall_cancel_window_seconds: int = Field(
        DEFAULT_FALL_CANCEL_WINDOW_SECONDS,
        ge=0,
        le=600,
        description="How long the wearer has to cancel a fall ('I'm OK') before contacts are asked; 0: at once. "
        "A help request never waits.",
    )
    wearable_silence_minutes: int = Field(
        DEFAULT_WEARABLE_SILENCE_MINUTES,
        ge=5,
        le=7 * 24 * 60,
        description="A wearable offline, or with a flat battery, for longer than this cannot report a fall: it opens "
        "a (non-urgent) incident that goes to its carers until one acknowledges, and closes itself when the device "
        "is back.",
    )
    escalation_timeout_seconds: int = Field(
        DEFAULT_ESCALATION_TIMEOUT_SECONDS,
        ge=10,
        le=3600,
        description="How long a contact has to acknowledge before the next one is asked.",
    )
    telemetry_retention_days: int = Field(
        DEFAULT_TELEMETRY_RETENTION_DAYS, ge=1, le=3650, description="Readings and events older than this are deleted."
    )
    fleet_learning_allowed: bool = Field(
        False,
        description="Whether this customer's consumption rates, without anything that identifies them, may help "
        "forecast other customers' new devices.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Berlin") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def mode_for(self, *, device_id: str, slot_name: str) -> ConsentMode:
        slot_mode = self.slot_modes.get(f"{device_id}/{slot_name}")
        if slot_mode is not None:
            return slot_mode
        return self.device_modes.get(device_id, self.default_mode)

    def calendar_month(self, moment: datetime) -> tuple[datetime, datetime]:
        """The calendar month (in the consent's time zone) around a moment, as a half-open interval."""
        local = moment.astimezone(self.zone)
        start = datetime(local.year, local.month, 1, tzinfo=self.zone)
        end = datetime(local.year + local.month // 12, local.month % 12 + 1, 1, tzinfo=self.zone)
        return start, end

    def limits_for(self, *, device_id: str, slot_name: str) -> OrderLimits:
        """The limits on an automatic order for the slot."""
        return OrderLimits(
            monthly_spending_cap=self.monthly_spending_cap,
            max_quantity_per_order=self.max_quantity_per_order,
            slot_price_cap=self.slot_price_caps.get(f"{device_id}/{slot_name}"),
        )

    def pauses_for(self, *, device_id: str, slot_name: str) -> list[tuple[datetime, datetime]]:
        """The pause windows covering the slot, as half-open UTC intervals."""
        return [
            window.interval(self.zone)
            for window in self.pause_windows
            if window.covers(device_id=device_id, slot_name=slot_name)
        ]


class ConsentRead(BaseModel):
    customer_id: str
    version: int
    created_at: datetime
    created_by: str
    document: ConsentDocument


class ConsentUpdate(ConsentDocument):
    """The whole new consent document; it becomes the next version."""

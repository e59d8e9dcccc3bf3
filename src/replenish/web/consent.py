"""The consent page: what the platform may do (modes per customer, device and slot), limits, what happens to
unanswered requests, pause windows, notification channels, emergency contacts and escalation, and every earlier
version. Each form records the next consent version; invalid input is shown again next to its field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlmodel import Session

from replenish.api.state import api_state
from replenish.auth.service import Principal
from replenish.consent import service as consent
from replenish.consent.schemas import ConsentDocument, InsightSettings, NotificationChannel
from replenish.constants import Capability, ConsentMode, DeviceKind, HouseholdRole
from replenish.db import transaction
from replenish.devices import service as devices
from replenish.errors import DomainError
from replenish.households import service as households
from replenish.notifications import service as notifications
from replenish.web.pages import PREFIX, FormData, WebPrincipal, customer_of, now_of, redirect_to, render_page
from replenish.web.session import CSRF_FIELD, check_csrf

CONTACT_CHANNELS = (
    ("sms", "text message (SMS)"),
    ("voice", "phone call"),
    ("email", "e-mail"),
    ("apprise", "a chat service (an apprise URL)"),
    ("webhook", "webhook (a URL)"),
    ("log", "the platform's log (trials)"),
)

router = APIRouter(prefix=PREFIX, include_in_schema=False)
MODE_CHOICES = [(mode.value, mode.value.replace("_", " ")) for mode in ConsentMode]


def _consent_page(
    request: Request,
    principal: Principal,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
) -> HTMLResponse:
    customer_id = customer_of(principal)
    principal.require(Capability.READ_CONSENT)
    with Session(api_state(request).engine) as session:
        versions = consent.history(session=session, customer_id=customer_id)
        described = devices.describe_many(
            session=session,
            devices=devices.list_devices(
                session=session, customer_id=customer_id, device_ids=principal.visible_devices, limit=500
            ),
        )
        browsers = notifications.push_subscriptions(session=session, customer_id=customer_id)
        people = {
            member.account_id: f"{member.name or member.email} ({member.role})"
            for member in households.list_members(session=session, customer_id=customer_id)
            if member.role != HouseholdRole.OWNER
        }
    document = ConsentDocument.model_validate(versions[-1].document)
    changes = []
    for before, after in zip([None, *versions[:-1]], versions, strict=True):
        changed = sorted(
            key for key, value in after.document.items() if before is None or before.document.get(key) != value
        )
        changes.append({"version": after, "changed": changed})
    context = {
        "title": "Consent",
        "principal": principal,
        "version": versions[-1].version,
        "document": document,
        "devices": described,
        "modes": MODE_CHOICES,
        "history": list(reversed(changes)),
        "errors": errors or {},
        "values": values or {},
        "push_key": api_state(request).push_public_key,
        "webpush_browsers": len(browsers),
        "contact_channels": CONTACT_CHANNELS,
        "wearables": [d for d in described if d.kind == DeviceKind.WEARABLE],
        "people": people,
    }
    return render_page(request, "consent.html", context)


@router.get("/consent", response_class=HTMLResponse)
def consent_page(request: Request, principal: WebPrincipal) -> HTMLResponse:
    """What the platform may do, per customer, device and slot; limits; pause windows; and every earlier version."""
    return _consent_page(request, principal)


def _save_consent(
    request: Request, principal: Principal, change: Callable[[dict[str, Any]], None], values: dict[str, str]
) -> Response:
    """Apply a change to the current document and record it as the next version; invalid input is shown again
    next to its field, and nothing is recorded."""
    check_csrf(request, values.get(CSRF_FIELD))
    customer_id = customer_of(principal)
    principal.require(Capability.CHANGE_CONSENT)
    with transaction(api_state(request).engine) as session:
        version, current = consent.current_document(session=session, customer_id=customer_id)
        data = current.model_dump(mode="json")
        try:
            if values.get("version") != str(version):
                # Removing "the second contact" of an older page would remove someone else: start from what is.
                raise _FieldError("form", "Your consent changed meanwhile (in another tab?): here it is now.")
            change(data)
            document = ConsentDocument.model_validate(data)
            consent.record(
                session=session, customer_id=customer_id, document=document, actor=principal.actor, now=now_of(request)
            )
        except (ValidationError, _FieldError, DomainError) as exc:
            session.rollback()
            return _consent_page(request, principal, errors=_field_errors(exc), values=values)
    return redirect_to(f"{PREFIX}/consent?saved=1")


class _FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _field_errors(exc: Exception) -> dict[str, str]:
    """Errors by the form field they concern."""
    if isinstance(exc, _FieldError):
        return {exc.field: str(exc)}
    if isinstance(exc, ValidationError):
        found: dict[str, str] = {}
        for error in exc.errors():
            location = [str(part) for part in error["loc"]]
            field = {"pause_windows": "pause", "emergency_contacts": "contact_address"}.get(
                location[0] if location else "", location[0] if location else "form"
            )
            if field == "notification_channels":  # the list itself, or a channel's quiet hours (what is edited)
                field = f"quiet_{location[1]}" if len(location) > 1 else "channels"
            found.setdefault(field, error["msg"].removeprefix("Value error, "))
        return found
    return {"form": str(exc)}


@router.post("/consent/modes")
def save_modes(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """The default mode, and a mode per device and per slot ('' inherits from the level above)."""

    def change(data: dict[str, Any]) -> None:
        data["default_mode"] = form.get("default_mode", data["default_mode"])
        data["device_modes"] = {
            key.removeprefix("device:"): value for key, value in form.items() if key.startswith("device:") and value
        }
        data["slot_modes"] = {
            key.removeprefix("slot:"): value for key, value in form.items() if key.startswith("slot:") and value
        }

    return _save_consent(request, principal, change, form)


@router.post("/consent/limits")
def save_limits(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """The monthly spending cap, the largest quantity an automatic order may ask for, and each slot's price cap
    (blank: no limit)."""

    def change(data: dict[str, Any]) -> None:
        data["monthly_spending_cap"] = form.get("monthly_spending_cap", "").strip() or None
        data["max_quantity_per_order"] = form.get("max_quantity_per_order", "").strip() or None
        data["slot_price_caps"] = {
            key.removeprefix("price_cap:"): value.strip()
            for key, value in form.items()
            if key.startswith("price_cap:") and value.strip()
        }

    return _save_consent(request, principal, change, form)


@router.post("/consent/answers")
def save_answers(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """What an unanswered request does at its deadline, when the reminder goes out, and the cancel window."""

    def change(data: dict[str, Any]) -> None:
        for name in ("on_no_answer", "approval_reminder_hours", "cancel_window_minutes", "digest_time"):
            data[name] = form.get(name, "").strip() or data.get(name)
        data["daily_digest"] = form.get("daily_digest") == "on"
        for index, channel in enumerate(data["notification_channels"]):
            start = form.get(f"quiet_start_{index}", "").strip()
            end = form.get(f"quiet_end_{index}", "").strip()
            if bool(start) != bool(end):
                raise _FieldError(f"quiet_{index}", "Give both times, or neither for no quiet hours.")
            channel["quiet_hours"] = {"start": start, "end": end} if start else None

    return _save_consent(request, principal, change, form)


@router.post("/consent/insights")
def save_insights(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """Which insights about their use the customer wants: changes, costs, maintenance hints, the monthly digest."""

    def change(data: dict[str, Any]) -> None:
        data["insights"] = {name: form.get(name) == "on" for name in InsightSettings.model_fields}

    return _save_consent(request, principal, change, form)


@router.post("/consent/pauses")
def add_pause(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """A pause window: nothing is ordered for what it covers, from its first day to its last, both included."""

    def change(data: dict[str, Any]) -> None:
        start, end = form.get("start", "").strip(), form.get("end", "").strip()
        if not start:
            raise _FieldError("pause_start", "Choose the first day you are away.")
        if not end:
            raise _FieldError("pause_end", "Choose the last day you are away.")
        target = form.get("target", "")
        window = {"start": start, "end": end, "targets": [target] if target else [], "note": form.get("note") or None}
        data["pause_windows"] = [*data["pause_windows"], window]

    return _save_consent(request, principal, change, form)


def _without(key: str, index: int, *, field: str, gone: str) -> Callable[[dict[str, Any]], None]:
    """A consent change removing the index-th entry of a list (the form's version makes sure it is the one shown)."""

    def change(data: dict[str, Any]) -> None:
        if not 0 <= index < len(data[key]):
            raise _FieldError(field, gone)
        data[key] = [entry for number, entry in enumerate(data[key]) if number != index]

    return change


@router.post("/consent/pauses/{index}/remove")
def remove_pause(request: Request, index: int, principal: WebPrincipal, form: FormData) -> Response:
    change = _without("pause_windows", index, field="pause", gone="That pause window has already been removed.")
    return _save_consent(request, principal, change, form)


@router.post("/consent/channels")
def add_channel(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """Another channel for the customer's own notifications: e-mail, a webhook, or the log."""

    def change(data: dict[str, Any]) -> None:
        channel = {
            "type": form.get("channel_type", "email"),
            "address": form.get("channel_address", "").strip() or None,
        }
        try:
            NotificationChannel.model_validate(channel)
        except ValidationError as exc:
            raise _FieldError("channel_address", exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
        if any(
            (known["type"], known.get("address")) == (channel["type"], channel["address"])
            for known in data["notification_channels"]
        ):
            raise _FieldError("channel_address", "You are told there already.")
        data["notification_channels"] = [*data["notification_channels"], channel]

    return _save_consent(request, principal, change, form)


@router.post("/consent/channels/{index}/remove")
def remove_channel(request: Request, index: int, principal: WebPrincipal, form: FormData) -> Response:
    change = _without("notification_channels", index, field="channels", gone="That channel has already been removed.")
    return _save_consent(request, principal, change, form)


@router.post("/consent/contacts")
def add_contact(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """An emergency contact, asked after those before them when a fall or help request is not acknowledged."""

    def change(data: dict[str, Any]) -> None:
        name = form.get("contact_name", "").strip()
        if not name:
            raise _FieldError("contact_name", "Enter the contact's name.")
        address = form.get("contact_address", "").strip() or None
        contact: dict[str, Any] = {"name": name, "channel": form.get("contact_channel", "email"), "address": address}
        if form.get("fallback_channel"):
            fallback = {
                "channel": form["fallback_channel"],
                "address": form.get("fallback_address", "").strip() or None,
            }
            contact["fallbacks"] = [fallback]
        if form.get("contact_device"):
            contact["device_ids"] = [form["contact_device"]]
        if form.get("contact_account"):
            contact["account_id"] = form["contact_account"]
        data["emergency_contacts"] = [*data["emergency_contacts"], contact]

    return _save_consent(request, principal, change, form)


@router.post("/consent/contacts/{index}/remove")
def remove_contact(request: Request, index: int, principal: WebPrincipal, form: FormData) -> Response:
    change = _without("emergency_contacts", index, field="contacts", gone="That contact has already been removed.")
    return _save_consent(request, principal, change, form)


@router.post("/consent/escalation")
def save_escalation(request: Request, principal: WebPrincipal, form: FormData) -> Response:
    """How long the wearer has to cancel a fall, how long each contact has to answer, how long a wearable may be
    silent before its carers are asked, and emergency services."""

    def change(data: dict[str, Any]) -> None:
        data["fall_cancel_window_seconds"] = form.get("fall_cancel_window_seconds", "").strip()
        data["escalation_timeout_seconds"] = form.get("escalation_timeout_seconds", "").strip()
        if "wearable_silence_minutes" in form:
            data["wearable_silence_minutes"] = form["wearable_silence_minutes"].strip()
        data["emergency_services_allowed"] = form.get("emergency_services_allowed") == "yes"

    return _save_consent(request, principal, change, form)

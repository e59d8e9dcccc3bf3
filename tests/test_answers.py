"""Every decision reaches the customer, who answers it in one tap: approval requests by e-mail (a real SMTP server)
with one-tap links, their reminder and deadline, automatic orders announced with a cancel window that fulfilment (a
real HTTP receiver) never sees past. The manual clock runs the hours; the jobs are ticked as the scheduler would."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlmodel import Session, select

from replenish.answers.timing import MIN_ANSWER_WINDOW
from replenish.audit.models import AuditEvent
from replenish.clock import ManualClock
from replenish.constants import AuditAction, OutboxKind
from replenish.outbox.models import OutboxMessage
from replenish.runtime import Platform
from support import wait_until
from support.api import api_client, create_customer, operator_token, register_device, set_consent
from support.mqtt import Publisher
from support.platform import START, make_settings, run_low, running_platform
from support.servers import Mailbox, WebhookReceiver

ADA = "ada@example.com"
PARTNER_SECRET = "acme-signing-secret-0123456789"


class Loop:
    """A platform that mails the customer and hands orders to a fulfilment receiver, with an operator's API."""

    def __init__(self, platform: Platform, api: httpx.Client, clock: ManualClock, mailbox: Mailbox, partner):
        self.platform, self.api, self.clock, self.mailbox, self.partner = platform, api, clock, mailbox, partner

    def consent(self, customer_id: str, **document: Any) -> None:
        set_consent(
            self.api,
            customer_id,
            {"notification_channels": [{"type": "email", "address": ADA}, {"type": "log"}], **document},
        )

    def tick(self) -> None:
        """What the scheduler does each minute: evaluate, follow up, deliver."""
        assert self.platform.jobs is not None
        self.platform.jobs.evaluate()
        self.platform.jobs.follow_up()
        self.platform.jobs.dispatch()

    def orders(self) -> list[dict[str, Any]]:
        return self.api.get("/orders").json()

    def order(self, order_id: str) -> dict[str, Any]:
        return self.api.get(f"/orders/{order_id}").json()

    def mails(self, count: int) -> list[Any]:
        assert wait_until(lambda: len(self.mailbox.to(ADA)) >= count), [m["Subject"] for m in self.mailbox.messages]
        return self.mailbox.to(ADA)

    def fulfilment_events(self) -> list[tuple[str, str]]:
        """(event, order id) of each line fulfilment heard of: a shipment's hand-off names each of its lines."""
        return [
            (body["event"], line["order_id"])
            for _, body, _ in self.partner.requests
            for line in (body["shipment"]["lines"] if "shipment" in body else [body["order"]])
        ]

    def notices(self, kind: str) -> list[dict[str, Any]]:
        """The customer's notifications of this kind, by e-mail (each goes to the log as well)."""
        return [n for n in self.api.get("/notifications").json() if n["kind"] == kind and n["channel"] == "email"]

    def audit(self, action: AuditAction) -> list[AuditEvent]:
        with Session(self.platform.engine) as session:
            return list(session.exec(select(AuditEvent).where(AuditEvent.action == action)))


@pytest.fixture
def loop(tmp_path: Path, clock: ManualClock, mailbox: Mailbox) -> Iterator[Loop]:
    partner = WebhookReceiver(path="/fulfilment")
    settings = make_settings(
        tmp_path,
        smtp_host="127.0.0.1",
        smtp_port=mailbox.port,
        smtp_sender="orders@example.com",
        order_webhook_url=partner.url,
        fulfilment_partner_secrets={"acme": PARTNER_SECRET},
    )
    try:
        with running_platform(settings, clock) as platform, api_client(platform, operator_token(platform)) as api:
            yield Loop(platform, api, clock, mailbox, partner)
    finally:
        partner.close()


def links_in(message: Any) -> dict[str, str]:
    """The labelled links of a notification e-mail: {"Approve": url, ...}."""
    return dict(re.findall(r"^(Approve|Decline|Cancel|Open in the app): (\S+)\r?$", message.get_content(), re.M))


def ask_first(loop: Loop, **consent: Any) -> dict[str, Any]:
    """Ada's printer asks first; black runs low over 8 days; the next tick asks her. Returns the order."""
    customer_id, _ = run_low(loop.platform, loop.api, mode="ask_first")
    loop.consent(customer_id, default_mode="ask_first", **consent)
    loop.clock.set(START + timedelta(days=8))
    loop.tick()
    [order] = loop.orders()
    assert order["status"] == "awaiting_approval"
    return order


def test_an_approval_request_is_mailed_at_once_and_approved_in_one_tap_without_signing_in(loop: Loop):
    order = ask_first(loop)
    [request] = loop.mails(1)
    assert request["Subject"] == "Approve? printer printer-1 black: 1 x INK-BLACK"
    text = request.get_content()
    assert "Answer by" in text and "we keep waiting for you and order nothing" in text
    links = links_in(request)
    assert set(links) == {"Approve", "Decline", "Open in the app"}
    assert links["Open in the app"] == f"{loop.platform.api_url}/app/orders/{order['id']}"
    assert loop.order(order["id"])["answer_by"] is not None

    with httpx.Client(timeout=10) as browser:  # no cookie, no token: the link is the credential
        # Following the link (as a mail scanner does) only shows what it would do.
        page = browser.get(links["Approve"])
        assert page.status_code == 200 and "Approve this order?" in page.text and "1 x INK-BLACK" in page.text
        assert page.headers["referrer-policy"] == "same-origin" and page.headers["cache-control"] == "no-store"
        assert loop.order(order["id"])["status"] == "awaiting_approval"
        loop.tick()
        assert loop.fulfilment_events() == []

        done = browser.post(links["Approve"])
        assert done.status_code == 200 and "Approved" in done.text
        approved = loop.order(order["id"])
        assert approved["status"] == "placed"
        assert approved["history"][-1]["actor"] == "customer (one-tap link)"
        loop.tick()
        assert wait_until(lambda: loop.fulfilment_events() == [("shipment.placed", order["id"])])

        # The link works once; the request's other link finds the order answered. Nothing changes either way.
        again = browser.post(links["Approve"])
        assert again.status_code == 410 and "used already" in again.text
        decline = browser.post(links["Decline"])
        assert decline.status_code == 409 and "placed now" in decline.text
        loop.tick()
        assert loop.fulfilment_events() == [("shipment.placed", order["id"])], "fulfilment received the order once"
        assert loop.order(order["id"])["status"] == "placed"

    refused = {event.detail["problem"] for event in loop.audit(AuditAction.ORDER_LINK_REFUSED)}
    assert refused == {"used", "answered"}
    [used] = loop.audit(AuditAction.ORDER_LINK_USED)
    assert used.subject_id == order["id"] and used.detail["action"] == "approve"


def test_a_forged_or_tampered_link_gets_a_clear_page_and_an_audit_record(loop: Loop):
    order = ask_first(loop)
    approve = links_in(loop.mails(1)[0])["Approve"]
    with httpx.Client(timeout=10) as browser:
        for url in (approve[:-2] + ("AA" if not approve.endswith("AA") else "BB"), approve.rsplit("/", 1)[0] + "/x"):
            for method in (browser.get, browser.post):
                page = method(url)
                assert page.status_code == 404 and "Link not valid" in page.text, page.text
                assert "<button" not in page.text
    assert loop.order(order["id"])["status"] == "awaiting_approval"
    assert len(loop.audit(AuditAction.ORDER_LINK_REFUSED)) == 4
    assert {event.detail["problem"] for event in loop.audit(AuditAction.ORDER_LINK_REFUSED)} == {"unknown"}


def test_a_link_sent_under_an_older_consent_does_nothing(loop: Loop):
    order = ask_first(loop)
    approve = links_in(loop.mails(1)[0])["Approve"]
    # A change that the answer does not rest on (quiet hours on another day's evening) leaves the link good ...
    loop.consent(
        order["customer_id"],
        default_mode="ask_first",
        notification_channels=[{"type": "email", "address": ADA, "quiet_hours": {"start": "23:00", "end": "06:00"}}],
    )
    with httpx.Client(timeout=10) as browser:
        assert browser.get(approve).status_code == 200
        # ... one to its limits (or to the slot's mode) does not.
        loop.consent(order["customer_id"], default_mode="ask_first", monthly_spending_cap="50")
        page = browser.post(approve)
    assert page.status_code == 409 and "settings for this have changed" in page.text
    assert loop.order(order["id"])["status"] == "awaiting_approval"
    [refused] = loop.audit(AuditAction.ORDER_LINK_REFUSED)
    assert refused.detail["problem"] == "consent_changed" and refused.customer_id == order["customer_id"]


def test_keep_waiting_reminds_says_so_and_keeps_the_request_open(loop: Loop):
    order = ask_first(loop)
    detail = loop.order(order["id"])
    remind_at, answer_by = detail["remind_at"], detail["answer_by"]
    # Black is already inside its lead time: the customer still gets the minimum window, reminded halfway.
    assert (loop.clock.now() + MIN_ANSWER_WINDOW).isoformat().replace("+00:00", "Z") == answer_by
    loop.clock.advance(MIN_ANSWER_WINDOW / 2)
    loop.tick()
    [_, reminder] = loop.mails(2)
    assert reminder["Subject"] == "Reminder: approve printer printer-1 black?"
    assert "we keep waiting for you and order nothing" in reminder.get_content()
    assert "run out before a delivery" in reminder.get_content()
    assert set(links_in(reminder)) == {"Approve", "Decline", "Open in the app"}
    assert loop.order(order["id"])["reminded_at"] is not None and remind_at is not None
    loop.tick()
    assert len(loop.mails(2)) == 2, "one reminder"

    loop.clock.advance(MIN_ANSWER_WINDOW / 2)
    loop.tick()
    [_, _, waiting] = loop.mails(3)
    assert waiting["Subject"] == "Still waiting: printer printer-1 black"
    after = loop.order(order["id"])
    assert after["status"] == "awaiting_approval" and after["no_answer_at"] is not None
    last = after["history"][-1]
    assert last["actor"] == "automation (no answer)"
    assert "on_no_answer=keep_waiting" in last["reason"] and "consent version 2" in last["reason"]
    loop.clock.advance(timedelta(hours=6))
    loop.tick()
    assert len(loop.mails(3)) == 3 and loop.fulfilment_events() == []
    # The answer can still come, from the newest message.
    with httpx.Client(timeout=10) as browser:
        assert browser.post(links_in(waiting)["Approve"]).status_code == 200
    loop.tick()
    assert wait_until(lambda: loop.fulfilment_events() == [("shipment.placed", order["id"])])


@pytest.mark.parametrize("outcome", ["decline", "approve"])
def test_at_the_deadline_on_no_answer_decides_and_says_it_was_for_lack_of_an_answer(loop: Loop, outcome: str):
    order = ask_first(loop, on_no_answer=outcome)
    assert "without an answer by then, we " + ("decline it" if outcome == "decline" else "place it") in (
        loop.mails(1)[0].get_content()
    )
    loop.clock.advance(MIN_ANSWER_WINDOW)
    loop.tick()
    after = loop.order(order["id"])
    assert after["status"] == ("declined" if outcome == "decline" else "placed")
    last = next(event for event in reversed(after["history"]) if event["to_status"] == after["status"])
    assert last["actor"] == "automation (no answer)"
    assert f"consent version 2 says on_no_answer={outcome}" in last["reason"]
    [audit] = loop.audit(AuditAction.ORDER_NO_ANSWER)
    assert audit.detail["outcome"] == outcome and audit.detail["consent_version"] == 2
    [notice] = loop.notices("no_answer")[-1:]
    assert ("Not ordered" if outcome == "decline" else "Ordered") in notice["subject"]
    loop.tick()
    expected = [("shipment.placed", order["id"])] if outcome == "approve" else []
    assert wait_until(lambda: loop.fulfilment_events() == expected) and loop.fulfilment_events() == expected
    # The request's links went with it.
    with httpx.Client(timeout=10) as browser:
        assert browser.post(links_in(loop.mails(1)[0])["Approve"]).status_code in (409, 410)


def test_approving_for_lack_of_an_answer_stays_within_the_spending_cap(loop: Loop):
    # The ink's price is unknown, so no order can be shown to keep within a cap: it keeps waiting, and says why.
    order = ask_first(loop, on_no_answer="approve", monthly_spending_cap="100")
    loop.clock.advance(MIN_ANSWER_WINDOW)
    loop.tick()
    after = loop.order(order["id"])
    assert after["status"] == "awaiting_approval" and after["no_answer_at"] is not None
    assert "keeps waiting: the price is unknown" in after["history"][-1]["reason"]
    [notice] = loop.notices("no_answer")
    assert notice["subject"].startswith("Still waiting") and "price is unknown" in notice["body"]
    loop.tick()
    assert loop.fulfilment_events() == []


def auto_order_with_room(loop: Loop, *, cancel_window_minutes: int = 120) -> dict[str, Any]:
    """Ada lets the printer order by itself; the scheduler ticks every 6 hours as black runs down, and orders as
    soon as it must, with a day to spare before the latest useful moment."""
    customer_id, _ = run_low(loop.platform, loop.api, mode="auto_order")
    loop.consent(customer_id, default_mode="auto_order", cancel_window_minutes=cancel_window_minutes)
    loop.clock.set(START + timedelta(days=3))
    while not loop.orders():
        loop.clock.advance(timedelta(hours=6))
        loop.tick()
        assert loop.clock.now() < START + timedelta(days=8)
    [order] = loop.orders()
    assert order["status"] == "placed"
    return order


def test_an_automatic_order_is_announced_and_cancelled_in_its_window_never_reaches_fulfilment(loop: Loop):
    order = auto_order_with_room(loop)
    hand_off = loop.clock.now() + timedelta(hours=2)
    assert loop.order(order["id"])["hand_off_at"] == hand_off.isoformat().replace("+00:00", "Z")
    [announcement] = loop.mails(1)
    assert announcement["Subject"] == "Ordered: 1 x INK-BLACK for printer printer-1"
    text = announcement.get_content()
    assert "arriving about" in text and "cancel until" in text
    assert set(links_in(announcement)) == {"Cancel", "Open in the app"}
    loop.tick()
    assert loop.fulfilment_events() == [], "fulfilment waits for the cancel window"

    loop.clock.advance(timedelta(minutes=90))
    with httpx.Client(timeout=10) as browser:
        assert "Cancel this order?" in browser.get(links_in(announcement)["Cancel"]).text
        done = browser.post(links_in(announcement)["Cancel"])
    assert done.status_code == 200 and "never reached the supplier" in done.text
    loop.clock.advance(timedelta(hours=3))
    loop.tick()
    assert loop.order(order["id"])["status"] == "cancelled"
    assert loop.fulfilment_events() == [], "a cancel inside the window never reaches fulfilment"
    with Session(loop.platform.engine) as session:
        kinds = set(session.exec(select(OutboxMessage.kind).where(OutboxMessage.kind != OutboxKind.NOTIFICATION)))
    assert kinds == set()
    assert "withdrawn before it reached fulfilment" in [e["reason"] for e in loop.order(order["id"])["history"]]


def test_after_its_window_an_automatic_order_is_cancelled_through_fulfilment(loop: Loop):
    order = auto_order_with_room(loop)
    [announcement] = loop.mails(1)
    loop.clock.advance(timedelta(hours=2))
    loop.tick()
    assert wait_until(lambda: loop.fulfilment_events() == [("shipment.placed", order["id"])])
    with httpx.Client(timeout=10) as browser:
        late = browser.post(links_in(announcement)["Cancel"])
    assert late.status_code == 410 and "cancel window has closed" in late.text
    assert loop.order(order["id"])["status"] == "placed"
    cancelled = loop.api.post(f"/orders/{order['id']}/cancel", json={"reason": "bought one"}).json()
    assert cancelled["status"] == "cancelled"
    loop.tick()
    assert wait_until(lambda: len(loop.fulfilment_events()) == 2)
    assert loop.fulfilment_events() == [("shipment.placed", order["id"]), ("order.cancelled", order["id"])]


def test_a_window_the_forecast_has_no_room_for_is_shortened(loop: Loop):
    # Black is already inside its lead time when it is first evaluated: the order leaves at once, and says so.
    customer_id, _ = run_low(loop.platform, loop.api, mode="auto_order")
    loop.consent(customer_id, default_mode="auto_order", cancel_window_minutes=600)
    loop.clock.set(START + timedelta(days=8))
    loop.tick()
    [order] = loop.orders()
    assert loop.order(order["id"])["hand_off_at"] == loop.clock.now().isoformat().replace("+00:00", "Z")
    assert wait_until(lambda: loop.fulfilment_events() == [("shipment.placed", order["id"])])
    [announcement] = loop.mails(1)
    assert "has gone to the supplier" in announcement.get_content()
    assert set(links_in(announcement)) == {"Open in the app"}


# --- the timing rules, pure ----------------------------------------------------------------------------------


def test_the_deadline_is_the_latest_useful_answer_and_never_sooner_than_an_hour():
    from replenish.answers.timing import answer_window, latest_useful_answer

    now = START
    latest = latest_useful_answer(empty_at_early=now + timedelta(days=4), lead_time_days=3)
    assert latest == now + timedelta(days=1)
    window = answer_window(latest_useful=latest, now=now, reminder_before=timedelta(hours=6))
    assert (window.answer_by, window.remind_at) == (now + timedelta(days=1), now + timedelta(hours=18))
    late = answer_window(latest_useful=now - timedelta(days=1), now=now, reminder_before=timedelta(hours=6))
    assert (late.answer_by, late.remind_at) == (now + MIN_ANSWER_WINDOW, now + MIN_ANSWER_WINDOW / 2)
    quiet = answer_window(latest_useful=latest, now=now, reminder_before=timedelta(0))
    assert quiet.remind_at is None
    assert answer_window(latest_useful=None, now=now, reminder_before=timedelta(hours=6)).answer_by is None


def test_the_cancel_window_shrinks_to_what_the_forecast_leaves():
    from replenish.answers.timing import hand_off_at

    window = timedelta(hours=2)
    assert hand_off_at(now=START, cancel_window=window, latest_useful=START + timedelta(days=1)) == START + window
    assert hand_off_at(now=START, cancel_window=window, latest_useful=START + timedelta(minutes=30)) == (
        START + timedelta(minutes=30)
    )
    assert hand_off_at(now=START, cancel_window=window, latest_useful=START - timedelta(days=1)) == START
    assert hand_off_at(now=START, cancel_window=window, latest_useful=None) == START + window


def test_links_expire_with_their_request():
    from replenish.answers.timing import WAITING_LINK_LIFETIME, link_expires_at
    from replenish.constants import LinkAction, NoAnswer

    by = START + timedelta(hours=5)
    common = {"now": START, "answer_by": by, "hand_off_at": START + timedelta(hours=2)}
    assert link_expires_at(action=LinkAction.APPROVE, on_no_answer=NoAnswer.DECLINE, **common) == by
    assert link_expires_at(action=LinkAction.DECLINE, on_no_answer=NoAnswer.KEEP_WAITING, **common) == (
        by + WAITING_LINK_LIFETIME
    )
    assert link_expires_at(action=LinkAction.CANCEL, on_no_answer=NoAnswer.DECLINE, **common) == (
        START + timedelta(hours=2)
    )


# --- order now: the API, the supplies page's button (tests/test_web.py), the device's reorder button ----------


def test_order_now_orders_once_and_automation_does_not_order_the_cycle_again(loop: Loop):
    customer_id, _ = run_low(loop.platform, loop.api, mode="auto_order")
    loop.consent(customer_id, default_mode="auto_order")
    loop.clock.set(START + timedelta(days=5))
    first = loop.api.post("/devices/printer-1/slots/black/order")
    assert first.status_code == 201, first.text
    order = first.json()
    assert (order["status"], order["quantity"]) == ("placed", 1)
    assert order["explanation"]["reason"] == "operator:operator@example.com ordered it now"
    again = loop.api.post("/devices/printer-1/slots/black/order", json={"quantity": 3})
    assert again.status_code == 200 and again.json()["id"] == order["id"], "a second press orders nothing new"
    loop.platform.jobs.dispatch()
    [announcement] = loop.mails(1)
    assert announcement["Subject"].startswith("Ordered: 1 x INK-BLACK") and "Cancel" in links_in(announcement)

    loop.clock.set(START + timedelta(days=8))  # black runs low within the same cycle
    loop.tick()
    assert [o["id"] for o in loop.orders()] == [order["id"]], "automation knows the cycle is decided"
    assert wait_until(lambda: loop.fulfilment_events() == [("shipment.placed", order["id"])])
    assert loop.api.post("/devices/printer-1/slots/nope/order").status_code == 404
    assert loop.api.post("/devices/printer-1/slots/black/order", json={"quantity": 0}).status_code == 422


def test_order_now_over_the_cap_becomes_an_approval_request(loop: Loop):

    from test_consent import priced

    customer_id = create_customer(loop.api, mode="auto_order")
    register_device(loop.api, customer_id=customer_id, device_id="printer-1", slots=priced("30.00"))
    loop.consent(customer_id, default_mode="auto_order", monthly_spending_cap="40")
    placed = loop.api.post("/devices/printer-1/slots/black/order").json()
    assert placed["status"] == "placed" and placed["total_price"] == "30.00"
    asked = loop.api.post("/devices/printer-1/slots/cyan/order").json()
    assert asked["status"] == "awaiting_approval"
    assert "exceeds the cap of 40" in asked["explanation"]["reason"]
    assert asked["answer_by"] is None, "no forecast, no deadline: it waits for the answer"
    loop.platform.jobs.dispatch()
    subjects = [m["Subject"] for m in loop.mails(2)]
    assert "Approve? printer printer-1 cyan: 1 x INK-CYAN" in subjects


def test_the_devices_reorder_button_orders_once_as_its_consent_says(loop: Loop):

    customer_id = create_customer(loop.api, mode="ask_first")
    register_device(loop.api, customer_id=customer_id, device_id="printer-1")
    loop.consent(customer_id, default_mode="ask_first", slot_modes={"printer-1/cyan": "off"})
    device = Publisher(loop.platform.settings.mqtt_endpoint)
    ingestor = loop.platform.ingestor
    assert ingestor is not None
    try:
        press = {"type": "reorder_requested", "slot": "black", "ts": START.isoformat()}
        for seq in (1, 2):  # pressed twice
            device.send("devices/printer-1/events", {"seq": seq, **press})
        device.send("devices/printer-1/events", {"seq": 3, **press, "slot": "cyan"})  # ordering is off there
        device.send("devices/printer-1/events", {"seq": 4, **press, "slot": "toner"})
        device.send("devices/printer-1/events", {"seq": 5, "type": "reorder_requested"})
        assert ingestor.wait_for(handled=5, timeout=10)
    finally:
        device.close()
    [order] = loop.orders()
    assert order["status"] == "awaiting_approval"
    detail = loop.order(order["id"])
    assert detail["history"][0]["actor"] == "device:printer-1"
    assert "reorder button was pressed" in detail["explanation"]["reason"]
    loop.tick()
    assert loop.mails(1)[0]["Subject"] == "Approve? printer printer-1 black: 1 x INK-BLACK"
    letters = {letter["reason"] for letter in loop.api.get("/dead-letters").json()}
    assert letters == {"unknown slot 'toner' for device 'printer-1'", "a reorder_requested event must name its slot"}
    assert len(loop.api.get("/devices/printer-1/events").json()) == 3, "the presses are stored as events"


# --- fulfilment's signed webhook, and what the customer hears -------------------------------------------------


def partner_post(
    loop: Loop,
    event: dict[str, Any],
    *,
    secret: str = PARTNER_SECRET,
    partner: str = "acme",
    age: timedelta = timedelta(0),
    tampered: dict[str, Any] | None = None,
) -> httpx.Response:
    """Post the event signed as the partner signs it; ``tampered``: what is sent instead of what was signed."""
    from replenish.orders.signatures import sign

    raw = json.dumps(event).encode()
    timestamp = int((loop.clock.now() - age).timestamp())
    return httpx.post(
        f"{loop.platform.api_url}/api/v1/fulfilment/{partner}/events",
        content=json.dumps(tampered).encode() if tampered is not None else raw,
        headers={
            "Content-Type": "application/json",
            "X-Replenish-Timestamp": str(timestamp),
            "X-Replenish-Signature": sign(secret, timestamp=timestamp, body=raw),
        },
        timeout=10,
    )


def test_a_signed_partner_reports_shipped_and_delivered_and_the_customer_hears_it(loop: Loop):
    customer_id, _ = run_low(loop.platform, loop.api, mode="auto_order")
    loop.consent(customer_id, default_mode="auto_order")
    loop.clock.set(START + timedelta(days=8))
    loop.tick()
    [order] = loop.orders()
    arriving = loop.clock.now() + timedelta(days=2)
    shipped = {"order_id": order["id"], "status": "shipped", "arriving_at": arriving.isoformat()}

    # Refused, each with its reason, nothing changed: a wrong secret, a body changed after signing, an old
    # timestamp (a replay), an unknown partner, no signature at all.
    assert partner_post(loop, shipped, secret="not-the-partners-secret").status_code == 401
    changed = partner_post(loop, shipped, tampered={**shipped, "status": "delivered"})
    assert changed.status_code == 401 and "does not match" in changed.json()["detail"]
    loop.api.post(f"/orders/{order['id']}/fulfilment", json={"status": "confirmed"}).raise_for_status()
    stale = partner_post(loop, shipped, age=timedelta(minutes=10))
    assert stale.status_code == 401 and "replay" in stale.json()["detail"]
    assert partner_post(loop, shipped, partner="mallory").status_code == 401
    bare = httpx.post(f"{loop.platform.api_url}/api/v1/fulfilment/acme/events", json=shipped, timeout=10)
    assert bare.status_code == 401 and "required" in bare.json()["detail"]
    assert loop.order(order["id"])["status"] == "confirmed"
    assert len(loop.audit(AuditAction.FULFILMENT_REFUSED)) == 5

    ok = partner_post(loop, shipped)
    assert ok.status_code == 200, ok.text
    assert ok.json()["status"] == "shipped" and ok.json()["arriving_at"].startswith(arriving.date().isoformat())
    assert partner_post(loop, shipped).status_code == 200, "a repeat changes nothing"
    assert partner_post(loop, {"order_id": "nope", "status": "shipped"}).status_code == 404
    assert partner_post(loop, {"order_id": order["id"], "status": "confirmed"}).status_code == 409
    invalid = partner_post(loop, {"order_id": order["id"], "status": "lost"})
    assert invalid.status_code == 422 and invalid.json()["field"] == "status"
    loop.tick()
    subjects = [m["Subject"] for m in loop.mails(2)]
    assert subjects.count("Shipped: 1 x INK-BLACK for printer printer-1") == 1
    assert "arriving about" in loop.mailbox.to(ADA)[-1].get_content()

    assert partner_post(loop, {"order_id": order["id"], "status": "delivered"}).status_code == 200
    loop.tick()
    assert loop.mails(3)[-1]["Subject"] == "Delivered: 1 x INK-BLACK for printer printer-1"
    # A day on, the printer still reads what it read: one nudge.
    loop.clock.advance(timedelta(hours=23))
    loop.tick()
    assert len(loop.mailbox.to(ADA)) == 3
    loop.clock.advance(timedelta(hours=2))
    loop.tick()
    nudge = loop.mails(4)[-1]
    assert nudge["Subject"] == "Did it go in? printer printer-1 black"
    black = next(slot for slot in loop.api.get("/devices/printer-1").json()["slots"] if slot["name"] == "black")
    assert f"still reads {black['level']:.0%} for black" in nudge.get_content()
    loop.clock.advance(timedelta(days=1))
    loop.tick()
    assert len(loop.mailbox.to(ADA)) == 4, "one nudge"


# --- preferences: quiet hours per channel, the daily digest ---------------------------------------------------


def test_quiet_hours_hold_a_request_until_morning_but_never_a_fall(loop: Loop):

    customer_id, _ = run_low(loop.platform, loop.api, mode="ask_first")
    register_device(loop.api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
    quiet = {"start": "22:00", "end": "07:00"}
    loop.consent(
        customer_id,
        default_mode="ask_first",
        timezone="Europe/Berlin",
        notification_channels=[{"type": "email", "address": ADA, "quiet_hours": quiet}],
    )
    night = datetime(2026, 11, 9, 23, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    loop.clock.set(night)
    loop.tick()
    [order] = loop.orders()
    detail = loop.order(order["id"])
    morning = datetime(2026, 11, 10, 7, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    # The hour to answer counts from when the request can reach her.
    assert detail["answer_by"] == (morning + MIN_ANSWER_WINDOW).astimezone(UTC).isoformat().replace("+00:00", "Z")
    [held] = loop.notices("approval_request")
    assert held["deliver_after"] == morning.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert loop.mailbox.to(ADA) == []

    ingestor = loop.platform.ingestor
    assert ingestor is not None
    handled = ingestor.totals.handled  # the readings of run_low are counted already
    device = Publisher(loop.platform.settings.mqtt_endpoint)
    try:
        device.send("devices/pendant-1/events", {"seq": 1, "type": "fall_detected"})
        assert ingestor.wait_for(handled=handled + 1, timeout=10)
    finally:
        device.close()
    loop.tick()
    [fall] = loop.mails(1)
    assert "fall alert" in fall["Subject"], "safety ignores quiet hours"

    loop.clock.set(morning - timedelta(minutes=1))
    loop.tick()
    assert len(loop.mailbox.to(ADA)) == 1
    loop.clock.set(morning)
    loop.tick()
    assert loop.mails(2)[-1]["Subject"].startswith("Approve?")


def test_the_daily_digest_gathers_low_priority_notices(loop: Loop):
    customer_id, _ = run_low(loop.platform, loop.api, mode="notify_only")
    loop.consent(customer_id, default_mode="notify_only", daily_digest=True, digest_time="08:00")
    loop.clock.set(START + timedelta(days=8, hours=2))  # 10:00 UTC
    loop.tick()
    [low] = loop.notices("low")
    assert low["for_digest"] is True and low["digest_id"] is None
    loop.clock.set(START + timedelta(days=9) - timedelta(minutes=1))  # 07:59 the next day
    loop.tick()
    assert loop.mailbox.to(ADA) == [], "nothing one by one"
    loop.clock.set(START + timedelta(days=9))
    loop.tick()
    [digest] = loop.mails(1)
    assert digest["Subject"] == "Your daily digest: 1 update"
    assert "black is running low" in digest.get_content()
    [sent] = loop.notices("digest")
    assert loop.notices("low")[0]["digest_id"] == sent["id"]
    loop.clock.advance(timedelta(days=1))
    loop.tick()
    assert len(loop.mailbox.to(ADA)) == 1, "each notice goes in one digest"


def test_quiet_hours_and_digest_times_pure():
    from datetime import time

    from replenish.notifications.timing import next_digest_at, quiet_until, reachable_at

    zone = ZoneInfo("Europe/Berlin")
    evening = datetime(2026, 11, 9, 23, 0, tzinfo=zone)
    assert quiet_until(evening, start=time(22), end=time(7), zone=zone) == datetime(2026, 11, 10, 7, tzinfo=zone)
    early = datetime(2026, 11, 10, 6, 59, tzinfo=zone)
    assert quiet_until(early, start=time(22), end=time(7), zone=zone) == datetime(2026, 11, 10, 7, tzinfo=zone)
    assert quiet_until(datetime(2026, 11, 10, 7, tzinfo=zone), start=time(22), end=time(7), zone=zone) is None
    assert quiet_until(datetime(2026, 11, 10, 13, tzinfo=zone), start=time(12), end=time(14), zone=zone) == (
        datetime(2026, 11, 10, 14, tzinfo=zone)
    )
    assert reachable_at(evening, quiet_hours=[(time(22), time(7)), None], zone=zone) == evening
    assert reachable_at(evening, quiet_hours=[(time(22), time(7)), (time(21), time(6))], zone=zone) == (
        datetime(2026, 11, 10, 6, tzinfo=zone)
    )
    assert next_digest_at(evening, at=time(8), zone=zone) == datetime(2026, 11, 10, 8, tzinfo=zone)
    assert next_digest_at(datetime(2026, 11, 10, 8, tzinfo=zone), at=time(8), zone=zone) == (
        datetime(2026, 11, 11, 8, tzinfo=zone)
    )


# --- from the review: where the new features meet older state -------------------------------------------------


def test_the_deadline_never_approves_what_the_consent_has_taken_away_since(loop: Loop):
    order = ask_first(loop, on_no_answer="approve", on_revoke="hold")
    loop.consent(order["customer_id"], default_mode="off", on_no_answer="approve", on_revoke="hold")
    assert loop.order(order["id"])["status"] == "awaiting_approval", "held: it waits for the customer"
    loop.clock.advance(MIN_ANSWER_WINDOW)
    loop.tick()
    after = loop.order(order["id"])
    assert after["status"] == "awaiting_approval"
    assert "the consent's mode for this slot is now off" in after["history"][-1]["reason"]
    assert loop.fulfilment_events() == []


def test_a_hand_off_a_dispatcher_took_is_never_withdrawn(loop: Loop):
    from replenish.db import transaction
    from replenish.outbox import service as outbox

    order = auto_order_with_room(loop)
    key = f"shipment:{order['shipment_id']}:placed"
    with Session(loop.platform.engine) as session:
        message = session.exec(select(OutboxMessage).where(OutboxMessage.idempotency_key == key)).one()
    # A dispatcher took it (and may have sent it) but never recorded the delivery; its lease has run out.
    with transaction(loop.platform.engine) as session:
        assert message.id is not None
        now = loop.clock.now()
        assert outbox.claim(session=session, message_id=message.id, now=now, until=now + timedelta(seconds=1), by="x")
    loop.clock.advance(timedelta(minutes=5))
    assert loop.api.post(f"/orders/{order['id']}/cancel").json()["status"] == "cancelled"
    with Session(loop.platform.engine) as session:
        keys = set(
            session.exec(
                select(OutboxMessage.idempotency_key).where(OutboxMessage.stream == f"shipment:{order['shipment_id']}")
            )
        )
    assert keys == {key, f"order:{order['id']}:cancelled"}, "fulfilment may have it: it is told"


def test_a_cancelled_order_now_leaves_the_cycle_to_automation(loop: Loop):
    customer_id, _ = run_low(loop.platform, loop.api, mode="auto_order")
    loop.consent(customer_id, default_mode="auto_order")
    loop.clock.set(START + timedelta(days=3))
    pressed = loop.api.post("/devices/printer-1/slots/black/order").json()
    assert loop.api.post(f"/orders/{pressed['id']}/cancel").json()["status"] == "cancelled"
    loop.clock.set(START + timedelta(days=8))
    loop.tick()
    automatic = [o for o in loop.orders() if o["id"] != pressed["id"]]
    assert len(automatic) == 1 and automatic[0]["status"] == "placed", "a press taken back decides nothing"


def test_the_log_channel_leaves_one_tap_links_out_unless_asked(caplog):
    import logging

    from replenish.notifications.channels import Delivery, Link, LogChannel

    delivery = Delivery(
        notification_id="n1",
        idempotency_key="k",
        channel="log",
        address=None,
        subject="Approve?",
        body="Shall we?",
        links=(Link("Approve", "http://example.test/answer/SECRET"),),
    )
    with caplog.at_level(logging.WARNING):
        LogChannel().send(delivery)
        assert "SECRET" not in caplog.text and "one-tap links not logged" in caplog.text
        LogChannel(show_links=True).send(delivery)
        assert "Approve: http://example.test/answer/SECRET" in caplog.text


def test_quiet_hours_lengthen_the_cancel_window_to_the_customers_morning():
    from replenish.answers.timing import hand_off_at

    night, morning = START, START + timedelta(hours=8)
    assert hand_off_at(
        now=night, cancel_window=timedelta(hours=2), latest_useful=night + timedelta(days=1), reachable=morning
    ) == morning + timedelta(hours=2)
    assert hand_off_at(
        now=night, cancel_window=timedelta(hours=2), latest_useful=night + timedelta(hours=5), reachable=morning
    ) == night + timedelta(hours=5), "never later than the latest useful moment"

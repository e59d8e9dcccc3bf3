"""The web app in a real browser: Debian's chromium driven by Playwright, against the real platform.

Playwright's own browser download is not available on our machines, so the browser is the system's `chromium`
(the Makefile installs it), launched through its executable path.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect
from sqlmodel import Session, select

from replenish.clock import ManualClock
from replenish.constants import OutboxKind
from replenish.outbox.models import OutboxMessage
from replenish.runtime import Platform
from support import brokers, wait_until
from support.api import (
    OPERATOR_EMAIL,
    PASSWORD,
    api_client,
    create_customer,
    operator_token,
    register_device,
    set_consent,
)
from support.brokers import BROWSER_UNSAFE_PORTS, free_port, port_block
from support.mqtt import CommandListener, Publisher, publish_depletion
from support.platform import START, make_settings, place_an_order, report_running_low, run_low, running_platform
from support.servers import Mailbox, WebhookReceiver
from support.telephony import FakeTwilio
from test_cli import environment, poll, process

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (make installs it)")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": ["--no-sandbox"]}


@pytest.fixture(scope="session")
def one_context_per_worker(browser: Browser, browser_context_args: dict[str, Any]) -> Iterator[BrowserContext]:
    context = browser.new_context(**browser_context_args)
    yield context
    context.close()


@pytest.fixture
def context(one_context_per_worker: BrowserContext) -> Iterator[BrowserContext]:
    """One browser context for all of a worker's tests, emptied before and after each: a new context's first page
    costs Chromium about 0.7 s of CPU (a third of the web tests' share of `make test`). Nothing else carries over:
    each test's platform listens on a port of its own (free_port never hands one out twice in a process), a
    separate origin for storage, caches and service workers; cookies (shared by every port of a host) and
    permissions are cleared. pytest-playwright's own context fixture is bypassed, and with it its --tracing,
    --video and --screenshot options in this module."""
    context = one_context_per_worker
    context.clear_cookies()
    context.clear_permissions()
    yield context
    for open_page in list(context.pages):
        open_page.close()
    context.clear_cookies()
    context.clear_permissions()


@pytest.fixture
def console_errors(page: Page) -> Iterator[list[str]]:
    """Every console error and uncaught exception on any page of the test; the test fails if there is one."""
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"{page.url}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))
    yield errors
    assert errors == []


def sign_in(page: Page, platform: Platform, email: str = "ada@example.com", password: str = PASSWORD) -> None:
    page.goto(f"{platform.api_url}/app")
    expect(page).to_have_url(f"{platform.api_url}/app/sign-in?next=/app")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_sign_in_shows_the_devices_and_their_forecasts(
    page: Page, platform: Platform, api: httpx.Client, clock: ManualClock, console_errors: list[str]
) -> None:
    order, _ = place_an_order(platform, api, clock, mode="ask_first")
    sign_in(page, platform)
    expect(page).to_have_url(f"{platform.api_url}/app")
    slot = page.get_by_role("article", name="printer printer-1 black")
    expect(slot.locator(".level-now")).to_contain_text("10%")  # the forecast's level now
    expect(slot.locator(".empty-at")).to_contain_text("UTC")
    expect(slot.locator(".next-order")).to_have_text("awaiting approval")
    expect(slot.get_by_role("img", name="printer printer-1 black: level and forecast")).to_be_visible()
    slot.get_by_role("link", name="awaiting approval").click()
    expect(page).to_have_url(f"{platform.api_url}/app/orders/{order['id']}")
    expect(page.get_by_role("heading", name="Why this order")).to_be_visible()
    expect(page.get_by_text("version 1, mode ask first")).to_be_visible()


def test_approving_an_order_in_the_browser_places_it(
    page: Page, platform: Platform, api: httpx.Client, clock: ManualClock, console_errors: list[str]
) -> None:
    order, _ = place_an_order(platform, api, clock, mode="ask_first")
    sign_in(page, platform)
    page.get_by_role("link", name="Orders").click()
    page.get_by_role("button", name="Approve the order for INK-BLACK").click()
    expect(page.get_by_text("Nothing is waiting for you.")).to_be_visible()
    assert api.get(f"/orders/{order['id']}").json()["status"] == "placed"


def test_declining_from_the_order_page(
    page: Page, platform: Platform, api: httpx.Client, clock: ManualClock, console_errors: list[str]
) -> None:
    order, _ = place_an_order(platform, api, clock, mode="ask_first")
    sign_in(page, platform)
    page.goto(f"{platform.api_url}/app/orders/{order['id']}")
    page.get_by_role("button", name="Decline: too early").click()  # or plain "Decline", without a reason
    expect(page.locator(".status")).to_contain_text("declined")
    expect(page.get_by_role("button", name="Decline")).to_have_count(0)
    declined = api.get(f"/orders/{order['id']}").json()
    assert declined["status"] == "declined" and declined["feedback"] == "too_early"


def test_how_the_last_cycles_went_on_the_supplies_page_and_the_fleet_s_reliability(
    page: Page, platform: Platform, api: httpx.Client, clock: ManualClock, console_errors: list[str]
) -> None:
    """Issue 22: a cycle ends (the ink runs out, then a new cartridge); the customer sees it against its forecast, the
    operator the fleet's forecasts against what happened."""
    _, sent = place_an_order(platform, api, clock)
    publisher = Publisher(platform.settings.mqtt_endpoint)
    assert platform.jobs is not None and platform.ingestor is not None
    slot = page.get_by_role("article", name="printer printer-1 black")
    cycles = slot.locator("details.outcomes")
    try:
        low_at = START + timedelta(days=8)
        sent += publish_depletion(
            publisher,
            device_id="printer-1",
            slot="black",
            start=low_at + timedelta(hours=6),
            start_level=0.0875,
            rate_per_day=0.05,
            days=2.5,
            first_seq=sent + 1,
        )
        # Empty from day 10 on: known then, before any refill.
        assert platform.ingestor.wait_for(handled=sent, timeout=20)
        refill = low_at + timedelta(days=3)
        clock.set(refill - timedelta(hours=1))
        platform.jobs.evaluate()
        [outcome] = api.get("/devices/printer-1/slots/black/outcomes").json()
        assert outcome["ran_out_at"] is not None and outcome["ended_at"] is None
        sign_in(page, platform)
        expect(cycles.locator("summary")).to_have_text("How the last 1 cycle went: ran out in 1")
        cycles.locator("summary").click()
        expect(cycles).to_contain_text("not refilled yet")
        page.get_by_role("button", name="Sign out").click()

        for step, level in enumerate((1.0, 0.99)):
            sent += 1
            moment = refill + step * timedelta(hours=6)
            publisher.send(
                "devices/printer-1/telemetry", {"seq": sent, "ts": moment.isoformat(), "levels": {"black": level}}
            )
    finally:
        publisher.close()
    assert platform.ingestor.wait_for(handled=sent, timeout=20)
    clock.set(refill + timedelta(hours=6))
    platform.jobs.evaluate()
    [refilled] = api.get("/devices/printer-1/slots/black/outcomes").json()
    assert refilled["id"] == outcome["id"] and refilled["ended_at"] is not None
    assert refilled["ran_out_at"] == outcome["ran_out_at"] and refilled["order_status"] == "placed"

    sign_in(page, platform)
    expect(cycles.locator("summary")).to_have_text("How the last 1 cycle went: ran out in 1")
    cycles.locator("summary").click()
    expect(cycles).to_contain_text("Ordered")
    expect(cycles).to_contain_text("ran out")
    expect(cycles).to_contain_text("until the refill")
    page.get_by_role("button", name="Sign out").click()

    platform.jobs.insights()  # the hourly job computes the reliability the page shows
    sign_in(page, platform, email=OPERATOR_EMAIL)
    page.get_by_role("link", name="Fleet").click()
    reliability = page.get_by_role("region", name="Forecast reliability")
    row = reliability.get_by_role("row", name="printer")
    expect(row).to_contain_text("3.0%")  # stated: a 97% service level
    expect(row).to_contain_text("too few cycles to tell")


def test_another_customer_s_order_answers_404(
    page: Page, platform: Platform, api: httpx.Client, clock: ManualClock, console_errors: list[str]
) -> None:
    order, _ = place_an_order(platform, api, clock, mode="ask_first")
    create_customer(api, email="bob@example.com")
    sign_in(page, platform, email="bob@example.com")
    for path in (f"/app/orders/{order['id']}", "/app/orders/no-such-order"):
        response = page.goto(f"{platform.api_url}{path}")
        assert response is not None and response.status == 404
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    # The browser logs each 404 page it was sent; those two were the point of the test.
    console_errors[:] = [error for error in console_errors if "status of 404" not in error]
    response = page.request.post(f"{platform.api_url}/app/orders/{order['id']}/approve", form={"csrf_token": "x"})
    assert response.status == 403  # the wrong CSRF token is refused before anything is looked up
    assert api.get(f"/orders/{order['id']}").json()["status"] == "awaiting_approval"


def test_a_wrong_password_is_reported_next_to_the_field(
    page: Page, platform: Platform, api: httpx.Client, console_errors: list[str]
) -> None:
    create_customer(api)
    page.goto(f"{platform.api_url}/app/sign-in")
    page.get_by_label("E-mail").fill("ada@example.com")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#password-error")).to_have_text("That e-mail and password do not match an account.")
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")


def test_signing_out_ends_the_session(
    page: Page, platform: Platform, api: httpx.Client, console_errors: list[str]
) -> None:
    create_customer(api)
    sign_in(page, platform)
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{platform.api_url}/app/sign-in")
    page.goto(f"{platform.api_url}/app/orders")
    expect(page).to_have_url(f"{platform.api_url}/app/sign-in?next=/app/orders")


def test_acknowledging_a_fall_alert_publishes_the_command_to_the_device(
    page: Page, platform: Platform, api: httpx.Client, publisher: Publisher, console_errors: list[str]
) -> None:
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
    listener = CommandListener(platform.settings.mqtt_endpoint)
    try:
        publisher.send("devices/pendant-1/events", {"seq": 1, "type": "fall_detected"})
        assert platform.ingestor is not None and platform.ingestor.wait_for(handled=1, timeout=10)
        sign_in(page, platform)
        page.get_by_role("link", name="Alerts").click()
        page.get_by_role("button", name="Acknowledge the fall alert on wearable pendant-1").click()
        expect(page.get_by_text("No open alerts.")).to_be_visible()
        [alert] = api.get("/alerts").json()
        assert alert["status"] == "acknowledged" and alert["acknowledged_by"] == "customer:ada@example.com"
        assert platform.jobs is not None
        platform.jobs.dispatch()
        [(topic, command)] = listener.wait_for(1)
        assert topic == "devices/pendant-1/commands"
        assert command["type"] == "alert_acknowledged" and command["alert_id"] == alert["id"]
        page.get_by_role("link", name="fall").click()
        expect(page.get_by_role("list").last).to_contain_text("acknowledged by customer:ada@example.com")
    finally:
        listener.close()


def test_switching_a_slot_to_notify_only_changes_the_next_decision(
    page: Page, platform: Platform, api: httpx.Client, clock: ManualClock, console_errors: list[str]
) -> None:
    customer_id, _ = run_low(platform, api, mode="ask_first")
    sign_in(page, platform)
    page.get_by_role("link", name="Consent").click()
    page.get_by_label("Black", exact=True).select_option("notify_only")
    page.get_by_role("button", name="Save what Replenish may do").click()
    expect(page.get_by_role("status")).to_have_text("Saved as version 2.")
    newest = page.get_by_role("region", name="Versions").locator("tbody tr").first
    expect(newest).to_contain_text("slot modes")
    expect(newest).to_contain_text("customer:ada@example.com")
    consent = api.get(f"/customers/{customer_id}/consent").json()
    assert consent["version"] == 2 and consent["document"]["slot_modes"] == {"printer-1/black": "notify_only"}
    assert consent["document"]["default_mode"] == "ask_first"

    clock.set(START + timedelta(days=8))
    assert platform.jobs is not None
    platform.jobs.evaluate()
    assert api.get("/orders").json() == []
    [notification] = api.get("/notifications").json()
    assert "black" in notification["subject"] + notification["body"]


def test_a_pause_window_stops_an_order(
    page: Page, platform: Platform, api: httpx.Client, clock: ManualClock, console_errors: list[str]
) -> None:
    customer_id, _ = run_low(platform, api, mode="ask_first")
    sign_in(page, platform)
    page.goto(f"{platform.api_url}/app/consent")
    today = (START + timedelta(days=8)).date()
    page.get_by_label("First day away").fill(str(today - timedelta(days=1)))
    page.get_by_label("Last day away").fill(str(today + timedelta(days=6)))
    page.get_by_label("Covers").select_option("printer-1")
    page.get_by_label("Note (optional)").fill("skiing")
    page.get_by_role("button", name="Add the pause").click()
    expect(page.get_by_role("status")).to_have_text("Saved as version 2.")
    expect(page.get_by_role("list").filter(has_text="skiing")).to_contain_text("printer-1")
    [window] = api.get(f"/customers/{customer_id}/consent").json()["document"]["pause_windows"]
    assert window == {
        "start": str(today - timedelta(days=1)),
        "end": str(today + timedelta(days=6)),
        "targets": ["printer-1"],
        "note": "skiing",
    }

    clock.set(START + timedelta(days=8))
    assert platform.jobs is not None
    platform.jobs.evaluate()
    assert api.get("/orders").json() == []
    assert api.get("/notifications").json() == []


def test_a_pause_that_ends_before_it_starts_is_refused_next_to_the_field(
    page: Page, platform: Platform, api: httpx.Client, console_errors: list[str]
) -> None:
    customer_id = create_customer(api)
    sign_in(page, platform)
    page.goto(f"{platform.api_url}/app/consent")
    page.get_by_label("First day away").fill("2026-12-26")
    page.get_by_label("Last day away").fill("2026-12-12")
    page.get_by_role("button", name="Add the pause").click()
    expect(page.locator("#pause-error")).to_have_text("a pause window cannot end before it starts")
    expect(page.get_by_label("Last day away")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("First day away")).to_have_value("2026-12-26")  # what was typed stays
    assert api.get(f"/customers/{customer_id}/consent").json()["version"] == 1


def test_another_customer_cannot_act_on_an_order_even_with_a_valid_form(
    page: Page, platform: Platform, api: httpx.Client, clock: ManualClock, console_errors: list[str]
) -> None:
    order, _ = place_an_order(platform, api, clock, mode="ask_first")
    create_customer(api, email="bob@example.com")
    sign_in(page, platform, email="bob@example.com")
    bob_s_token = page.locator("form.sign-out input[name=csrf_token]").get_attribute("value")
    response = page.request.post(
        f"{platform.api_url}/app/orders/{order['id']}/approve", form={"csrf_token": bob_s_token or ""}
    )
    assert response.status == 404
    assert api.get(f"/orders/{order['id']}").json()["status"] == "awaiting_approval"


def test_the_session_cookie_and_signing_out_for_real(
    page: Page, platform: Platform, api: httpx.Client, console_errors: list[str]
) -> None:
    create_customer(api)
    sign_in(page, platform)
    [cookie] = page.context.cookies()
    assert (cookie["name"], cookie["path"], cookie["httpOnly"], cookie["sameSite"]) == (
        "replenish_session",
        "/app",
        True,
        "Strict",
    )
    with httpx.Client(base_url=f"{platform.api_url}/api/v1", timeout=10) as client:
        bearer = {"Authorization": f"Bearer {cookie['value']}"}
        assert client.get("/auth/me", headers=bearer).status_code == 200  # the API's own sign-in token
        page.get_by_role("button", name="Sign out").click()
        assert client.get("/auth/me", headers=bearer).status_code == 401  # revoked, not just forgotten


def test_a_sign_in_posted_from_another_site_is_refused(platform: Platform, api: httpx.Client) -> None:
    create_customer(api)
    response = httpx.post(
        f"{platform.api_url}/app/sign-in",
        data={"email": "ada@example.com", "password": PASSWORD},
        headers={"Origin": "https://elsewhere.example"},
        timeout=10,
    )
    assert response.status_code == 403 and "set-cookie" not in response.headers


def test_levels_in_units_show_as_shares_of_the_slot(
    page: Page, platform: Platform, api: httpx.Client, clock: ManualClock, console_errors: list[str]
) -> None:
    eggs = {"name": "eggs", "unit": "eggs", "capacity": 12, "product_sku": "EGGS-12", "lead_time_days": 2}
    run_low(
        platform,
        api,
        mode="ask_first",
        device_id="fridge-1",
        kind="fridge",
        slots=[eggs],
        slot="eggs",
        start_level=6,
        rate_per_day=0.6,
        days=7,
    )
    clock.set(START + timedelta(days=7))
    assert platform.jobs is not None
    platform.jobs.evaluate()
    [order] = api.get("/orders").json()
    sign_in(page, platform)
    expect(page.get_by_role("article", name="fridge fridge-1 eggs").locator(".level-now")).to_contain_text("15%")
    page.goto(f"{platform.api_url}/app/orders/{order['id']}")
    page.get_by_text("readings it used").click()
    expect(page.get_by_role("cell", name="6 eggs (50%)")).to_be_visible()


def test_every_page_fits_a_phone_and_is_reachable_by_keyboard(
    page: Page, platform: Platform, api: httpx.Client, clock: ManualClock, console_errors: list[str]
) -> None:
    order, _ = place_an_order(platform, api, clock, mode="ask_first")
    sign_in(page, platform)
    page.set_viewport_size({"width": 375, "height": 740})
    for path in (
        "/app",
        "/app/orders",
        f"/app/orders/{order['id']}",
        "/app/alerts",
        "/app/consent",
        "/app/household",
        "/app/nowhere",
    ):
        page.goto(f"{platform.api_url}{path}")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), path
    console_errors[:] = [error for error in console_errors if "status of 404" not in error]  # /app/nowhere
    page.goto(f"{platform.api_url}/app/orders")
    approve = page.get_by_role("button", name="Approve the order for INK-BLACK")
    box = approve.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 375, box  # on the screen, not scrolled off it
    for _ in range(20):  # Tab from the top of the page until the button has the focus, then press it
        page.keyboard.press("Tab")
        if approve.evaluate("button => button === document.activeElement"):
            break
    else:
        pytest.fail("the Approve button is not reachable with Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_text("Nothing is waiting for you.")).to_be_visible()
    assert api.get(f"/orders/{order['id']}").json()["status"] == "placed"


def test_a_new_order_awaiting_approval_appears_without_a_reload(
    page: Page, platform: Platform, api: httpx.Client, clock: ManualClock, console_errors: list[str]
) -> None:
    run_low(platform, api, mode="ask_first")
    clock.set(START + timedelta(days=8))  # before signing in: the session's lifetime runs on the platform's clock
    sign_in(page, platform)
    page.goto(f"{platform.api_url}/app/orders")
    expect(page.get_by_text("Nothing is waiting for you.")).to_be_visible()
    page.evaluate("window.notReloaded = true")
    assert platform.jobs is not None
    platform.jobs.evaluate()  # the automation job asks for approval
    expect(page.get_by_role("button", name="Approve the order for INK-BLACK")).to_be_visible(timeout=10_000)
    expect(page.locator("#waiting-count")).to_have_text("1")
    assert page.evaluate("window.notReloaded") is True  # the same page, redrawn in place


def test_my_data_downloads_and_deleting_the_account_needs_a_clear_confirmation(
    page: Page, platform: Platform, api: httpx.Client, console_errors: list[str]
) -> None:
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="printer-1")
    sign_in(page, platform)
    page.get_by_role("link", name="Your data").click()
    with page.expect_download() as download:
        page.get_by_role("link", name="Download my data").click()
    exported = json.loads(Path(download.value.path()).read_text())
    assert exported["customer"]["email"] == "ada@example.com"
    assert [device["id"] for device in exported["devices"]] == ["printer-1"]

    page.get_by_label("Type your e-mail address").fill("ada@example.com")
    page.get_by_label("Your password").fill("not the password")
    page.get_by_role("button", name="Delete my account and all my data").click()
    expect(page.locator("#password-error")).to_have_text("That is not your password.")
    assert api.get(f"/customers/{customer_id}").status_code == 200  # nothing deleted

    page.get_by_label("Type your e-mail address").fill("ada@example.com")
    page.get_by_label("Your password").fill(PASSWORD)
    page.get_by_role("button", name="Delete my account and all my data").click()
    expect(page.get_by_role("status")).to_have_text("Your account and everything stored about it have been deleted.")
    assert api.get(f"/customers/{customer_id}").status_code == 404
    assert page.context.cookies() == []


def test_operators_see_the_fleet_and_customers_do_not(
    page: Page, platform: Platform, api: httpx.Client, publisher: Publisher, console_errors: list[str]
) -> None:
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
    publisher.send("devices/pendant-1/events", {"seq": 1, "type": "battery_low"})
    publisher.send("devices/pendant-1/telemetry", {"seq": 2, "levels": "not an object"})  # refused: a dead letter
    assert platform.ingestor is not None and platform.ingestor.wait_for(handled=2, timeout=10)
    assert platform.jobs is not None
    platform.jobs.health()

    sign_in(page, platform)  # Ada, a customer
    response = page.goto(f"{platform.api_url}/app/fleet")
    assert response is not None and response.status == 404
    console_errors.clear()  # that 404 was the point
    page.get_by_role("button", name="Sign out").click()

    sign_in(page, platform, email=OPERATOR_EMAIL)
    page.get_by_role("link", name="Fleet").click()
    needs_attention = page.get_by_role("region", name="Devices that need attention")
    expect(needs_attention.get_by_role("row", name="pendant-1")).to_contain_text("battery low")
    dead = page.get_by_role("region", name="Dead letters")
    expect(dead).to_contain_text("devices/pendant-1/telemetry")
    expect(page.locator(".rate").first).to_contain_text("1 message")  # the event; the refused one is a dead letter


SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
WIDTHS = {"desktop": 1280, "phone": 390}


@pytest.mark.screenshots
def test_screenshots_of_every_page(
    page: Page, platform: Platform, api: httpx.Client, clock: ManualClock, publisher: Publisher
) -> None:
    """`make screenshots`: every page at desktop and phone width, into docs/screenshots/ (not part of `make test`)."""
    order, _ = place_an_order(platform, api, clock, mode="ask_first")
    customer_id = order["customer_id"]
    register_device(api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
    where = {"latitude": 52.5163, "longitude": 13.3777, "accuracy": 12, "room": "bathroom"}
    publisher.send(
        "devices/pendant-1/events", {"seq": 1, "type": "fall_detected", "confidence": 0.93, "location": where}
    )
    invited = api.post(
        "/household/invitations",
        params={"customer_id": customer_id},
        json={"email": "carl@example.com", "role": "carer", "name": "Carl", "device_ids": ["pendant-1"]},
    )
    assert invited.status_code == 201, invited.text
    publisher.send("devices/printer-1/telemetry", {"seq": 999, "levels": "not an object"})
    assert platform.ingestor is not None and platform.ingestor.wait_for(handled=2, timeout=10)
    [alert] = api.get("/alerts").json()
    with Session(platform.engine) as session:  # the request's Approve link, as the customer's message has it
        messages = session.exec(select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.NOTIFICATION)).all()
    [request] = [message for message in messages if message.payload["kind"] == "approval_request"]
    approve_token = request.payload["links"][0]["token"]
    pages = {
        "supplies": "/app",
        "orders": "/app/orders",
        "order": f"/app/orders/{order['id']}",
        "shipment": f"/app/shipments/{order['shipment_id']}",
        "alerts": "/app/alerts",
        "alert": f"/app/alerts/{alert['id']}",
        "consent": "/app/consent",
        "your-data": "/app/data",
        "household": "/app/household",
    }
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width_name, width in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": 800})
        page.goto(f"{platform.api_url}/app/sign-in")
        page.screenshot(path=SCREENSHOTS / f"sign-in-{width_name}.png", full_page=True)
        page.goto(f"{platform.api_url}/answer/{approve_token}")  # a one-tap link: no sign-in
        page.screenshot(path=SCREENSHOTS / f"answer-{width_name}.png", full_page=True)
        sign_in(page, platform)
        for name, path in pages.items():
            page.goto(f"{platform.api_url}{path}")
            page.screenshot(path=SCREENSHOTS / f"{name}-{width_name}.png", full_page=True)
        page.get_by_role("button", name="Sign out").click()
        sign_in(page, platform, email=OPERATOR_EMAIL)
        page.goto(f"{platform.api_url}/app/fleet")
        page.screenshot(path=SCREENSHOTS / f"fleet-{width_name}.png", full_page=True)
        page.get_by_role("button", name="Sign out").click()


def test_emergency_contacts_and_escalation_timing(
    page: Page, platform: Platform, api: httpx.Client, console_errors: list[str]
) -> None:
    customer_id = create_customer(api)
    sign_in(page, platform)
    page.goto(f"{platform.api_url}/app/consent")
    page.get_by_label("Name").fill("Grace")
    page.get_by_label("Asked by").select_option("sms")
    page.get_by_label("Phone number (+4915112345678), e-mail address or URL").fill("0151 not a number")
    page.get_by_role("button", name="Add the contact").click()
    expect(page.locator("#contact_address-error")).to_contain_text("E.164")
    expect(page.get_by_label("Name")).to_have_value("Grace")  # what was typed stays
    page.get_by_label("Phone number (+4915112345678), e-mail address or URL").fill("+4915112345678")
    page.get_by_label("If that fails, at once").select_option("email")
    page.get_by_label("Its phone number, e-mail address or URL").fill("grace@example.com")
    page.get_by_role("button", name="Add the contact").click()
    expect(page.get_by_role("status")).to_have_text("Saved as version 2.")
    page.get_by_label("Seconds each contact has to answer").fill("5")
    page.get_by_role("button", name="Save the timing").click()
    expect(page.locator("#escalation_timeout_seconds-error")).to_contain_text("10")
    page.get_by_label("Seconds each contact has to answer").fill("300")
    page.get_by_label("Call emergency services last").check()
    page.get_by_role("button", name="Save the timing").click()
    expect(page.get_by_role("status")).to_have_text("Saved as version 3.")
    document = api.get(f"/customers/{customer_id}/consent").json()["document"]
    assert document["emergency_contacts"] == [
        {
            "name": "Grace",
            "channel": "sms",
            "address": "+4915112345678",
            "fallbacks": [{"channel": "email", "address": "grace@example.com"}],
            "device_ids": [],
            "account_id": None,
        }
    ]
    expect(page.get_by_text("Grace: sms +4915112345678, then email grace@example.com")).to_be_visible()
    assert (document["escalation_timeout_seconds"], document["emergency_services_allowed"]) == (300, True)


def test_no_port_handed_to_a_server_is_one_browsers_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chromium will not load a page from 10080 (net::ERR_UNSAFE_PORT): a worker's block that holds it skips it."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "300")  # blocks of 75 ports: gw1's holds 10080
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    # This worker may already have handed out ports of that block as its own (gw0's block of 4 holds it).
    monkeypatch.setattr(brokers, "_HANDED_OUT", set())
    block = port_block("gw1")
    assert set(block) >= BROWSER_UNSAFE_PORTS
    handed = set()
    with pytest.raises(RuntimeError, match="used up"):
        for _ in block:
            handed.add(free_port())
    assert handed and not handed & BROWSER_UNSAFE_PORTS


@pytest.mark.slow
def test_the_demo_in_the_terminal_and_the_browser_then_ctrl_c(
    page: Page, tmp_path: Path, console_errors: list[str]
) -> None:
    """As a new user tries it: `replenish up --demo`, the printed addresses and credentials, the demo devices in the
    browser, their forecasts, an order, a fall alert and the fridge asking first; Ctrl-C stops it all cleanly."""
    api_port = free_port()
    env = environment(
        tmp_path,
        REPLENISH_API_PORT=str(api_port),
        REPLENISH_BROKER_PORT=str(free_port()),
        REPLENISH_DEMO_CATCH_UP_SECONDS="3",  # the history replayed in 3 s rather than 25: the same story, sooner
    )
    base = f"http://127.0.0.1:{api_port}/api/v1"
    log = tmp_path / "up.log"
    with process(["up", "--demo"], env, log) as proc:
        credentials_file = tmp_path / "demo-credentials.json"
        poll(lambda: credentials_file.exists() and "Ctrl-C" in log.read_text(), bool, timeout=60)
        credentials = json.loads(credentials_file.read_text())
        banner = log.read_text()
        assert credentials_file.stat().st_mode & 0o077 == 0, "secrets readable by the owner only"
        assert credentials["customer"]["email"] in banner, "the banner says how to sign in"
        url = f"http://127.0.0.1:{api_port}/app"
        assert url in banner and f"http://127.0.0.1:{api_port}/docs" in banner, "the web app's and the docs' address"
        assert set(credentials["devices"]) == {"demo-printer", "demo-fridge", "demo-wearable"}
        assert {"member", "carer"} <= set(credentials) and credentials["carer"]["email"] in banner
        for role, entry in credentials.items():
            if role == "devices":
                continue
            signed_in = httpx.post(
                f"{base}/auth/token", data={"username": entry["email"], "password": entry["password"]}
            )
            for token in (entry["token"], signed_in.json()["access_token"]):
                me = httpx.get(f"{base}/auth/me", headers={"Authorization": f"Bearer {token}"}).json()
                assert me["email"] == entry["email"]
                assert (me["role"], me["household_role"]) == (
                    ("operator", None) if role == "operator" else ("customer", "owner" if role == "customer" else role)
                )
        assert httpx.get(f"{base}/orders").status_code == 401, "nothing without signing in"

        customer = credentials["customer"]
        page.goto(url)
        page.get_by_label("E-mail").fill(customer["email"])
        page.get_by_label("Password").fill(customer["password"])
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Supplies")).to_be_visible()
        for device in ("demo-printer", "demo-fridge"):
            expect(page.locator(f"#device-{device}")).to_be_visible()
        black = page.locator("section.device").filter(has=page.locator("#device-demo-printer")).locator("article").first
        expect(black.locator(".empty-at")).to_contain_text("UTC", timeout=60_000)  # its forecast, once replayed
        page.get_by_role("link", name="Orders").click()
        # The fridge's milk and eggs ask first: their orders appear (without a reload) once the history is replayed.
        expect(page.get_by_role("button", name="Approve the order for").first).to_be_visible(timeout=90_000)

        api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {customer['token']}"})
        orders = poll(
            lambda: api.get("/orders", params={"device_id": "demo-printer"}).json(),
            lambda found: len(found) >= 1,
            timeout=90,
        )
        alerts = poll(lambda: api.get("/alerts").json(), lambda found: len(found) >= 1, timeout=60)
        # The request reaches the customer (the log is the demo's channel) with its one-tap links while there is
        # still milk left.
        request = poll(
            lambda: re.search(r"Approve\? Simulated fridge demo-fridge milk.*\nApprove: (\S+)", log.read_text()),
            bool,
            timeout=60,
        )
        assert request is not None and "/answer/" in request.group(1)
        milk = next(s for s in api.get("/devices/demo-fridge").json()["slots"] if s["name"] == "milk")
        assert milk["level"] > 0
        explained = (api.get(f"/orders/{order['id']}").json() for order in orders)
        lines = {line["explanation"]["slot_name"]: line for line in explained}
        assert lines["black"]["status"] == "placed", "black is set up to run out first"
        assert "pulled forward" not in lines["black"]["explanation"]["reason"]
        # Inks due within the pull-forward horizon come in the box of black's (or the milk's), each saying why.
        for name, line in lines.items():
            reason = line["explanation"]["reason"]
            assert name == "black" or (reason.startswith("pulled forward: ") and f"{name} may run out" in reason)
        assert alerts[0]["kind"] == "fall" and alerts[0]["device_id"] == "demo-wearable"
        forecasts = {slot["name"]: slot["forecast"] for slot in api.get("/devices/demo-printer").json()["slots"]}
        assert set(forecasts) == {"black", "cyan", "magenta", "yellow"}
        assert all(f and f["status"] == "ok" for f in forecasts.values()), forecasts

        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


def test_a_consent_page_left_open_in_another_tab_cannot_remove_the_wrong_contact(
    page: Page, platform: Platform, api: httpx.Client, console_errors: list[str]
) -> None:
    customer_id = create_customer(api)
    contacts = [{"name": name, "channel": "log"} for name in ("Grace", "Alan")]
    assert api.put(f"/customers/{customer_id}/consent", json={"emergency_contacts": contacts}).status_code == 200
    sign_in(page, platform)
    page.goto(f"{platform.api_url}/app/consent")
    stale = page.context.new_page()  # the same page in another tab
    stale.goto(f"{platform.api_url}/app/consent")
    page.get_by_role("button", name="Remove Grace from the emergency contacts").click()
    expect(page.get_by_role("status")).to_have_text("Saved as version 3.")
    stale.get_by_role("button", name="Remove Grace from the emergency contacts").click()  # Alan is first now
    expect(stale.get_by_role("alert")).to_contain_text("Your consent changed meanwhile")
    names = [
        contact["name"]
        for contact in api.get(f"/customers/{customer_id}/consent").json()["document"]["emergency_contacts"]
    ]
    assert names == ["Alan"]


def test_wrong_passwords_when_deleting_count_as_failed_sign_ins(
    page: Page, platform: Platform, api: httpx.Client, console_errors: list[str]
) -> None:
    customer_id = create_customer(api)
    sign_in(page, platform)
    page.goto(f"{platform.api_url}/app/data")
    for _ in range(10):
        page.get_by_label("Type your e-mail address").fill("ada@example.com")
        page.get_by_label("Your password").fill("a guess")
        page.get_by_role("button", name="Delete my account and all my data").click()
        expect(page.locator("#password-error")).to_be_visible()
    page.get_by_label("Type your e-mail address").fill("ada@example.com")
    page.get_by_label("Your password").fill(PASSWORD)  # right at last, but too late
    page.get_by_role("button", name="Delete my account and all my data").click()
    expect(page.locator("#password-error")).to_contain_text("Too many wrong passwords")
    assert api.get(f"/customers/{customer_id}").status_code == 200


def test_approving_from_the_e_mail_needs_no_sign_in_and_a_confirmation(
    page: Page, tmp_path: Path, clock: ManualClock, mailbox: Mailbox, console_errors: list[str]
) -> None:
    """As the issue tries it: a slot asks first, its level falls, the e-mail arrives (a real SMTP server) with its
    links, Approve in a browser without signing in after a confirmation page, and fulfilment receives it once."""
    partner = WebhookReceiver(path="/fulfilment")
    settings = make_settings(tmp_path, smtp_host="127.0.0.1", smtp_port=mailbox.port, order_webhook_url=partner.url)
    try:
        with running_platform(settings, clock) as platform, api_client(platform, operator_token(platform)) as api:
            customer_id, _ = run_low(platform, api, mode="ask_first")
            set_consent(api, customer_id, {"notification_channels": [{"type": "email", "address": "ada@example.com"}]})
            clock.set(START + timedelta(days=8))
            assert platform.jobs is not None
            platform.jobs.evaluate()
            platform.jobs.dispatch()
            assert wait_until(lambda: len(mailbox.messages) == 1)
            text = mailbox.messages[0].get_content()
            links = dict(re.findall(r"^(Approve|Decline|Open in the app): (\S+)\r?$", text, re.M))
            [order] = api.get("/orders").json()
            page.goto(links["Approve"])  # a browser with no session at all
            expect(page.get_by_role("heading", name="Approve this order?")).to_be_visible()
            expect(page.get_by_text("1 x INK-BLACK for printer printer-1 black")).to_be_visible()
            assert api.get(f"/orders/{order['id']}").json()["status"] == "awaiting_approval", "opening changes nothing"
            page.get_by_role("button", name="Approve order").click()
            expect(page.get_by_role("heading", name="Approved")).to_be_visible()
            assert api.get(f"/orders/{order['id']}").json()["status"] == "placed"
            page.reload()  # the browser offers to send the form again: the link works once
            expect(page.get_by_role("heading", name="Nothing changed")).to_be_visible()
            page.goto(links["Decline"])
            expect(page.get_by_text("Nothing to do: the order is placed now.")).to_be_visible()
            page.get_by_role("link", name="Open in the app").click()
            expect(page).to_have_url(re.compile(r"/app/sign-in\?next=/app/orders/"))
            for _ in range(3):
                platform.jobs.dispatch()
            assert wait_until(lambda: len(partner.requests) == 1)
            time.sleep(0.5)
            assert [body["event"] for _, body, _ in partner.requests] == ["shipment.placed"], "fulfilment got it once"
    finally:
        partner.close()
    console_errors[:] = [
        error for error in console_errors if "status of 409" not in error and "status of 410" not in error
    ]


def test_order_now_from_the_supplies_page(
    page: Page, platform: Platform, api: httpx.Client, clock: ManualClock, console_errors: list[str]
) -> None:
    run_low(platform, api, mode="auto_order")
    clock.set(START + timedelta(days=3))
    assert platform.jobs is not None
    platform.jobs.evaluate()
    sign_in(page, platform)
    cyan = page.get_by_role("article", name="printer printer-1 cyan")
    cyan.get_by_role("button", name="Order cyan for printer printer-1 now").click()
    expect(page).to_have_url(re.compile(r"/app/orders/\w+$"))
    expect(page.get_by_text("Cancel until")).to_be_visible()
    [order] = api.get("/orders").json()
    assert order["status"] == "placed" and order["product_sku"] == "INK-CYAN"
    assert api.get(f"/orders/{order['id']}").json()["history"][0]["actor"] == "customer:ada@example.com"
    page.goto(f"{platform.api_url}/app")
    expect(page.get_by_role("article", name="printer printer-1 cyan").locator(".next-order")).to_have_text("placed")


def test_the_consent_page_offers_notifications_in_this_browser(
    page: Page, platform: Platform, api: httpx.Client, console_errors: list[str]
) -> None:
    create_customer(api)
    sign_in(page, platform)
    page.goto(f"{platform.api_url}/app/consent")
    expect(page.get_by_role("button", name="Turn on notifications in this browser")).to_be_visible()
    scope = page.evaluate("navigator.serviceWorker.ready.then((registration) => registration.scope)")
    assert scope == f"{platform.api_url}/app/"
    key = api.get("/push/key").json()["application_server_key"]
    assert page.locator("#push").get_attribute("data-key") == key


def test_quiet_hours_and_the_daily_digest_on_the_consent_page(
    page: Page, platform: Platform, api: httpx.Client, console_errors: list[str]
) -> None:
    customer_id = create_customer(api)
    sign_in(page, platform)
    page.goto(f"{platform.api_url}/app/consent")
    page.locator("#quiet_start_0").fill("22:00")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#quiet_0-error")).to_contain_text("both times")
    page.locator("#quiet_start_0").fill("22:00")
    page.locator("#quiet_end_0").fill("07:00")
    page.get_by_label("One daily digest of low-priority notices").check()
    page.get_by_label("Digest time").fill("18:30")
    page.get_by_label("When you do not answer a request in time").select_option("decline")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Saved as version 2.")
    document = api.get(f"/customers/{customer_id}/consent").json()["document"]
    assert document["notification_channels"][0]["quiet_hours"] == {"start": "22:00:00", "end": "07:00:00"}
    assert (document["daily_digest"], document["digest_time"], document["on_no_answer"]) == (
        True,
        "18:30:00",
        "decline",
    )


def test_your_use_on_the_supplies_page_and_turning_insights_off(
    page: Page, platform: Platform, api: httpx.Client, clock: ManualClock, console_errors: list[str]
) -> None:
    """Issue 22: eight weeks of milk, whose use doubled in the last two; the supplies page says so, with the weekly
    chart and the cost a month; turned off on the consent page, the cost goes."""
    customer_id = create_customer(api, mode="notify_only")
    milk = {
        "name": "milk",
        "unit": "l",
        "capacity": 2.0,
        "product_sku": "MILK",
        "lead_time_days": 1,
        "unit_price": "1.50",
    }
    register_device(api, customer_id=customer_id, device_id="fridge-1", kind="fridge", slots=[milk])
    start = START - timedelta(days=56)
    publisher = Publisher(platform.settings.mqtt_endpoint)
    sent, level = 0, 1.0
    try:
        for step in range(56 * 4):
            moment = start + step * timedelta(hours=6)
            level -= (0.1 if step < 42 * 4 else 0.2) / 4
            if level < 0.1:
                level = 1.0
            sent += 1
            publisher.send(
                "devices/fridge-1/telemetry",
                {"seq": sent, "ts": moment.isoformat(), "levels": {"milk": round(2 * level, 3)}},
            )
    finally:
        publisher.close()
    assert platform.ingestor is not None and platform.ingestor.wait_for(handled=sent, timeout=30)
    clock.set(START)

    sign_in(page, platform)
    use = page.get_by_role("region", name="Use of fridge fridge-1 milk")
    expect(use.locator(".change")).to_contain_text("fridge fridge-1 milk use doubled in the last two weeks")
    expect(use.locator(".cost")).to_contain_text("a month at the current use")
    expect(use.get_by_role("img", name="fridge fridge-1 milk: use per week")).to_be_visible()

    page.goto(f"{platform.api_url}/app/consent")
    page.get_by_label("Show what each supply costs a month at the current use").uncheck()
    page.get_by_role("button", name="Save the insights").click()
    expect(page.get_by_role("status")).to_have_text("Saved as version 2.")
    assert api.get(f"/customers/{customer_id}/consent").json()["document"]["insights"] == {
        "usage_changes": True,
        "costs": False,
        "maintenance": True,
        "monthly_digest": True,
    }
    page.goto(f"{platform.api_url}/app")
    expect(use.locator(".change")).to_be_visible()
    expect(use.locator(".cost")).to_have_count(0)


def test_adding_an_e_mail_channel_on_the_consent_page(
    page: Page, platform: Platform, api: httpx.Client, console_errors: list[str]
) -> None:
    customer_id = create_customer(api)
    sign_in(page, platform)
    page.goto(f"{platform.api_url}/app/consent")
    page.get_by_label("Channel").select_option("email")
    page.get_by_label("Where: your e-mail address").fill("not an address")
    page.get_by_role("button", name="Add the channel").click()
    expect(page.locator("#channel_address-error")).to_contain_text("email")
    page.get_by_label("Where: your e-mail address").fill("ada@example.com")
    page.get_by_role("button", name="Add the channel").click()
    expect(page.get_by_role("status")).to_have_text("Saved as version 2.")
    page.get_by_role("button", name="Stop telling me by log").click()
    expect(page.get_by_role("status")).to_have_text("Saved as version 3.")
    channels = api.get(f"/customers/{customer_id}/consent").json()["document"]["notification_channels"]
    assert [(c["type"], c["address"]) for c in channels] == [("email", "ada@example.com")]
    expect(page.get_by_role("button", name="Stop telling me by email ada@example.com")).to_have_count(0)


def test_a_consolidated_shipment_forms_and_the_customer_takes_one_line_out(
    page: Page, platform: Platform, api: httpx.Client, clock: ManualClock, console_errors: list[str]
) -> None:
    customer_id = create_customer(api, mode="auto_order")
    register_device(api, customer_id=customer_id, device_id="printer-1")
    publisher = Publisher(platform.settings.mqtt_endpoint)
    try:
        # After eight days black has four days left (due now, with room for the cancel window); cyan ten.
        sent = sum(
            publish_depletion(
                publisher,
                device_id="printer-1",
                slot=slot,
                start=START,
                start_level=level,
                rate_per_day=0.05,
                days=8,
                first_seq=1 + 1000 * number,
            )
            for number, (slot, level) in enumerate((("black", 0.6), ("cyan", 0.9)))
        )
    finally:
        publisher.close()
    assert platform.ingestor is not None and platform.ingestor.wait_for(handled=sent, timeout=20)
    clock.set(START + timedelta(days=8))
    assert platform.jobs is not None
    platform.jobs.evaluate()
    [shipment] = api.get("/shipments").json()
    assert sorted(line["slot_name"] for line in shipment["lines"]) == ["black", "cyan"]

    sign_in(page, platform)
    page.get_by_role("link", name="Orders").click()
    shipments = page.get_by_role("region", name="Shipments")
    expect(shipments).to_contain_text("black, cyan")
    shipments.get_by_role("link").first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Shipment of")
    cyan = page.get_by_role("listitem", name="printer printer-1 cyan")
    expect(cyan.locator(".why")).to_contain_text("pulled forward: cyan may run out by")
    expect(cyan.locator(".why")).to_contain_text("days after black")
    expect(page.locator("p.status")).to_contain_text("2 lines in one box")
    expect(page.locator("p.status")).to_contain_text("It goes to the supplier at")
    cyan.get_by_role("button", name="Take printer printer-1 cyan out of this shipment").click()
    cyan = page.get_by_role("listitem", name="printer printer-1 cyan")
    expect(cyan).to_contain_text("cancelled")
    expect(cyan.get_by_role("button")).to_have_count(0)
    black = page.get_by_role("listitem", name="printer printer-1 black")
    expect(black.get_by_role("button", name="Take printer printer-1 black out of this shipment")).to_be_visible()
    with Session(platform.engine) as session:
        [hand_off] = session.exec(select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.SHIPMENT_PLACED)).all()
    black_line = next(line for line in shipment["lines"] if line["slot_name"] == "black")
    assert [line["order_id"] for line in hand_off.payload["lines"]] == [black_line["order"]["id"]]


def test_choosing_a_slot_s_product_and_a_substitute_on_the_supplies_page(
    page: Page, platform: Platform, api: httpx.Client, console_errors: list[str]
) -> None:
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="printer-1")
    ink = {"pack_size": 1, "unit": "fraction", "currency": "EUR", "device_kinds": ["printer"], "slot_names": ["black"]}
    for sku, name, price in (("INK-BLACK-XL", "Black ink XL", "24.90"), ("INK-BLACK-STD", "Black ink", "17.00")):
        api.put(f"/catalogue/products/{sku}", json={**ink, "name": name, "price": price}).raise_for_status()
    sign_in(page, platform)
    black = page.get_by_role("article", name="printer printer-1 black")
    expect(black.locator(".product")).to_contain_text("INK-BLACK")
    black.get_by_text("Choose the product").click()
    black.get_by_label("Product for black").select_option(label="Black ink XL, 24.90 EUR")
    black.get_by_role("checkbox", name="Black ink", exact=True).check()
    expect(black.locator(".order-size")).to_have_text("1 pack")
    black.get_by_label("Order enough for this many days of use").fill("45")
    black.get_by_role("button", name="Save the product for black").click()
    black = page.get_by_role("article", name="printer printer-1 black")
    expect(black.locator(".product")).to_contain_text("Black ink XL 24.90 EUR")
    expect(black.locator(".product")).to_contain_text("(or Black ink)")
    expect(black.locator(".order-size")).to_have_text("enough for 45 days of use, in whole packs")
    slot = api.get("/devices/printer-1").json()["slots"][0]
    assert (slot["product_sku"], slot["substitute_skus"]) == ("INK-BLACK-XL", ["INK-BLACK-STD"])
    assert slot["order_up_to_days"] == 45
    # The cyan slot is offered nothing: the catalogue has no product for it.
    expect(page.get_by_role("article", name="printer printer-1 cyan").get_by_text("Choose the product")).to_have_count(
        0
    )

    token = page.locator("form.sign-out input[name=csrf_token]").get_attribute("value") or ""
    refused = page.request.post(
        f"{platform.api_url}/app/devices/printer-1/slots/black/product",
        form={"csrf_token": token, "product_sku": "INK-NOWHERE"},
    )
    assert refused.status == 422 and "INK-NOWHERE is not in the catalogue for the black slot" in refused.text()
    refused = page.request.post(
        f"{platform.api_url}/app/devices/printer-1/slots/black/product",
        form={"csrf_token": token, "order_up_to_days": "0"},
    )
    assert refused.status == 422 and "order up to days: input should be greater than 0" in refused.text()
    slot = api.get("/devices/printer-1").json()["slots"][0]
    assert (slot["product_sku"], slot["order_up_to_days"]) == ("INK-BLACK-XL", 45), "nothing changed"

    # The slot's price cap is part of the consent: an order dearer than it asks first.
    page.goto(f"{platform.api_url}/app/consent")
    page.get_by_label("Most one order of printer printer-1 black may cost").fill("-5")
    page.get_by_role("button", name="Save limits").click()
    expect(page.locator("#slot_price_caps-error")).to_contain_text("greater than 0")
    page.get_by_label("Most one order of printer printer-1 black may cost").fill("30")
    page.get_by_role("button", name="Save limits").click()
    expect(page.get_by_role("status")).to_have_text("Saved as version 2.")
    assert api.get(f"/customers/{customer_id}/consent").json()["document"]["slot_price_caps"] == {
        "printer-1/black": "30"
    }


@pytest.mark.slow
def test_a_household_owner_invites_a_carer_who_sees_only_the_wearable_and_a_member_refused_above_the_limit(
    page: Page, tmp_path: Path, clock: ManualClock, mailbox: Mailbox, console_errors: list[str]
) -> None:
    """As the issue tries it: the owner invites a carer from the Household page; the carer follows the mailed link,
    chooses a password, sees only the wearable and acknowledges its fall; a member's approval above their limit is
    a page that says why, and the order stays as it was."""
    settings = make_settings(tmp_path, smtp_host="127.0.0.1", smtp_port=mailbox.port, smtp_sender="hi@example.com")
    with running_platform(settings, clock) as platform, api_client(platform, operator_token(platform)) as api:
        customer_id, _ = run_low(platform, api, mode="ask_first")
        register_device(api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
        publisher = Publisher(platform.settings.mqtt_endpoint)
        try:
            publisher.send("devices/pendant-1/events", {"seq": 1, "type": "fall_detected"})
            assert platform.ingestor is not None and platform.ingestor.wait_for(handled=1, timeout=10)
        finally:
            publisher.close()
        clock.set(START + timedelta(days=8))
        assert platform.jobs is not None
        platform.jobs.evaluate()
        [order] = api.get("/orders").json()
        sign_in(page, platform)
        page.get_by_role("link", name="Household").click()
        page.get_by_label("E-mail address").fill("carl@example.com")
        page.get_by_label("Their name").fill("Carl")
        page.get_by_role("radio", name="carer").check()
        page.get_by_role("checkbox", name="wearable pendant-1").check()
        page.get_by_role("button", name="Send the invitation").click()
        expect(page.get_by_role("status")).to_contain_text("An invitation is on its way to carl@example.com")
        page.get_by_role("button", name="Sign out").click()

        platform.jobs.dispatch()
        assert wait_until(lambda: len(mailbox.to("carl@example.com")) == 1)
        [link] = re.findall(r"http\S+/app/invitations/\S+", mailbox.to("carl@example.com")[0].get_content())
        page.goto(link)
        expect(
            page.get_by_text("invites you to their household as a carer: you will see wearable pendant-1")
        ).to_be_visible()
        page.get_by_label("Your name").fill("Carl")
        page.get_by_label("Choose a password").fill(PASSWORD)
        page.get_by_role("button", name="Join the household").click()
        expect(page.get_by_role("heading", name="Welcome to the household")).to_be_visible()

        sign_in(page, platform, "carl@example.com")
        expect(page.get_by_text("wearable pendant-1").first).to_be_visible()
        expect(page.get_by_text("printer printer-1")).to_have_count(0)
        expect(page.get_by_role("link", name="Orders")).to_have_count(0)
        page.get_by_role("link", name="Alerts").click()
        page.get_by_role("button", name="Acknowledge the fall alert on wearable pendant-1").click()
        expect(page.get_by_text("No open alerts.")).to_be_visible()
        [alert] = api.get("/alerts").json()
        assert alert["acknowledged_by"] == "carer:carl@example.com"
        page.get_by_role("button", name="Sign out").click()

        invited = api.post(
            "/household/invitations",
            params={"customer_id": customer_id},
            json={"email": "mia@example.com", "role": "member", "approval_limit": "20"},
        )
        assert invited.status_code == 201, invited.text
        platform.jobs.dispatch()
        assert wait_until(lambda: len(mailbox.to("mia@example.com")) == 1)
        [token] = re.findall(r"/app/invitations/(\S+)", mailbox.to("mia@example.com")[0].get_content())
        joined = httpx.post(
            f"{platform.api_url}/api/v1/invitations/{token}", json={"name": "Mia", "password": PASSWORD}
        )
        assert joined.status_code == 201, joined.text
        sign_in(page, platform, "mia@example.com")
        page.get_by_role("link", name="Orders").click()
        page.get_by_role("button", name="Approve the order for INK-BLACK").click()
        expect(page.get_by_role("heading", name="Not for your role")).to_be_visible()
        expect(
            page.get_by_text("a member may approve or place orders up to 20.00; its price is not known")
        ).to_be_visible()
        assert api.get(f"/orders/{order['id']}").json()["status"] == "awaiting_approval"
    console_errors[:] = [error for error in console_errors if "status of 403" not in error]


@pytest.mark.slow
def test_the_care_circle_as_the_issue_tries_it(
    page: Page, tmp_path: Path, clock: ManualClock, mailbox: Mailbox, console_errors: list[str]
) -> None:
    """Issue 21's check, in a real browser: a member and a carer of Ada's household. The carer sees only the
    wearable; the member approves milk within their limit and is refused the eggs above it; a fall with a location
    reaches the carer by SMS through the fake provider, with a map link, after the SMS to a wrong number fell back at
    once; the monitoring centre acknowledges; a wearable left offline opens an incident that the carer closes."""
    twilio, centre = FakeTwilio(refuse={"+4915199999999"}), WebhookReceiver(path="/centre")
    settings = make_settings(
        tmp_path,
        smtp_host="127.0.0.1",
        smtp_port=mailbox.port,
        smtp_sender="hi@example.com",
        monitoring_centre_url=centre.url,
        **twilio.settings(),
    )
    try:
        with running_platform(settings, clock) as platform, api_client(platform, operator_token(platform)) as api:
            for sku, name, unit, pack, price in (
                ("MILK-1L", "milk", "litre", 1, "1.80"),
                ("EGGS-12", "eggs", "eggs", 12, "3.50"),
            ):
                product = {
                    "name": name.title(),
                    "pack_size": pack,
                    "unit": unit,
                    "price": price,
                    "currency": "EUR",
                    "device_kinds": ["fridge"],
                    "slot_names": [name],
                }
                assert api.put(f"/catalogue/products/{sku}", json=product).status_code == 201
            customer_id = create_customer(api, mode="ask_first")
            slots = [
                {"name": "milk", "unit": "litre", "capacity": 2, "product_sku": "MILK-1L", "lead_time_days": 1},
                {"name": "eggs", "unit": "eggs", "capacity": 12, "product_sku": "EGGS-12", "lead_time_days": 2},
            ]
            register_device(api, customer_id=customer_id, device_id="fridge-1", kind="fridge", slots=slots)
            register_device(api, customer_id=customer_id, device_id="pendant-1", kind="wearable", slots=[])
            publisher = Publisher(platform.settings.mqtt_endpoint)
            try:
                report_running_low(
                    platform,
                    publisher,
                    device_id="fridge-1",
                    slots=("milk", "eggs"),
                    start_level=1.0,
                    rate_per_day=0.12,
                    days=7,
                )
                clock.set(START + timedelta(days=7))
                assert platform.jobs is not None
                platform.jobs.evaluate()
                waiting = {o["product_sku"]: o for o in api.get("/orders").json()}
                assert {sku: o["status"] for sku, o in waiting.items()} == {
                    "MILK-1L": "awaiting_approval",
                    "EGGS-12": "awaiting_approval",
                }
                people = {}
                for email, body in (
                    ("mia@example.com", {"role": "member", "approval_limit": "2.00"}),
                    ("carl@example.com", {"role": "carer", "device_ids": ["pendant-1"]}),
                ):
                    invited = api.post(
                        "/household/invitations", params={"customer_id": customer_id}, json={"email": email, **body}
                    )
                    assert invited.status_code == 201, invited.text
                    platform.jobs.dispatch()
                    assert wait_until(lambda email=email: len(mailbox.to(email)) == 1)
                    [token] = re.findall(r"/app/invitations/(\S+)", mailbox.to(email)[0].get_content())
                    joined = httpx.post(
                        f"{platform.api_url}/api/v1/invitations/{token}",
                        json={"name": email.split("@")[0].title(), "password": PASSWORD},
                    )
                    assert joined.status_code == 201, joined.text
                    people[email] = joined.json()["account_id"]
                set_consent(
                    api,
                    customer_id,
                    {
                        "default_mode": "ask_first",
                        "wearable_silence_minutes": 5,
                        "emergency_services_allowed": True,
                        "fall_cancel_window_seconds": 0,
                        "emergency_contacts": [
                            {
                                "name": "Carl",
                                "channel": "sms",
                                "address": "+4915199999999",
                                "account_id": people["carl@example.com"],
                                "fallbacks": [{"channel": "sms", "address": "+4915112345678"}],
                            },
                        ],
                    },
                )

                # The carer sees only the wearable.
                sign_in(page, platform, "carl@example.com")
                expect(page.get_by_text("wearable pendant-1").first).to_be_visible()
                expect(page.get_by_text("fridge fridge-1")).to_have_count(0)
                page.get_by_role("button", name="Sign out").click()

                # The member approves the milk (1.80) and is refused the eggs (3.50): over her 2.00.
                sign_in(page, platform, "mia@example.com")
                page.get_by_role("link", name="Orders").click()
                page.get_by_role("button", name="Approve the order for MILK-1L").click()
                expect(page.get_by_role("button", name="Approve the order for MILK-1L")).to_have_count(0)
                page.get_by_role("button", name="Approve the order for EGGS-12").click()
                expect(page.get_by_role("heading", name="Not for your role")).to_be_visible()
                expect(page.get_by_text("3.50 is over your limit of 2.00")).to_be_visible()
                page.goto(f"{platform.api_url}/app")
                page.get_by_role("button", name="Sign out").click()
                assert api.get(f"/orders/{waiting['MILK-1L']['id']}").json()["status"] == "placed"
                assert api.get(f"/orders/{waiting['EGGS-12']['id']}").json()["status"] == "awaiting_approval"

                # A fall with a location: the SMS to the wrong number is refused, the next one goes at once.
                where = {"latitude": 52.5163, "longitude": 13.3777, "accuracy": 8, "room": "kitchen"}
                assert platform.ingestor is not None
                handled = platform.ingestor.totals.handled
                publisher.send("devices/pendant-1/events", {"seq": 1, "type": "fall_detected", "location": where})
                assert platform.ingestor.wait_for(handled=handled + 1, timeout=10)
                for _ in range(3):
                    platform.jobs.escalate()
                    platform.jobs.dispatch()
                refused, text = twilio.wait_for(2)
                assert refused["To"] == "+4915199999999" and text["To"] == "+4915112345678"
                assert "Where: in the kitchen" in text["Body"] and "openstreetmap.org/?mlat=52.516300" in text["Body"]
                assert twilio.receipt(text, "delivered").status_code == 204
                # Carl does not answer: the monitoring centre is asked, and acknowledges.
                clock.advance(timedelta(seconds=120))
                platform.jobs.escalate()
                platform.jobs.dispatch()
                [incident] = centre.wait_for(1)
                assert incident["location"] == where
                assert (
                    httpx.post(incident["acknowledge_url"].replace("/ack/", "/api/v1/acknowledgements/")).status_code
                    == 200
                )
                [fall] = api.get("/alerts").json()
                assert (
                    fall["status"] == "acknowledged"
                    and fall["acknowledged_by"] == "emergency services (emergency services)"
                )

                # Left offline: a silence incident for the carer, who closes it.
                publisher.send("devices/pendant-1/status", "offline", retain=True)
                assert platform.ingestor.wait_for(handled=handled + 2, timeout=10)
                clock.advance(timedelta(minutes=2))
                platform.jobs.health()
                clock.advance(timedelta(minutes=5))
                platform.jobs.health()
                [silence] = [a for a in api.get("/alerts").json() if a["kind"] == "silence"]
                sign_in(page, platform, "carl@example.com")
                page.get_by_role("link", name="Alerts").click()
                page.get_by_role("link", name="Silence").click()
                page.get_by_role("button", name="Close it: dealt with").click()
                expect(page.locator(".status")).to_contain_text("resolved")
                assert api.get(f"/alerts/{silence['id']}").json()["status"] == "resolved"
            finally:
                publisher.close()
    finally:
        twilio.close()
        centre.close()
    console_errors[:] = [error for error in console_errors if "status of 403" not in error]

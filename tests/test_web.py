"""The web app in a real browser: Debian's chromium driven by Playwright, against the real platform.

Playwright's own browser download is not available on our machines, so the browser is the system's `chromium`
(the Makefile installs it), launched through its executable path.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from conftest import place_an_order
from helpers import PASSWORD, create_customer
from replenish.clock import ManualClock
from replenish.runtime import Platform

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (make installs it)")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": ["--no-sandbox"]}


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
    page.get_by_role("button", name="Decline").click()
    expect(page.locator(".status")).to_contain_text("declined")
    expect(page.get_by_role("button", name="Decline")).to_have_count(0)
    assert api.get(f"/orders/{order['id']}").json()["status"] == "declined"


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

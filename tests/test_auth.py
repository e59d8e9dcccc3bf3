"""Sign-in, tokens and who may see what: every route, as each kind of caller, through the real API."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pwdlib import PasswordHash
from sqlmodel import Session, select

from replenish.auth.models import AccessToken, Account
from replenish.auth.service import hash_token
from replenish.clock import ManualClock
from replenish.constants import MAX_LIVE_SIGN_UPS
from replenish.outbox.models import OutboxMessage
from replenish.runtime import Platform
from support import wait_until
from support.api import (
    PASSWORD,
    api_client,
    create_customer,
    customer_api,
    iso,
    operator_token,
    personal_token,
    register_device,
    sign_in,
)
from support.mqtt import Publisher, publish_depletion
from support.platform import START, make_settings, running_platform
from support.servers import Mailbox


@pytest.fixture
def mailing_platform(tmp_path: Path, clock: ManualClock, mailbox: Mailbox) -> Iterator[Platform]:
    """A platform that sends its e-mail to ``mailbox``."""
    settings = make_settings(tmp_path, smtp_host="127.0.0.1", smtp_port=mailbox.port, smtp_sender="hello@example.com")
    with running_platform(settings, clock) as platform:
        yield platform


def mailed_link(platform: Platform, mailbox: Mailbox, address: str) -> str | None:
    """Deliver what the outbox holds; the sign-up link in the newest e-mail to ``address``, if it has one."""
    platform.jobs.dispatch()
    assert wait_until(lambda: len(mailbox.to(address)) >= 1)
    body = mailbox.to(address)[-1].get_content()
    found = re.search(r"(http\S+/app/sign-up/(\S+))", body)
    return found.group(2) if found else None


def test_sign_up_by_e_mail_then_sign_in_and_see_who_you_are(mailing_platform: Platform, mailbox: Mailbox):
    platform = mailing_platform
    anonymous = api_client(platform, None)
    requested = anonymous.post("/customers", json={"name": "Ada", "email": "Ada@Example.com"})
    assert requested.status_code == 202, requested.text
    assert requested.json()["email"] == "ada@example.com" and "e-mail" in requested.json()["detail"]
    token = mailed_link(platform, mailbox, "ada@example.com")
    assert token is not None
    # The page the link opens changes nothing; its form (or the API) creates the account, with the password chosen
    # there by whoever holds the mail, once.
    page = httpx.get(f"{platform.api_url}/app/sign-up/{token}")
    assert page.status_code == 200 and "Create my account" in page.text and "ada@example.com" in page.text
    weak = anonymous.post(f"/sign-ups/{token}", json={"name": "Ada", "password": "short"})
    assert weak.status_code == 422 and weak.json()["detail"][0]["loc"] == ["body", "password"]
    created = anonymous.post(f"/sign-ups/{token}", json={"name": "Ada", "password": PASSWORD})
    assert created.status_code == 201, created.text
    again = anonymous.post(f"/sign-ups/{token}", json={"name": "Eve", "password": "eve's own password"})
    assert again.status_code == 404, "the link works once"
    me = api_client(platform, sign_in(platform, "ada@example.com")).get("/auth/me").json()
    assert me == {
        "account_id": me["account_id"],
        "email": "ada@example.com",
        "role": "customer",
        "customer_id": created.json()["id"],
        "household_role": "owner",
        "approval_limit": None,
        "device_ids": None,
    }
    with Session(platform.engine) as session:
        outbox = session.exec(select(OutboxMessage)).all()
    assert all(token not in json.dumps(message.payload) for message in outbox), "the link is not kept once sent"


def test_signing_up_in_the_web_app(mailing_platform: Platform, mailbox: Mailbox):
    platform = mailing_platform
    origin = {"origin": platform.api_url}
    assert 'href="/app/sign-up"' in httpx.get(f"{platform.api_url}/app/sign-in").text
    ask = f"{platform.api_url}/app/sign-up"
    assert httpx.post(ask, data={"email": "not an address"}, headers=origin).status_code == 422
    asked = httpx.post(ask, data={"email": "Ada@example.com"}, headers=origin)
    assert asked.status_code == 200 and "Check your e-mail" in asked.text
    token = mailed_link(platform, mailbox, "ada@example.com")
    page = f"{platform.api_url}/app/sign-up/{token}"
    refused = httpx.post(page, data={"name": "Ada", "password": "short"}, headers=origin)
    assert refused.status_code == 422 and 'aria-invalid="true"' in refused.text
    created = httpx.post(page, data={"name": "Ada", "password": PASSWORD}, headers=origin)
    assert created.status_code == 200 and "Your account is ready" in created.text
    sign_in(platform, "ada@example.com")
    assert httpx.post(page, data={"name": "Ada", "password": PASSWORD}, headers=origin).status_code == 404


def test_sign_up_answers_the_same_whether_or_not_the_address_has_an_account(
    mailing_platform: Platform, mailbox: Mailbox
):
    platform = mailing_platform
    anonymous = api_client(platform, None)
    with api_client(platform, operator_token(platform)) as operator:
        create_customer(operator, email="ada@example.com")
    answers = [
        anonymous.post("/customers", json={"name": "Someone", "email": email})
        for email in ("ADA@example.com", "new@example.com")
    ]
    assert [answer.status_code for answer in answers] == [202, 202]
    assert [{**answer.json(), "email": None} for answer in answers] == [{**answers[1].json(), "email": None}] * 2
    # The owner of the address hears about the attempt; nothing about the account changed.
    assert mailed_link(platform, mailbox, "ada@example.com") is None
    assert "has one already" in mailbox.to("ada@example.com")[-1].get_content()
    assert mailed_link(platform, mailbox, "new@example.com") is not None
    sign_in(platform, "ada@example.com")  # still Ada's own password


def test_sign_up_links_expire_and_an_address_gets_a_few_at_most(mailing_platform: Platform, mailbox: Mailbox, clock):
    platform = mailing_platform
    anonymous = api_client(platform, None)
    sign_up = {"name": "Ada", "email": "ada@example.com"}
    for _ in range(MAX_LIVE_SIGN_UPS + 2):
        assert anonymous.post("/customers", json=sign_up).status_code == 202
    platform.jobs.dispatch()
    assert wait_until(lambda: len(mailbox.to("ada@example.com")) == MAX_LIVE_SIGN_UPS)
    time.sleep(0.5)
    assert len(mailbox.to("ada@example.com")) == MAX_LIVE_SIGN_UPS, "no inbox flooded through the platform"
    token = mailed_link(platform, mailbox, "ada@example.com")
    clock.advance(timedelta(hours=24, seconds=1))
    expired = anonymous.post(f"/sign-ups/{token}", json={"name": "Ada", "password": PASSWORD})
    assert expired.status_code == 410 and "expired" in expired.json()["detail"]
    assert httpx.get(f"{platform.api_url}/app/sign-up/{token}").status_code == 410
    removed = platform.jobs.retention()
    assert removed["sign_ups"] == MAX_LIVE_SIGN_UPS and removed["sign_up_emails"] == MAX_LIVE_SIGN_UPS
    assert httpx.get(f"{platform.api_url}/app/sign-up/{token}").status_code == 404, "nothing kept of it"
    assert anonymous.post("/customers", json=sign_up).status_code == 202
    assert mailed_link(platform, mailbox, "ada@example.com") is not None, "a new one, once the old expired"


def test_sign_up_takes_no_password_and_an_operator_hears_of_a_taken_email(platform, api):
    anonymous = api_client(platform, None)
    early = anonymous.post("/customers", json={"name": "Ada", "email": "ada@example.com", "password": PASSWORD})
    assert early.status_code == 422 and early.json()["field"] == "password"
    short = api.post("/customers", json={"name": "Ada", "email": "ada@example.com", "password": "short"})
    assert short.status_code == 422 and short.json()["detail"][0]["loc"] == ["body", "password"]
    create_customer(api, email="ada@example.com")
    again = api.post("/customers", json={"name": "Ada", "email": "ADA@example.com", "password": PASSWORD})
    assert again.status_code == 409, "an operator may know the address is taken"
    # Nothing half-made is left behind: still one customer, one account.
    assert len(api.get("/customers").json()) == 1


@pytest.mark.real_passwords
def test_a_wrong_password_and_an_unknown_email_get_the_same_401(platform, api):
    create_customer(api, email="ada@example.com")
    answers = [
        httpx.post(f"{platform.api_url}/api/v1/auth/token", data={"username": email, "password": password})
        for email, password in (("ada@example.com", "wrong password!"), ("nobody@example.com", PASSWORD))
    ]
    assert [a.status_code for a in answers] == [401, 401]
    assert answers[0].json() == answers[1].json() == {"detail": "incorrect e-mail or password", "field": None}
    assert all(a.headers["www-authenticate"] == "Bearer" for a in answers)


@pytest.mark.real_passwords
def test_passwords_and_tokens_are_stored_only_as_hashes(platform, api):
    create_customer(api, email="ada@example.com")
    token = personal_token(platform, "ada@example.com")
    with Session(platform.engine) as session:
        account = session.exec(select(Account).where(Account.email == "ada@example.com")).one()
        stored = session.exec(select(AccessToken.token_hash)).all()
    assert account.password_hash.startswith("$argon2id$") and PASSWORD not in account.password_hash
    # With the recommended parameters (memory, iterations, lanes), not weaker ones.
    assert not PasswordHash.recommended().hashers[0].check_needs_rehash(account.password_hash)
    assert token.startswith("rpl_") and token not in stored and hash_token(token) in stored


def test_a_personal_token_works_until_revoked_and_then_stops_at_once(platform, api):
    create_customer(api, email="ada@example.com")
    session_token = sign_in(platform, "ada@example.com")
    ada = api_client(platform, session_token)
    wrong = ada.post("/auth/tokens", json={"name": "x", "password": "not my password"})
    assert wrong.status_code == 403 and wrong.json()["field"] == "password", "a sign-in token alone mints nothing"
    created = ada.post(
        "/auth/tokens", json={"name": "home automation", "expires_in_days": 30, "password": PASSWORD}
    ).json()
    assert created["kind"] == "personal" and created["token"].startswith("rpl_")
    script = api_client(platform, created["token"])
    assert script.get("/devices").status_code == 200
    listed = ada.get("/auth/tokens").json()
    assert {t["name"] for t in listed} == {"sign-in", "home automation"}
    assert all("token" not in t for t in listed), "a secret is shown once, never listed"

    revoked = ada.delete(f"/auth/tokens/{created['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = script.get("/devices")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert ada.get("/devices").status_code == 200, "the other tokens still work"


def test_a_customer_cannot_revoke_another_accounts_token(platform, api):
    create_customer(api, email="ada@example.com")
    create_customer(api, email="bob@example.com")
    bob = api_client(platform, sign_in(platform, "bob@example.com"))
    [bobs_token] = bob.get("/auth/tokens").json()
    ada = api_client(platform, sign_in(platform, "ada@example.com"))
    assert ada.delete(f"/auth/tokens/{bobs_token['id']}").status_code == 404
    assert bob.get("/auth/me").status_code == 200


def test_a_sign_in_token_expires_and_sign_out_revokes(platform, api, clock):
    create_customer(api, email="ada@example.com")
    ada = api_client(platform, sign_in(platform, "ada@example.com"))
    clock.advance(timedelta(hours=platform.settings.session_hours) - timedelta(seconds=1))
    assert ada.get("/auth/me").status_code == 200
    clock.advance(timedelta(seconds=1))
    assert ada.get("/auth/me").status_code == 401

    again = api_client(platform, sign_in(platform, "ada@example.com"))
    assert again.post("/auth/sign-out").status_code == 204
    assert again.get("/auth/me").status_code == 401


def test_an_operator_account_is_made_on_the_command_line(platform, tmp_path):
    import subprocess
    import sys

    env = {
        "REPLENISH_DATABASE_URL": platform.settings.resolved_database_url,
        "REPLENISH_NEW_OPERATOR_PASSWORD": PASSWORD,
        "PATH": "/usr/bin:/bin",
    }
    replenish = str(Path(sys.executable).parent / "replenish")
    done = subprocess.run(
        [replenish, "accounts", "create-operator", "--email", "ops@example.com"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    me = api_client(platform, sign_in(platform, "ops@example.com")).get("/auth/me").json()
    assert me["role"] == "operator" and me["customer_id"] is None
    twice = subprocess.run(
        [replenish, "accounts", "create-operator", "--email", "ops@example.com"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert twice.returncode == 1 and "exists already" in twice.stderr


# --- Who may see what -------------------------------------------------------------------------------------------

PUBLIC_ROUTES = {("POST", "/api/v1/auth/token"), ("POST", "/api/v1/customers")}
# An emergency contact has no account: the link they were sent is the credential (tests/test_escalation.py shows that
# a wrong or another alert's token gets nothing).
# So does whoever signed up: the link mailed to the address (a wrong, used or expired one creates nothing: above).
LINK_ROUTES = {
    ("GET", "/api/v1/acknowledgements/{token}"),
    ("POST", "/api/v1/acknowledgements/{token}"),
    ("POST", "/api/v1/sign-ups/{token}"),
    # And whoever was invited to a household (tests/test_households.py: a forged, used or expired one gets nothing).
    ("GET", "/api/v1/invitations/{token}"),
    ("POST", "/api/v1/invitations/{token}"),
}
# A fulfilment partner signs its requests instead (tests/test_answers.py: a wrong, changed or old signature gets 401).
SIGNED_ROUTES = {
    ("POST", "/api/v1/fulfilment/{partner}/events"),
    # And the SMS provider its receipts (tests/test_channels.py: a forged signature gets 401 and changes nothing).
    ("POST", "/api/v1/providers/{provider}/status"),
}
OPERATOR_ONLY = {
    ("GET", "/api/v1/customers"),
    ("GET", "/api/v1/dead-letters"),
    ("GET", "/api/v1/dead-letters/overflow"),
    ("GET", "/api/v1/dead-letters/{dead_letter_id}"),
    ("POST", "/api/v1/orders/{order_id}/fulfilment"),
    ("PUT", "/api/v1/catalogue/products/{sku}"),
    ("POST", "/api/v1/catalogue/imports"),
    ("GET", "/api/v1/reliability"),
}
# The catalogue is the same for everyone: any signed-in caller reads a product and its versions.
SHARED_ROUTES = {("GET", "/api/v1/catalogue/products/{sku}"), ("GET", "/api/v1/catalogue/products/{sku}/versions")}


@dataclass
class World:
    """Two customers with a printer (an order awaiting approval) and a pendant (an open fall alert) each."""

    platform: Platform
    operator: httpx.Client
    ada: httpx.Client
    bob: httpx.Client
    ids: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from support.platform import START as start

    clock = ManualClock(start)
    with running_platform(make_settings(tmp_path_factory.mktemp("auth")), clock) as platform:
        yield from _populated_world(platform, clock, start)


def _populated_world(platform: Platform, clock: ManualClock, start: datetime) -> Iterator[World]:
    publisher = Publisher(platform.settings.mqtt_endpoint)
    try:
        operator = api_client(platform, operator_token(platform))
        ids: dict[str, dict[str, str]] = {}
        sent = 0
        for name in ("ada", "bob"):
            customer_id = create_customer(operator, email=f"{name}@example.com", mode="ask_first")
            register_device(operator, customer_id=customer_id, device_id=f"{name}-printer")
            register_device(operator, customer_id=customer_id, device_id=f"{name}-pendant", kind="wearable", slots=[])
            sent += publish_depletion(
                publisher,
                device_id=f"{name}-printer",
                slot="black",
                start=start,
                start_level=0.5,
                rate_per_day=0.05,
                days=8,
            )
            publisher.send(f"devices/{name}-pendant/events", {"seq": 1, "ts": iso(start), "type": "fall_detected"})
            sent += 1
            ids[name] = {"customer_id": customer_id}
        assert platform.ingestor.wait_for(handled=sent, timeout=20)
        clock.set(start + timedelta(days=8))
        platform.jobs.evaluate()
        platform.jobs.health()  # the pendants have been silent for days: offline alarms
        for name in ("ada", "bob"):
            customer_id = ids[name]["customer_id"]
            [order] = operator.get("/orders", params={"customer_id": customer_id}).json()
            [alert] = operator.get("/alerts", params={"customer_id": customer_id}).json()
            notification = operator.get("/notifications", params={"customer_id": customer_id}).json()[0]
            [alarm] = operator.get("/alarms", params={"device_id": f"{name}-pendant", "kind": "offline"}).json()
            browser = operator.post(
                "/push/subscriptions",
                json={
                    "endpoint": f"https://push.example.com/{name}",
                    "keys": {"p256dh": _b64(b"\x04" + bytes(64)), "auth": _b64(bytes(16))},
                    "customer_id": customer_id,
                },
            )
            assert browser.status_code == 201, browser.text
            invitation = operator.post(
                "/household/invitations",
                params={"customer_id": customer_id},
                json={"email": f"{name}-carer@example.com", "role": "carer", "device_ids": [f"{name}-pendant"]},
            )
            assert invitation.status_code == 201, invitation.text
            [owner] = operator.get("/household/members", params={"customer_id": customer_id}).json()
            ids[name] |= {
                "invitation_id": invitation.json()["id"],
                "account_id": owner["account_id"],
                "subscription_id": browser.json()["id"],
                "order_id": order["id"],
                "shipment_id": order["shipment_id"],
                "alert_id": alert["id"],
                "notification_id": notification["id"],
                "alarm_id": alarm["id"],
            }
        ada, bob = (customer_api(platform, f"{name}@example.com") for name in ("ada", "bob"))
        for name, client in (("ada", ada), ("bob", bob)):
            ids[name]["token_id"] = client.get("/auth/tokens").json()[0]["id"]
        yield World(platform, operator, ada, bob, ids)
    finally:
        publisher.close()


# Every route that names an object: (method, path template, how to fill it for a customer's objects, body).
OBJECT_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/customers/{customer_id}", None),
    ("GET", "/customers/{customer_id}/consent", None),
    ("PUT", "/customers/{customer_id}/consent", {"default_mode": "auto_order"}),
    ("GET", "/customers/{customer_id}/consent/versions", None),
    ("GET", "/customers/{customer_id}/export", None),
    ("DELETE", "/customers/{customer_id}", None),
    ("GET", "/devices/{device_id}", None),
    ("PATCH", "/devices/{device_id}/slots/{slot_name}", {"service_level": 0.9}),
    ("POST", "/devices/{device_id}/credentials", None),
    ("GET", "/devices/{device_id}/slots/{slot_name}/readings", None),
    ("GET", "/devices/{device_id}/slots/{slot_name}/products", None),
    ("GET", "/devices/{device_id}/slots/{slot_name}/outcomes", None),
    ("GET", "/devices/{device_id}/events", None),
    ("GET", "/orders/{order_id}", None),
    ("POST", "/orders/{order_id}/approve", None),
    ("POST", "/orders/{order_id}/decline", None),
    ("POST", "/orders/{order_id}/cancel", None),
    ("GET", "/shipments/{shipment_id}", None),
    ("POST", "/shipments/{shipment_id}/lines/{order_id}/remove", None),
    ("GET", "/alerts/{alert_id}", None),
    ("GET", "/notifications/{notification_id}", None),
    ("POST", "/alerts/{alert_id}/acknowledge", None),
    ("POST", "/alerts/{alert_id}/resolve", None),
    ("GET", "/alarms/{alarm_id}", None),
    ("POST", "/alarms/{alarm_id}/acknowledge", None),
    ("DELETE", "/auth/tokens/{token_id}", None),
    ("POST", "/devices/{device_id}/slots/{slot_name}/order", None),
    ("DELETE", "/push/subscriptions/{subscription_id}", None),
    ("PATCH", "/household/members/{account_id}", {"approval_limit": "10"}),
    ("DELETE", "/household/members/{account_id}", None),
    ("DELETE", "/household/invitations/{invitation_id}", None),
]


NOBODY = {
    key: "0" * 32
    for key in (
        "customer_id",
        "order_id",
        "shipment_id",
        "alert_id",
        "token_id",
        "notification_id",
        "alarm_id",
        "subscription_id",
        "invitation_id",
        "account_id",
    )
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _fill(template: str, owner: str, world: World) -> str:
    """The path of one of the owner's objects ("nobody": of objects that do not exist)."""
    values = (NOBODY if owner == "nobody" else world.ids[owner]) | {
        "device_id": f"{owner}-printer",
        "slot_name": "black",
        "dead_letter_id": "1",
        "sku": "INK-SHARED",
    }
    if "/events" in template or template.startswith("/alerts"):
        values = values | {"device_id": f"{owner}-pendant"}
    return template.format(**values)


def _bobs_things(world: World) -> dict[str, Any]:
    """Everything of Bob's, as the operator sees it, to prove that Ada's attempts changed none of it."""
    bob, operator = world.ids["bob"], world.operator
    of_bob = {"customer_id": bob["customer_id"]}
    return {
        "consent": operator.get(f"/customers/{bob['customer_id']}/consent/versions").json(),
        "printer": operator.get("/devices/bob-printer").json()["slots"][0]["service_level"],
        "order": operator.get(f"/orders/{bob['order_id']}").json()["status"],
        "alert": operator.get(f"/alerts/{bob['alert_id']}").json()["status"],
        "alarm": operator.get(f"/alarms/{bob['alarm_id']}").json()["status"],
        "bob signed in": world.bob.get("/auth/me").status_code,
        "bob's devices": sorted(d["id"] for d in world.bob.get("/devices").json()),
        "bob's orders": sorted((o["id"], o["status"]) for o in operator.get("/orders", params=of_bob).json()),
        "bob's browsers": len(operator.get("/push/subscriptions", params=of_bob).json()),
        "bob's household": operator.get("/household/members", params=of_bob).json(),
        "bob's invitations": operator.get("/household/invitations", params=of_bob).json(),
    }


@pytest.mark.parametrize(("method", "template", "body"), OBJECT_ROUTES, ids=[f"{m} {t}" for m, t, _ in OBJECT_ROUTES])
def test_another_customers_object_answers_404_and_stays_as_it_was(world: World, method, template, body):
    before = _bobs_things(world)
    path = _fill(template, "bob", world)
    answer = world.ada.request(method, path, json=body)
    assert answer.status_code == 404, f"{method} {path}: {answer.status_code} {answer.text}"
    # Just what a missing object gets: nothing tells Ada that Bob's exists.
    missing = world.ada.request(method, _fill(template, "nobody", world), json=body)
    assert missing.status_code == 404
    bobs_ids = {*world.ids["bob"].values(), "bob-printer", "bob-pendant"}
    nobodys_ids = {*NOBODY.values(), "nobody-printer", "nobody-pendant"}
    assert _without(answer.json()["detail"], bobs_ids) == _without(missing.json()["detail"], nobodys_ids)
    assert _bobs_things(world) == before


def _without(text: str, ids: set[str]) -> str:
    for key in sorted(ids, key=len, reverse=True):
        text = text.replace(key, "<id>")
    return text


READ_ROUTES = [(m, t) for m, t, _ in OBJECT_ROUTES if m == "GET"]


@pytest.mark.parametrize(("method", "template"), READ_ROUTES, ids=[f"{m} {t}" for m, t in READ_ROUTES])
def test_the_owner_and_an_operator_can_read_it(world: World, method, template):
    path = _fill(template, "ada", world)
    assert world.ada.get(path).status_code == 200, path
    assert world.operator.get(path).status_code == 200, path


def test_every_customer_reads_the_shared_catalogue(world: World):
    product = {
        "name": "Shared ink",
        "pack_size": 1,
        "unit": "fraction",
        "price": "9.99",
        "currency": "EUR",
        "device_kinds": ["printer"],
    }
    assert world.operator.put("/catalogue/products/INK-SHARED", json=product).status_code in (200, 201)
    for method, path in sorted(SHARED_ROUTES):
        concrete = _fill(path.removeprefix("/api/v1"), "ada", world)
        for caller in (world.ada, world.bob, world.operator):
            assert caller.request(method, concrete).status_code == 200, (method, concrete)


@pytest.mark.parametrize(
    "collection",
    [
        "/devices",
        "/orders",
        "/shipments",
        "/alerts",
        "/alarms",
        "/notifications",
        "/audit",
        "/household/members",
        "/household/invitations",
    ],
)
def test_lists_show_a_customer_only_their_own(world: World, collection):
    ada_id, bob_id = world.ids["ada"]["customer_id"], world.ids["bob"]["customer_id"]
    mine = world.ada.get(collection).json()
    assert mine and {item["customer_id"] for item in mine} == {ada_id}
    if collection == "/devices":
        assert {d["id"] for d in mine} == {"ada-printer", "ada-pendant"}
    assert world.ada.get(collection, params={"customer_id": bob_id}).status_code == 404
    everyone = world.operator.get(collection).json()
    assert {item["customer_id"] for item in everyone} >= {ada_id, bob_id}


def test_a_customer_cannot_register_a_device_for_another_customer(world: World):
    bob_id = world.ids["bob"]["customer_id"]
    answer = world.ada.post(
        "/devices", json={"id": "sneaky-1", "customer_id": bob_id, "kind": "printer", "name": "x", "slots": []}
    )
    assert answer.status_code == 422 and answer.json()["field"] == "customer_id"
    assert world.operator.get("/devices/sneaky-1").status_code == 404
    own = world.ada.post("/devices", json={"id": "ada-spare", "kind": "printer", "name": "spare", "slots": []})
    assert own.status_code == 201 and own.json()["customer_id"] == world.ids["ada"]["customer_id"]


@pytest.mark.parametrize(("method", "path"), sorted(OPERATOR_ONLY))
def test_operator_routes_answer_403_to_a_customer(world: World, method, path):
    path = path.removeprefix("/api/v1").format(
        order_id=world.ids["ada"]["order_id"], dead_letter_id=1, sku="INK-OPERATORS"
    )
    body = {"status": "confirmed"} if path.endswith("/fulfilment") else None
    assert world.ada.request(method, path, json=body).status_code == 403
    assert world.operator.get("/catalogue/products/INK-OPERATORS").status_code == 404, "nothing written"
    # The operator gets past the role check (confirming an order still awaiting approval is a 409; there is no
    # dead letter 1; no product, no catalogue file: a 422).
    assert world.operator.request(method, path, json=body).status_code in (200, 404, 409, 422)


def test_a_signed_in_customer_cannot_create_customers(world: World):
    answer = world.ada.post("/customers", json={"name": "C", "email": "c@example.com", "password": PASSWORD})
    assert answer.status_code == 403


def test_every_route_is_covered_and_none_answers_without_a_token(world: World):
    schema = world.operator.get(f"{world.platform.api_url}/openapi.json").json()
    routes = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    # Liveness and readiness probes and the metrics answer anyone; they tell nothing about anyone (counts only).
    assert {path for _, path in routes if not path.startswith("/api/v1/")} == {"/healthz", "/readyz"}
    routes = {(method, path) for method, path in routes if path.startswith("/api/v1/")}
    with_objects = {(m, f"/api/v1{t}") for m, t, _ in OBJECT_ROUTES}
    named = {r for r in routes if "{" in r[1]} - OPERATOR_ONLY - LINK_ROUTES - SIGNED_ROUTES - SHARED_ROUTES
    assert named == with_objects, "a route naming an object is untested"
    assert routes >= LINK_ROUTES | SIGNED_ROUTES
    anonymous = api_client(world.platform, None)
    for method, path in sorted(routes - PUBLIC_ROUTES - LINK_ROUTES - SIGNED_ROUTES):
        concrete = _fill(path.removeprefix("/api/v1"), "ada", world)
        answer = anonymous.request(method, concrete)
        assert answer.status_code == 401, f"{method} {path} answered {answer.status_code} without a token"
        assert answer.headers["www-authenticate"] == "Bearer"


def test_the_audit_log_records_sign_ins_tokens_consent_decisions_and_orders(platform, api, publisher, clock):
    customer_id = create_customer(api, email="ada@example.com", mode="auto_order")
    register_device(api, customer_id=customer_id, device_id="printer-1")
    failed = httpx.post(
        f"{platform.api_url}/api/v1/auth/token", data={"username": "ada@example.com", "password": "not my password"}
    )
    assert failed.status_code == 401
    ada = customer_api(platform, "ada@example.com")  # signs in, creates a personal token
    assert (
        ada.put(
            f"/customers/{customer_id}/consent", json={"default_mode": "auto_order", "timezone": "Europe/Berlin"}
        ).status_code
        == 200
    )
    sent = publish_depletion(
        publisher, device_id="printer-1", slot="black", start=START, start_level=0.5, rate_per_day=0.05, days=8
    )
    assert platform.ingestor.wait_for(handled=sent, timeout=20)
    clock.set(START + timedelta(days=8))
    platform.jobs.evaluate()
    [order] = ada.get("/orders").json()
    ada.post(f"/orders/{order['id']}/cancel", json={"reason": "bought some"})

    events = list(reversed(ada.get("/audit").json()))  # oldest first
    assert [e["action"] for e in events] == [
        "consent.changed",
        "auth.account_created",
        "device.registered",
        "auth.sign_in_failed",
        "auth.sign_in",
        "auth.token_created",
        "consent.changed",
        "automation.decision",
        "order.status_changed",
        "order.status_changed",
    ]
    by_action = {e["action"]: e for e in events}
    assert by_action["auth.sign_in_failed"]["customer_id"] == customer_id, "failed attempts on my account are mine"
    consent_change = events[6]
    assert consent_change["actor"] == "customer:ada@example.com"
    assert consent_change["detail"] == {"version": 2, "changed": ["timezone"]}
    assert by_action["automation.decision"]["detail"]["consent_version"] == 2
    assert [e["detail"]["to"] for e in events if e["action"] == "order.status_changed"] == ["placed", "cancelled"]
    assert events[-1]["detail"]["reason"] == "bought some"
    assert (
        ada.get("/audit", params={"action": "auth.sign_in"}).json()[0]["subject_id"]
        == ada.get("/auth/me").json()["account_id"]
    )

    # An unknown e-mail's failed sign-in is the operators' to see, nobody else's.
    httpx.post(f"{platform.api_url}/api/v1/auth/token", data={"username": "mallory@example.com", "password": "x"})
    assert [e["actor"] for e in api.get("/audit", params={"action": "auth.sign_in_failed"}).json()] == [
        "anonymous:mallory@example.com",
        "anonymous:ada@example.com",
    ]
    assert len(ada.get("/audit", params={"action": "auth.sign_in_failed"}).json()) == 1


def test_changing_the_password_ends_every_session_and_token(platform, api):
    create_customer(api, email="ada@example.com")
    script = api_client(platform, personal_token(platform, "ada@example.com"))
    ada = api_client(platform, sign_in(platform, "ada@example.com"))
    refused = ada.post("/auth/password", json={"current_password": "guess guess guess", "new_password": "x" * 12})
    assert refused.status_code == 403 and script.get("/auth/me").status_code == 200
    changed = ada.post("/auth/password", json={"current_password": PASSWORD, "new_password": "a new long password"})
    assert changed.status_code == 200
    assert ada.get("/auth/me").status_code == 401 and script.get("/auth/me").status_code == 401
    assert api_client(platform, changed.json()["access_token"]).get("/auth/me").status_code == 200
    assert sign_in(platform, "ada@example.com", "a new long password")
    old = httpx.post(
        f"{platform.api_url}/api/v1/auth/token", data={"username": "ada@example.com", "password": PASSWORD}
    )
    assert old.status_code == 401


def test_sign_in_pauses_after_ten_failures_for_an_email(platform, api, clock):
    create_customer(api, email="ada@example.com")

    def attempt(password: str, email: str = "ada@example.com") -> httpx.Response:
        return httpx.post(f"{platform.api_url}/api/v1/auth/token", data={"username": email, "password": password})

    assert [attempt(f"guess number {n}").status_code for n in range(10)] == [401] * 10
    paused = attempt(PASSWORD)
    assert paused.status_code == 429 and paused.headers["retry-after"] == "900", "even the right password waits"
    assert attempt(PASSWORD, "ADA@example.com").status_code == 429, "the same account, however it is spelt"
    create_customer(api, email="bob@example.com")
    assert attempt(PASSWORD, "bob@example.com").status_code == 200, "other accounts are not affected"
    clock.advance(timedelta(minutes=15))
    assert attempt(PASSWORD).status_code == 200
    assert attempt("x" * 100_000).status_code == 401, "a huge password is refused without hashing it"


def test_only_an_operator_sets_prices(platform, api):
    customer_id = create_customer(api, email="ada@example.com")
    ada = customer_api(platform, "ada@example.com")
    slots = [{"name": "black", "product_sku": "INK", "unit_price": "0.00"}]
    priced = ada.post("/devices", json={"id": "p-1", "kind": "printer", "name": "P", "slots": slots})
    assert priced.status_code == 403
    assert (
        ada.post(
            "/devices", json={"id": "p-1", "kind": "printer", "name": "P", "slots": [slots[0] | {"unit_price": None}]}
        ).status_code
        == 201
    )
    assert ada.patch("/devices/p-1/slots/black", json={"unit_price": "0.01"}).status_code == 403
    assert ada.patch("/devices/p-1/slots/black", json={"order_quantity": 2}).status_code == 200
    assert (
        api.patch("/devices/p-1/slots/black", json={"unit_price": "24.90"}).json()["slots"][0]["unit_price"] == "24.90"
    )
    assert customer_id


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/auth/tokens", lambda password: {"name": "script", "password": password}),
        ("/auth/password", lambda password: {"current_password": password, "new_password": "another good password"}),
    ],
    ids=["personal-token", "new-password"],
)
def test_asking_the_password_again_shares_the_sign_ins_limit_and_audit(platform, api, path, body):
    from replenish.constants import MAX_FAILED_SIGN_INS

    create_customer(api, email="ada@example.com")
    stolen = api_client(platform, sign_in(platform, "ada@example.com"))  # a token someone else holds
    for _ in range(MAX_FAILED_SIGN_INS):
        wrong = stolen.post(path, json=body("a guess at it"))
        assert wrong.status_code == 403 and wrong.json()["field"] == "password"
    right = stolen.post(path, json=body(PASSWORD))
    assert right.status_code == 429, "even the right password waits out the window"
    assert int(right.headers["retry-after"]) > 0
    failed = api.get("/audit", params={"action": "auth.sign_in_failed"}).json()
    assert len(failed) == MAX_FAILED_SIGN_INS
    # The sign-in itself counts the same failures.
    refused = httpx.post(
        f"{platform.api_url}/api/v1/auth/token", data={"username": "ada@example.com", "password": PASSWORD}
    )
    assert refused.status_code == 429

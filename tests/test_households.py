"""Households: an owner invites a member and a carer by e-mail; each sees and does what their role allows, through
the real API and pages of a running platform; refusals are 403s naming the role, change nothing and are audited."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from replenish.auth.models import Account
from replenish.clock import ManualClock
from replenish.runtime import Platform
from support import wait_until
from support.api import (
    OPERATOR_EMAIL,
    PASSWORD,
    api_client,
    create_customer,
    customer_api,
    iso,
    operator_token,
    register_device,
    sign_in,
)
from support.mqtt import Publisher, publish_depletion
from support.platform import START, make_settings, running_platform
from support.servers import Mailbox


def invitation_link(platform: Platform, mailbox: Mailbox, address: str) -> str:
    """Deliver what the outbox holds; the invitation token in the newest e-mail to ``address``."""
    platform.jobs.dispatch()
    assert wait_until(lambda: len(mailbox.to(address)) >= 1)
    body = mailbox.to(address)[-1].get_content()
    found = re.search(r"http\S+/app/invitations/(\S+)", body)
    assert found, body
    return found.group(1)


@dataclass
class Household:
    platform: Platform
    clock: ManualClock
    mailbox: Mailbox
    operator: httpx.Client
    owner: httpx.Client
    member: httpx.Client
    carer: httpx.Client
    ids: dict[str, str]

    def audit(self, action: str) -> list[dict[str, Any]]:
        return self.operator.get("/audit", params={"action": action, "customer_id": self.ids["customer_id"]}).json()


def _join(world_platform: Platform, mailbox: Mailbox, owner: httpx.Client, body: dict[str, Any]) -> httpx.Client:
    invited = owner.post("/household/invitations", json=body)
    assert invited.status_code == 201, invited.text
    token = invitation_link(world_platform, mailbox, body["email"])
    anonymous = api_client(world_platform, None)
    joined = anonymous.post(f"/invitations/{token}", json={"name": body["email"].split("@")[0], "password": PASSWORD})
    assert joined.status_code == 201, joined.text
    assert joined.json()["household_role"] == body["role"]
    again = anonymous.post(f"/invitations/{token}", json={"name": "Eve", "password": "eve's own password"})
    assert again.status_code == 404, "an invitation's link works once"
    return customer_api(world_platform, body["email"])


@pytest.fixture(scope="module")
def household(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Household]:
    """Ada's household: a printer whose black ink (30.00 a pack) waits for approval, and her pendant with an open fall
    incident; Mia is a member (limit 20.00), Carl a carer the pendant is shared with."""
    clock = ManualClock(START)
    mailbox = Mailbox()
    settings = make_settings(
        tmp_path_factory.mktemp("household"),
        smtp_host="127.0.0.1",
        smtp_port=mailbox.port,
        smtp_sender="hello@example.com",
    )
    with running_platform(settings, clock) as platform:
        publisher = Publisher(platform.settings.mqtt_endpoint)
        try:
            operator = api_client(platform, operator_token(platform))
            product = {
                "name": "Black ink",
                "pack_size": 1,
                "unit": "fraction",
                "price": "30.00",
                "currency": "EUR",
                "device_kinds": ["printer"],
            }
            assert operator.put("/catalogue/products/INK-BLACK", json=product).status_code == 201
            customer_id = create_customer(operator, email="ada@example.com", mode="ask_first")
            register_device(operator, customer_id=customer_id, device_id="ada-printer")
            register_device(operator, customer_id=customer_id, device_id="ada-pendant", kind="wearable", slots=[])
            sent = publish_depletion(
                publisher,
                device_id="ada-printer",
                slot="black",
                start=START,
                start_level=0.5,
                rate_per_day=0.05,
                days=8,
            )
            publisher.send("devices/ada-pendant/events", {"seq": 1, "ts": iso(START), "type": "fall_detected"})
            assert platform.ingestor.wait_for(handled=sent + 1, timeout=20)
            clock.set(START + timedelta(days=8))
            platform.jobs.evaluate()
            owner = customer_api(platform, "ada@example.com")
            [order] = owner.get("/orders").json()
            assert order["status"] == "awaiting_approval" and order["total_price"] == "30.00"
            [alert] = owner.get("/alerts").json()
            member = _join(
                platform, mailbox, owner, {"email": "mia@example.com", "role": "member", "approval_limit": "20.00"}
            )
            carer = _join(
                platform, mailbox, owner, {"email": "carl@example.com", "role": "carer", "device_ids": ["ada-pendant"]}
            )
            ids = {"customer_id": customer_id, "order_id": order["id"], "alert_id": alert["id"]}
            ids |= {m["email"]: m["account_id"] for m in owner.get("/household/members").json()}
            yield Household(platform, clock, mailbox, operator, owner, member, carer, ids)
        finally:
            publisher.close()
            mailbox.close()


def test_each_role_sees_its_own_devices(household: Household):
    assert {d["id"] for d in household.owner.get("/devices").json()} == {"ada-printer", "ada-pendant"}
    assert {d["id"] for d in household.member.get("/devices").json()} == {"ada-printer"}
    assert {d["id"] for d in household.carer.get("/devices").json()} == {"ada-pendant"}
    # What is not theirs to see answers as a missing thing does.
    assert household.carer.get("/devices/ada-printer").status_code == 404
    assert household.carer.get(f"/orders/{household.ids['order_id']}").status_code == 404
    assert household.carer.get("/orders").json() == []
    assert household.member.get("/devices/ada-pendant").status_code == 404
    assert household.member.get(f"/alerts/{household.ids['alert_id']}").status_code == 404
    assert household.member.get("/alerts").json() == []
    assert [a["id"] for a in household.carer.get("/alerts").json()] == [household.ids["alert_id"]]
    me = household.carer.get("/auth/me").json()
    assert me["household_role"] == "carer" and me["device_ids"] == ["ada-pendant"]


@pytest.mark.parametrize(
    ("who", "method", "path", "body"),
    [
        ("member", "PUT", "/customers/{customer_id}/consent", {"default_mode": "auto_order"}),
        ("member", "GET", "/customers/{customer_id}/consent", None),
        ("member", "GET", "/customers/{customer_id}/export", None),
        ("member", "DELETE", "/customers/{customer_id}", {"confirm": "ada@example.com", "password": PASSWORD}),
        ("member", "PATCH", "/devices/ada-printer/slots/black", {"service_level": 0.9}),
        ("member", "POST", "/devices/ada-printer/credentials", None),
        ("member", "POST", "/devices", {"id": "mia-printer", "kind": "printer", "name": "x", "slots": []}),
        ("member", "GET", "/notifications", None),
        ("member", "GET", "/audit", None),
        ("member", "GET", "/household/members", None),
        (
            "member",
            "POST",
            "/household/invitations",
            {"email": "eve@example.com", "role": "member", "approval_limit": 1},
        ),
        ("carer", "GET", "/customers/{customer_id}/consent", None),
        ("carer", "GET", "/customers/{customer_id}/consent/versions", None),
        ("carer", "GET", "/push/subscriptions", None),
        ("carer", "PATCH", "/household/members/{carer_account}", {"approval_limit": "1000"}),
    ],
)
def test_an_act_beyond_the_role_is_a_403_naming_it_that_changes_nothing_and_is_audited(
    household: Household, who: str, method: str, path: str, body: dict[str, Any] | None
):
    client = household.member if who == "member" else household.carer
    before = _state(household)
    refused_before = len(household.audit("auth.access_denied"))
    concrete = path.format(**household.ids, carer_account=household.ids["carl@example.com"])
    answer = client.request(method, concrete, json=body)
    assert answer.status_code == 403, answer.text
    assert answer.json()["role"] == who and f"a {who} may not" in answer.json()["detail"]
    assert _state(household) == before
    refusals = household.audit("auth.access_denied")
    assert len(refusals) == refused_before + 1
    assert refusals[0]["actor"] == f"{who}:{'mia' if who == 'member' else 'carl'}@example.com"
    assert refusals[0]["detail"]["request"] == f"{method} /api/v1{concrete}"


def _state(household: Household) -> dict[str, Any]:
    operator, customer_id = household.operator, household.ids["customer_id"]
    return {
        "consent": operator.get(f"/customers/{customer_id}/consent/versions").json(),
        "devices": operator.get("/devices", params={"customer_id": customer_id}).json(),
        "members": operator.get("/household/members", params={"customer_id": customer_id}).json(),
        "invitations": len(operator.get("/household/invitations", params={"customer_id": customer_id}).json()),
        "order": operator.get(f"/orders/{household.ids['order_id']}").json()["status"],
        "customer": operator.get(f"/customers/{customer_id}").status_code,
    }


def test_a_member_approves_within_their_limit_and_is_refused_above_it(household: Household):
    order_id = household.ids["order_id"]
    over = household.member.post(f"/orders/{order_id}/approve")
    assert over.status_code == 403, over.text
    assert "30.00 is over your limit of 20.00" in over.json()["detail"] and over.json()["role"] == "member"
    assert household.owner.get(f"/orders/{order_id}").json()["status"] == "awaiting_approval"
    # The owner raises the limit: it holds from the member's next request.
    raised = household.owner.patch(
        f"/household/members/{household.ids['mia@example.com']}", json={"approval_limit": 40}
    )
    assert raised.status_code == 200 and raised.json()["approval_limit"] == "40.00"
    approved = household.member.post(f"/orders/{order_id}/approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "placed"
    assert approved.json()["history"][-1]["actor"] == "member:mia@example.com"


def test_the_carer_acknowledges_the_wearers_incident(household: Household):
    alert_id = household.ids["alert_id"]
    acknowledged = household.carer.post(f"/alerts/{alert_id}/acknowledge")
    assert acknowledged.status_code == 200, acknowledged.text
    assert acknowledged.json()["acknowledged_by"] == "carer:carl@example.com"
    assert household.carer.get(f"/alerts/{alert_id}").json()["status"] == "acknowledged"


def test_sharing_a_wearable_with_a_member_takes_effect_at_their_next_request(household: Household):
    mia = household.ids["mia@example.com"]
    shared = household.owner.patch(f"/household/members/{mia}", json={"device_ids": ["ada-pendant"]})
    assert shared.status_code == 200 and shared.json()["device_ids"] == ["ada-pendant"]
    assert {d["id"] for d in household.member.get("/devices").json()} == {"ada-printer", "ada-pendant"}
    assert household.member.get(f"/alerts/{household.ids['alert_id']}").status_code == 200
    assert household.owner.patch(f"/household/members/{mia}", json={"device_ids": []}).status_code == 200
    assert household.member.get(f"/alerts/{household.ids['alert_id']}").status_code == 404
    # Bad input: a device of nobody's household, the owner changed here.
    foreign = household.owner.patch(f"/household/members/{mia}", json={"device_ids": ["bob-printer"]})
    assert foreign.status_code == 422 and foreign.json()["field"] == "device_ids"
    owner_id = household.ids["ada@example.com"]
    assert household.owner.patch(f"/household/members/{owner_id}", json={"approval_limit": 1}).status_code == 409
    assert household.owner.delete(f"/household/members/{owner_id}").status_code == 409


def test_a_forged_used_or_expired_invitation_creates_nothing(household: Household):
    anonymous = api_client(household.platform, None)
    accounts_before = _accounts(household)
    forged = anonymous.post("/invitations/not-a-real-token", json={"name": "Eve", "password": PASSWORD})
    assert forged.status_code == 404
    page = httpx.get(f"{household.platform.api_url}/app/invitations/not-a-real-token")
    assert page.status_code == 404 and "does not work" in page.text and "<form" not in page.text
    invited = household.owner.post(
        "/household/invitations", json={"email": "late@example.com", "role": "member", "approval_limit": 5}
    )
    assert invited.status_code == 201
    token = invitation_link(household.platform, household.mailbox, "late@example.com")
    shown = httpx.get(f"{household.platform.api_url}/app/invitations/{token}")
    assert shown.status_code == 200 and "Ada invites you to their household as a member" in shown.text
    assert anonymous.get(f"/invitations/{token}").json()["role"] == "member"
    household.clock.advance(timedelta(days=8))
    try:
        expired = anonymous.post(f"/invitations/{token}", json={"name": "Late", "password": PASSWORD})
        assert expired.status_code == 410 and "expired" in expired.json()["detail"]
        page = httpx.post(
            f"{household.platform.api_url}/app/invitations/{token}", data={"name": "Late", "password": PASSWORD}
        )
        assert page.status_code == 410 and "expired" in page.text
    finally:
        household.clock.advance(timedelta(days=-8))
    assert _accounts(household) == accounts_before
    # A carer must be shared a device; a member needs a limit: 422s naming the field.
    no_device = household.owner.post("/household/invitations", json={"email": "x@example.com", "role": "carer"})
    assert no_device.status_code == 422 and no_device.json()["detail"][0]["loc"] == ["body", "device_ids"]
    no_limit = household.owner.post("/household/invitations", json={"email": "x@example.com", "role": "member"})
    assert no_limit.status_code == 422 and no_limit.json()["detail"][0]["loc"] == ["body", "approval_limit"]


def _accounts(household: Household) -> list[str]:
    with Session(household.platform.engine) as session:
        return sorted(session.exec(select(Account.email)))


def test_the_pages_show_each_role_what_it_may_do(household: Household):
    base = household.platform.api_url

    def page(email: str) -> httpx.Client:
        client = httpx.Client(base_url=base, headers={"Origin": base})
        signed = client.post("/app/sign-in", data={"email": email, "password": PASSWORD})
        assert signed.status_code in (200, 303), signed.text
        return client

    carl, mia, ada = page("carl@example.com"), page("mia@example.com"), page("ada@example.com")
    home = carl.get("/app").text
    assert "ada-pendant" in home and "ada-printer" not in home and 'href="/app/orders"' not in home
    assert 'href="/app/consent"' not in home and "(carer)" in home
    assert carl.get("/app/consent").status_code == 403
    supplies = mia.get("/app")
    assert 'href="/app/consent"' not in supplies.text and "ada-printer" in supplies.text
    assert mia.get("/app/consent").status_code == 403
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', supplies.text)
    assert csrf
    refused = mia.post("/app/consent/modes", data={"csrf_token": csrf.group(1), "version": "1", "default_mode": "off"})
    assert refused.status_code == 403 and "a member may not change the consent" in refused.text
    assert mia.get("/app/household").status_code == 403 and mia.get("/app/data").status_code == 403
    people = ada.get("/app/household")
    assert people.status_code == 200 and "mia@example.com" in people.text and "carl@example.com" in people.text


def test_removing_a_member_ends_their_sessions_at_once_and_deletion_covers_the_household(tmp_path, clock, mailbox):
    settings = make_settings(tmp_path, smtp_host="127.0.0.1", smtp_port=mailbox.port, smtp_sender="hello@example.com")
    with running_platform(settings, clock) as platform:
        operator = api_client(platform, operator_token(platform))
        customer_id = create_customer(operator, email="ada@example.com")
        register_device(operator, customer_id=customer_id, device_id="ada-pendant", kind="wearable", slots=[])
        owner = customer_api(platform, "ada@example.com")
        carer = _join(
            platform, mailbox, owner, {"email": "carl@example.com", "role": "carer", "device_ids": ["ada-pendant"]}
        )
        signed_in = api_client(platform, sign_in(platform, "carl@example.com"))
        assert signed_in.get("/devices").status_code == 200
        member = _join(platform, mailbox, owner, {"email": "mia@example.com", "role": "member", "approval_limit": 0})
        members = {m["email"]: m for m in owner.get("/household/members").json()}
        assert [m["role"] for m in members.values()] == ["owner", "carer", "member"]

        export = owner.get(f"/customers/{customer_id}/export").json()
        assert {a["email"] for a in export["accounts"]} == {"ada@example.com", "carl@example.com", "mia@example.com"}
        assert {i["email"] for i in export["invitations"]} == {"carl@example.com", "mia@example.com"}
        assert all("token_hash" not in i for i in export["invitations"])
        assert export["device_shares"] == [
            {
                "account_id": members["carl@example.com"]["account_id"],
                "device_id": "ada-pendant",
                "created_at": export["device_shares"][0]["created_at"],
            }
        ]

        assert owner.delete(f"/household/members/{members['carl@example.com']['account_id']}").status_code == 204
        for client in (carer, signed_in):  # a personal token and a sign-in alike
            assert client.get("/devices").status_code == 401
        gone = httpx.post(
            f"{platform.api_url}/api/v1/auth/token", data={"username": "carl@example.com", "password": PASSWORD}
        )
        assert gone.status_code == 401
        [removed] = operator.get("/audit", params={"action": "household.member_removed"}).json()
        assert removed["actor"] == "customer:ada@example.com" and removed["detail"] == {"role": "carer"}

        # An address the owner typed may be anyone's, an operator's too: their records elsewhere keep their name.
        lure = {"email": OPERATOR_EMAIL, "role": "member", "approval_limit": 0}
        assert owner.post("/household/invitations", json=lure).status_code == 201
        deleted = owner.request(
            "DELETE", f"/customers/{customer_id}", json={"confirm": "ada@example.com", "password": PASSWORD}
        )
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["accounts"] == 2 and deleted.json()["invitations"] == 3
        assert member.get("/auth/me").status_code == 401
        audit = operator.get("/audit", params={"limit": 1000}).json()
        # What was about the household names nobody now; a sign-in attempt for an address with no account (Carl's,
        # once removed) was about no household, and stays the operators' (customer_id null).
        named = [e for e in audit if "@example.com" in e["actor"] and not e["actor"].startswith("operator:")]
        assert [(e["actor"], e["customer_id"]) for e in named] == [("anonymous:carl@example.com", None)]
        assert any(event["actor"] == f"operator:{OPERATOR_EMAIL}" for event in audit)


def test_invitations_are_limited_per_address_and_unanswered_ones_are_forgotten(household: Household):
    for _ in range(3):
        invited = household.owner.post(
            "/household/invitations", json={"email": "spam@example.com", "role": "member", "approval_limit": 1}
        )
        assert invited.status_code == 201, invited.text
    fourth = household.owner.post(
        "/household/invitations", json={"email": "spam@example.com", "role": "member", "approval_limit": 1}
    )
    assert fourth.status_code == 429 and fourth.headers["retry-after"] == "3600"
    mine = [i for i in household.owner.get("/household/invitations").json() if i["email"] == "spam@example.com"]
    assert sum(i["revoked_at"] is None for i in mine) == 1, "each new one replaced the one waiting"
    household.platform.jobs.dispatch()
    household.clock.advance(timedelta(days=8))
    try:
        household.platform.jobs.retention()
    finally:
        household.clock.advance(timedelta(days=-8))
    left = [i["email"] for i in household.owner.get("/household/invitations").json()]
    assert "spam@example.com" not in left and "mia@example.com" in left, "accepted invitations stay"

"""The HTTP API as customers and operators use it: accounts, tokens, customers, devices and consent."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
from sqlmodel import select

from replenish.auth import service as auth
from replenish.auth.models import Account
from replenish.constants import AccountRole
from replenish.db import transaction
from replenish.runtime import Platform
from replenish.tls import client_tls
from support.mqtt import DEVICE_SECRETS

INK_SLOTS = [
    {"name": name, "unit": "fraction", "capacity": 1.0, "product_sku": f"INK-{name.upper()}", "lead_time_days": 3}
    for name in ("black", "cyan", "magenta", "yellow")
]

# Every test customer signs in with this password.
PASSWORD = "correct horse battery"
OPERATOR_EMAIL = "operator@example.com"


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def sign_in(platform: Platform, email: str, password: str = PASSWORD) -> str:
    """A bearer token through the real sign-in route."""
    with httpx.Client(verify=client_tls(), timeout=10) as client:
        response = client.post(f"{platform.api_url}/api/v1/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def personal_token(platform: Platform, email: str, password: str = PASSWORD) -> str:
    """Sign in, then create a personal API token: unlike the sign-in token, it outlives days of simulated time."""
    with api_client(platform, sign_in(platform, email, password)) as api:
        response = api.post("/auth/tokens", json={"name": "tests", "password": password})
        assert response.status_code == 201, response.text
        return str(response.json()["token"])


def operator_token(platform: Platform, email: str = OPERATOR_EMAIL) -> str:
    """Operators are created from the command line in production; here through the same service."""
    with transaction(platform.engine) as session:
        if session.exec(select(Account).where(Account.email == email)).first() is None:
            auth.create_account(
                session=session,
                email=email,
                password=PASSWORD,
                role=AccountRole.OPERATOR,
                customer_id=None,
                now=platform.clock.now(),
            )
    return personal_token(platform, email)


def api_client(platform: Platform, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"{platform.api_url}/api/v1", timeout=10, headers=headers, verify=client_tls())


def customer_api(platform: Platform, email: str) -> httpx.Client:
    """The API as the customer with this e-mail (created with create_customer)."""
    return api_client(platform, personal_token(platform, email))


def create_customer(api: httpx.Client, *, email: str = "ada@example.com", mode: str = "ask_first") -> str:
    response = api.post(
        "/customers",
        json={"name": "Ada", "email": email, "password": PASSWORD, "consent": {"default_mode": mode}},
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def register_device(
    api: httpx.Client,
    *,
    customer_id: str,
    device_id: str,
    kind: str = "printer",
    slots: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    response = api.post(
        "/devices",
        json={
            "id": device_id,
            "customer_id": customer_id,
            "kind": kind,
            "name": f"{kind} {device_id}",
            "slots": INK_SLOTS if slots is None else slots,
        },
    )
    assert response.status_code == 201, response.text
    DEVICE_SECRETS[device_id] = response.json()["credentials"]["mqtt_password"]
    return response.json()


def set_consent(api: httpx.Client, customer_id: str, document: dict[str, Any]) -> dict[str, Any]:
    response = api.put(f"/customers/{customer_id}/consent", json=document)
    assert response.status_code == 200, response.text
    return response.json()


def dead_letters_with_payloads(api: httpx.Client, *, topic: str | None = None, **params: Any) -> list[dict[str, Any]]:
    """The dead letters as GET /dead-letters lists them (no payloads; only those on ``topic`` if given), each with
    its payload from GET /dead-letters/{id}."""
    response = api.get("/dead-letters", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    listed = [letter for letter in response.json() if topic is None or letter["topic"] == topic]
    return [api.get(f"/dead-letters/{letter['id']}").json() for letter in listed]

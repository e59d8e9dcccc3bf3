"""The small holes the security probe found (issue 17, 5): each closed, through the real app and command line."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import httpx

from replenish.errors import ErrorBody, UnprocessableBody
from replenish.runtime import Platform
from support.api import create_customer, register_device


def test_a_huge_offset_is_a_clear_422_not_a_500(api: httpx.Client):
    for path in ("/orders", "/alerts", "/notifications", "/devices", "/audit", "/alarms"):
        answer = api.get(path, params={"offset": 2**63})
        assert answer.status_code == 422, (path, answer.status_code)
        assert answer.json()["detail"][0]["loc"] == ["query", "offset"]
    assert api.get("/orders", params={"offset": 1_000_000}).status_code == 200


def test_every_answer_says_nosniff(platform: Platform, api: httpx.Client):
    for response in (
        api.get("/orders"),
        httpx.get(f"{platform.api_url}/healthz"),
        httpx.get(f"{platform.api_url}/app/sign-in"),
        httpx.get(f"{platform.api_url}/answer/nothing"),
        api.get("/orders/nothing"),
    ):
        assert response.headers["x-content-type-options"] == "nosniff", response.url


def test_the_web_pages_and_only_they_carry_the_page_headers(platform: Platform, api: httpx.Client):
    pages = (
        httpx.get(f"{platform.api_url}/app/sign-in"),
        httpx.get(f"{platform.api_url}/app/no-such-page", follow_redirects=False),
        httpx.get(f"{platform.api_url}/answer/nothing"),
    )
    for page in pages:
        assert page.headers["cache-control"] == "no-store", page.url
        assert page.headers["x-frame-options"] == "DENY", page.url
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"], page.url
        assert page.headers["referrer-policy"] == "same-origin", page.url
    for other in (api.get("/orders"), httpx.get(f"{platform.api_url}/app/static/app.css")):
        assert other.status_code == 200, other.url
        assert "x-frame-options" not in other.headers and "content-security-policy" not in other.headers, other.url


def test_the_api_docs_load_nothing_from_elsewhere(platform: Platform):
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{platform.api_url}{page}").text
        assert "cdn" not in html.lower() and "https://" not in html.replace("https://fonts", "")
        assets = [part.split('"')[0] for part in html.split('src="')[1:]] + [
            part.split('"')[0] for part in html.split('href="')[1:] if "static-offline-docs" in part
        ]
        assert assets and all(asset.startswith("/static-offline-docs/") for asset in assets), assets
        for asset in assets:
            assert httpx.get(f"{platform.api_url}{asset}").status_code == 200, asset


def test_the_sqlite_database_is_the_owners_alone(tmp_path: Path):
    from replenish.db import make_engine

    database = tmp_path / "fresh" / "replenish.db"
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE(database.parent.stat().st_mode) == 0o700


def test_an_operator_needs_an_address_sign_up_would_take(tmp_path: Path):
    replenish = str(Path(sys.executable).parent / "replenish")
    env = {
        "REPLENISH_DATABASE_URL": f"sqlite:///{tmp_path / 'ops.db'}",
        "REPLENISH_NEW_OPERATOR_PASSWORD": "correct horse battery",
        "PATH": "/usr/bin:/bin",
    }
    for address in ("not an address", "ops@", "ops@localhost"):
        done = subprocess.run(
            [replenish, "accounts", "create-operator", "--email", address], env=env, capture_output=True, text=True
        )
        assert done.returncode == 2 and "is not an e-mail address" in done.stderr, (address, done.stderr)


def test_a_time_in_a_query_is_iso_8601_with_its_offset_never_a_number(api: httpx.Client):
    customer = create_customer(api)
    register_device(api, customer_id=customer, device_id="ada-printer")
    readings = "/devices/ada-printer/slots/black/readings"
    for since in ("0.5", "1764000000", "2026-11-24T10:00:00"):  # epoch seconds once; no offset
        answer = api.get(readings, params={"since": since})
        assert answer.status_code == 422, (since, answer.text)
        assert answer.json()["detail"][0]["loc"] == ["query", "since"]
    assert api.get(readings, params={"since": "2026-11-24T10:00:00Z"}).status_code == 200
    assert api.get(readings, params={"before": "2026-11-24T10:00:00+01:00"}).status_code == 200


def test_every_error_body_fits_the_schema_the_api_declares(platform: Platform, api: httpx.Client):
    schema = httpx.get(f"{platform.api_url}/openapi.json").json()
    sign_up = schema["paths"]["/api/v1/customers"]["post"]["responses"]
    assert sign_up["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/UnprocessableBody")
    token = schema["paths"]["/api/v1/auth/token"]["post"]["responses"]
    assert token["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")

    business_rule = httpx.post(
        f"{platform.api_url}/api/v1/customers", json={"name": "Ada", "email": "a@example.com", "password": "0123456789"}
    )
    malformed = api.post("/customers", content=b"{not json", headers={"content-type": "application/json"})
    unreadable = httpx.post(
        f"{platform.api_url}/api/v1/auth/token",
        content=b"\xff\xfe",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert (business_rule.status_code, malformed.status_code, unreadable.status_code) == (422, 422, 400)
    assert UnprocessableBody.model_validate(business_rule.json()).field == "password"
    assert isinstance(UnprocessableBody.model_validate(malformed.json()).detail, list)
    assert ErrorBody.model_validate(unreadable.json()).detail

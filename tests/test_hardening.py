"""The small holes the security probe found (issue 17, 5): each closed, through the real app and command line."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import httpx

from replenish.runtime import Platform


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

"""Web Push to the customer's browsers, through a local push service that does what a real one's browser does:
decrypts each message with the subscription's private key and auth secret (RFC 8291, aes128gcm) and checks the
VAPID signature (RFC 8292) against the platform's public key."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import http_ece
import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from replenish.notifications.push import application_server_key, load_vapid
from replenish.runtime import Platform
from support import wait_until
from support.api import customer_api, set_consent
from support.platform import START, run_low
from support.servers import serve_in_background


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PushService:
    """One browser's subscription at a push service on loopback."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.auth_secret = os.urandom(16)
        self.messages: list[dict[str, Any]] = []
        self.vapid: list[tuple[dict[str, Any], str]] = []  # (JWT claims, the key that signed them)
        self.errors: list[str] = []
        self.answer = 201
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    service.receive({name.lower(): value for name, value in self.headers.items()}, body)
                except Exception as exc:  # what a browser would drop; the test sees it
                    service.errors.append(repr(exc))
                self.send_response(service.answer)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.endpoint = f"{self.origin}/push/subscription-1"
        serve_in_background(self.server)

    @property
    def keys(self) -> dict[str, str]:
        point = self.private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return {"p256dh": b64(point), "auth": b64(self.auth_secret)}

    def receive(self, headers: dict[str, str], body: bytes) -> None:
        assert headers["content-encoding"] == "aes128gcm"
        assert int(headers["ttl"]) > 0
        scheme, _, credentials = headers["authorization"].partition(" ")
        assert scheme == "vapid"
        fields = dict(part.strip().split("=", 1) for part in credentials.split(","))
        self.vapid.append((self.verified_claims(fields["t"], fields["k"]), fields["k"]))
        plain = http_ece.decrypt(body, private_key=self.private_key, auth_secret=self.auth_secret, version="aes128gcm")
        self.messages.append(json.loads(plain))

    @staticmethod
    def verified_claims(token: str, key: str) -> dict[str, Any]:
        header, payload, signature = token.split(".")
        raw = unb64(signature)
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64(key))
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        public.verify(der, f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))  # raises if forged
        assert json.loads(unb64(header))["alg"] == "ES256"
        return json.loads(unb64(payload))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def push_service() -> Iterator[PushService]:
    running = PushService()
    yield running
    running.close()


def test_an_approval_request_reaches_a_subscribed_browser_encrypted_and_signed(
    platform: Platform, api: httpx.Client, clock, push_service: PushService
):
    customer_id, _ = run_low(platform, api, mode="ask_first")
    with customer_api(platform, "ada@example.com") as ada:
        key = ada.get("/push/key").json()["application_server_key"]
        refused = ada.post(
            "/push/subscriptions", json={"endpoint": push_service.endpoint, "keys": {"p256dh": "x", "auth": "y"}}
        )
        assert refused.status_code == 422 and "p256dh" in refused.text
        created = ada.post("/push/subscriptions", json={"endpoint": push_service.endpoint, "keys": push_service.keys})
        assert created.status_code == 201, created.text
        assert [s["endpoint"] for s in ada.get("/push/subscriptions").json()] == [push_service.endpoint]
    set_consent(api, customer_id, {"default_mode": "ask_first", "notification_channels": [{"type": "webpush"}]})
    clock.set(START + timedelta(days=8))
    assert platform.jobs is not None
    platform.jobs.evaluate()
    platform.jobs.dispatch()
    assert wait_until(lambda: len(push_service.messages) == 1), push_service.errors
    [message] = push_service.messages
    [order] = api.get("/orders").json()
    assert message["title"] == "Approve? printer printer-1 black: 1 x INK-BLACK"
    assert "Answer by" in message["body"]
    assert message["url"] == f"{platform.settings.resolved_public_url}/app/orders/{order['id']}"
    assert [action["title"] for action in message["actions"]] == ["Approve", "Decline"]
    assert all("/answer/" in action["url"] for action in message["actions"])
    assert message["tag"] == order["id"]
    claims, signer = push_service.vapid[0]
    assert signer == key, "signed with the key browsers subscribe to"
    assert claims["aud"] == push_service.origin and claims["sub"].startswith("mailto:")
    assert claims["exp"] > time.time()
    # The Approve action opens the confirmation page, which works from there.
    page = httpx.get(message["actions"][0]["url"], timeout=10)
    assert page.status_code == 200 and "Approve this order?" in page.text


def test_a_subscription_the_push_service_says_is_gone_is_forgotten(
    platform: Platform, api: httpx.Client, clock, push_service: PushService
):
    customer_id, _ = run_low(platform, api, mode="ask_first")
    api.post(
        "/push/subscriptions",
        json={"endpoint": push_service.endpoint, "keys": push_service.keys, "customer_id": customer_id},
    ).raise_for_status()
    set_consent(
        api, customer_id, {"default_mode": "ask_first", "notification_channels": [{"type": "webpush"}, {"type": "log"}]}
    )
    push_service.answer = 410  # the browser unsubscribed meanwhile
    clock.set(START + timedelta(days=8))
    assert platform.jobs is not None
    platform.jobs.evaluate()
    platform.jobs.dispatch()
    assert wait_until(lambda: len(push_service.messages) == 1), push_service.errors
    assert api.get("/push/subscriptions").json() == []
    pushed = [n for n in api.get("/notifications").json() if n["channel"] == "webpush"]
    assert len(pushed) == 1 and pushed[0]["sent_at"] is not None, "nobody left to retry for"
    platform.jobs.dispatch()
    assert len(push_service.messages) == 1


def test_processes_that_make_the_vapid_key_at_once_all_use_one(tmp_path: Path) -> None:
    """Two schedulers of one deployment start together and both find no key file: the one that writes second takes
    the first one's key instead of failing to start."""

    class MadeByAnotherMeanwhile(type(Path())):  # PosixPath or WindowsPath, as Path() picks
        def exists(self, **kwargs: Any) -> bool:
            return False  # checked just before the other process linked its key into place

    key_file = tmp_path / "vapid-private.pem"
    first = load_vapid(configured=None, key_file=key_file)
    second = load_vapid(configured=None, key_file=MadeByAnotherMeanwhile(key_file))
    assert application_server_key(second) == application_server_key(first)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["vapid-private.pem"]  # nothing left half-written
    assert key_file.stat().st_mode & 0o777 == 0o600

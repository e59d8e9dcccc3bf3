"""A local fake of the SMS and voice provider's API (Twilio's REST shape), for the telephony tests.

It takes `POST /2010-04-01/Accounts/{sid}/Messages.json` and `.../Calls.json` (form-encoded, HTTP basic auth with
the account SID and auth token), answers 201 with a `sid` as Twilio does, refuses the numbers in ``refuse`` with
Twilio's 400 (code 21211, "not a valid phone number"), and sends signed status callbacks on demand (`receipt`), to
the `StatusCallback` URL the platform gave, signed as Twilio signs them (`X-Twilio-Signature`)."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx

from replenish.notifications.telephony import sign
from support.servers import serve_in_background

ACCOUNT_SID = "AC00000000000000000000000000000000"
AUTH_TOKEN = "fake-auth-token"
SENDER = "+15005550006"


class FakeTwilio:
    def __init__(self, *, refuse: set[str] | None = None) -> None:
        self.refuse = refuse or set()
        self.sent: list[dict[str, str]] = []  # each accepted or refused request's form, with "kind" and "sid"
        self.arrived = threading.Condition()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = {key: values[0] for key, values in parse_qs(self.rfile.read(length).decode()).items()}
                expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    return self._answer(401, {"code": 20003, "message": "Authenticate", "status": 401})
                kind = (
                    "sms"
                    if self.path.endswith("/Messages.json")
                    else "call"
                    if self.path.endswith("/Calls.json")
                    else ""
                )
                if not self.path.startswith(f"/2010-04-01/Accounts/{ACCOUNT_SID}/") or not kind:
                    return self._answer(404, {"code": 20404, "message": "not found", "status": 404})
                sid = ("SM" if kind == "sms" else "CA") + uuid.uuid4().hex
                refused = form.get("To") in fake.refuse
                with fake.arrived:
                    fake.sent.append(form | {"kind": kind, "sid": sid, "refused": str(refused)})
                    fake.arrived.notify_all()
                if refused:
                    message = f"The 'To' number {form.get('To')} is not a valid phone number."
                    return self._answer(400, {"code": 21211, "message": message, "status": 400})
                return self._answer(201, {"sid": sid, "status": "queued"})

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        serve_in_background(self.server)

    def settings(self) -> dict[str, Any]:
        """The platform's settings that point its provider here."""
        return {
            "sms_provider": "twilio",
            "sms_account_sid": ACCOUNT_SID,
            "sms_auth_token": AUTH_TOKEN,
            "sms_from": SENDER,
            "sms_api_url": self.url,
        }

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, str]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.sent) >= count, timeout)
            return list(self.sent)

    def receipt(self, sent: dict[str, str], status: str, *, token: str = AUTH_TOKEN) -> httpx.Response:
        """Post the status callback for ``sent`` (a message's MessageStatus, a call's CallStatus), signed."""
        key = "Message" if sent["kind"] == "sms" else "Call"
        form = {f"{key}Sid": sent["sid"], f"{key}Status": status, "AccountSid": ACCOUNT_SID}
        url = sent["StatusCallback"]
        return httpx.post(url, data=form, headers={"X-Twilio-Signature": sign(token, url, form)}, timeout=10)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""Servers that stand in for the outside world on loopback: a webhook receiver, a mailbox."""

from __future__ import annotations

import email
import email.policy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from support.brokers import free_port

# serve_forever checks for shutdown this often; its default of half a second made every receiver's close, so every
# test with one, half a second longer.
POLL_SECONDS = 0.02


def serve_in_background(server: ThreadingHTTPServer) -> None:
    """Serve on a daemon thread until ``server.shutdown()``, which then returns within POLL_SECONDS."""
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_SECONDS}, daemon=True).start()


class WebhookReceiver:
    """An HTTP receiver on loopback (a fulfilment partner, a contact's webhook) that answers after ``delay`` seconds
    and fails its first ``failures`` requests with a 503. ``requests``: (headers, JSON body, time.monotonic() of
    arrival) of each."""

    def __init__(self, *, failures: int = 0, path: str = "/hook", delay: float = 0.0) -> None:
        self.failures = failures
        self.requests: list[tuple[dict[str, str], dict[str, Any], float]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(delay)  # a slow endpoint answers late
                with receiver.arrived:
                    receiver.requests.append((dict(self.headers), body, time.monotonic()))
                    failing = len(receiver.requests) <= receiver.failures
                    receiver.arrived.notify_all()
                self.send_response(503 if failing else 202)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        serve_in_background(self.server)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The bodies, once at least ``count`` requests arrived (fewer after the timeout)."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= count, timeout)
            return [body for _, body, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """A real SMTP server on loopback (aiosmtpd): every message it accepts, parsed."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[email.message.EmailMessage] = []
        self.port = free_port()
        mailbox = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                mailbox.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def to(self, address: str) -> list[email.message.EmailMessage]:
        return [message for message in self.messages if message["To"] == address]

    def close(self) -> None:
        self.controller.stop()

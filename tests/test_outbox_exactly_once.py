"""Orders leave through the transactional outbox to a fulfilment receiver that fails intermittently, and the dispatcher
is killed (SIGKILL) while the receiver holds one of its requests open: every order arrives, each Idempotency-Key
always as the same order, no order under two keys, and the outbox ends fully delivered (issue 7).

Delivery is at least once: an order whose delivery was under way when the dispatcher died arrives again, under the same
key, once its claim's lease has run out. The receiver's part of exactly-once is dropping a key it has seen."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlmodel import Session, col, func, select

from replenish.automation.models import Decision
from replenish.automation.ordering import LinePlan, Offer
from replenish.config import Settings
from replenish.constants import ConsentMode, DecisionAction, OutboxKind
from replenish.db import make_engine, transaction
from replenish.devices.models import Slot
from replenish.orders import service as orders
from replenish.outbox.models import OutboxMessage
from support.brokers import free_port
from support.platform import polled_engine, register_through_services
from support.servers import serve_in_background
from test_cli import REPLENISH, environment, process

ORDERS = 40
WEBHOOK_TIMEOUT = 1.0
CLAIM_LEASE = 3.0
# What the receiver does with the n-th arrival of a key, by the order's number modulo 6; later arrivals succeed.
PLANS = {
    0: [],
    1: ["fail"],
    2: ["slow"],  # answered after the dispatcher gave up: the receiver has it, the dispatcher retries
    3: ["reset"],
    4: ["fail", "reset"],
    5: ["slow", "fail"],
}
HELD = 13  # the order whose first delivery is held open while the dispatcher is killed


class FlakyReceiver:
    """A fulfilment partner on a real socket: records every request (Idempotency-Key, body) as it arrives, then
    answers as the key's plan says: 500, too late, a connection reset, or 202; one request it holds until released."""

    def __init__(self, plans: dict[str, list[str]], held_key: str) -> None:
        self.arrivals: list[tuple[str, dict[str, Any]]] = []
        self.held = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                key = self.headers["Idempotency-Key"]
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    attempt = sum(1 for seen, _ in receiver.arrivals if seen == key)
                    receiver.arrivals.append((key, body))
                plan = plans.get(key, [])
                action = plan[attempt] if attempt < len(plan) else "ok"
                if key == held_key and attempt == 0:
                    receiver.held.set()
                    receiver.release.wait(30)  # the dispatcher dies meanwhile: sent, never recorded
                    action = "ok"
                if action == "reset":
                    # SO_LINGER 0: close with a RST, not a FIN; the client sees the connection reset.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if action == "slow":
                    time.sleep(WEBHOOK_TIMEOUT + 0.5)
                self.send_response(500 if action == "fail" else 202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # answering a client that is gone (killed, timed out, reset) is expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/orders"
        serve_in_background(self.server)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def queue_orders(database_url: str, count: int) -> list[tuple[str, str]]:
    """Orders placed through the service layer, each the one line of its shipment: each order and its shipment's
    outbox message commit in one transaction. (order id, the hand-off's idempotency key) of each."""
    now = datetime.now(UTC)
    customer_id = register_through_services(database_url, ["printer-1"], mode="auto_order", now=now)
    engine = make_engine(database_url)
    ids = []
    try:
        for number in range(count):
            with transaction(engine) as session:
                slot = session.exec(select(Slot)).one()
                decision = Decision(
                    slot_id=slot.id,
                    device_id=slot.device_id,
                    customer_id=customer_id,
                    cycle_started_at=now - timedelta(days=count - number),  # one decision per depletion cycle
                    action=DecisionAction.PLACE_ORDER,
                    consent_mode=ConsentMode.AUTO_ORDER,
                    consent_version=1,
                    decided_at=now,
                    reason="test",
                    forecast={},
                    policy={},
                )
                session.add(decision)
                shipment = orders.new_shipment(session=session, customer_id=customer_id, now=now)
                order = orders.create(
                    session=session,
                    decision=decision,
                    slot=slot,
                    line=LinePlan(offer=Offer(sku=slot.product_sku), quantity=1, explanation=(), asks=()),
                    shipment=shipment,
                    awaiting_approval=False,
                    now=now,
                    actor="test",
                )
                ids.append((order.id, orders.shipment_key(shipment.id)))
    finally:
        engine.dispose()
    return ids


@pytest.fixture
def receiver_and_orders(
    tmp_path: Path,
) -> Iterator[tuple[FlakyReceiver, list[tuple[str, str]], dict[str, str]]]:
    env = environment(
        tmp_path,
        REPLENISH_MQTT_URL=f"mqtt://127.0.0.1:{free_port()}",  # no broker: no device commands in this test
        REPLENISH_DISPATCH_INTERVAL_SECONDS="0.1",
        REPLENISH_OUTBOX_RETRY_BASE_SECONDS="0.1",
        REPLENISH_WEBHOOK_TIMEOUT_SECONDS=str(WEBHOOK_TIMEOUT),
        REPLENISH_OUTBOX_CLAIM_LEASE_SECONDS=str(CLAIM_LEASE),
    )
    subprocess.run([REPLENISH, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
    database_url = f"sqlite:///{tmp_path / 'replenish.db'}"
    queued = queue_orders(database_url, ORDERS)
    plans = {key: PLANS[number % 6] for number, (_, key) in enumerate(queued)}
    receiver = FlakyReceiver(plans, held_key=queued[HELD][1])
    env["REPLENISH_ORDER_WEBHOOK_URL"] = receiver.url
    env["REPLENISH_DATABASE_URL"] = database_url
    try:
        yield receiver, queued, env
    finally:
        receiver.close()


def undelivered(database_url: str) -> int:
    with Session(polled_engine(database_url)) as session:
        return session.exec(
            select(func.count()).select_from(OutboxMessage).where(col(OutboxMessage.delivered_at).is_(None))
        ).one()


@pytest.mark.slow
def test_every_order_arrives_and_no_key_as_two_orders_through_failures_and_a_kill(tmp_path, receiver_and_orders):
    receiver, queued, env = receiver_and_orders
    order_ids = [order_id for order_id, _ in queued]
    database_url = env["REPLENISH_DATABASE_URL"]

    with process(["scheduler"], env, tmp_path / "first.log") as first:
        assert receiver.held.wait(30), (tmp_path / "first.log").read_text()
        first.kill()  # SIGKILL while the held request is open: sent, and never recorded as delivered
        first.wait(10)
    arrived_before_restart = len(receiver.arrivals)
    receiver.release.set()
    assert undelivered(database_url) > 0, "the kill landed after everything was delivered: nothing was tested"

    with process(["scheduler"], env, tmp_path / "second.log"):
        deadline = time.monotonic() + 25
        while undelivered(database_url) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert undelivered(database_url) == 0, (tmp_path / "second.log").read_text()

    orders_by_key: dict[str, set[str]] = defaultdict(set)
    bodies_by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    keys_by_order: dict[str, set[str]] = defaultdict(set)
    for key, body in receiver.arrivals:
        assert body["event"] == OutboxKind.SHIPMENT_PLACED
        [line] = body["shipment"]["lines"]
        orders_by_key[key].add(line["order_id"])
        bodies_by_key[key].append(body)
        keys_by_order[line["order_id"]].add(key)

    assert set(keys_by_order) == set(order_ids), "every order arrived"
    assert all(len(ids) == 1 for ids in orders_by_key.values()), "a key arrived as two different orders"
    assert all(all(body == bodies[0] for body in bodies) for bodies in bodies_by_key.values()), "a key changed body"
    assert all(len(keys) == 1 for keys in keys_by_order.values()), "an order arrived under two keys"
    held = queued[HELD][1]
    assert [key for key, _ in receiver.arrivals].count(held) >= 2, "the held order was delivered again after the kill"
    assert len(receiver.arrivals) > arrived_before_restart


def test_a_claim_lease_shorter_than_a_delivery_may_take_is_refused(tmp_path):
    """A lease that runs out while the webhook may still answer would let a second dispatcher send it again."""
    with pytest.raises(ValidationError, match="outbox_claim_lease_seconds must be longer"):
        Settings(_env_file=None, data_dir=tmp_path, outbox_claim_lease_seconds=5, webhook_timeout_seconds=10)

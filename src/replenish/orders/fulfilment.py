"""Where placed and cancelled orders go: a pluggable sink. The outbox dispatcher calls it, at least once per key."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Protocol

import httpx
from sqlmodel import Session

from replenish.constants import OutboxKind
from replenish.outbox.models import OutboxMessage
from replenish.tls import client_tls

log = logging.getLogger(__name__)


class FulfilmentSink(Protocol):
    def send(self, *, event: str, idempotency_key: str, body: dict[str, Any]) -> None:
        """Hand the event over (``body``: {"shipment": ...} or {"order": ...}), or raise so that the dispatcher
        retries later."""
        ...


class LoggingSink:
    """The default: the order is recorded in the database and logged for an operator to fulfil."""

    def send(self, *, event: str, idempotency_key: str, body: dict[str, Any]) -> None:
        if "shipment" in body:
            shipment = body["shipment"]
            lines = ", ".join(
                f"{line['quantity']} x {line['product_sku']} (order {line['order_id']})" for line in shipment["lines"]
            )
            log.info("fulfilment %s: shipment %s: %s", event, shipment["shipment_id"], lines)
            return
        order = body["order"]
        log.info("fulfilment %s: order %s, %s x %s", event, order["order_id"], order["quantity"], order["product_sku"])


class WebhookSink:
    """POSTs JSON to the fulfilment partner. The Idempotency-Key lets the receiver drop our retries."""

    def __init__(self, url: str, *, timeout: float = 10.0, client: httpx.Client | None = None) -> None:
        self._url = url
        self._client = client or httpx.Client(timeout=timeout, verify=client_tls())

    def send(self, *, event: str, idempotency_key: str, body: dict[str, Any]) -> None:
        response = self._client.post(
            self._url,
            json={"event": event, **body},
            headers={"Idempotency-Key": idempotency_key},
        )
        response.raise_for_status()

    def close(self) -> None:
        self._client.close()


def make_sink(webhook_url: str | None, *, timeout: float = 10.0) -> FulfilmentSink:
    return WebhookSink(webhook_url, timeout=timeout) if webhook_url else LoggingSink()


class FulfilmentHandler:
    """Order events leave through the outbox: this handler (registered for every ORDER_* kind in runtime.py) hands
    each to the fulfilment sink under the message's idempotency key."""

    def __init__(self, sink: FulfilmentSink) -> None:
        self._sink = sink

    def deliver(self, message: OutboxMessage) -> None:
        subject = "shipment" if message.kind == OutboxKind.SHIPMENT_PLACED else "order"
        self._sink.send(event=message.kind, idempotency_key=message.idempotency_key, body={subject: message.payload})

    def record_delivery(self, *, session: Session, message: OutboxMessage, now: datetime) -> None:
        pass  # the order's own history records what fulfilment answers (webhooks), not the hand-over


ORDER_EVENTS = (
    OutboxKind.SHIPMENT_PLACED,
    OutboxKind.ORDER_PLACED,
    OutboxKind.ORDER_CANCELLED,
    OutboxKind.ORDER_HELD,
    OutboxKind.ORDER_RELEASED,
)


def fulfilment_handlers(sink: FulfilmentSink) -> dict[OutboxKind, FulfilmentHandler]:
    handler = FulfilmentHandler(sink)
    return dict.fromkeys(ORDER_EVENTS, handler)

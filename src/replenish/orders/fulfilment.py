"""Where placed and cancelled orders go: a pluggable sink. The outbox dispatcher calls it, at least once per key."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)


class FulfilmentSink(Protocol):
    def send(self, *, event: str, idempotency_key: str, order: dict[str, Any]) -> None:
        """Hand the order event over, or raise so that the dispatcher retries later."""
        ...


class LoggingSink:
    """The default: the order is recorded in the database and logged for an operator to fulfil."""

    def send(self, *, event: str, idempotency_key: str, order: dict[str, Any]) -> None:
        log.info("fulfilment %s: order %s, %s x %s", event, order["order_id"], order["quantity"], order["product_sku"])


class WebhookSink:
    """POSTs JSON to the fulfilment partner. The Idempotency-Key lets the receiver drop our retries."""

    def __init__(self, url: str, *, timeout: float = 10.0, client: httpx.Client | None = None) -> None:
        self._url = url
        self._client = client or httpx.Client(timeout=timeout)

    def send(self, *, event: str, idempotency_key: str, order: dict[str, Any]) -> None:
        response = self._client.post(
            self._url,
            json={"event": event, "order": order},
            headers={"Idempotency-Key": idempotency_key},
        )
        response.raise_for_status()

    def close(self) -> None:
        self._client.close()


def make_sink(webhook_url: str | None, *, timeout: float = 10.0) -> FulfilmentSink:
    return WebhookSink(webhook_url, timeout=timeout) if webhook_url else LoggingSink()

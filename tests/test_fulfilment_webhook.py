"""Orders reach a fulfilment webhook through the outbox: retried with backoff, one Idempotency-Key per order."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from replenish.constants import OutboxKind
from replenish.outbox.models import OutboxMessage
from support.api import api_client, operator_token
from support.platform import make_settings, place_an_order, running_platform
from support.servers import WebhookReceiver


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    running = WebhookReceiver(failures=2, path="/orders")
    yield running
    running.close()


def test_a_cancellation_never_overtakes_the_order_it_cancels(tmp_path, clock, receiver):
    settings = make_settings(tmp_path, order_webhook_url=receiver.url)
    with running_platform(settings, clock) as platform, api_client(platform, operator_token(platform)) as api:
        order, _ = place_an_order(platform, api, clock)
        platform.jobs.dispatch()  # the partner is down: the shipment's hand-off waits 2 s
        api.post(f"/orders/{order['id']}/cancel").raise_for_status()
        platform.jobs.dispatch()
        assert len(receiver.requests) == 1, "the cancellation waits for the order to be delivered first"
        for _ in range(3):
            clock.advance(timedelta(seconds=4))
            platform.jobs.dispatch()
        events = [body["event"] for _, body, _ in receiver.requests]
        assert events == ["shipment.placed", "shipment.placed", "shipment.placed", "order.cancelled"]


def test_webhook_retries_with_backoff_and_keeps_one_key(tmp_path, clock, receiver):
    settings = make_settings(tmp_path, order_webhook_url=receiver.url)
    with running_platform(settings, clock) as platform:
        with api_client(platform, operator_token(platform)) as api:
            order, _ = place_an_order(platform, api, clock)

        def outbox_row() -> OutboxMessage:
            with Session(platform.engine) as session:
                return session.exec(select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.SHIPMENT_PLACED)).one()

        platform.jobs.dispatch()
        row = outbox_row()
        assert (row.attempts, row.delivered_at) == (1, None)
        assert "503" in row.last_error
        assert row.available_at == clock.now() + timedelta(seconds=2)

        platform.jobs.dispatch()  # not yet due: nothing is sent
        assert len(receiver.requests) == 1

        clock.advance(timedelta(seconds=2))
        platform.jobs.dispatch()
        assert outbox_row().available_at == clock.now() + timedelta(seconds=4), "the backoff doubles"
        clock.advance(timedelta(seconds=4))
        platform.jobs.dispatch()
        row = outbox_row()
        assert row.delivered_at == clock.now()
        assert row.attempts == 3

        platform.jobs.dispatch()  # delivered: never sent again
        assert len(receiver.requests) == 3
        keys = {headers["Idempotency-Key"] for headers, _, _ in receiver.requests}
        assert keys == {f"shipment:{order['shipment_id']}:placed"}
        _, body, _ = receiver.requests[-1]
        assert body["event"] == "shipment.placed"
        assert body["shipment"]["shipment_id"] == order["shipment_id"]
        [line] = body["shipment"]["lines"]
        assert line["order_id"] == order["id"]
        assert line["product_sku"] == "INK-BLACK"
        assert line["consent_version"] == 1

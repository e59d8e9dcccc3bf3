"""The embedded amqtt broker, run on its own asyncio loop in a background thread."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from sqlmodel import Session as DbSession

from replenish.config import SERVICE_USERNAME
from replenish.constants import COMMANDS_TOPIC, EVENTS_TOPIC, STATUS_TOPIC, TELEMETRY_TOPIC
from replenish.db import make_engine
from replenish.devices import service as devices
from replenish.devices.credentials import hash_secret, verify_secret

log = logging.getLogger(__name__)


class DeviceAuthPlugin(BaseAuthPlugin):
    """Devices sign in with their id and the secret issued at registration; the platform's own clients with the
    service account. Nobody else, anonymous clients included, gets in."""

    @dataclass
    class Config:
        database_url: str
        service_username: str
        service_password_hash: str

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        config: DeviceAuthPlugin.Config = self.context.config  # type: ignore[assignment]
        self._config = config
        self._engine = make_engine(config.database_url)

    async def authenticate(self, *, session: Session) -> bool:
        username, password = session.username, session.password
        if not username or password is None:
            return False
        if username == self._config.service_username:
            stored: str | None = self._config.service_password_hash
        else:
            # A database lookup: off the broker's event loop.
            stored = await asyncio.get_running_loop().run_in_executor(None, self._lookup, username)
        session.is_anonymous = False  # a named session keeps what arrives while it is away
        return stored is not None and verify_secret(password, stored)

    def _lookup(self, device_id: str) -> str | None:
        try:
            with DbSession(self._engine) as db:
                return devices.mqtt_password_hash(session=db, device_id=device_id)
        except Exception:
            log.exception("could not look up device %r: refusing it", device_id)
            return None

    async def close(self) -> None:
        self._engine.dispose()


class DeviceTopicPlugin(BaseTopicPlugin):
    """A device publishes only under devices/{its id}/ (telemetry, events, status) and subscribes to, and
    receives, only its own commands. The service account may do anything."""

    @dataclass
    class Config:
        service_username: str

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        config: DeviceTopicPlugin.Config = self.context.config  # type: ignore[assignment]
        if session is None or not session.username or topic is None:
            return False
        if session.username == config.service_username:
            return True
        if action == Action.PUBLISH:
            return topic in {
                template.format(device_id=session.username)
                for template in (TELEMETRY_TOPIC, EVENTS_TOPIC, STATUS_TOPIC)
            }
        return topic == COMMANDS_TOPIC.format(device_id=session.username)


class _DrainingBroker(Broker):
    """amqtt's broker, except that a client's disconnection no longer drops what it published just before.

    amqtt 0.12.1 acknowledges a QoS 1 PUBLISH as it reads it and queues it for its client loop; when the DISCONNECT
    is read before the loop has caught up, the loop leaves and the queued messages are lost, acknowledged. A device
    that publishes a burst and disconnects at once (a battery device does) lost them. Here the loop first delivers
    everything that client sent, then handles the disconnection. The rest is amqtt's loop as it is.
    """

    async def _client_message_loop(self, client_session: Session, handler: Any) -> None:
        disconnect_waiter = asyncio.ensure_future(handler.wait_disconnect())
        subscribe_waiter = asyncio.ensure_future(handler.get_next_pending_subscription())
        unsubscribe_waiter = asyncio.ensure_future(handler.get_next_pending_unsubscription())
        wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
        connected = True
        while connected:
            try:
                done, _ = await asyncio.wait(
                    [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if subscribe_waiter in done:
                    await self._handle_subscription(client_session, handler, subscribe_waiter)
                    subscribe_waiter = asyncio.ensure_future(handler.get_next_pending_subscription())
                if unsubscribe_waiter in done:
                    await self._handle_unsubscription(client_session, handler, unsubscribe_waiter)
                    unsubscribe_waiter = asyncio.ensure_future(handler.get_next_pending_unsubscription())
                if wait_deliver in done:
                    if not await self._handle_message_delivery(client_session, handler, wait_deliver):
                        break
                    wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
                if disconnect_waiter in done:
                    # A delivery waiter may hold a message it took off the queue but has not returned yet.
                    for _ in range(2):  # (two turns of the loop: the waiter's get() and its return)
                        await asyncio.sleep(0)
                    if wait_deliver.done() and not wait_deliver.cancelled() and wait_deliver not in done:
                        await self._handle_message_delivery(client_session, handler, wait_deliver)
                    queue = client_session.delivered_message_queue
                    while not queue.empty():  # what the client sent before it said goodbye
                        pending = asyncio.get_running_loop().create_future()
                        pending.set_result(queue.get_nowait())
                        if not await self._handle_message_delivery(client_session, handler, pending):
                            break
                    await self._handle_disconnect(client_session, handler, disconnect_waiter)
                    connected = False
            except asyncio.CancelledError:
                break
        waiters = [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver]
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


def broker_config(host: str, port: int, *, database_url: str, service_password: str) -> dict[str, Any]:
    def path(plugin: type) -> str:
        return f"{plugin.__module__}.{plugin.__qualname__}"

    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            path(DeviceAuthPlugin): {
                "database_url": database_url,
                "service_username": SERVICE_USERNAME,
                "service_password_hash": hash_secret(service_password),
            },
            path(DeviceTopicPlugin): {"service_username": SERVICE_USERNAME},
        },
    }


class EmbeddedBroker:
    def __init__(self, *, host: str, port: int, database_url: str, service_password: str) -> None:
        self.host = host
        self.port = port
        self._config = broker_config(host, port, database_url=database_url, service_password=service_password)
        self._loop = asyncio.new_event_loop()
        self._broker: _DrainingBroker | None = None
        self._thread = threading.Thread(target=self._run, name="amqtt-broker", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._broker = _DrainingBroker(self._config, loop=self._loop)
            self._loop.run_until_complete(self._broker.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("embedded broker did not start")
        if self._error is not None:
            raise RuntimeError(f"embedded broker could not listen on {self.host}:{self.port}: {self._error}")
        log.info("embedded amqtt broker listening on %s:%d", self.host, self.port)

    def stop(self, timeout: float = 10.0) -> None:
        if self._broker is None or not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            future.result(timeout)
        except Exception:
            log.exception("embedded broker did not shut down cleanly")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

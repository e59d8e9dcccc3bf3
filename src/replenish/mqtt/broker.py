"""The embedded amqtt broker, run on its own asyncio loop in a background thread."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

from amqtt.adapters import ReaderAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, BrokerError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.constants import QOS_0, QOS_1
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import OUTGOING, Session
from amqtt.utils import gen_client_id
from sqlmodel import Session as DbSession
from transitions import MachineError

from replenish.config import SERVICE_CLIENT_ID_PREFIX, SERVICE_USERNAME
from replenish.constants import (
    COMMANDS_TOPIC,
    EVENTS_TOPIC,
    MAX_PACKET_BYTES,
    STATUS_TOPIC,
    STORED_TOPIC,
    TELEMETRY_TOPIC,
)
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
        config: DeviceAuthPlugin.Config = self.context.config
        self._config = config
        self._engine = make_engine(config.database_url)

    async def authenticate(self, *, session: Session) -> bool:
        username, password = session.username, session.password
        if not username or password is None:
            return False
        client_id = session.client_id or ""
        if username == self._config.service_username:
            # The platform's own sessions (the ingestor's holds what arrives while it restarts) are named
            # replenish-*; no device can take that name, so no device can take such a session over.
            if not client_id.startswith(SERVICE_CLIENT_ID_PREFIX):
                return False
            stored: str | None = self._config.service_password_hash
        else:
            # A device's sessions are its own (client id: its id, or its id/anything, as device ids have no "/"),
            # and its last will can speak only for itself.
            if client_id != username and not client_id.startswith(f"{username}/"):
                return False
            if session.will_flag and session.will_topic != STATUS_TOPIC.format(device_id=username):
                return False
            # A database lookup: off the broker's event loop.
            stored = await asyncio.get_running_loop().run_in_executor(None, self._lookup, username)
        session.is_anonymous = False  # a named session keeps what arrives while it is away
        if stored is None or not verify_secret(password, stored):
            return False
        # What it signed in with: a connection outlives neither a rotation nor the device (EmbeddedBroker).
        session.replenish_password_hash = stored
        return True

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
    receives, only its own commands and confirmations. The service account may do anything."""

    @dataclass
    class Config:
        service_username: str

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        config: DeviceTopicPlugin.Config = self.context.config
        if session is None or not session.username or topic is None:
            return False
        if session.username == config.service_username:
            return True
        if action == Action.PUBLISH:
            return topic in {
                template.format(device_id=session.username)
                for template in (TELEMETRY_TOPIC, EVENTS_TOPIC, STATUS_TOPIC)
            }
        return topic in {template.format(device_id=session.username) for template in (COMMANDS_TOPIC, STORED_TOPIC)}


CONNECT_TIMEOUT_SECONDS = 10.0
MQTT5_PROTOCOL_LEVEL = 5
# CONNACK, remaining length 2, no session present, return code 0x01: unacceptable protocol level.
UNACCEPTABLE_PROTOCOL_CONNACK = b"\x20\x02\x00\x01"
CREDENTIALS_CHECK_SECONDS = 5.0
# MQTT 3.1.1 §3.1.2.10: a client silent for one and a half keep-alive periods is gone.
KEEP_ALIVE_GRACE = 1.5
PUBACK_TIMEOUT_SECONDS = 5  # amqtt's


class _DeviceHandler(BrokerProtocolHandler):
    """amqtt's handler, with two of its flaws fixed:

    - A client silent beyond its keep-alive is disconnected (amqtt's did nothing), so that its last will fires: a
      device that lost power shows offline.
    - A QoS 1 message sent to a persistent session stays in the session's in-flight list until its PUBACK arrives.
      amqtt's dropped it when the connection ended before the PUBACK (or after 5 s without one), so an ingestor
      killed between receiving a message and acknowledging it never got it again: the message was lost (amqtt
      issue 401). Kept, it is sent again, marked DUP, when the session reconnects, as MQTT 3.1.1 §4.4 requires.
    """

    def handle_read_timeout(self) -> None:
        self.cut_off()

    async def _handle_qos1_message_flow(self, app_message: Any) -> None:
        # Copied from amqtt 0.12.1 for the outgoing direction and changed as marked.
        if app_message.direction != OUTGOING or app_message.qos != QOS_1 or self.session is None:
            await super()._handle_qos1_message_flow(app_message)
            return
        inflight = self.session.inflight_out
        inflight.setdefault(app_message.packet_id, app_message)
        retry = app_message.publish_packet is not None
        publish_packet = app_message.build_publish_packet(dup=retry)
        await self._send_packet(publish_packet)
        app_message.publish_packet = publish_packet
        waiter: asyncio.Future[Any] = asyncio.Future()
        self._puback_waiters[app_message.packet_id] = waiter
        try:
            app_message.puback_packet = await asyncio.wait_for(waiter, timeout=PUBACK_TIMEOUT_SECONDS)
        except TimeoutError:
            # A busy subscriber (an ingestor working through a backlog), not an error: the message stays in flight,
            # handle_puback takes it off when the PUBACK comes, and a reconnect sends it again.
            return
        finally:
            self._puback_waiters.pop(app_message.packet_id, None)
        # Changed: discarded only once acknowledged (amqtt discarded it in the finally clause above).
        inflight.pop(app_message.packet_id, None)

    async def handle_puback(self, puback: Any) -> None:
        packet_id = puback.variable_header.packet_id if puback.variable_header is not None else None
        if packet_id is not None and packet_id not in self._puback_waiters and self.session is not None:
            # A PUBACK after the wait gave up, or for a message sent again after a reconnect: it is delivered now.
            self.session.inflight_out.pop(packet_id, None)
            return
        await super().handle_puback(puback)

    def cut_off(self) -> None:
        """End the connection as if it had dropped: the client's last will is published."""
        if getattr(self, "_closing", None) is None:
            self._closing = asyncio.ensure_future(self.handle_connection_closed())


class PacketTooLarge(AMQTTError):
    """A client sent an MQTT packet larger than MAX_PACKET_BYTES."""


class _BoundedReader(ReaderAdapter):
    """amqtt reads a packet's body in reads as large as its announced length, and has no limit of its own: a
    client could make the broker buffer hundreds of megabytes. Here a read beyond MAX_PACKET_BYTES ends the
    connection, as Mosquitto's max_packet_size does."""

    def __init__(self, reader: ReaderAdapter, limit: int = MAX_PACKET_BYTES) -> None:
        self._reader = reader
        self._limit = limit
        self._replay = b""  # read ahead by protocol_level, handed out again first

    async def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._limit:
            raise PacketTooLarge(f"a packet of more than {self._limit} bytes")
        if self._replay:
            served, self._replay = self._replay[:n], self._replay[n:]
            rest: bytes = await self._reader.read(n - len(served)) if len(served) < n else b""
            return served + rest
        data: bytes = await self._reader.read(n)
        return data

    async def protocol_level(self) -> int | None:
        """The protocol level of the CONNECT the client opens with (4: MQTT 3.1.1, 5: MQTT 5), or None when it does
        not open with one. What it reads is read again by amqtt. A client gone before (a port probe): NoDataError,
        as amqtt's own reads say it."""
        seen = bytearray()

        async def take(count: int) -> bytes:
            try:
                data: bytes = await self._reader.read(count)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise NoDataError("the client left before its CONNECT") from exc
            if len(data) < count:
                raise NoDataError("the client left before its CONNECT")
            seen.extend(data)
            return data

        try:
            if await take(1) != b"\x10":
                return None
            for _ in range(4):  # the remaining length: up to four bytes, the last without its high bit
                if not (await take(1))[0] & 0x80:
                    break
            name_length = int.from_bytes(await take(2), "big")
            await take(min(name_length, 16))
            return (await take(1))[0]
        finally:
            self._replay = bytes(seen)

    def feed_eof(self) -> None:
        self._reader.feed_eof()


def _done(result: Any) -> asyncio.Future[Any]:
    future = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future


class _SubscriptionTable(dict[str, list[tuple[Session, int]]]):
    """amqtt's table of topic filter -> subscribers, whose items() is a snapshot: the broadcast awaits between
    subscribers, and a subscribe or unsubscribe meanwhile must neither end it nor make it skip anyone."""

    # A list where dict's items() gives a view: what amqtt does with it (iterate) works on both.
    def items(self) -> list[tuple[str, list[tuple[Session, int]]]]:  # type: ignore[override]
        return [(topic, list(subscribers)) for topic, subscribers in super().items()]


class _DeviceBroker(Broker):
    """amqtt 0.12.1's broker with three of its flaws fixed where amqtt has them (methods copied from amqtt and
    changed as marked; amqtt is pinned for this reason):

    - It deleted (clean session) or took over (persistent session) the session of a client id before it checked
      the credentials: anyone could wipe the ingestor's session, or take it and its queued telemetry. Here the
      credentials (and DeviceAuthPlugin's identity rules) are checked first, and a refused client touches nothing.
    - It sent a connecting client the retained messages of every subscription in the broker, anyone's: a device
      saw other devices' status. Here only those of its own subscriptions.
    - A client's disconnection dropped what it had published just before: amqtt acknowledges a QoS 1 PUBLISH as
      it reads it and queues it for the client loop, which left when the DISCONNECT came first. Here the loop
      delivers everything the client sent, then handles the disconnection.
    - Its broadcast walked the subscription table across awaits: a client subscribing meanwhile ended the walk with
      "dictionary changed size during iteration", and the message reached nobody, the ingestor included (seen in
      the demo when the simulators subscribe to their confirmations). Here the walk is over a snapshot.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriptions = _SubscriptionTable()

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        bounded = _BoundedReader(reader)
        try:
            # Changed: amqtt misreads an MQTT 5 CONNECT (its properties) and waits for bytes that never come: such a
            # client is refused at once, as MQTT 3.1.1 §3.1.2.2 says (CONNACK 0x01, unacceptable protocol level).
            if await asyncio.wait_for(bounded.protocol_level(), CONNECT_TIMEOUT_SECONDS) == MQTT5_PROTOCOL_LEVEL:
                writer.write(UNACCEPTABLE_PROTOCOL_CONNACK)
                await writer.drain()
                await writer.close()
                raise AMQTTError("an MQTT 5 client: the embedded broker speaks MQTT 3.1.1")
            # Changed: a socket that never sends CONNECT is not held forever.
            handler, client_session = await asyncio.wait_for(
                _DeviceHandler.init_from_connect(bounded, writer, self.plugins_manager),
                CONNECT_TIMEOUT_SECONDS,
            )
        except TimeoutError as exc:
            await writer.close()
            raise AMQTTError("no CONNECT within the timeout") from exc
        except MQTTError as exc:
            await writer.close()
            raise MQTTError(exc) from exc
        except (AMQTTError, NoDataError) as exc:
            raise AMQTTError(exc) from exc
        # Changed: nobody's session is deleted or taken over before the credentials are checked.
        authenticated = await self._authenticate(client_session, None)
        client_session.replenish_authenticated = authenticated
        if not authenticated:
            log.warning(
                "refused MQTT client %r (user %r) from %s:%s",
                client_session.client_id,
                client_session.username,
                remote_address,
                remote_port,
            )
            return handler, client_session
        if client_session.clean_session:
            if client_session.client_id:
                await self._delete_session(client_session.client_id)
            else:
                client_session.client_id = gen_client_id()
            client_session.parent = 0
        elif client_session.client_id in self._sessions:
            existing, _ = self._sessions[client_session.client_id]
            existing.will_flag = client_session.will_flag
            existing.will_message = client_session.will_message
            existing.will_topic = client_session.will_topic
            existing.will_qos = client_session.will_qos
            existing.keep_alive = client_session.keep_alive
            existing.username = client_session.username
            existing.password = client_session.password
            existing.replenish_authenticated = True
            existing.replenish_password_hash = getattr(client_session, "replenish_password_hash", None)
            client_session = existing
            client_session.parent = 1
        else:
            client_session.parent = 0
        # Changed: the read timeout is the keep-alive the spec gives (amqtt's adds a configured delay).
        if client_session.keep_alive > 0:
            client_session.keep_alive = math.ceil(client_session.keep_alive * KEEP_ALIVE_GRACE)
        return handler, client_session

    async def _handle_client_session(
        self,
        reader: Any,
        writer: Any,
        client_session: Session,
        handler: BrokerProtocolHandler,
        server: Any,
        listener_name: str,
    ) -> None:
        if not getattr(client_session, "replenish_authenticated", False):
            # Changed: refused before anything of the broker's state is touched.
            handler.attach(client_session, reader, writer)
            await handler.mqtt_connack_authorize(False)
            await writer.close()
            return
        if client_session.client_id is None:
            raise BrokerError("Client ID was not correctly created/set.")
        reader = _BoundedReader(reader)  # every packet after CONNECT too
        while True:
            try:
                client_session.transitions.connect()
                break
            except (MachineError, ValueError):
                if client_session.transitions.is_connected():
                    old_session = self._sessions[client_session.client_id]
                    await old_session[1].handle_connection_closed()
                    await old_session[1].stop()
                    break
                await asyncio.sleep(1)
        handler.attach(client_session, reader, writer)
        self._sessions[client_session.client_id] = (client_session, handler)
        await handler.mqtt_connack_authorize(True)
        await self.plugins_manager.fire_event(
            BrokerEvents.CLIENT_CONNECTED, client_id=client_session.client_id, client_session=client_session
        )
        await handler.start()
        await self._publish_session_retained_messages(client_session)
        # Changed: the retained messages of this session's own subscriptions only, not of everyone's.
        own = [
            topic
            for topic, subscribers in self._subscriptions.items()
            if any(session.client_id == client_session.client_id for session, _ in subscribers)
        ]
        for topic in own:
            await self._publish_retained_messages_for_subscription((topic, QOS_0), client_session)
        await self._client_message_loop(client_session, handler)

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
                        # Changed: a protocol violation ends the connection as an abnormal disconnect (will,
                        # handler stopped), not a loop that leaves the socket open and acknowledging into nothing.
                        await self._handle_disconnect(client_session, handler, _done(None))
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
                        if not await self._handle_message_delivery(client_session, handler, _done(queue.get_nowait())):
                            break  # the disconnection below ends it anyway
                    await self._handle_disconnect(client_session, handler, disconnect_waiter)
                    connected = False
            except asyncio.CancelledError:
                break
        waiters = [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver]
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

    def connected_devices(self) -> list[tuple[str, str | None, _DeviceHandler]]:
        """(device id, the secret hash it signed in with, its handler) of every device connected now."""
        return [
            (session.username, getattr(session, "replenish_password_hash", None), handler)
            for session, handler in self._sessions.values()
            if isinstance(handler, _DeviceHandler)
            and session.username
            and session.username != SERVICE_USERNAME
            and session.transitions.is_connected()
        ]


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
    """The broker on its own event loop in a background thread. Every ``credentials_check_seconds`` it ends the
    connection of any device whose secret was rotated, or that was deleted, since it signed in (as Mosquitto does
    when its password file is reloaded)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        database_url: str,
        service_password: str,
        credentials_check_seconds: float = CREDENTIALS_CHECK_SECONDS,
    ) -> None:
        self.host = host
        self.port = port
        self._config = broker_config(host, port, database_url=database_url, service_password=service_password)
        self._engine = make_engine(database_url)
        self._credentials_check_seconds = credentials_check_seconds
        self._loop = asyncio.new_event_loop()
        self._broker: _DeviceBroker | None = None
        self._thread = threading.Thread(target=self._run, name="amqtt-broker", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._broker = _DeviceBroker(self._config, loop=self._loop)
            self._loop.run_until_complete(self._broker.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        checks = self._loop.create_task(self._check_credentials(self._broker))
        self._loop.run_forever()
        checks.cancel()
        self._loop.run_until_complete(asyncio.gather(checks, return_exceptions=True))

    async def _check_credentials(self, broker: _DeviceBroker) -> None:
        while True:
            await asyncio.sleep(self._credentials_check_seconds)
            try:
                connected = broker.connected_devices()
                if not connected:
                    continue
                current = await asyncio.get_running_loop().run_in_executor(
                    None, self._current_hashes, {device_id for device_id, _, _ in connected}
                )
                for device_id, signed_in_with, handler in connected:
                    if current.get(device_id) != signed_in_with:
                        log.warning("device %r: its secret was rotated or it was deleted; disconnecting it", device_id)
                        handler.cut_off()
            except Exception:
                log.exception("could not check connected devices' credentials; trying again")

    def _current_hashes(self, device_ids: set[str]) -> dict[str, str]:
        with DbSession(self._engine) as db:
            return devices.mqtt_password_hashes(session=db, device_ids=device_ids)

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
        self._engine.dispose()

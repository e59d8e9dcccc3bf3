"""Is the broker there? One MQTT 3.1.1 CONNECT and its CONNACK over a plain socket, for /readyz.

A CONNACK of any kind but "server unavailable" proves the broker serves MQTT: in production the API holds no broker
secret, and Mosquitto answers its anonymous CONNECT "not authorised" (the compose healthcheck relies on the same).
A bare TCP connect would not do: a hung broker still completes handshakes from its listen backlog. The answer is
cached briefly, so that many probes cost the broker one connection per interval.
"""

from __future__ import annotations

import secrets
import socket
import struct
import threading
import time

from replenish.config import MqttEndpoint
from replenish.constants import READINESS_BROKER_TIMEOUT_SECONDS, READINESS_CACHE_SECONDS, READINESS_CLIENT_ID_PREFIX

OK = "ok"
_CONNECT, _CONNACK, _DISCONNECT = 0x10, 0x20, 0xE0
_CLEAN_SESSION, _PASSWORD_FLAG, _USERNAME_FLAG = 0x02, 0x40, 0x80
_PROTOCOL_LEVEL_311 = 4
_KEEPALIVE_SECONDS = 10
_SERVER_UNAVAILABLE = 3


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def _remaining_length(length: int) -> bytes:
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


def connect_packet(*, client_id: str, username: str | None, password: str | None) -> bytes:
    flags = _CLEAN_SESSION
    payload = _string(client_id)
    if username is not None:
        flags |= _USERNAME_FLAG
        payload += _string(username)
        if password is not None:
            flags |= _PASSWORD_FLAG
            payload += _string(password)
    body = _string("MQTT") + bytes([_PROTOCOL_LEVEL_311, flags]) + struct.pack("!H", _KEEPALIVE_SECONDS) + payload
    return bytes([_CONNECT]) + _remaining_length(len(body)) + body


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def probe_broker(endpoint: MqttEndpoint, *, timeout: float = READINESS_BROKER_TIMEOUT_SECONDS) -> str:
    """ "ok", or what went wrong in a few words: never the endpoint's credentials, nor a host name beyond the
    configured one."""
    # A fresh client id each time: two probes at once (two API replicas) must not take over each other's session.
    client_id = f"{READINESS_CLIENT_ID_PREFIX}-{secrets.token_hex(4)}"
    packet = connect_packet(client_id=client_id, username=endpoint.username, password=endpoint.password)
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as sock:
            sock.sendall(packet)
            answer = _receive(sock, 4)
            if len(answer) < 4 or answer[0] != _CONNACK or answer[1] != 2:
                return "no CONNACK: not an MQTT broker, or it closed the connection"
            if answer[3] == 0:
                sock.sendall(bytes([_DISCONNECT, 0]))
            elif answer[3] == _SERVER_UNAVAILABLE:
                return "the broker answered: server unavailable"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return type(exc).__name__
    return OK


class BrokerProbe:
    """probe_broker, answered from the last result while it is fresh; one probe at a time."""

    def __init__(self, endpoint: MqttEndpoint, *, cache_seconds: float = READINESS_CACHE_SECONDS) -> None:
        self._endpoint = endpoint
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._answer: str | None = None
        self._answered_at = 0.0

    def check(self) -> str:
        with self._lock:
            if self._answer is None or time.monotonic() - self._answered_at >= self._cache_seconds:
                self._answer = probe_broker(self._endpoint)
                self._answered_at = time.monotonic()
            return self._answer

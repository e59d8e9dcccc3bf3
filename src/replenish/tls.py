"""The one TLS context every outgoing HTTPS client shares (webhooks, fulfilment partners, the simulators' API calls).

httpx builds a context per client unless it is given one, and building one loads the system's certificate
authorities: about 20 ms of CPU each time. A context is safe to share between clients and threads."""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def client_tls() -> ssl.SSLContext:
    """The context httpx would build by itself (its default verification and certificate authorities), built once."""
    return httpx.create_ssl_context()

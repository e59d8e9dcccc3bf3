"""Headers every answer of some paths carries (nosniff everywhere, the web pages' security headers)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ResponseHeaders:
    """Sets the headers ``headers_for(path)`` gives on each HTTP answer of that path.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette runs each request through a task and a memory
    stream for one of those, which cost more CPU than the rest of a small request's handling.
    """

    def __init__(self, app: ASGIApp, *, headers_for: Callable[[str], Mapping[str, str]]) -> None:
        self.app = app
        self.headers_for = headers_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        extra = self.headers_for(scope["path"]) if scope["type"] == "http" else {}
        if not extra:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])  # ASGI lets a response start without any
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)

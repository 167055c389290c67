"""The admin API as the web UI calls it: in process, through the app's own ASGI stack.

Every page is built from the same admin routes a script calls (`/key/list`,
`/spend/logs`, `/model/new`...), sent through the whole app, middleware included,
with the signed-in user's session token as the bearer credential. The route checks
the caller's role as it checks any key's (`trigate.roles`), so the UI has no power of
its own: what the API refuses a user, the UI shows as refused.

The playground's chat is relayed the same way, streamed (`ProxiedStream`), through
the gateway's own `/v1/chat/completions`, billed to the signed-in user.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import orjson
import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveEvent,
    ASGISendEvent,
    ConnectionState,
    HTTPScope,
)
from quart.wrappers.response import ResponseBody


class ApiRefused(Exception):
    """The admin API answered with an error: its status and message, shown to the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdminClient:
    """The admin API, called as the holder of `token` (a session's)."""

    def __init__(self, app: ASGIFramework, token: str) -> None:
        self._app = app
        self._token = token

    async def get(self, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v not in (None, "")}
        return await self._json("GET", path, urlencode(query, doseq=True).encode(), b"")

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        return await self._json("POST", path, b"", orjson.dumps(body))

    async def _json(self, method: str, path: str, query: bytes, body: bytes) -> Any:
        status, answer = await self._call(method, path, query, body)
        payload = orjson.loads(answer) if answer else None
        if status >= 400:
            raise ApiRefused(status, _error_message(payload, status))
        return payload

    async def _call(self, method: str, path: str, query: bytes, body: bytes) -> tuple[int, bytes]:
        done = trio.Event()
        status = 500
        chunks: list[bytes] = []

        async def send(message: ASGISendEvent) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body"):
                    done.set()

        await self._app(self.scope(method, path, query, body), _receiver(body, done), send)
        done.set()
        return status, b"".join(chunks)

    def scope(self, method: str, path: str, query: bytes, body: bytes) -> HTTPScope:
        headers = [
            (b"host", b"trigate-ui"),
            (b"authorization", b"Bearer " + self._token.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        if body:
            headers.append((b"content-type", b"application/json"))
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 0),
            "server": ("trigate-ui", 0),
            "extensions": {},
            "state": ConnectionState({}),
        }

    def stream(self, path: str, body: dict[str, Any]) -> ProxiedStream:
        """A POST whose answer is relayed as it comes, as a Quart response body."""
        encoded = orjson.dumps(body)
        return ProxiedStream(self._app, self.scope("POST", path, b"", encoded), encoded)


def _receiver(body: bytes, done: trio.Event) -> Callable[[], Awaitable[ASGIReceiveEvent]]:
    """The request's body once, then (as a client that stays) nothing until the answer
    is complete: a route watching for the client's departure sees none."""
    sent = False

    async def receive() -> ASGIReceiveEvent:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    return receive


class ProxiedStream(ResponseBody):
    """A Quart `ResponseBody` relaying an in-process route's answer as it is sent. The
    route runs in this body's own nursery (entered and left as Quart drives a body), so
    a browser that leaves cancels the route, and with it the upstream request."""

    def __init__(self, app: ASGIFramework, scope: HTTPScope, body: bytes) -> None:
        self._app = app
        self._scope = scope
        self._body = body
        self._nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None
        self._messages: trio.MemoryReceiveChannel[ASGISendEvent] | None = None

    async def __aenter__(self) -> ProxiedStream:
        send, self._messages = trio.open_memory_channel[ASGISendEvent](math.inf)
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        self._nursery.start_soon(self._run, send)
        return self

    async def _run(self, channel: trio.MemorySendChannel[ASGISendEvent]) -> None:
        done = trio.Event()
        async with channel:

            async def send(message: ASGISendEvent) -> None:
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    done.set()
                await channel.send(message)

            await self._app(self._scope, _receiver(self._body, done), send)
            done.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._nursery_manager is not None and self._nursery is not None
        # The route may still be sending: a browser that left ends it.
        self._nursery.cancel_scope.cancel()
        await self._nursery_manager.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[bytes]:
        assert self._messages is not None
        async for message in self._messages:
            if message["type"] == "http.response.body" and message.get("body"):
                yield bytes(message.get("body", b""))


def _error_message(payload: Any, status: int) -> str:
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(payload.get("detail"), str):
            return str(payload["detail"])
    return f"The admin API answered {status}."

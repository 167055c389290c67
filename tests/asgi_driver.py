"""Drive the app in-process through ASGI, with the test in control of the client side.

Hypercorn on a socket is the honest default; this driver is for what a socket
cannot show deterministically: a client that stops reading (backpressure), a
disconnect at an exact moment, and virtual time (the `virtual_clock` fixture).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import trio
from helpers import MASTER_KEY, MemoryRecords, build_app
from scripted import ScriptedUpstreams, Step

MESSAGES = [{"role": "user", "content": "hello"}]


async def start_lifespan(nursery: trio.Nursery, app: Any) -> None:
    """Run the app's lifespan startup, as hypercorn would, in `nursery`."""
    to_app, app_inbox = trio.open_memory_channel[dict[str, Any]](1)
    app_outbox, from_app = trio.open_memory_channel[dict[str, Any]](1)
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    nursery.start_soon(app, scope, app_inbox.receive, app_outbox.send)
    await to_app.send({"type": "lifespan.startup"})
    message = await from_app.receive()
    assert message["type"] == "lifespan.startup.complete", message


class Exchange:
    """One HTTP request in flight; the app's `send` blocks until the test takes a message."""

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body
        self.disconnected = trio.Event()
        self._to_test, self._messages = trio.open_memory_channel[dict[str, Any]](0)
        self.done = trio.Event()

    async def receive(self) -> dict[str, Any]:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        await self._to_test.send(message)

    async def next_message(self) -> dict[str, Any]:
        return await self._messages.receive()

    async def start(self) -> dict[str, Any]:
        message = await self.next_message()
        assert message["type"] == "http.response.start"
        return message

    async def read_body(self) -> bytes:
        body = b""
        while True:
            message = await self.next_message()
            part: bytes = message.get("body", b"")
            body += part
            if not message.get("more_body"):
                return body

    def disconnect(self) -> None:
        self.disconnected.set()


def chat_request(
    nursery: trio.Nursery,
    app: Any,
    payload: dict[str, Any] | bytes | None,
    path: str = "/v1/chat/completions",
    method: str = "POST",
    key: str = MASTER_KEY,
    query: str = "",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> Exchange:
    body = (
        payload if isinstance(payload, bytes) else b"" if payload is None else orjson.dumps(payload)
    )
    exchange = Exchange(body)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 4000),
        "extensions": {},
        "state": {},
    }

    async def run() -> None:
        try:
            await app(scope, exchange.receive, exchange.send)
        finally:
            exchange.done.set()

    nursery.start_soon(run)
    return exchange


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def served_by(self) -> str:
        return self.headers["x-trigate-deployment"]


class Harness:
    def __init__(
        self, nursery: trio.Nursery, config: dict[str, Any], upstreams: ScriptedUpstreams
    ) -> None:
        self.nursery = nursery
        self.upstreams = upstreams
        self.records = MemoryRecords()
        self.app, self.gateway = build_app(
            config, transport=upstreams.transport, records=self.records
        )

    async def start(self) -> Harness:
        await start_lifespan(self.nursery, self.app)
        return self

    async def chat(
        self,
        model: str = "g",
        key: str = MASTER_KEY,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        **extra: Any,
    ) -> Reply:
        payload = {"model": model, "messages": MESSAGES, **extra}
        exchange = chat_request(self.nursery, self.app, payload, key=key, headers=headers)
        start = await exchange.start()
        reply_headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return Reply(start["status"], reply_headers, await exchange.read_body())

    async def admin(self, path: str, payload: dict[str, Any] | None = None) -> Reply:
        """A master-key admin call: POST with a body, or GET without one."""
        method = "POST" if payload is not None else "GET"
        path, _, query = path.partition("?")
        exchange = chat_request(
            self.nursery, self.app, payload, path=path, method=method, query=query
        )
        start = await exchange.start()
        headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return Reply(start["status"], headers, await exchange.read_body())


async def harness(
    nursery: trio.Nursery, config: dict[str, Any], scripts: dict[str, list[Step]]
) -> Harness:
    return await Harness(nursery, config, ScriptedUpstreams(scripts)).start()

"""`/mcp` and `/mcp/{server}`: MCP over streamable HTTP, served in front of the app.

Stateless, on purpose: every HTTP request is a whole client session to the gateway (the
SDK's stateless streamable HTTP mode, JSON answers), authenticated by its own virtual
key (`Authorization: Bearer` or `x-litellm-api-key`), its permissions read afresh, and
its upstream sessions opened in a nursery the request owns and closed when it ends.
Nothing of a session lives in a process between requests, so a client's next request
may reach any worker of any instance (`--workers N`, a load balancer) and be served the
same: no session store to keep, expire or lose, and no upstream process outlives the
request that needed it. The cost is that each request opens the upstream sessions it
uses (a stdio server is spawned per request that calls it).

`/mcp` aggregates every server the key may use; `/mcp/{server}` serves one, and the
`x-mcp-servers` header (comma-separated names) narrows `/mcp` to those it names. The
client's `x-mcp-{server}-authorization` goes to that server alone.

The client's departure cancels the request: its body is read first, then the
connection is watched for the disconnect, which cancels the upstream sessions and reaps
stdio processes.

The `mcp` SDK is not imported with this module: its modules and protocol types take
half a second of CPU to import, 40% of a worker's imports. `load_sdk` imports the
modules that use it (trigate/api/mcp_session.py, trigate/api/mcp_tool_loop.py) in a
worker thread at the first MCP session or Responses MCP tool, so a worker that serves
neither never loads it, and one that does loads it once without stalling its event
loop.
"""

from __future__ import annotations

import importlib
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import trio

from trigate.auth import Caller
from trigate.errors import GatewayError, InvalidRequest, NotFound
from trigate.gateway import Gateway
from trigate.mcp_gateway.permissions import grant_of
from trigate.mcp_gateway.servers import MCPServer
from trigate.mcp_gateway.sse_hub import SSEHub

if TYPE_CHECKING:
    from hypercorn.typing import (
        ASGIFramework,
        ASGIReceiveCallable,
        ASGISendCallable,
        HTTPScope,
        Scope,
    )

PATH = "/mcp"
# MCP's older SSE transport: the stream, and where its messages are posted (LiteLLM's).
SSE = "sse"
SSE_MESSAGES = "sse/messages"
SSE_MESSAGES_PATH = f"{PATH}/{SSE_MESSAGES}"
_UNDER = PATH + "/"

# The modules that import the SDK, loaded by `load_sdk`.
_SDK_MODULES = ("trigate.api.mcp_session", "trigate.api.mcp_tool_loop")
_sdk_loaded = False

RenderError = Callable[[GatewayError], tuple[int, Mapping[str, str], bytes]]


class MCPEndpoint:
    """ASGI app serving `/mcp` and `/mcp/{server}`, passing every other request to `app`."""

    def __init__(self, app: ASGIFramework, gateway: Gateway, render_error: RenderError) -> None:
        self._app = app
        self._gateway = gateway
        self._render_error = render_error
        self._hub = SSEHub()

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http" or (selected := _selected(scope["path"])) is None:
            await self._app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        sse_stream = selected == SSE and scope["method"] == "GET"
        try:
            caller = await self._gateway.auth.authenticate(headers)
            if sse_stream:
                await self._sse_stream(receive, send, caller)
                return
            servers = await self._servers(
                caller, "" if selected == SSE_MESSAGES else selected, headers
            )
            body = await _body(receive, self._gateway.config.max_request_bytes)
        except GatewayError as error:
            await self._refuse(send, error)
            return
        if selected == SSE_MESSAGES:
            await self._sse_message(scope, body, receive, send, caller, servers, headers)
        else:
            await self._serve(scope, body, receive, send, caller, servers, headers)

    async def _sse_stream(
        self, receive: ASGIReceiveCallable, send: ASGISendCallable, caller: Caller
    ) -> None:
        """MCP's older SSE transport: the stream of a session's answers, its first event
        naming where the client posts its messages (trigate/mcp_gateway/sse_hub.py)."""
        session_id = secrets.token_hex(16)
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
            ],
        })  # fmt: skip
        endpoint = f"event: endpoint\ndata: {SSE_MESSAGES_PATH}?session_id={session_id}\n\n"
        await send({"type": "http.response.body", "body": endpoint.encode(), "more_body": True})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            fleet = self._gateway.fleet
            async with self._hub.stream(fleet, caller.identity, session_id) as answers:
                async for answer in answers:
                    event = b"event: message\ndata: " + answer + b"\n\n"
                    await send({"type": "http.response.body", "body": event, "more_body": True})

    async def _sse_message(
        self,
        scope: HTTPScope,
        body: bytes,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        caller: Caller,
        servers: list[MCPServer],
        headers: Mapping[str, str],
    ) -> None:
        """One message of an SSE session, served here as `/mcp` serves a request; its
        answer goes to the session's stream, wherever that is held."""
        query = parse_qs(scope["query_string"].decode("latin-1"))
        session_id = (query.get("session_id") or [""])[0]
        if not session_id:
            await self._refuse(send, InvalidRequest("`session_id` is missing.", param="session_id"))
            return
        answered = _Captured()
        await self._serve(_as_streamable(scope), body, receive, answered, caller, servers, headers)
        if answered.body and not await self._hub.deliver(
            self._gateway.fleet, caller.identity, session_id, bytes(answered.body)
        ):
            error = NotFound("No MCP SSE session has that id.", code="mcp_session_not_found")
            await self._refuse(send, error)
            return
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"Accepted", "more_body": False})

    async def _servers(
        self, caller: Caller, selected: str, headers: Mapping[str, str]
    ) -> list[MCPServer]:
        """The servers this request may use: those it asks for, that the caller may use."""
        servers = await self._gateway.mcp.servers(self._gateway.store)
        if selected:
            if selected not in servers:
                raise NotFound(f"No MCP server `{selected}` exists.", code="mcp_server_not_found")
            wanted = [servers[selected]]
        elif named := headers.get("x-mcp-servers"):
            names = [n.strip() for n in named.split(",") if n.strip()]
            unknown = [n for n in names if n not in servers]
            if unknown:
                raise InvalidRequest(
                    f"`x-mcp-servers` names unknown MCP servers: {', '.join(unknown)}.",
                    param="x-mcp-servers",
                )
            wanted = [servers[n] for n in names]
        else:
            wanted = list(servers.values())
        return grant_of(caller).servers(wanted)

    async def _serve(
        self,
        scope: Scope,
        body: bytes,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        caller: Caller,
        servers: list[MCPServer],
        headers: Mapping[str, str],
    ) -> None:
        """One client session: the SDK's stateless transport over the caller's view, in
        a nursery that holds its upstream sessions and ends with the request."""
        await load_sdk()
        from trigate.api.mcp_session import session_manager

        async with (
            session_manager(self._gateway, caller, servers, headers) as manager,
            trio.open_nursery() as request,
        ):
            request.start_soon(_cancel_on_disconnect, receive, request.cancel_scope)
            async with manager.run():
                # The SDK types ASGI with Starlette's aliases, hypercorn's differ in name only.
                await manager.handle_request(scope, _replay(body), send)  # type: ignore[arg-type]
            request.cancel_scope.cancel()

    async def _refuse(self, send: ASGISendCallable, error: GatewayError) -> None:
        status, headers, body = self._render_error(error)
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": body, "more_body": False})


class _Captured:
    """An ASGI `send` that keeps the answer instead of sending it."""

    def __init__(self) -> None:
        self.body = bytearray()

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.body":
            self.body += message.get("body", b"")


def _as_streamable(scope: HTTPScope) -> Any:
    """An SSE session's message as a streamable HTTP request of its own."""
    kept = [
        (name, value)
        for name, value in scope["headers"]
        if name.lower() not in (b"accept", b"content-type", b"mcp-session-id")
    ]
    return {
        **scope,
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "headers": [
            *kept,
            (b"accept", b"application/json, text/event-stream"),
            (b"content-type", b"application/json"),
        ],
    }


async def load_sdk() -> None:
    """Import the modules that use the MCP SDK, once per process, in a worker thread.
    Two first sessions at once both wait for it; the second thread's import waits on
    the first's module lock, off the event loop."""
    global _sdk_loaded
    if not _sdk_loaded:
        await trio.to_thread.run_sync(_import_sdk_modules)
        _sdk_loaded = True


def _import_sdk_modules() -> None:
    for name in _SDK_MODULES:
        importlib.import_module(name)


def _selected(path: str) -> str | None:
    """The server a path names: "" for `/mcp` (all), its name for `/mcp/{server}`, None
    for a path that is not the MCP endpoint's (every other request: one prefix check)."""
    if not path.startswith(PATH):
        return None
    if path in (PATH, _UNDER):
        return ""
    if path == SSE_MESSAGES_PATH:
        return SSE_MESSAGES
    rest = path.removeprefix(_UNDER).rstrip("/")
    if path.startswith(_UNDER) and rest and "/" not in rest:
        return rest
    return None


async def _body(receive: ASGIReceiveCallable, limit: int) -> bytes:
    body = bytearray()
    while True:
        message: Any = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("The client left before its request arrived.")
        body += message.get("body", b"")
        if len(body) > limit:
            raise InvalidRequest(f"The request body is larger than {limit} bytes.")
        if not message.get("more_body", False):
            return bytes(body)


def _replay(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A `receive` that gives the SDK the body already read, then waits (the client's
    departure is watched by `_cancel_on_disconnect`, which cancels the request)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    return receive


async def _cancel_on_disconnect(receive: ASGIReceiveCallable, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()

"""Client sessions to upstream MCP servers, each held by a task in a nursery that the
client's session owns.

A session is opened when the client's session first needs that server (listing tools
opens every server it may use; a tool call only its server's), and is shared by the
client session's later calls. Each is held open by its own task (the SDK's transports
are task groups, which must be left by the task that entered them), started in the
client session's nursery: when the client session ends, or its client leaves and the
request is cancelled, the nursery closes every upstream session, and a stdio server's
process is stopped and reaped (the SDK's `stdio_client` does so shielded, bounded).
Each session holds a slot of its server and of the caller's key while it is open
(trigate/mcp_gateway/capacity.py), so that no key opens sessions, nor spawns processes,
without bound.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx2
import trio
from mcp import ClientSession, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from trigate.auth import Caller, presented_key
from trigate.mcp_gateway.capacity import CapacityFull, SessionCapacity, Slot
from trigate.mcp_gateway.servers import MCPServer

logger = logging.getLogger("trigate")

# How long opening an upstream session (connecting, spawning, initializing) may take.
OPEN_TIMEOUT = 30.0
# An upstream's answers: a tool may work for a while, not forever.
READ_TIMEOUT = 300.0


class UpstreamFailed(Exception):
    """An upstream MCP server could not be reached or did not initialize."""


@asynccontextmanager
async def connect(
    server: MCPServer, client_headers: Mapping[str, str]
) -> AsyncIterator[ClientSession]:
    """An initialized client session to `server`, closed (its process reaped) on exit."""
    async with (
        _transport(server, server.headers(dict(client_headers))) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def _transport(server: MCPServer, headers: dict[str, str]) -> AbstractAsyncContextManager[Any]:
    """The SDK's transport to `server`: its read and write streams."""
    if server.kind == "stdio":
        assert server.command is not None
        return stdio_client(
            StdioServerParameters(command=server.command, args=server.args, env=server.env)
        )
    assert server.url is not None
    if server.kind == "sse":
        return sse_client(
            server.url,
            headers=headers,
            sse_read_timeout=READ_TIMEOUT,
            httpx_client_factory=_sse_http_client,
        )
    return _streamable_http(server.url, headers)


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx2's default TLS context, made once per process: a client makes its own by
    default, parsing the CA bundle (tens of milliseconds) for every upstream session,
    so for every MCP request."""
    return httpx2.create_ssl_context()


def _sse_http_client(
    headers: dict[str, str] | None = None,
    timeout: httpx2.Timeout | None = None,
    auth: httpx2.Auth | None = None,
) -> httpx2.AsyncClient:
    """The SDK's client for the SSE transport (its `create_mcp_http_client`), on `_tls`."""
    timeout = timeout or httpx2.Timeout(OPEN_TIMEOUT, read=READ_TIMEOUT)
    return httpx2.AsyncClient(headers=headers, timeout=timeout, auth=auth, verify=_tls())


@asynccontextmanager
async def _streamable_http(url: str, headers: dict[str, str]) -> AsyncIterator[Any]:
    timeout = httpx2.Timeout(OPEN_TIMEOUT, read=READ_TIMEOUT)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout, verify=_tls()) as client,
        streamable_http_client(url, http_client=client) as streams,
    ):
        yield streams


@asynccontextmanager
async def upstream_sessions(
    client_headers: Mapping[str, str], capacity: SessionCapacity, holder: str
) -> AsyncIterator[Upstreams]:
    """A client session's upstream sessions, all closed when the block ends, each under
    `capacity` for its server and for the key `holder`. What the
    block raises comes out as it was raised, not inside the nursery's exception group
    (the sessions' own tasks never raise: they log what ends them)."""
    try:
        async with trio.open_nursery() as nursery:
            headers = without_gateway_key(client_headers)
            upstreams = Upstreams(nursery, headers, capacity, holder)
            try:
                yield upstreams
            finally:
                upstreams.close()
    except BaseExceptionGroup as group:
        raise _alone(group) from None


def holder_of(caller: Caller) -> str:
    """Whose slots a caller's sessions take (trigate/mcp_gateway/capacity.py): its key's,
    else (a verified token, a UI session) its identity's."""
    return caller.key_hash or caller.identity


def without_gateway_key(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's headers without the one that carried its key for the gateway (and
    cookies): a server's `extra_headers` may name `Authorization` for a client that
    sends its gateway key in `x-litellm-api-key`, never forward the gateway key itself."""
    key = presented_key(headers)
    return {
        name: value
        for name, value in headers.items()
        if name not in ("cookie", "x-litellm-api-key") and not (key and key in value)
    }


def _alone(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception a group holds (however nested), or the group itself."""
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return group


class Upstreams:
    """The upstream sessions of one client session, held in its `nursery`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        client_headers: Mapping[str, str],
        capacity: SessionCapacity,
        holder: str,
    ) -> None:
        self._nursery = nursery
        self._client_headers = client_headers
        self._capacity = capacity
        self._holder = holder
        self._sessions: dict[str, ClientSession] = {}
        self._opening: dict[str, trio.Event] = {}
        self._closed = trio.Event()

    def headers_for(self, server: MCPServer) -> dict[str, str]:
        """The headers this client session's requests send `server`."""
        return server.headers(dict(self._client_headers))

    async def session(self, server: MCPServer) -> ClientSession:
        """The session to `server`, opened now if it is not open yet (once, however many
        of the client's calls ask at the same time)."""
        name = str(server.name)
        while (opening := self._opening.get(name)) is not None:
            await opening.wait()
        if (existing := self._sessions.get(name)) is not None:
            return existing
        self._opening[name] = trio.Event()
        try:
            slot = await self._capacity.take(server, self._holder)
            try:
                with trio.fail_after(OPEN_TIMEOUT):
                    opened: ClientSession = await self._nursery.start(self._hold, server, slot)
            except BaseException:
                slot.release()  # never started, or failed to open (`_hold` gave it back)
                raise
        except CapacityFull as full:
            raise UpstreamFailed(str(full)) from None
        except trio.TooSlowError:
            raise UpstreamFailed(f"MCP server `{name}` did not answer in time") from None
        except Exception as failed:  # whatever the transport raised (often a group)
            logger.warning("MCP server %s could not be reached: %r", name, failed)
            raise UpstreamFailed(f"MCP server `{name}` could not be reached") from None
        finally:
            self._opening.pop(name).set()
        self._sessions[name] = opened
        return opened

    async def _hold(
        self, server: MCPServer, slot: Slot, *, task_status: trio.TaskStatus[ClientSession]
    ) -> None:
        name = str(server.name)
        started = False
        try:
            async with connect(server, self._client_headers) as session:
                task_status.started(session)
                started = True
                await self._closed.wait()
        except Exception as lost:
            if not started:
                raise
            # A session lost midway fails only the calls that use it, never the client's.
            logger.warning("MCP server %s session ended: %r", name, lost)
        finally:
            self._sessions.pop(name, None)
            slot.release()

    def close(self) -> None:
        """End every upstream session (their tasks leave the nursery as they close)."""
        self._closed.set()

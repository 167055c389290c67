"""The gateway's own MCP server for one client session: the tools, prompts and resources
of every upstream server the caller may use, as one.

Tools and prompts are named `{server}-{name}` (LiteLLM's prefix and separator), so that
two servers' `search` stay apart and a call finds its server by its name. A caller sees
only the tools it may call (trigate.mcp_gateway.permissions); a call to any other is
refused here, before any upstream session is opened. A caller left with no tool at all
is answered with an error that says why, never an empty list a model would work around.
Every tool call is admitted by a `ToolMeter` (a priced one under the caller's budgets)
and, refused or made, accounted by it (the spend log, metrics, a span).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import mcp_types as types
import trio
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError

from trigate.mcp_gateway.listing import ToolListings
from trigate.mcp_gateway.permissions import Grant
from trigate.mcp_gateway.servers import SEPARATOR, MCPServer
from trigate.mcp_gateway.upstream import UpstreamFailed, Upstreams

logger = logging.getLogger("trigate")

T = TypeVar("T")
# The most pages of one listing read from one upstream server.
MAX_PAGES = 100


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call as the spend log and metrics count it."""

    server: MCPServer
    tool: str
    # "success", "error" (the tool's own error, or a failed upstream), or "refused".
    status: str
    start: float
    end: float
    error: str | None = None

    @property
    def cost(self) -> float:
        return self.server.cost(self.tool) if self.status != "refused" else 0.0


# How a call that was made is accounted once it ends (its admission settled, its row
# written): what `ToolMeter.admit` gives back.
Finish = Callable[[ToolCall], Awaitable[None]]


class ToolRefused(Exception):
    """The caller may not make this call now (a budget): the meter's refusal."""


class ToolMeter(Protocol):
    """Where tool calls are admitted and accounted (trigate/api/mcp_endpoint.py)."""

    async def admit(self, server: MCPServer, tool: str) -> Finish:
        """Let the call in (a priced tool under the caller's budgets), or `ToolRefused`."""
        ...

    async def account(self, call: ToolCall) -> None:
        """Account a call refused before it left (a made one is its `Finish`'s)."""
        ...


class NoTools(MCPError):
    """The caller may use no tool at all."""


def prefixed(server: MCPServer, name: str) -> str:
    return f"{server.name}{SEPARATOR}{name}"


class Aggregate:
    """One client session's view: `servers` (those it may use and asked for), under
    `grant`, through `upstreams`."""

    def __init__(
        self,
        servers: Sequence[MCPServer],
        grant: Grant,
        upstreams: Upstreams,
        meter: ToolMeter,
        clock: Callable[[], float],
        listings: ToolListings | None = None,
    ) -> None:
        self._servers = {str(s.name): s for s in servers}
        self._listings = listings
        self._grant = grant
        self._upstreams = upstreams
        self._meter = meter
        self._clock = clock

    def server(self) -> Server[Any]:
        """The SDK's low-level server, its handlers bound to this view."""
        return Server(
            "trigate",
            version="1",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt,
            on_list_resources=self._list_resources,
            on_read_resource=self._read_resource,
        )

    # The operations, also used directly by the Responses API's MCP tools.

    async def tools(self) -> list[types.Tool]:
        """Every tool the caller may call, prefixed; `NoTools` when there is none."""
        failed: dict[str, str] = {}
        listed = await self._gather(self._tools_of, failed)
        tools = [tool for batch in listed for tool in batch]
        if not tools and failed:
            # Say why (a server down, or at its bound of sessions), not "no tools".
            raise MCPError(types.INTERNAL_ERROR, " ".join(failed.values()))
        if not tools:
            raise NoTools(
                types.INVALID_REQUEST,
                "No MCP tools are available to this key: "
                + (
                    f"of the MCP servers {sorted(self._servers)}, it may call none of their tools"
                    if self._servers
                    else "it may use none of the gateway's MCP servers"
                )
                + ". Ask an admin for `object_permission.mcp_servers` on the key or its team.",
            )
        return tools

    async def call(self, name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
        """Call the tool `name` (prefixed) if the caller may; refused ones never leave."""
        server, tool = self._split(name)
        start = self._clock()
        if server is None or not self._grant.may_call(server, tool):
            if server is not None:
                await self._meter.account(ToolCall(server, tool, "refused", start, self._clock()))
            raise MCPError(types.INVALID_PARAMS, f"Tool `{name}` is not available to this key.")
        try:
            finish = await self._meter.admit(server, tool)
        except ToolRefused as refusal:
            why = str(refusal)
            await self._meter.account(ToolCall(server, tool, "refused", start, self._clock(), why))
            raise MCPError(types.INVALID_REQUEST, why) from None
        status, error = "error", None
        try:
            result = await (await self._session(server)).call_tool(tool, arguments)
        except MCPError as failed:
            error = failed.message
            raise
        else:
            if not isinstance(result, types.CallToolResult):
                error = "the tool asked for input"
                raise MCPError(types.INTERNAL_ERROR, f"Tool `{name}` asked for input.")
            status = "error" if result.is_error else "success"
            return result
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await finish(ToolCall(server, tool, status, start, self._clock(), error))

    # The SDK's handlers.

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=await self.tools())

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return await self.call(params.name, params.arguments)

    async def _list_prompts(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        listed = await self._gather(self._prompts_of)
        return types.ListPromptsResult(prompts=[p for batch in listed for p in batch])

    async def _get_prompt(
        self, ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        server, prompt = self._split(params.name)
        if server is None:
            raise MCPError(types.INVALID_PARAMS, f"Prompt `{params.name}` is not available.")
        session = await self._session(server)
        result = await session.get_prompt(prompt, params.arguments)
        assert isinstance(result, types.GetPromptResult)  # input is never allowed
        return result

    async def _list_resources(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        listed = await self._gather(self._resources_of)
        return types.ListResourcesResult(resources=[r for batch in listed for r in batch])

    async def _read_resource(
        self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        for server in self._servers.values():
            if any(str(r.uri) == uri for r in await self._resources_of(server)):
                result = await (await self._session(server)).read_resource(uri)
                assert isinstance(result, types.ReadResourceResult)  # input is never allowed
                return result
        raise MCPError(types.INVALID_PARAMS, f"Resource `{uri}` is not available.")

    # Listing each server.

    async def _tools_of(self, server: MCPServer) -> list[types.Tool]:
        """The server's tools the caller may call, prefixed."""
        listed = await self._kept("tools", server, self._listed)
        return [
            t.model_copy(update={"name": prefixed(server, t.name)})
            for t in listed
            if self._grant.may_call(server, t.name)
        ]

    async def _listed(self, server: MCPServer) -> list[types.Tool]:
        """Every tool the server lists, from the server."""
        session = await self._session(server)
        tools: list[types.Tool] = []
        cursor = None
        for _ in range(MAX_PAGES):
            page = await session.list_tools(params=_page(cursor))
            tools += page.tools
            if (cursor := page.next_cursor) is None:
                break
        return tools

    async def _prompts_of(self, server: MCPServer) -> list[types.Prompt]:
        async def fetch(server: MCPServer) -> list[types.Prompt]:
            return list((await (await self._session(server)).list_prompts()).prompts)

        listed = await self._kept("prompts", server, fetch)
        return [p.model_copy(update={"name": prefixed(server, p.name)}) for p in listed]

    async def _resources_of(self, server: MCPServer) -> list[types.Resource]:
        async def fetch(server: MCPServer) -> list[types.Resource]:
            return list((await (await self._session(server)).list_resources()).resources)

        return list(await self._kept("resources", server, fetch))

    async def _kept(
        self, kind: str, server: MCPServer, fetch: Callable[[MCPServer], Awaitable[list[T]]]
    ) -> Sequence[T]:
        """A listing of the server's, kept a while (trigate/mcp_gateway/listing.py)."""
        if self._listings is None:
            return await fetch(server)
        headers = self._upstreams.headers_for(server)
        return await self._listings.listed(kind, server, headers, lambda: fetch(server))

    async def _gather(
        self, each: Callable[[MCPServer], Awaitable[list[T]]], failed: dict[str, str] | None = None
    ) -> list[list[T]]:
        """`each` of every server at once. A server that fails is left out (logged, and
        its error kept in `failed`): one server down must not take every other's tools
        away."""
        results: dict[str, list[T]] = {}

        async def one(server: MCPServer) -> None:
            try:
                results[str(server.name)] = await each(server)
            except (MCPError, UpstreamFailed) as error:
                logger.warning("MCP server %s left out of a listing: %s", server.name, error)
                if failed is not None:
                    failed[str(server.name)] = str(
                        error.message if isinstance(error, MCPError) else error
                    )

        async with trio.open_nursery() as nursery:
            for server in self._servers.values():
                nursery.start_soon(one, server)
        return [results[name] for name in self._servers if name in results]

    async def _session(self, server: MCPServer) -> Any:
        try:
            return await self._upstreams.session(server)
        except UpstreamFailed as failed:
            raise MCPError(types.INTERNAL_ERROR, str(failed)) from None

    def _split(self, name: str) -> tuple[MCPServer | None, str]:
        """The server a prefixed name belongs to, and the name on that server. Server
        names hold no separator, so the first one ends the prefix."""
        prefix, separator, rest = name.partition(SEPARATOR)
        server = self._servers.get(prefix) if separator else None
        return server, rest


def _page(cursor: str | None) -> types.PaginatedRequestParams | None:
    return types.PaginatedRequestParams(cursor=cursor) if cursor is not None else None

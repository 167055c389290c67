"""The MCP SDK's side of an `/mcp` request (trigate/api/mcp_endpoint.py): the SDK's
stateless streamable HTTP transport over the caller's `Aggregate`, and the meter that
admits and accounts the caller's tool calls on any route.

This module imports the SDK, so nothing imports it at start: the endpoint loads it at
the first MCP session (`mcp_endpoint.load_sdk`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from trigate.api.context import current_request
from trigate.auth import Caller
from trigate.clock import wall_time
from trigate.errors import GatewayError
from trigate.gateway import Gateway
from trigate.limits import Admission
from trigate.mcp_gateway.accounting import tool_record
from trigate.mcp_gateway.aggregate import Aggregate, Finish, ToolCall, ToolRefused
from trigate.mcp_gateway.permissions import grant_of
from trigate.mcp_gateway.servers import MCPServer
from trigate.mcp_gateway.upstream import holder_of, upstream_sessions

# The SDK logs each session manager's start and stop and each transport's end at INFO:
# here a session is a request, and its lines would outnumber the access log's.
for _name in ("mcp.server.streamable_http_manager", "mcp.server.streamable_http"):
    logging.getLogger(_name).setLevel(logging.WARNING)


@asynccontextmanager
async def session_manager(
    gateway: Gateway, caller: Caller, servers: list[MCPServer], headers: Mapping[str, str]
) -> AsyncIterator[StreamableHTTPSessionManager]:
    """The SDK's stateless session manager over what `caller` may use of `servers`,
    its upstream sessions held open until the block ends."""
    capacity = gateway.mcp.capacity
    async with upstream_sessions(headers, capacity, holder_of(caller)) as upstreams:
        view = Aggregate(
            servers,
            grant_of(caller),
            upstreams,
            GatewayMeter(gateway, caller),
            wall_time,
            gateway.mcp.listings,
        )
        yield StreamableHTTPSessionManager(view.server(), stateless=True, json_response=True)


class GatewayMeter:
    """How the gateway admits and accounts a caller's tool calls, whichever route made
    them. A priced tool (`mcp_info`) is admitted as a request is: the caller's budgets
    (and rate limits) checked, its price reserved, then settled; a free one passes.
    Every call is counted in the metrics, is a span when tracing is on, and a
    spend-log row billed to the caller."""

    def __init__(self, gateway: Gateway, caller: Caller) -> None:
        self._gateway = gateway
        self._caller = caller
        self._traceparent = current_request.get().traceparent

    async def admit(self, server: MCPServer, tool: str) -> Finish:
        admission = await self._admission(server.cost(tool))

        async def finish(call: ToolCall) -> None:
            if admission is not None:
                await admission.settle(0, call.cost)
            await self.account(call)

        return finish

    async def _admission(self, price: float) -> Admission | None:
        gateway, caller = self._gateway, self._caller
        if price <= 0:
            return None
        proxy = await gateway.proxy_budget_row() if gateway.proxy_budget is not None else None
        if caller.is_master and proxy is None:
            return None

        async def no_tokens() -> int:
            return 0

        async def most() -> float:
            return price

        try:
            return await gateway.limits.admit(caller, no_tokens, most, proxy)
        except GatewayError as refusal:
            raise ToolRefused(refusal.message) from None

    async def account(self, call: ToolCall) -> None:
        """Account `call` (refused, or made and settled): metrics, span, spend row."""
        gateway = self._gateway
        name = str(call.server.name)
        gateway.telemetry.metrics.mcp_tool_call(name, call.status, call.end - call.start)
        tracing = gateway.telemetry.tracing
        if tracing is not None:
            span = tracing.tool_span(self._traceparent, name, call.tool, call.start)
            if span is not None:
                span.attributes["trigate.mcp_status"] = call.status
                if call.status == "success":
                    span.end()
                else:
                    span.fail(RuntimeError(call.error or call.status))
        await gateway.record(tool_record(self._caller, call))

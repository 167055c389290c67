"""An MCP server over streamable HTTP, written with the mcp SDK, on a real socket: the
upstream the MCP gateway's tests aggregate. It records the headers each tool call came
with, so a test asserts on what the upstream actually received."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from mcp.server.mcpserver import Context, MCPServer


@dataclass
class FakeMCP:
    url: str
    # The headers of each tool call, by tool.
    calls: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    # How many `tools/list` requests it answered.
    listings: int = 0


def weather_server(seen: FakeMCP) -> MCPServer:
    server = MCPServer("weather")

    def heard(tool: str, ctx: Context) -> None:
        seen.calls.setdefault(tool, []).append(dict(ctx.headers or {}))

    @server.tool()
    def forecast(city: str, ctx: Context) -> str:
        """The forecast for a city."""
        heard("forecast", ctx)
        return f"sunny in {city}"

    @server.tool()
    def alerts(ctx: Context) -> str:
        """Weather alerts."""
        heard("alerts", ctx)
        return "no alerts"

    @server.tool()
    def fail(ctx: Context) -> str:
        """Always fails."""
        heard("fail", ctx)
        raise ValueError("the weather station is down")

    @server.prompt()
    def brief(city: str) -> str:
        """A prompt asking for a weather brief."""
        return f"Write a weather brief for {city}."

    @server.resource("weather://stations")
    def stations() -> str:
        """The weather stations."""
        return "north, south"

    return server


async def start_fake_mcp(nursery: trio.Nursery) -> FakeMCP:
    """The weather server at http://127.0.0.1:{port}/mcp, running in `nursery`."""
    seen = FakeMCP("")
    inner = weather_server(seen).streamable_http_app(stateless_http=True, json_response=True)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def counting() -> Any:
            message = await receive()
            if b'"tools/list"' in message.get("body", b""):
                seen.listings += 1
            return message

        await inner(scope, counting, send)

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    binds = await nursery.start(serve, app, config)
    seen.url = f"{binds[0]}/mcp"
    return seen

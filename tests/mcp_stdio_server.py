"""An MCP server over stdio, written with the mcp SDK, that the MCP gateway's tests spawn
as `python tests/mcp_stdio_server.py` (trigate.mcp_gateway serves it as `mcp_servers:
{local: {command: ..., args: [...]}}`)."""

from __future__ import annotations

import os
import time

from mcp.server.mcpserver import MCPServer

server = MCPServer("local")


@server.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    return f"echo: {text}"


@server.tool()
def pid() -> int:
    """This server's process id, so that a test can look for it in the process table."""
    return os.getpid()


@server.tool()
def hang() -> str:
    """Never answers: a test's client leaves while it runs."""
    while True:
        time.sleep(60)


@server.tool()
def env(name: str) -> str:
    """A variable of this process's environment (the server's `env`)."""
    return os.environ.get(name, "")


if __name__ == "__main__":
    server.run("stdio")

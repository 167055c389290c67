"""Serve a chat completion and a Responses request, print whether any of the MCP SDK's
modules is loaded, then initialize an MCP session on `/mcp` and print it again. Run in
a fresh interpreter by tests/test_mcp_gateway.py: a worker loads the SDK at its first
MCP request, never at start (trigate/api/mcp_endpoint.py)."""

from __future__ import annotations

import sys

import trio

# Run as a script, so its own directory (the tests') is on sys.path.
from helpers import MESSAGES, mock_config, start_gateway

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "probe", "version": "1"},
    },
}


def sdk_loaded() -> bool:
    return any(name.partition(".")[0] in ("mcp", "mcp_types") for name in sys.modules)


async def main() -> None:
    async with trio.open_nursery() as nursery:
        gateway = await start_gateway(nursery, mock_config())
        async with gateway.client() as client:
            chat = await client.post(
                "/v1/chat/completions", json={"model": "mock", "messages": MESSAGES}
            )
            assert chat.status_code == 200, chat.text
            responses = await client.post("/v1/responses", json={"model": "mock", "input": "hi"})
            assert responses.status_code == 200, responses.text
            print("before", sdk_loaded())
            accept = {"accept": "application/json, text/event-stream"}
            session = await client.post("/mcp", json=INITIALIZE, headers=accept)
            assert session.status_code == 200, session.text
            assert session.json()["result"]["serverInfo"]["name"] == "trigate"
            print("after", sdk_loaded())
        await gateway.stop()


if __name__ == "__main__":
    trio.run(main)

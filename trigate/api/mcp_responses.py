"""MCP tools inside the Responses API: `tools: [{"type": "mcp", "server_url":
"litellm_proxy/mcp/<server>", "require_approval": "never"}]`, as LiteLLM runs them.

The gateway lists the tools of the servers named (`litellm_proxy/mcp` alone: every
server the key may use), under the key's permissions, and gives them to the model as
function tools (named `{server}-{tool}`). When the model calls one, the gateway calls
it (checked against the key's permissions, accounted and traced as any MCP tool call)
and asks the model again with the result, until the model answers without calling an
MCP tool (at most `MAX_ROUNDS` times). Each round is one model call on the pipeline,
native or translated alike, with its own spend row. The answer carries OpenAI's items
for what happened: `mcp_list_tools` for each server, and `mcp_call` for each call.

With `require_approval` other than `never` (OpenAI's default is `always`), a call the
model asks for is not made: the answer carries an `mcp_approval_request` for it, as
OpenAI's API does, and a follow-up (`previous_response_id`) whose input holds an
`mcp_approval_response` makes the call (or tells the model it was declined). The
request's id carries what the call was, so no state waits between the two requests.

A request without an `mcp` tool or approval pays one `bytes.find` for this. The loop
itself is trigate/api/mcp_tool_loop.py, which imports the MCP SDK: it is loaded at the
first request that has an MCP tool (`mcp_endpoint.load_sdk`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trigate.api.jsonio import parse_json_object
from trigate.api.mcp_endpoint import load_sdk
from trigate.api.model_api import Reply, Route
from trigate.auth import Caller
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway


class MCPResponses:
    """`POST /v1/responses`, with MCP tools run by the gateway around `inner`."""

    def __init__(self, inner: Route, gateway: Gateway) -> None:
        self._inner = inner
        self._gateway = gateway

    def route(self) -> Route:
        return Route(self.serve, self._inner.envelope)

    async def serve(
        self, caller: Caller, headers: Mapping[str, str], raw: bytes | bytearray
    ) -> Reply:
        if raw.find(b'"mcp') < 0:
            return await self._inner.handler(caller, headers, raw)
        body = parse_json_object(raw)
        specs = [
            t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "mcp"
        ]
        if not specs and not _approvals(body):
            return await self._inner.handler(caller, headers, raw)
        if body.get("stream"):
            raise InvalidRequest(
                "MCP tools run by the gateway answer whole: send `stream: false`.",
                param="stream",
            )
        await load_sdk()
        from trigate.api.mcp_tool_loop import ToolLoop

        return await ToolLoop(self._inner, self._gateway).serve(caller, headers, body, specs)


def input_items(body: dict[str, Any]) -> list[Any]:
    given = body.get("input")
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    return list(given) if isinstance(given, list) else []


def _approvals(body: dict[str, Any]) -> bool:
    return any(
        isinstance(item, dict) and item.get("type") == "mcp_approval_response"
        for item in input_items(body)
    )

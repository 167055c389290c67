"""The Responses API's MCP tool loop (trigate/api/mcp_responses.py): the tools of the
servers a request's `mcp` tools name, given to the model as function tools, and each
call the model makes run by the gateway, round after round, until it answers without
one.

This module imports the MCP SDK, so nothing imports it at start: `MCPResponses` loads it
at the first request with an MCP tool (`mcp_endpoint.load_sdk`).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import mcp_types as types
import orjson
import trio
from mcp.shared.exceptions import MCPError

from trigate.api.context import current_request
from trigate.api.mcp_responses import input_items
from trigate.api.mcp_session import GatewayMeter
from trigate.api.model_api import Reply, Route
from trigate.auth import Caller
from trigate.clock import wall_time
from trigate.errors import GatewayError, InvalidRequest
from trigate.gateway import Gateway
from trigate.mcp_gateway.aggregate import Aggregate, NoTools
from trigate.mcp_gateway.permissions import grant_of
from trigate.mcp_gateway.servers import MCPServer
from trigate.mcp_gateway.upstream import Upstreams, holder_of, upstream_sessions

# LiteLLM's name for the gateway's own MCP servers in a tool's `server_url`.
PROXY_URL = "litellm_proxy"
# How many model calls one request may make for its MCP tools.
MAX_ROUNDS = 10
_APPROVAL_PREFIX = "mcpr_"


class ToolLoopTooLong(GatewayError):
    status = 502
    code = "mcp_tool_loop_too_long"


@dataclass(slots=True)
class _Tools:
    """The request's MCP tools: what the model is given, by name."""

    aggregate: Aggregate
    listed: list[types.Tool]
    # By tool name: the `server_label` its item carries, and whether it needs approval.
    labels: dict[str, str] = field(default_factory=dict)
    approval: dict[str, bool] = field(default_factory=dict)
    # OpenAI's `mcp_list_tools` items, one per server.
    items: list[dict[str, Any]] = field(default_factory=list)
    # The `server_label` of each server the request's `mcp` tools name, by name.
    servers: dict[str, str] = field(default_factory=dict)

    def label(self, name: str) -> str | None:
        """The label of the server a tool name belongs to, if it is an MCP tool's: one
        offered, or one of a named server's that was not (the model made it up, or the
        key may not call it: the call is refused, never made)."""
        if name in self.labels:
            return self.labels[name]
        server, separator, _ = name.partition("-")
        return self.servers.get(server) if separator else None

    def needs_approval(self, name: str) -> bool:
        return self.approval.get(name, False)


class ToolLoop:
    """One request's MCP tools, run by the gateway around `inner`."""

    def __init__(self, inner: Route, gateway: Gateway) -> None:
        self._inner = inner
        self._gateway = gateway

    async def serve(
        self,
        caller: Caller,
        headers: Mapping[str, str],
        body: dict[str, Any],
        specs: list[dict[str, Any]],
    ) -> Reply:
        """Answer `body`, whose `mcp` tools are `specs`, with the upstream sessions its
        calls open held until the answer is made."""
        capacity = self._gateway.mcp.capacity
        async with upstream_sessions(headers, capacity, holder_of(caller)) as upstreams:
            return await self._loop(caller, headers, body, specs, upstreams)

    async def _loop(
        self,
        caller: Caller,
        headers: Mapping[str, str],
        body: dict[str, Any],
        specs: list[dict[str, Any]],
        upstreams: Upstreams,
    ) -> Reply:
        tools = await self._tools(caller, specs, upstreams)
        others = [
            t
            for t in body.get("tools") or ()
            if not (isinstance(t, dict) and t.get("type") == "mcp")
        ]
        functions = [_function_tool(tool) for tool in tools.listed]
        done: list[dict[str, Any]] = []
        conversation = await self._approved(input_items(body), tools, done)
        sent = {**body, "tools": [*others, *functions]}
        if not sent["tools"]:
            sent.pop("tools")
        for round_ in range(MAX_ROUNDS):
            sent["input"] = conversation
            reply = await self._ask(caller, headers, sent, fresh=round_ > 0)
            if reply.status != 200 or not isinstance(reply.body, bytes):
                return reply
            response = orjson.loads(reply.body)
            calls = [
                item for item in response.get("output") or ()
                if item.get("type") == "function_call" and tools.label(item.get("name", ""))
            ]  # fmt: skip
            if not calls:
                return _answer(reply, response, body, tools.items + done)
            if any(tools.needs_approval(c["name"]) for c in calls):
                return _answer(reply, _asking_approval(response, tools), body, tools.items + done)
            for call in calls:
                output, item = await _run(tools, call["name"], call.get("arguments"))
                done.append(item)
                conversation = [
                    *conversation,
                    _function_call(call),
                    {"type": "function_call_output", "call_id": call["call_id"], "output": output},
                ]
        raise ToolLoopTooLong(
            f"The model was still calling MCP tools after {MAX_ROUNDS} rounds; nothing more "
            "was asked of it."
        )

    async def _tools(
        self, caller: Caller, specs: list[dict[str, Any]], upstreams: Upstreams
    ) -> _Tools:
        """The tools `specs` name that the caller may call, listed from their servers."""
        served = await self._gateway.mcp.servers(self._gateway.store)
        named: dict[str, tuple[MCPServer, dict[str, Any]]] = {}
        for spec in specs:
            for server in _servers_of(spec, served):
                named.setdefault(str(server.name), (server, spec))
        grant = grant_of(caller)
        visible = grant.servers(server for server, _ in named.values())
        meter = GatewayMeter(self._gateway, caller)
        listings = self._gateway.mcp.listings
        aggregate = Aggregate(visible, grant, upstreams, meter, wall_time, listings)
        tools = _Tools(aggregate, [])
        tools.servers = {
            name: str(spec.get("server_label") or name) for name, (_, spec) in named.items()
        }
        if not named:
            return tools
        try:
            listed = await aggregate.tools()
        except NoTools as error:
            raise InvalidRequest(error.message, param="tools") from None
        by_server: dict[str, list[dict[str, Any]]] = {}
        for tool in listed:
            server_name = tool.name.split("-", 1)[0]
            server, spec = named[server_name]
            allowed = spec.get("allowed_tools")
            bare = tool.name.split("-", 1)[1]
            if isinstance(allowed, list) and bare not in allowed and tool.name not in allowed:
                continue
            tools.listed.append(tool)
            label = str(spec.get("server_label") or server.name)
            tools.labels[tool.name] = label
            tools.approval[tool.name] = _needs_approval(
                spec.get("require_approval"), tool.name, bare
            )
            by_server.setdefault(label, []).append(_listed(tool))
        tools.items = [
            {
                "type": "mcp_list_tools",
                "id": _id("mcpl_"),
                "server_label": label,
                "tools": listed_tools,
            }
            for label, listed_tools in by_server.items()
        ]
        return tools

    async def _approved(
        self, items: list[Any], tools: _Tools, done: list[dict[str, Any]]
    ) -> list[Any]:
        """The input with each `mcp_approval_response` replaced by its call's output:
        the call made if approved, the model told it was declined if not."""
        conversation: list[Any] = []
        for item in items:
            if not (isinstance(item, dict) and item.get("type") == "mcp_approval_response"):
                conversation.append(item)
                continue
            call_id, name, arguments = _approval_of(item.get("approval_request_id"))
            if item.get("approve") is True:
                output, made = await _run(tools, name, arguments)
                done.append(made)
            else:
                output = "The user declined this tool call."
            conversation.append(
                {"type": "function_call_output", "call_id": call_id, "output": output}
            )
        return conversation

    async def _ask(
        self, caller: Caller, headers: Mapping[str, str], body: dict[str, Any], *, fresh: bool
    ) -> Reply:
        """One model call on the pipeline. Each after the first is a request of its own
        to the pipeline (its own id, spend row and span), in a copy of the context."""
        raw = orjson.dumps(body)
        if not fresh:
            return await self._inner.handler(caller, headers, raw)
        context = current_request.get()
        own = replace(context, request_id=os.urandom(16).hex(), started=trio.current_time())
        own.headers = {}
        own.call = own.route = own.relay = None
        token = current_request.set(own)
        try:
            return await self._inner.handler(caller, headers, raw)
        finally:
            current_request.reset(token)


async def _run(tools: _Tools, name: str, arguments: Any) -> tuple[str, dict[str, Any]]:
    """Call a tool the model asked for: its output for the model, and its `mcp_call`,
    whose `error` is one of the Responses API's MCP errors: `mcp_protocol_error` (the
    server, or the gateway for it, answered the call with an error: its JSON-RPC code)
    or `mcp_tool_execution_error` (the tool ran and failed: its content blocks)."""
    item: dict[str, Any] = {
        "type": "mcp_call",
        "id": _id("mcp_"),
        "server_label": tools.label(name),
        "name": name,
        "arguments": arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode(),
        "output": None,
        "error": None,
    }
    try:
        parsed = _arguments(arguments)
        result = await tools.aggregate.call(name, parsed if isinstance(parsed, dict) else None)
    except MCPError as error:
        item["error"] = {"type": "mcp_protocol_error", "code": error.code, "message": error.message}
        return f"Error: {error.message}", item
    output = _text(result)
    item["output"] = output
    if result.is_error:
        item["error"] = {
            "type": "mcp_tool_execution_error",
            "content": [
                block.model_dump(mode="json", exclude_none=True) for block in result.content
            ],
        }
    return output, item


def _arguments(arguments: Any) -> Any:
    """The arguments the model wrote for a tool, decoded; what is not JSON (a model's
    slip, the upstream's data) is the call's protocol error, told to the model as any
    failed call is, never the gateway's 500."""
    if not isinstance(arguments, str) or not arguments:
        return arguments
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise MCPError(types.INVALID_PARAMS, "The tool's arguments are not JSON.") from None


def _servers_of(spec: dict[str, Any], served: dict[str, MCPServer]) -> list[MCPServer]:
    """The servers an `mcp` tool names: `litellm_proxy/mcp/<server>`, or every one."""
    url = str(spec.get("server_url") or "")
    if not url.startswith(PROXY_URL):
        raise InvalidRequest(
            f"`server_url`: the gateway runs MCP tools of its own servers only "
            f"(`{PROXY_URL}/mcp/<server>`), not `{url[:100]}`.",
            param="tools",
        )
    name = url.removeprefix(PROXY_URL).strip("/").removeprefix("mcp").strip("/")
    if not name:
        return list(served.values())
    if name not in served:
        raise InvalidRequest(f"`server_url`: no MCP server `{name[:100]}` exists.", param="tools")
    return [served[name]]


def _needs_approval(asked: Any, name: str, bare: str) -> bool:
    """OpenAI's `require_approval`: "never", "always" (its default), or `{"never":
    {"tool_names": [...]}}` for the tools that need none."""
    if asked == "never":
        return False
    if isinstance(asked, dict):
        never = asked.get("never")
        if isinstance(never, dict):
            names = never.get("tool_names") or ()
            return name not in names and bare not in names
    return True


def _asking_approval(response: dict[str, Any], tools: _Tools) -> dict[str, Any]:
    """The model's answer with each MCP call it asked for as an approval request."""
    output = []
    for item in response.get("output") or ():
        if item.get("type") == "function_call" and tools.label(item.get("name", "")):
            payload = orjson.dumps([item["call_id"], item["name"], item.get("arguments") or "{}"])
            output.append({
                "type": "mcp_approval_request",
                "id": _APPROVAL_PREFIX + base64.urlsafe_b64encode(payload).decode(),
                "server_label": tools.label(item["name"]),
                "name": item["name"],
                "arguments": item.get("arguments") or "{}",
            })  # fmt: skip
        else:
            output.append(item)
    return {**response, "output": output}


def _approval_of(request_id: Any) -> tuple[str, str, Any]:
    try:
        assert isinstance(request_id, str) and request_id.startswith(_APPROVAL_PREFIX)
        call_id, name, arguments = orjson.loads(
            base64.urlsafe_b64decode(request_id.removeprefix(_APPROVAL_PREFIX))
        )
        assert isinstance(call_id, str) and isinstance(name, str)
    except (AssertionError, ValueError, TypeError):
        raise InvalidRequest(
            "`approval_request_id` is not an approval request this gateway made.",
            param="input",
        ) from None
    return call_id, name, arguments


def _answer(
    reply: Reply, response: dict[str, Any], body: dict[str, Any], items: list[dict[str, Any]]
) -> Reply:
    """The last answer, with what the gateway did before it and the client's own tools."""
    output = [*items, *(response.get("output") or ())]
    shown = {**response, "output": output}
    if "tools" in body:
        shown["tools"] = body["tools"]
    return Reply(orjson.dumps(shown), reply.status, reply.headers)


def _function_tool(tool: types.Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description or "",
        "parameters": tool.input_schema,
    }


def _function_call(item: dict[str, Any]) -> dict[str, Any]:
    """A function call the model made, as input to its next turn."""
    return {
        "type": "function_call",
        "call_id": item["call_id"],
        "name": item["name"],
        "arguments": item.get("arguments") or "{}",
    }


def _listed(tool: types.Tool) -> dict[str, Any]:
    return {
        "name": tool.name,
        "description": tool.description,
        "input_schema": tool.input_schema,
        "annotations": tool.annotations.model_dump(exclude_none=True) if tool.annotations else None,
    }


def _text(result: types.CallToolResult) -> str:
    texts = [block.text for block in result.content if isinstance(block, types.TextContent)]
    if texts:
        return "\n".join(texts)
    if result.structured_content is not None:
        return orjson.dumps(result.structured_content).decode()
    return ""


def _id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()

"""`/v1/mcp/server`: LiteLLM's MCP server management (trigate.mcp_gateway).

An admin adds (`POST`), changes (`PUT`, the whole definition) and deletes (`DELETE
/v1/mcp/server/{server_id}`) servers; they are stored, their secrets sealed as model
credentials are, and every worker serves them within a second (trigate/mcp_gateway/
catalog.py). Any key lists (`GET /v1/mcp/server`) and reads (`GET .../{server_id}`) the
servers it may use, each as what it offers (`MCPServer.public`), never where it is or how
it is reached; an admin or admin viewer reads all, whole, every credential redacted. The
config file's servers are listed too, and cannot be changed here (they change with the
file); nor can a stdio server be added here (it runs a command on the host: the config
file's alone).
"""

from __future__ import annotations

import uuid
from typing import Any

from quart import Response
from quart_trio import QuartTrio

from trigate.api.admin import authorized, iso, not_found, validated
from trigate.api.jsonio import json_body, json_response
from trigate.auth import Caller
from trigate.clock import wall_time
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway
from trigate.mcp_gateway.permissions import grant_of
from trigate.mcp_gateway.servers import MCPServer
from trigate.roles import NotPermitted, reads_all, writes_all


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.get("/v1/mcp/server")
    async def list_servers() -> Response:
        caller = await authorized(gateway)
        servers = await _visible(gateway, caller)
        if not reads_all(caller.role):
            return json_response([server.public() for server in servers])
        rows = {row["server_id"]: row for row in await gateway.store.mcp_servers()}
        return json_response([_shown(s, rows.get(s.ident)) for s in servers])

    @app.get("/v1/mcp/server/<server_id>")
    async def server_info(server_id: str) -> Response:
        caller = await authorized(gateway)
        for server in await _visible(gateway, caller):
            if server.ident == server_id or server.name == server_id:
                if not reads_all(caller.role):
                    return json_response(server.public())
                rows = {row["server_id"]: row for row in await gateway.store.mcp_servers()}
                return json_response(_shown(server, rows.get(server.ident)))
        raise not_found("MCP server", server_id)

    @app.post("/v1/mcp/server")
    async def add_server() -> Response:
        caller = await _writer(gateway)
        server = _definition(await json_body(), str(uuid.uuid4()))
        if gateway.mcp.file_server(str(server.name)) is not None:
            raise InvalidRequest(
                f"MCP server `{server.name}` is in the config file.", param="server_name"
            )
        now = wall_time()
        row = {
            "server_id": server.ident,
            "name": server.name,
            "definition": server.sealed(gateway.mcp.sealer),
            "created_by": caller.user_id or caller.identity,
            "updated_by": caller.user_id or caller.identity,
            "created_at": now,
            "updated_at": now,
        }
        await gateway.store.insert_mcp_server(row)
        return json_response(_shown(server, row))

    @app.put("/v1/mcp/server")
    async def update_server() -> Response:
        caller = await _writer(gateway)
        body = await json_body()
        server_id = body.get("server_id")
        if not isinstance(server_id, str) or not server_id:
            raise InvalidRequest("`server_id` names the MCP server to update.", param="server_id")
        server = _definition(body, server_id)
        row = {
            "server_id": server_id,
            "name": server.name,
            "definition": server.sealed(gateway.mcp.sealer),
            "updated_by": caller.user_id or caller.identity,
            "updated_at": wall_time(),
        }
        if not await gateway.store.update_mcp_server(row):
            raise not_found("MCP server", server_id)
        return json_response(_shown(server, row))

    @app.delete("/v1/mcp/server/<server_id>")
    async def delete_server(server_id: str) -> Response:
        await _writer(gateway)
        if not await gateway.store.delete_mcp_server(server_id):
            raise not_found("MCP server", server_id)
        # LiteLLM answers 202 with no body.
        return Response(b"", status=202)


async def _writer(gateway: Gateway) -> Caller:
    """The routes' reads are any key's; their writes an admin's alone."""
    caller = await authorized(gateway)
    if not writes_all(caller.role):
        raise NotPermitted("Only an admin may add, change or delete MCP servers.")
    return caller


async def _visible(gateway: Gateway, caller: Caller) -> list[MCPServer]:
    servers = list((await gateway.mcp.servers(gateway.store)).values())
    return servers if reads_all(caller.role) else grant_of(caller).servers(servers)


def _definition(body: dict[str, Any], server_id: str) -> MCPServer:
    """The body as a server, never a stdio one: a stdio server runs a command on the
    gateway's host, and `python`, `node` or `docker` with any arguments is a shell there,
    which no admin credential (a JWT's scope, an SSO role) is to grant. Those are the
    config file's alone."""
    server = validated(MCPServer, {**body, "server_id": server_id})
    if server.kind == "stdio":
        raise InvalidRequest(
            "A stdio MCP server runs a command on the gateway's host, so it is defined in "
            "the config file's `mcp_servers:` only; this API adds and changes http and "
            "sse servers (a `url`).",
            param="transport" if server.transport == "stdio" else "command",
        )
    return server


def _shown(server: MCPServer, row: dict[str, Any] | None) -> dict[str, Any]:
    shown = server.shown()
    if row is not None:
        shown.update({
            "created_at": iso(row.get("created_at")),
            "updated_at": iso(row.get("updated_at")),
            "created_by": row.get("created_by"),
            "updated_by": row.get("updated_by"),
        })  # fmt: skip
    return shown

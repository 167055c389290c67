"""Which MCP servers and tools a caller may use: LiteLLM's `object_permission` on keys
and teams, in the open-source build.

`object_permission` carries `mcp_servers` (server ids or names), `mcp_access_groups`
(the servers in those groups) and `mcp_tool_permissions` (`{server: [tool, ...]}`: only
those tools of that server). A key or team that names no server and no group is not
limited to some (as an empty `models` list allows every model); one that names any is
limited to them. A key of a team gets what both allow (team ∩ key), as for models, and
a server's own `allowed_tools` and `disallowed_tools` bind everyone. The master key
(and a proxy admin's token or session) may use everything; a caller with neither a key
nor a team (a JWT's or a UI session's user alone) nothing, until it calls through a
team or a key an admin gave it.

LiteLLM's other `object_permission` fields (vector stores, agents, toolsets, blocked
tools, models) are refused, not ignored: each would be a restriction trigate does not
enforce.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from trigate.auth import Caller
from trigate.mcp_gateway.servers import MCPServer
from trigate.roles import Role

_UNSERVED = (
    "mcp_toolsets", "blocked_tools", "vector_stores", "agents", "agent_access_groups", "models",
)  # fmt: skip


class ObjectPermission(BaseModel):
    """LiteLLM's `LiteLLM_ObjectPermissionBase`, its MCP part."""

    model_config = ConfigDict(extra="ignore")

    mcp_servers: list[str] | None = None
    mcp_access_groups: list[str] | None = None
    mcp_tool_permissions: dict[str, list[str]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _only_mcp(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            asked = [name for name in _UNSERVED if raw.get(name)]
            if asked:
                raise ValueError(
                    f"trigate enforces only the MCP permissions of `object_permission`; "
                    f"it cannot enforce {', '.join(f'`{n}`' for n in asked)}"
                )
        return raw

    def stored(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


@dataclass(frozen=True, slots=True)
class _Side:
    """One `object_permission` (a key's or a team's), as read from its row."""

    servers: frozenset[str] | None
    tools: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, permission: Mapping[str, Any] | None) -> _Side:
        permission = permission or {}
        named = [
            *(permission.get("mcp_servers") or ()),
            *(f"group:{g}" for g in permission.get("mcp_access_groups") or ()),
        ]
        tools = {
            server: frozenset(listed)
            for server, listed in (permission.get("mcp_tool_permissions") or {}).items()
        }
        return cls(frozenset(named) if named else None, tools)

    def allows_server(self, server: MCPServer) -> bool:
        if self.servers is None:
            return True
        names = {server.ident, str(server.name), *(f"group:{g}" for g in server.access_groups)}
        return not names.isdisjoint(self.servers)

    def allows_tool(self, server: MCPServer, tool: str) -> bool:
        for name in (server.ident, str(server.name)):
            if name in self.tools:
                return tool in self.tools[name]
        return True


@dataclass(frozen=True, slots=True)
class Grant:
    """What one caller may use: `everything` for the master key, else the intersection
    of its key's and its team's permissions, with each server's own tool lists."""

    sides: tuple[_Side, ...]

    @classmethod
    def of(
        cls, is_master: bool, key: Mapping[str, Any] | None, team: Mapping[str, Any] | None
    ) -> Grant:
        if is_master:
            return cls(())
        rows = [row for row in (key, team) if row is not None]
        return cls(tuple(_Side.of(row.get("object_permission")) for row in rows))

    def servers(self, servers: Iterable[MCPServer]) -> list[MCPServer]:
        return [s for s in servers if all(side.allows_server(s) for side in self.sides)]

    def may_call(self, server: MCPServer, tool: str) -> bool:
        return (
            server.may_call(tool)
            and all(side.allows_server(server) for side in self.sides)
            and all(side.allows_tool(server, tool) for side in self.sides)
        )


def grant_of(caller: Caller) -> Grant:
    """What `caller` may use: its key's and team's permissions, as authenticated."""
    if caller.key is None and caller.team is None and not caller.is_master:
        # Nothing names what it may use: a proxy admin everything, anyone else nothing.
        return Grant(()) if caller.role is Role.PROXY_ADMIN else Grant((_NOTHING,))
    return Grant.of(caller.is_master, caller.key, caller.team)


_NOTHING = _Side(frozenset(), {})

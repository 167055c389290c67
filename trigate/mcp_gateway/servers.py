"""One MCP server's definition, as LiteLLM's `mcp_servers:` config and its `/v1/mcp/server`
API give it, checked once when it arrives.

The config names a server by its key (`mcp_servers: {github: {url: ...}}`), the API by
`server_name` (or `alias`); either way the name prefixes the server's tools
(`github-create_issue`, LiteLLM's `-` separator), so it may hold no `-`, as LiteLLM's
API refuses one too. The API's `credentials: {auth_value}` and `mcp_access_groups` are
the config's `auth_value` and `access_groups` under other names; both are accepted.

Secrets (`auth_value`, `env` and `static_headers` values) are sealed at rest
(`sealed`) as model credentials are (trigate/sealing.py).
"""

from __future__ import annotations

import base64
import logging
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trigate.redaction import args_without_secrets, url_without_credentials, without_secrets
from trigate.sealing import Sealer

logger = logging.getLogger("trigate")

# LiteLLM's separator between a server's name and its tools' (`MCP_TOOL_PREFIX_SEPARATOR`).
SEPARATOR = "-"
NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")

Transport = Literal["http", "sse", "stdio"]
# LiteLLM's `auth_type`s and the header each puts `auth_value` in.
AuthType = Literal["none", "api_key", "bearer_token", "basic", "authorization"]


class CostInfo(BaseModel):
    """LiteLLM's `mcp_info.mcp_server_cost_info`: a price per tool call."""

    model_config = ConfigDict(extra="ignore")

    default_cost_per_query: float | None = Field(default=None, ge=0)
    tool_name_to_cost_per_query: dict[str, float] = Field(default_factory=dict)

    def of(self, tool: str) -> float:
        return self.tool_name_to_cost_per_query.get(tool, self.default_cost_per_query or 0.0)


class MCPInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    mcp_server_cost_info: CostInfo | None = None


class MCPServer(BaseModel):
    """A server as configured: where it is (a URL, or a command for stdio), how the
    gateway authenticates to it, and which of its tools anyone may call."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    server_id: str | None = None
    server_name: str | None = None
    alias: str | None = None
    description: str | None = None
    transport: Transport | None = None
    url: str | None = None
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    auth_type: AuthType | None = None
    auth_value: str | None = Field(default=None, repr=False)
    # Client headers forwarded to this server, by name (LiteLLM's `extra_headers`).
    extra_headers: list[str] = Field(default_factory=list)
    static_headers: dict[str, str] = Field(default_factory=dict, repr=False)
    # None: every tool; a list: only those. `disallowed_tools` removes from either.
    allowed_tools: list[str] | None = None
    disallowed_tools: list[str] = Field(default_factory=list)
    access_groups: list[str] = Field(default_factory=list)
    mcp_info: MCPInfo | None = None
    # trigate's own: how many sessions to it may be open at once, per worker (a stdio
    # server's are processes); None: `general_settings.mcp_max_concurrent_sessions`.
    max_concurrent_sessions: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _litellm_spellings(cls, raw: Any) -> Any:
        """The API's names for the config's fields, and LiteLLM's transport names."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        credentials = raw.pop("credentials", None)
        if isinstance(credentials, dict) and raw.get("auth_value") is None:
            raw["auth_value"] = credentials.get("auth_value")
        groups = raw.pop("mcp_access_groups", None)
        if groups:
            raw["access_groups"] = [*(raw.get("access_groups") or []), *groups]
        if raw.get("transport") == "streamable_http":
            raw["transport"] = "http"
        for listed in ("args", "extra_headers", "disallowed_tools", "access_groups"):
            if raw.get(listed) is None:
                raw.pop(listed, None)
        for mapping in ("env", "static_headers"):
            if raw.get(mapping) is None:
                raw.pop(mapping, None)
        return raw

    @model_validator(mode="after")
    def _complete(self) -> MCPServer:
        if self.name is None or not NAME.match(self.name):
            raise ValueError(
                "an MCP server needs a `server_name` (or `alias`) of letters, digits and `_` "
                f"(no `{SEPARATOR}`: it separates a server's name from its tools')"
            )
        if self.kind == "stdio":
            if not self.command:
                raise ValueError(f"MCP server `{self.name}`: stdio needs a `command`")
        elif not self.url or not self.url.startswith(("http://", "https://")):
            raise ValueError(f"MCP server `{self.name}`: needs an http(s) `url` or a `command`")
        return self

    @property
    def name(self) -> str | None:
        """What the server is called: its tools' prefix, its `/mcp/{name}` path."""
        return self.alias or self.server_name

    @property
    def ident(self) -> str:
        """The id the admin API names it by (the config's: its name)."""
        return self.server_id or str(self.name)

    @property
    def kind(self) -> Transport:
        """Its transport: as given, else stdio for a command, sse for a URL ending
        `/sse` (LiteLLM's examples), else streamable HTTP."""
        if self.transport is not None:
            return self.transport
        if self.command and not self.url:
            return "stdio"
        return "sse" if (self.url or "").rstrip("/").endswith("/sse") else "http"

    def headers(self, client_headers: dict[str, str]) -> dict[str, str]:
        """The headers sent to this server (lower-case names), each over the one before:
        its static ones, the client headers it names (`extra_headers`), its configured
        credential, and the caller's own credential for it (`x-mcp-{name}-authorization`),
        which replaces the configured one."""
        headers = {name.lower(): value for name, value in self.static_headers.items()}
        for name in self.extra_headers:
            if (value := client_headers.get(name.lower())) is not None:
                headers[name.lower()] = value
        if self.auth_value and self.auth_type not in (None, "none"):
            headers.update(auth_header(self.auth_type, self.auth_value))
        own = client_headers.get(f"x-mcp-{str(self.name).lower()}-authorization")
        if own is not None:
            headers.pop("x-api-key", None)
            headers["authorization"] = own
        return headers

    def may_call(self, tool: str) -> bool:
        """Whether the server's own lists let anyone call `tool`."""
        if tool in self.disallowed_tools:
            return False
        return self.allowed_tools is None or tool in self.allowed_tools

    def cost(self, tool: str) -> float:
        info = self.mcp_info.mcp_server_cost_info if self.mcp_info else None
        return info.of(tool) if info else 0.0

    def sealed(self, sealer: Sealer) -> dict[str, Any]:
        """The definition as stored: its secrets sealed."""
        stored = self.model_dump(exclude_none=True)
        if self.auth_value:
            stored["auth_value"] = sealer.seal(self.auth_value)
        stored["env"] = {k: sealer.seal(v) for k, v in self.env.items()}
        stored["static_headers"] = {k: sealer.seal(v) for k, v in self.static_headers.items()}
        return stored

    @classmethod
    def unsealed(cls, stored: dict[str, Any], sealer: Sealer) -> MCPServer:
        """A stored definition, its secrets opened (`SealError` if another key sealed them)."""
        opened = dict(stored)
        if isinstance(value := opened.get("auth_value"), str):
            opened["auth_value"] = sealer.unseal(value)
        for mapping in ("env", "static_headers"):
            opened[mapping] = {k: sealer.unseal(v) for k, v in (opened.get(mapping) or {}).items()}
        return cls.model_validate(opened)

    def public(self) -> dict[str, Any]:
        """What any key that may use the server is shown (LiteLLM's
        `LiteLLM_MCPServerTable` shape, in part): what it is and what it offers, never
        where or how it is reached (a URL's query, a command line, an environment and
        headers can each hold a token)."""
        return {
            "server_id": self.ident,
            "server_name": self.server_name or self.name,
            "alias": self.alias,
            "description": self.description,
            "transport": self.kind,
            "allowed_tools": self.allowed_tools,
            "mcp_access_groups": self.access_groups,
        }

    def shown(self) -> dict[str, Any]:
        """What an admin is shown: the whole definition, each credential in it redacted
        as a model's are (trigate/redaction.py): `auth_value` left out, the values of
        `env` and `static_headers`, a URL's password and query values, the values of a
        command line's credential flags."""
        mcp_info = self.mcp_info.model_dump(exclude_none=True) if self.mcp_info else None
        return {
            **self.public(),
            "url": url_without_credentials(self.url) if self.url else None,
            "auth_type": self.auth_type,
            "command": self.command,
            "args": args_without_secrets(self.args),
            "env": dict.fromkeys(self.env, "********"),
            "extra_headers": self.extra_headers,
            "static_headers": dict.fromkeys(self.static_headers, "********"),
            "disallowed_tools": self.disallowed_tools,
            "mcp_info": without_secrets(mcp_info),
        }


# What a server's entry may hold: its fields, and the API's other names for them.
ACCEPTED = frozenset(MCPServer.model_fields) | {"credentials", "mcp_access_groups"}


def auth_header(auth_type: str, value: str) -> dict[str, str]:
    """LiteLLM's header for each `auth_type`."""
    if auth_type == "api_key":
        return {"x-api-key": value}
    if auth_type == "bearer_token":
        return {"authorization": f"Bearer {value}"}
    if auth_type == "basic":
        # A `user:password` pair is encoded; an already encoded one is sent as it is.
        encoded = base64.b64encode(value.encode()).decode() if ":" in value else value
        return {"authorization": f"Basic {encoded}"}
    return {"authorization": value}


def from_config(raw: Any) -> dict[str, MCPServer]:
    """The config's `mcp_servers:` mapping, by name; a bad entry is a `ValueError`."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("mcp_servers: expected a mapping of server names to servers")  # noqa: TRY004 - a config error
    servers = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise ValueError(f"mcp_servers.{name}: expected a mapping")  # noqa: TRY004 - a config error
        try:
            server = MCPServer.model_validate({"server_name": str(name), **entry})
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            raise ValueError(
                f"mcp_servers.{name}{'.' + where if where else ''}: {message}"
            ) from None
        unknown = sorted(set(entry) - ACCEPTED)
        if unknown:
            logger.warning("mcp_servers.%s: ignored, not served by trigate: %s", name, unknown)
        servers[str(server.name)] = server
    return servers

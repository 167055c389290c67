"""Each upstream server's listings (tools, prompts, resources), kept a short while per
worker.

The gateway serves statelessly (trigate/api/mcp_endpoint.py), so without this every
`tools/list` would open a session to every server the caller may use, and spawn every
stdio server: seconds, for a listing that rarely changes, while agents (Codex CLI,
Claude Code) start their turn without waiting for slow MCP servers. A listing is kept
`LISTING_TTL` seconds, under its kind, the server's whole definition and the headers
the gateway sends it (a caller's own credential for the server may list other tools), so a
changed server or another credential never reads another's listing. Permissions are
applied to the listing afterwards, per caller. Tool calls always go upstream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
import trio

from trigate.mcp_gateway.servers import MCPServer

# How long a server's tool list is served from memory: its new tools appear within this.
LISTING_TTL = 60.0
MAX_KEPT = 10_000
T = TypeVar("T")


class ToolListings:
    def __init__(self, ttl: float = LISTING_TTL) -> None:
        self._ttl = ttl
        self._kept: dict[bytes, tuple[float, Sequence[Any]]] = {}

    async def listed(
        self,
        kind: str,
        server: MCPServer,
        headers: Mapping[str, str],
        fetch: Callable[[], Awaitable[list[T]]],
    ) -> Sequence[T]:
        """The server's listing of `kind`: kept, or fetched now and kept."""
        # A digest, so that no credential is held as a key.
        key = hashlib.sha256(
            orjson.dumps([kind, server.model_dump(mode="json"), sorted(headers.items())])
        ).digest()
        now = trio.current_time()
        kept = self._kept.get(key)
        if kept is not None and kept[0] > now:
            return kept[1]
        fetched = await fetch()
        if len(self._kept) >= MAX_KEPT:
            self._kept = {k: v for k, v in self._kept.items() if v[0] > now}
        self._kept[key] = (now + self._ttl, fetched)
        return fetched

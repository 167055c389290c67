"""The MCP servers a worker serves: the config file's, and those added through the admin
API, which live in the store so that every worker and instance serves the same ones.

A worker reads the stored servers when it first needs them, again as soon as a change is
announced (trigate/changes.py: at once here, and with Redis fleet-wide), and in any case
when its copy is older than `STALE_AFTER`, which bounds how long another process's change
goes unseen without Redis. A stored server whose secrets this gateway cannot open (sealed
under another key) is skipped, with a warning, never served with garbage credentials; so
is a stored stdio server (the API refuses them: a command on the host is the file's).
"""

from __future__ import annotations

import logging

import trio

from trigate.mcp_gateway.capacity import SessionCapacity, SessionLimits
from trigate.mcp_gateway.listing import ToolListings
from trigate.mcp_gateway.servers import MCPServer
from trigate.sealing import Sealer, SealError
from trigate.store import Row, Store

logger = logging.getLogger("trigate")

# How old a worker's copy of the stored servers may be before it reads them again.
STALE_AFTER = 1.0


class MCPCatalog:
    def __init__(
        self, file_servers: dict[str, MCPServer], sealer: Sealer, limits: SessionLimits
    ) -> None:
        self._file = file_servers
        self._sealer = sealer
        self._stored: dict[str, MCPServer] = {}
        self._read_at = -float("inf")
        self._lock = trio.Lock()
        # Each server's tool list, kept a short while (trigate/mcp_gateway/listing.py).
        self.listings = ToolListings()
        # How many upstream sessions may be open at once (trigate/mcp_gateway/capacity.py).
        self.capacity = SessionCapacity(limits)

    @property
    def sealer(self) -> Sealer:
        return self._sealer

    def reload(self, file_servers: dict[str, MCPServer], limits: SessionLimits) -> None:
        """The config file was read again."""
        self._file = file_servers
        self.capacity.limits = limits

    def nudge(self, kind: str = "", ident: str = "") -> None:
        """A stored server changed (here or elsewhere): read them again before the next use."""
        self._read_at = -float("inf")

    def file_server(self, name: str) -> MCPServer | None:
        return self._file.get(name)

    async def servers(self, store: Store) -> dict[str, MCPServer]:
        """Every server served, by name; the file's win over a stored one of the same name."""
        if trio.current_time() - self._read_at > STALE_AFTER:
            async with self._lock:
                if trio.current_time() - self._read_at > STALE_AFTER:
                    started = trio.current_time()
                    self._stored = self._opened(await store.mcp_servers())
                    self._read_at = started
        return {**self._stored, **self._file}

    def _opened(self, rows: list[Row]) -> dict[str, MCPServer]:
        servers = {}
        for row in rows:
            try:
                server = MCPServer.unsealed(row["definition"], self._sealer)
            except (SealError, ValueError) as error:
                logger.warning("MCP server %s is not served: %s", row["server_id"], error)
                continue
            if server.kind == "stdio":
                # Stored before the API refused stdio servers: it runs a command on the
                # host, which only the config file may name.
                logger.warning(
                    "MCP server %s is not served: stdio, not from the config file", row["server_id"]
                )
                continue
            servers[str(server.name)] = server
        return servers

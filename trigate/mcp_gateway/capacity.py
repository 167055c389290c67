"""How many upstream MCP sessions may be open at once, per server and per key.

The gateway serves statelessly (trigate/api/mcp_endpoint.py): each request opens the
upstream sessions it uses, and a stdio server is a process spawned per request. Without
a bound, any key could start as many processes (and upstream HTTP sessions) as it can
send concurrent requests. So each session takes a slot of its server (the server's
`max_concurrent_sessions`, else `general_settings.mcp_max_concurrent_sessions`) and one
of the caller's key (`general_settings.mcp_max_concurrent_sessions_per_key`) before it
opens, and gives both back when it closes. A session that finds no slot waits, first
come first served, at most `QUEUE_WAIT` seconds, then is refused with an error that
says which bound is full. The bounds hold per worker process.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from trigate.mcp_gateway.servers import MCPServer

# The defaults of the two bounds, and the longest a session waits for a slot.
PER_SERVER = 16
PER_KEY = 8
QUEUE_WAIT = 20.0


class CapacityFull(Exception):
    """No slot came free in time: the message says which bound is full."""


@dataclass(frozen=True, slots=True)
class SessionLimits:
    per_server: int = PER_SERVER
    per_key: int = PER_KEY
    wait: float = QUEUE_WAIT


class Slot:
    """One session's slots of its server and its key, given back once by `release`."""

    def __init__(self, capacity: SessionCapacity, server: str, holder: str) -> None:
        self._capacity = capacity
        self._server = server
        self._holder = holder
        self._held: list[tuple[dict[str, trio.CapacityLimiter], str]] = []

    async def take(self, wait: float) -> None:
        """The key's slot, then the server's (a key over its own bound holds none of
        the server's), within `wait` seconds; none held if they could not be had."""
        capacity = self._capacity
        try:
            with trio.move_on_after(wait):
                await self._acquire(capacity.keys, self._holder, capacity.limits.per_key)
                await self._acquire(capacity.servers, self._server, capacity.bound(self._server))
                return
        except BaseException:  # the request itself was cancelled
            self.release()
            raise
        full = "key" if not self._held else "server"
        self.release()
        raise CapacityFull(capacity.full_message(full, self._server))

    async def _acquire(self, pool: dict[str, trio.CapacityLimiter], name: str, bound: int) -> None:
        limiter = pool.get(name)
        if limiter is None:
            limiter = pool[name] = trio.CapacityLimiter(bound)
        elif limiter.total_tokens != bound:
            limiter.total_tokens = bound  # the server's definition or the config changed
        await limiter.acquire_on_behalf_of(self)
        self._held.append((pool, name))

    def release(self) -> None:
        while self._held:
            pool, name = self._held.pop()
            limiter = pool[name]
            limiter.release_on_behalf_of(self)
            if limiter.borrowed_tokens == 0 and limiter.statistics().tasks_waiting == 0:
                del pool[name]  # idle: a key or server no longer used holds nothing


class SessionCapacity:
    """The slots of every server and key, in one worker."""

    def __init__(self, limits: SessionLimits) -> None:
        self.limits = limits
        self.servers: dict[str, trio.CapacityLimiter] = {}
        self.keys: dict[str, trio.CapacityLimiter] = {}
        self._bounds: dict[str, int] = {}

    async def take(self, server: MCPServer, holder: str) -> Slot:
        """A slot of `server` and of the key `holder`, waiting for one at most
        `limits.wait` seconds; `CapacityFull` if none came free."""
        name = str(server.name)
        self._bounds[name] = server.max_concurrent_sessions or self.limits.per_server
        slot = Slot(self, name, holder)
        await slot.take(self.limits.wait)
        return slot

    def bound(self, server: str) -> int:
        return self._bounds.get(server, self.limits.per_server)

    def full_message(self, full: str, server: str) -> str:
        wait = f"none came free in {self.limits.wait:g} s; try again later"
        if full == "key":
            return (
                f"This key has {self.limits.per_key} MCP server sessions open at once, its "
                f"most (general_settings.mcp_max_concurrent_sessions_per_key), and {wait}."
            )
        bound = self.bound(server)
        return (
            f"MCP server `{server}` has {bound} sessions open at once, its most "
            f"(`max_concurrent_sessions`), and {wait}."
        )

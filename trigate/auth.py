"""Who is calling: the master key, or a virtual key with its team and user.

Clients send `Authorization: Bearer KEY` (the OpenAI SDK) or `x-api-key: KEY`
(the Anthropic SDK). Keys are stored only as SHA-256 hashes. Lookups come
from an in-process cache with a short TTL, so the request path touches the
database at most once per key every few seconds; the process that changes a
key drops it from its cache at once, and with Redis tells every other worker
of the fleet to drop it too (`Authenticator.share_changes`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson
import trio

from trigate.clock import wall_time
from trigate.errors import AuthenticationFailed
from trigate.fleet import PROBE_INTERVAL, Fleet, RedisUnavailable
from trigate.store import Row, Store, StoreUnavailable

logger = logging.getLogger("trigate")

MASTER_IDENTITY = "master"
KEY_PREFIX = "sk-"
# How stale a cached key, team or user may be; LiteLLM users expect changes within seconds.
CACHE_TTL = 5.0
# Unknown keys are remembered briefly, so a flood of bad keys cannot flood the database.
NEGATIVE_TTL = 1.0
MAX_CACHED = 100_000
# A key check must never stall a request for long: a slower lookup counts as an outage.
LOOKUP_TIMEOUT = 2.0
# After a failed lookup the database is left alone this long, not asked again per request.
OUTAGE_MEMORY = 5.0
# The Redis channel (under the fleet's prefix) that carries changed rows to every worker.
CHANGES_CHANNEL = "changes"


@dataclass(slots=True)
class Caller:
    """An authenticated caller. `identity` is safe to log; the key itself is never kept."""

    identity: str
    is_master: bool
    key_hash: str | None = None
    key: Row | None = None
    team: Row | None = None
    user: Row | None = None

    @property
    def key_alias(self) -> str | None:
        return self.key.get("key_alias") if self.key else None

    @property
    def team_id(self) -> str | None:
        return self.key.get("team_id") if self.key else None

    @property
    def user_id(self) -> str | None:
        return self.key.get("user_id") if self.key else None

    def model_group(self, requested: str) -> str:
        """The model group a request naming `requested` goes to: the key's team's
        `model_aliases` (LiteLLM's) may map the name to another group."""
        aliases = self.team.get("model_aliases") if self.team else None
        return aliases.get(requested, requested) if aliases else requested


def generate_key() -> str:
    """A fresh key in LiteLLM's `sk-` format, with 256 bits of randomness."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_name(key: str) -> str:
    """How a key is shown after creation: enough to recognise it, never enough to use it."""
    return f"{key[:3]}...{key[-4:]}"


class HeaderSource(Protocol):
    """Where a key is read from: a dict of lower-case names, or Quart's `Headers`."""

    def get(self, key: str, /) -> str | None: ...


def presented_key(headers: HeaderSource) -> str | None:
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("x-api-key")
    return key.strip() if key else None


class Authenticator:
    def __init__(
        self,
        master_key: str,
        store: Store | None = None,
        fleet: Fleet | None = None,
        shared_state: Callable[[str, str], list[str]] = lambda table, key: [],
    ) -> None:
        """`shared_state(table, key)` names the fleet's Redis keys derived from a row
        (budget counters), dropped with it when it changes."""
        self._master = master_key.encode()
        self._store = store
        self._cache: dict[tuple[str, str], tuple[Row | None, float]] = {}
        self._outage_until = -float("inf")
        self._fleet = fleet if fleet is not None and fleet.configured else None
        self._shared_state = shared_state
        self._changed, self._to_publish = trio.open_memory_channel[tuple[str, str]](math.inf)

    async def authenticate(self, headers: HeaderSource) -> Caller:
        key = presented_key(headers)
        if key is None:
            raise AuthenticationFailed(
                "No API key provided. Send `Authorization: Bearer <key>` or `x-api-key: <key>`."
            )
        if hmac.compare_digest(key.encode(), self._master):
            return Caller(MASTER_IDENTITY, is_master=True)
        return await self._virtual_key(hash_key(key))

    def require_master(self, caller: Caller) -> None:
        if not caller.is_master:
            raise AuthenticationFailed("This endpoint needs the master key.", code="not_master_key")

    def forget(self, table: str, key: str) -> None:
        """Drop a cached row after changing it, so this process sees the change at once,
        and (with Redis) every other worker of the fleet within moments."""
        self._cache.pop((table, key), None)
        if self._fleet is not None:
            self._changed.send_nowait((table, key))

    async def share_changes(self) -> None:
        """Publish this worker's changes and follow the fleet's; run in the background.
        Without Redis, other workers see a change when their cached row expires."""
        if self._fleet is None:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish_changes, self._fleet)
            nursery.start_soon(self._follow_changes, self._fleet)

    async def _publish_changes(self, fleet: Fleet) -> None:
        async for table, key in self._to_publish:
            try:
                await self._publish(fleet, table, key)
            except RedisUnavailable:
                logger.warning(
                    "Redis unreachable: other workers see a changed %s within %g s",
                    table.removesuffix("s"),
                    CACHE_TTL,
                )

    async def _publish(self, fleet: Fleet, table: str, key: str) -> None:
        stale, message = self._shared_state(table, key), orjson.dumps([table, key])
        if stale:
            await fleet.call(lambda redis: redis.delete(stale))
        await fleet.call(lambda redis: redis.publish(fleet.key(CHANGES_CHANNEL), message))

    async def _follow_changes(self, fleet: Fleet) -> None:
        """Drop the rows other workers change. While unsubscribed, changes go unheard,
        so each (re)subscription starts from an empty cache."""
        channel = fleet.key(CHANGES_CHANNEL)
        while True:
            await fleet.wait_shared()
            try:
                async with fleet.client.pubsub(
                    channels=[channel], ignore_subscribe_messages=True, retry_policy=None
                ) as changes:
                    self._cache.clear()
                    async for message in changes:
                        data = message["data"]
                        assert isinstance(data, bytes)
                        table, key = orjson.loads(data)
                        self._cache.pop((table, key), None)
            except* Exception as lost:  # whatever ends the feed, the worker serves on
                logger.debug("key change feed lost, resubscribing: %r", lost.exceptions)
            await trio.sleep(PROBE_INTERVAL)

    async def _virtual_key(self, token_hash: str) -> Caller:
        row = await self._cached("keys", token_hash)
        if row is None:
            raise AuthenticationFailed("The API key provided is not valid.")
        if row["blocked"]:
            raise AuthenticationFailed("This API key has been blocked.", code="key_blocked")
        if row["expires"] is not None and row["expires"] <= wall_time():
            raise AuthenticationFailed("This API key has expired.", code="key_expired")
        team = await self._cached("teams", row["team_id"]) if row["team_id"] else None
        if row["team_id"] and team is None:
            # Without its team's row the key would escape the team's models and limits.
            raise AuthenticationFailed("This API key's team no longer exists.", code="team_deleted")
        if team is not None and team["blocked"]:
            raise AuthenticationFailed("This API key's team has been blocked.", code="team_blocked")
        user = await self._cached("users", row["user_id"]) if row["user_id"] else None
        return Caller(token_hash[:16], False, token_hash, row, team, user)

    async def _cached(self, table: str, key: str) -> Row | None:
        now = wall_time()
        hit = self._cache.get((table, key))
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            row = await self._lookup(table, key, now)
        except StoreUnavailable:
            if hit is not None:
                return hit[0]  # the last good lookup, for as long as the outage lasts
            raise
        if len(self._cache) >= MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
        self._cache[table, key] = (row, now + (CACHE_TTL if row is not None else NEGATIVE_TTL))
        return row

    async def _lookup(self, table: str, key: str, now: float) -> Row | None:
        if self._store is None:
            return None
        if now < self._outage_until:
            raise _unavailable()
        failure: Exception | None = None
        with trio.move_on_after(LOOKUP_TIMEOUT):
            try:
                return await self._store.get(table, key)
            except Exception as error:  # any store failure is an outage to ride out
                failure = error
        self._outage_until = wall_time() + OUTAGE_MEMORY
        logger.warning(
            "key store unreachable (%s); serving cached keys for %g s before asking again",
            failure or f"no answer within {LOOKUP_TIMEOUT:g} s",
            OUTAGE_MEMORY,
        )
        raise _unavailable()


def _unavailable() -> StoreUnavailable:
    return StoreUnavailable(
        "The gateway cannot reach its database to check this API key. Try again shortly."
    )

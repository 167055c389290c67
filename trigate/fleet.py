"""The fleet: the workers and instances that serve one gateway, and the Redis they share.

Limits, budgets and router state must hold across every process, so with Redis
configured they live there. Redis is a help, not a dependency: no request waits
on it longer than `router_settings.redis_timeout`, and while it does not answer
each worker falls back to its *local share* of every limit (the limit divided
among this instance's workers, so that the shares never add up to more than the
limit). Without Redis at all, the shares are the whole story.

`Fleet` owns a worker's Redis client, for one set of Redis settings (a reload that
changes them gives the worker a new `Fleet`, see trigate/gateway.py). Callers ask it
`reachable` before choosing a path, and run commands through `call`, which raises `RedisUnavailable`
instead of waiting; a failure flips the worker to local shares until a probe
finds Redis again. Each flip is logged once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import coredis
import trio

from trigate import lua
from trigate.router_settings import RouterSettings

__all__ = ["Fleet", "RedisUnavailable", "local_share", "worker_slot"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Redis = coredis.Redis[bytes]

# How often a worker that lost Redis asks whether it is back.
PROBE_INTERVAL = 0.5
# The longest the restore callbacks may take before the probe counts as failed.
RESTORE_TIMEOUT = 5.0
# Set by the supervisor on each worker it spawns: how many serve this instance, and which
# one this is.
WORKERS_ENV = "TRIGATE_WORKERS"
SLOT_ENV = "TRIGATE_WORKER_SLOT"


class RedisUnavailable(Exception):
    """Redis is not configured, not reachable, or did not answer within `redis_timeout`."""


def worker_slot(environ: Mapping[str, str]) -> tuple[int, int]:
    """(this worker's slot, the instance's worker count); a lone process is (0, 1)."""
    workers = max(1, int(environ.get(WORKERS_ENV, "1")))
    return min(int(environ.get(SLOT_ENV, "0")), workers - 1), workers


def local_share(limit: int, slot: int, workers: int) -> int:
    """Worker `slot`'s part of `limit`: an even split, the remainder going to the first
    slots, so the parts add up to exactly `limit` and never more."""
    return limit // workers + (1 if slot < limit % workers else 0)


class Fleet:
    """One worker's link to the rest of the fleet."""

    def __init__(
        self,
        url: str | None,
        *,
        timeout: float,
        prefix: str = "trigate:",
        environ: Mapping[str, str] = os.environ,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.prefix = prefix
        self.slot, self.workers = worker_slot(environ)
        self._client: Redis | None = None
        self._up = False
        self._lost = trio.Event()
        self._found = trio.Event()
        self._on_restore: list[Callable[[], Awaitable[None]]] = []
        # Told of each fall back to local shares (metrics count them).
        self._on_fallback = on_fallback

    @classmethod
    def from_settings(
        cls, settings: RouterSettings, on_fallback: Callable[[], None] | None = None
    ) -> Fleet:
        """The link `router_settings` describe (none when they name no Redis)."""
        return cls(
            settings.redis,
            timeout=settings.redis_timeout,
            prefix=settings.redis_key_prefix,
            on_fallback=on_fallback,
        )

    def serves(self, settings: RouterSettings) -> bool:
        """Whether this link is the one `settings` describe, so a reload may keep it."""
        wanted = (settings.redis, settings.redis_timeout, settings.redis_key_prefix)
        return wanted == (self.url, self.timeout, self.prefix)

    @property
    def configured(self) -> bool:
        return self.url is not None

    @property
    def reachable(self) -> bool:
        """True while Redis answers: state is the fleet's, not this worker's share."""
        return self._up

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise RedisUnavailable("Redis is not connected")
        return self._client

    def key(self, *parts: str) -> str:
        """A Redis key of this gateway's: the prefix, then `parts` joined by colons."""
        return self.prefix + ":".join(parts)

    def share(self, limit: int) -> int:
        return local_share(limit, self.slot, self.workers)

    def on_restore(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` each time Redis is reached after being away (and at the first
        connection): shared counters that were lost are rebuilt from the ledger there.
        The fleet is not yet `reachable` while callbacks run, so they use `client` directly;
        a Redis error in one keeps the worker on local shares until the next probe."""
        self._on_restore.append(callback)

    async def wait_reachable(self) -> None:
        """Return once Redis answers (at once if it does now)."""
        while not self._up:
            await self._found.wait()

    def status(self) -> dict[str, Any]:
        """For `/health/readiness`: where limits are kept now."""
        if not self.configured:
            return {"state": "local", "workers": self.workers}
        state = "shared" if self._up else "local (redis unreachable)"
        return {"state": state, "workers": self.workers}

    async def call(self, command: Callable[[Redis], Awaitable[T]]) -> T:
        """Run `command` against Redis within the timeout, or raise `RedisUnavailable`."""
        if not self._up or self._client is None:
            raise RedisUnavailable("Redis is unreachable")
        with trio.move_on_after(self.timeout):
            try:
                return await command(self._client)
            except (coredis.exceptions.RedisError, OSError) as error:
                # Any refusal (a lost connection, a replica gone read-only, out of memory)
                # is an outage to ride out on local shares, never a failed request.
                self._lose(str(error))
                raise RedisUnavailable(str(error)) from None
        self._lose(f"no answer within {self.timeout:g} s")
        raise RedisUnavailable("Redis did not answer in time")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the client for the worker's life; while Redis is away, probe for its return."""
        if self.url is None:
            if self.workers > 1 and self.slot == 0:
                logger.info(
                    "no Redis: each of the %d workers enforces its share of every limit; "
                    "set router_settings.redis_url to make limits exact across the fleet",
                    self.workers,
                )
            task_status.started()
            return
        logger.info("fleet state shared through Redis at %s", _redacted(self.url))
        wait = max(self.timeout, 1.0)
        # A password the URL holds percent-encoded (as `router_settings`' own makes it) is
        # decoded, as redis-py does; coredis sends it as written unless told.
        client: Redis = coredis.Redis.from_url(
            self.url, connect_timeout=wait, stream_timeout=wait, decode_components=True
        )
        try:
            async with client:
                self._client = client
                await self._probe(first=True)
                task_status.started()
                while True:
                    await self._lost.wait()
                    await trio.sleep(PROBE_INTERVAL)
                    await self._probe(first=False)
        finally:
            # Closed (a reload replaced this link, or the worker stops): nothing may use it.
            self._up = False
            self._client = None

    async def _probe(self, *, first: bool) -> None:
        assert self._client is not None
        try:
            with trio.fail_after(max(self.timeout, 1.0)):
                await self._client.ping()
            # Restoring takes a few round trips (scripts, counters): bounded all the same,
            # so a Redis that answers pings but stalls cannot hold the probe for ever.
            with trio.fail_after(RESTORE_TIMEOUT):
                await lua.register(self._client)
                for callback in self._on_restore:
                    await callback()
        except (coredis.exceptions.RedisError, trio.TooSlowError, OSError) as error:
            if first:
                self._lose(str(error) or "no answer")
            return
        self._lost = trio.Event()
        self._up = True
        self._found.set()
        if not first:
            logger.warning("Redis is back: limits and router state are shared by the fleet again")

    def _lose(self, reason: str) -> None:
        """Go to local shares; log it only when this is news."""
        if not self._up and self._lost.is_set():
            return
        self._up = False
        self._lost.set()
        self._found = trio.Event()
        if self._on_fallback is not None:
            self._on_fallback()
        logger.warning(
            "Redis unreachable (%s): each worker now enforces its local share of every limit",
            reason,
        )


def _redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))

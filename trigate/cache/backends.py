"""Where answers are kept: this worker's memory (an LRU bounded in bytes), Redis, or
both with the memory in front (LiteLLM's `default_in_memory_ttl` over Redis).

A backend never fails a request: Redis that does not answer within its timeout is a
miss on reading and a skipped write, counted (`on_unavailable`) and logged once per
outage, as the fleet's own link does for limits. An error reply is Redis answering: what
the cache makes of it depends on its kind (`trigate.cache.refusals`), counted by its code
(`on_error`).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypeVar

import coredis
import trio

from trigate.cache import refusals
from trigate.cache.resp import NoConnection, RedisAddress, RedisReader, RedisReadError
from trigate.clock import wall_time

logger = logging.getLogger("trigate")
Redis = coredis.Redis[bytes]
T = TypeVar("T")
# What a read may fail with: a miss, counted, never a failed request.
_READ_ERRORS = (
    RedisReadError, OSError, trio.BrokenResourceError, trio.ClosedResourceError,
    coredis.exceptions.RedisError,
)  # fmt: skip
# Keys deleted per command when the cache is flushed.
FLUSH_BATCH = 500


class Backend(Protocol):
    @property
    def kind(self) -> str:
        """LiteLLM's name of the cache type, for `/cache/ping`."""

    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, keys: list[str]) -> list[bytes | None]: ...

    async def set(self, key: str, value: bytes, ttl: float | None) -> None: ...

    async def delete(self, keys: Iterable[str]) -> int: ...

    async def flush(self) -> None: ...

    async def ping(self) -> bool: ...

    def held_bytes(self) -> int:
        """Bytes this worker holds (its memory's share only)."""


class LocalBackend:
    """An LRU of entries in this worker's memory, bounded by their bytes; an entry larger
    than `max_entry_bytes` is not kept (it is served, never stored)."""

    kind = "local"

    def __init__(self, max_bytes: int, max_entry_bytes: int) -> None:
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        # What a reader made of a value (`note`), kept with it, counted in the bytes held
        # with it, and dropped with it: (the value, the note, the bytes it holds).
        self._notes: dict[str, tuple[bytes, object, int]] = {}
        self._bytes = 0
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes

    def read(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        value, expires = found
        if expires != math.inf and expires <= wall_time():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    def write(self, key: str, value: bytes, ttl: float | None) -> bool:
        size = len(key) + len(value)
        if size > min(self.max_entry_bytes, self.max_bytes):
            return False
        self._drop(key)
        expires = wall_time() + ttl if ttl is not None else math.inf
        self._entries[key] = (value, expires)
        self._bytes += size
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        return True

    def _drop(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self._bytes -= len(key) + len(found[0])
            self._forget(key)

    def _forget(self, key: str) -> None:
        noted = self._notes.pop(key, None)
        if noted is not None:
            self._bytes -= noted[2]

    def note(self, key: str, value: bytes, note: object, size: int) -> None:
        """Keep what a reader made of `value` (the cache's decoded entry, holding `size`
        bytes of its own) with it, while `key` holds that very value: a later read of it
        need not be made again. Its bytes count towards `max_bytes` as the value's do,
        and may make room by dropping the least recently used entries (itself last)."""
        found = self._entries.get(key)
        if found is None or found[0] is not value:
            return
        self._forget(key)
        self._notes[key] = (value, note, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def noted(self, key: str, value: bytes) -> object | None:
        """The note kept with `value` under `key`, if any."""
        found = self._notes.get(key)
        return found[1] if found is not None and found[0] is value else None

    async def get(self, key: str) -> bytes | None:
        return self.read(key)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.read(key) for key in keys]

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        self.write(key, value, ttl)

    async def delete(self, keys: Iterable[str]) -> int:
        deleted = 0
        for key in keys:
            deleted += key in self._entries
            self._drop(key)
        return deleted

    async def flush(self) -> None:
        self._entries.clear()
        self._notes.clear()
        self._bytes = 0

    async def ping(self) -> bool:
        return True

    def held_bytes(self) -> int:
        return self._bytes


class RedisBackend:
    """Entries in Redis under `prefix`, each command bounded by `timeout`. While Redis
    is away, reads are misses at once (no wait per request) and a probe looks for it
    every `PROBE_INTERVAL` seconds; `run` holds the connection in the cache's nursery.
    Reads, a hit's whole cost in Redis, go through `RedisReader` on the request's own task
    (`trigate.cache.resp`), or through coredis when it has no idle connection; writes, the
    probe and the admin routes through coredis."""

    kind = "redis"
    PROBE_INTERVAL = 0.5
    # The key the probe reads (under the prefix): never written, and no cache key (those are
    # 64 hex digits, after a namespace and a colon when there is one).
    PROBE_KEY = "probe"

    def __init__(
        self,
        url: str,
        prefix: str,
        timeout: float,
        on_unavailable: Callable[[], None],
        on_error: Callable[[str, str], None],
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._timeout = timeout
        self._on_unavailable = on_unavailable
        # An error reply's code (its label) and the operation, `read` or `write`.
        self._on_error = on_error
        self._episodes = refusals.Episodes()
        self._client: Redis | None = None
        # The read path: coredis's own settings for this URL, on sockets of its own.
        self._reader: RedisReader | None = None
        self._up = False
        self._lost = trio.Event()
        # Whether this outage's warning was logged (its "back" is logged only then).
        self._warned = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        wait = max(self._timeout, 1.0)
        # Percent-encoded parts decoded (the password `cache_settings` encodes into the URL
        # it makes), as redis-py does; coredis sends them as written unless told.
        client: Redis = coredis.Redis.from_url(
            self._url, connect_timeout=wait, stream_timeout=wait, decode_components=True
        )
        address = RedisAddress.of_pool(client.connection_pool)
        if address is None:
            logger.info("the response cache reads Redis through coredis (its URL's settings)")
        try:
            async with client, trio.open_nursery() as nursery:
                self._client = client
                if address is not None:
                    self._reader = RedisReader(address, self._timeout, wait)
                    await nursery.start(self._reader.run)
                await self._probe()
                task_status.started()
                while True:
                    await self._lost.wait()
                    await trio.sleep(self.PROBE_INTERVAL)
                    await self._probe()
        finally:
            self._up = False
            self._client = None
            self._reader = None

    async def _probe(self) -> None:
        """Whether Redis serves the cache's reads: a GET of a key under its prefix, not a
        PING, which a Redis refusing reads for now answers all the same (a replica cut from
        its primary, MASTERDOWN; a cluster without a quorum): a probe it passed would end
        the outage only for the next read to start another."""
        assert self._client is not None
        try:
            with trio.fail_after(max(self._timeout, 1.0)):
                await self._client.get(self._prefix + self.PROBE_KEY)
        except (coredis.exceptions.RedisError, trio.TooSlowError, OSError) as error:
            self._down(self._unanswered(error))
            return
        if self._lost.is_set() and self._warned:
            logger.warning("the response cache's Redis is back")
        self._lost = trio.Event()
        self._up = True

    def _unanswered(self, error: BaseException) -> str:
        """Why the probe found no Redis to use; a refusal of the cache's credentials is
        logged as the configuration error it is, which no later probe will mend."""
        code = refusals.error_code(error)
        if code is None:
            return str(error) or "no answer"
        if code in refusals.CREDENTIALS and self._episodes.starts(code):
            refusals.log_refusal(code, "read", error)
        return refusals.describe(error)

    def _lose(self, reason: str, warn: bool = True) -> None:
        """Redis failed a command: a skipped read or write, counted."""
        self._on_unavailable()
        self._down(reason, warn)

    def _failed(self, error: BaseException, operation: str) -> None:
        """A read or write that got no value from Redis: Redis away, or an error reply,
        dealt with by its kind (`refusals`); counted either way."""
        code = refusals.error_code(error)
        if code is None:
            self._lose(str(error) or type(error).__name__)
            return
        self._on_error(refusals.label(code), operation)
        if code in refusals.UNAVAILABLE:  # back off until the probe is answered
            # The warning once per episode: a relapse soon after the probe passed (a
            # cluster refusing some slots only, which the probe's key may not be in) is
            # logged only if the probe finds Redis still refusing.
            self._lose(refusals.describe(error), self._episodes.starts(code))
        elif self._episodes.starts(code):
            refusals.log_refusal(code, operation, error)

    def _down(self, reason: str, warn: bool = True) -> None:
        """Redis is away: probed for until it is back, and logged once per outage, unless
        told not to `warn`, when only a failure that does (the probe's) logs it."""
        if not self._up and self._lost.is_set():
            if warn and not self._warned:
                self._warn(reason)
            return
        self._up = False
        self._lost.set()
        if self._reader is not None:
            self._reader.close_idle()  # dead, or soon to be: reads start afresh once it is back
        self._warned = False
        if warn:
            self._warn(reason)

    def _warn(self, reason: str) -> None:
        self._warned = True
        logger.warning(
            "the response cache's Redis is unreachable (%s): requests miss the cache "
            "and go upstream until it is back",
            reason,
        )

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> bytes | None:
        name = self._prefix + key
        reader = self._reader
        if reader is not None and self._up:
            try:
                return await reader.get(name)  # within the timeout, the reader's own
            except NoConnection as none:
                return await self._get_by_coredis(name, none.deadline)
            except _READ_ERRORS as error:
                self._failed(error, "read")
                return None
        return await self._get_by_coredis(name, None)

    async def _get_by_coredis(self, name: str, deadline: float | None) -> bytes | None:
        """A GET the reader could not make: by `deadline` if it waited already (what is
        left of the lookup's timeout), else within a timeout of its own."""
        client = self._ready()
        if client is None:
            return None
        return await self._bounded(lambda: client.get(name), None, deadline)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        client = self._ready()
        if client is None:
            return [None] * len(keys)
        names = [self._prefix + key for key in keys]
        reader = self._reader
        deadline = None
        if reader is not None:
            try:
                return await reader.mget(names)
            except NoConnection as none:
                deadline = none.deadline
            except _READ_ERRORS as error:
                self._failed(error, "read")
                return [None] * len(keys)

        async def read() -> list[bytes | None]:
            return list(await client.mget(names))

        return await self._bounded(read, [None] * len(keys), deadline)

    async def _bounded(
        self, read: Callable[[], Awaitable[T]], failed: T, deadline: float | None
    ) -> T:
        """A read through coredis, by `deadline` (the lookup's, when the reader already
        waited on it) or within the timeout; `failed` if Redis fails it."""
        if deadline is None:
            deadline = trio.current_time() + self._timeout
        with trio.move_on_at(deadline):
            try:
                return await read()
            except _READ_ERRORS as error:
                self._failed(error, "read")
                return failed
        self._lose(f"no answer within {self._timeout:g} s")
        return failed

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        client = self._ready()
        if client is None:
            return
        px = max(1, round(ttl * 1000)) if ttl is not None else None
        with trio.move_on_after(self._timeout):
            try:
                await client.set(self._key(key), value, px=px)
            except (coredis.exceptions.RedisError, OSError) as error:
                self._failed(error, "write")
            return
        self._lose(f"no answer within {self._timeout:g} s")

    async def delete(self, keys: Iterable[str]) -> int:
        client = self._required()
        names = [self._key(key) for key in keys]
        return await client.delete(names) if names else 0

    async def flush(self) -> None:
        """Deletes the cache's keys only: the fleet's limits may share this Redis."""
        client = self._required()
        cursor: int | None = 0
        while True:
            cursor, found = await client.scan(cursor, match=self._prefix + "*", count=FLUSH_BATCH)
            if found:
                await client.unlink(list(found))
            if not cursor:
                return

    async def ping(self) -> bool:
        client = self._client
        if client is None:
            return False
        try:
            with trio.fail_after(max(self._timeout, 1.0)):
                await client.ping()
        except (coredis.exceptions.RedisError, trio.TooSlowError, OSError):
            return False
        return True

    def held_bytes(self) -> int:
        return 0

    def _ready(self) -> Redis | None:
        """The client while Redis answers; None (a miss, counted) while it is away."""
        if not self._up or self._client is None:
            self._on_unavailable()
            return None
        return self._client

    def _required(self) -> Redis:
        """For the admin routes, which report Redis's failure rather than hide it."""
        if self._client is None:
            raise coredis.exceptions.ConnectionError("the cache's Redis is not connected")
        return self._client


class TieredBackend:
    """A local copy in front of Redis, kept `front_ttl` seconds at most (LiteLLM's
    `default_in_memory_ttl`): a repeated hit costs no round trip, and another worker's
    write is seen once the local copy expires."""

    kind = "redis"

    def __init__(self, front: LocalBackend, back: RedisBackend, front_ttl: float) -> None:
        self.front = front
        self.back = back
        self._front_ttl = front_ttl

    async def get(self, key: str) -> bytes | None:
        value = self.front.read(key)
        if value is None:
            value = await self.back.get(key)
            if value is not None:
                self.front.write(key, value, self._front_ttl)
        return value

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        values = [self.front.read(key) for key in keys]
        absent = [position for position, value in enumerate(values) if value is None]
        if absent:
            found = await self.back.get_many([keys[position] for position in absent])
            for position, value in zip(absent, found, strict=True):
                if value is not None:
                    values[position] = value
                    self.front.write(keys[position], value, self._front_ttl)
        return values

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        front_ttl = self._front_ttl if ttl is None else min(ttl, self._front_ttl)
        self.front.write(key, value, front_ttl)
        await self.back.set(key, value, ttl)

    async def delete(self, keys: Iterable[str]) -> int:
        keys = list(keys)
        await self.front.delete(keys)
        return await self.back.delete(keys)

    async def flush(self) -> None:
        await self.front.flush()
        await self.back.flush()

    async def ping(self) -> bool:
        return await self.back.ping()

    def held_bytes(self) -> int:
        return self.front.held_bytes()

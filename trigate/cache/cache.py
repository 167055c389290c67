"""The response cache: one per worker, asked by the pipeline after the hooks before
routing (`lookup`), and told by each request's `Ticket` what became of its answer.

A lookup answers a request from an entry (a hit), from an identical request's call in
flight (coalesced, see `trigate.cache.flight`), or lets it go upstream (a miss) with a
ticket that keeps its answer once it has one. An entry is the whole answer in OpenAI's
shape with its usage: a stream's is assembled from its chunks, so either kind of
request is served by either kind of answer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import trio

from trigate.cache.backends import Backend, LocalBackend, RedisBackend, TieredBackend
from trigate.cache.controls import NO_CONTROLS, CacheControls
from trigate.cache.embeddings import ItemBatch, items_of
from trigate.cache.entries import Entry, Replay, decode, encode
from trigate.cache.flight import Flight, Subscription, Upstream
from trigate.cache.keys import cache_key, native_form
from trigate.cache.metrics import CacheMetrics
from trigate.cache.settings import CacheSettings
from trigate.errors import GatewayError, UpstreamError
from trigate.providers import Completion
from trigate.usage import Usage

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from trigate.auth import Caller

logger = logging.getLogger("trigate")

# The response headers that say what the cache did (`Ticket.state`, written by
# `trigate.api.response_headers`): LiteLLM's key, and whether it was a hit, a miss or
# coalesced with an identical request in flight.
CACHE_KEY_HEADER = b"x-litellm-cache-key"
CACHE_STATE_HEADER = b"x-trigate-cache"
HIT, MISS, COALESCED = b"hit", b"miss", b"coalesced"
# Bounds a write of an answer after it went to its client.
WRITE_TIMEOUT = 5.0


class Exchanged(Protocol):
    """What the cache reads of a request's exchange (`trigate.api.surface.Exchange`)."""

    @property
    def carried_tokens(self) -> int: ...

    @property
    def preferred(self) -> str | None: ...

    @property
    def native_cacheable(self) -> bool: ...

    def native_request(self) -> dict[str, Any] | None: ...


class CachedCall(Protocol):
    """What the cache reads of a request (`trigate.api.pipeline.Call`)."""

    @property
    def caller(self) -> Caller: ...

    @property
    def model_group(self) -> str: ...

    @property
    def body(self) -> dict[str, Any]: ...

    @property
    def stream(self) -> bool: ...

    @property
    def exchange(self) -> Exchanged: ...


# What a lookup answers a request with: a whole answer, a stream, or nothing (a miss).
Answer = Completion | Replay | Subscription | None


class ResponseCache:
    """The worker's cache: its backend, its calls in flight, its counters."""

    def __init__(
        self, settings: CacheSettings, registry: CollectorRegistry, redis_prefix: str
    ) -> None:
        self.settings = settings
        self.metrics = CacheMetrics(registry)
        self._flights: dict[str, Flight] = {}
        self._nursery: trio.Nursery | None = None
        self._redis: RedisBackend | None = None
        local = LocalBackend(settings.max_bytes, settings.max_entry_bytes)
        self.backend: Backend = local
        # The worker's memory, where an entry read is decoded once per value kept (`_read`);
        # and whether it is the whole backend, read without a coroutine of its own.
        self._memory: LocalBackend = local
        self._memory_only = settings.type != "redis"
        # LiteLLM's default scope: every caller's answers shared (tenant ""), known once.
        self._shared = settings.scope == "global"
        if settings.type == "redis":
            assert settings.redis_url is not None
            self._redis = RedisBackend(
                settings.redis_url, redis_prefix + "cache:", settings.timeout,
                self.metrics.count_unavailable, self.metrics.count_redis_error,
            )  # fmt: skip
            front = settings.in_memory_ttl
            self.backend = (
                self._redis if front is None else TieredBackend(local, self._redis, front)
            )
        self.metrics.bytes.set_function(self.backend.held_bytes)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The cache's tasks, in the worker's background nursery: the Redis connection,
        and the pumps of shared streams."""
        async with trio.open_nursery() as nursery:
            if self._redis is not None:
                await nursery.start(self._redis.run)
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # --- a request --------------------------------------------------------------------

    def kind_of(self, call_type: str, surface: str) -> str:
        """LiteLLM's call type family of a request: its surface's, for Messages and
        Responses (`anthropic_messages`, `responses`), else its call type's."""
        return surface if surface in ("messages", "responses") else call_type

    def ticket(
        self, call: CachedCall, surface: str, kind: str, controls: CacheControls | None
    ) -> Ticket | None:
        """The request's ticket when the cache applies to it, else None."""
        controls = controls or NO_CONTROLS
        settings = self.settings
        if controls.bypass or kind not in settings.kinds:
            return None
        if settings.default_off and not controls.opted_in:
            return None
        exchange = call.exchange
        # A conversation the upstream holds (continued by id) is not in the body: its
        # answer depends on more than the key could cover.
        if exchange.carried_tokens or exchange.preferred is not None:
            return None
        tenant = "" if self._shared else self._tenant(call.caller)
        if tenant is None:
            return None
        namespace = controls.namespace or settings.namespace
        keyed: dict[str, Any] | None = call.body
        if surface == "responses":
            keyed = self._responses_keyed(exchange, call.body)
        elif surface == "messages":
            keyed = self._messages_keyed(exchange, call.body)
        if keyed is None:
            return None
        key = cache_key(surface, call.model_group, tenant, keyed, namespace)
        ticket = Ticket(
            self, key, controls, call.stream, exchange.native_cacheable, bool(namespace)
        )
        if kind == "embeddings":
            ticket.items = ItemBatch.of(surface, call.model_group, tenant, call.body, namespace)
            if ticket.items is None:
                return None
        return ticket

    def _responses_keyed(self, exchange: Exchanged, chat: dict[str, Any]) -> dict[str, Any] | None:
        """What keys a Responses request (`responses_form`), or None: not cached. Its chat
        form alone would not do: a request without one (an image by `file_id`) has only
        its accounted fields there, and what the translation drops is not there either.
        The native request is None while the conversation is unread (continued upstream,
        which `ticket` declines already); one naming a `conversation` continues one the
        upstream holds, whose state no key covers."""
        native = exchange.native_request()
        if native is None or native.get("conversation") is not None:
            return None
        return native_form("responses", native, chat)

    def _messages_keyed(self, exchange: Exchanged, chat: dict[str, Any]) -> dict[str, Any]:
        """What keys a Messages request: its chat form, and the client's own request
        while an `anthropic/` deployment may still be sent it (`MessagesExchange.
        keyed_request`); once a hook rewrote the chat form, every deployment is sent that
        alone, which is then the whole key (a guardrail's masks shared by two callers
        still share an answer)."""
        original = getattr(exchange, "keyed_request", None)
        return chat if original is None else native_form("messages", original, chat)

    def _tenant(self, caller: Caller) -> str | None:
        """Whose entries a caller reads and writes under `team` or `key` scope (under
        `global`, everyone's: `ticket` knows that without a call), or None: not cached."""
        if self.settings.scope == "team" and caller.team_id is not None:
            return f"team:{caller.team_id}"
        # A caller's own entries: its key's, the master's, or a keyless caller's user's.
        owner = caller.owner
        if owner is None:
            return None  # no one to keep its answers apart from another's: not cached
        return f"key:{owner or 'master'}"

    def served_at_once(self, call: CachedCall, ticket: Ticket) -> Answer:
        """A hit from the worker's memory when that is the whole backend, found with no
        coroutine of its own (most hits of a local cache, some 1,000 instructions fewer
        each), else None: `lookup` reads on (memory that held nothing to serve is not
        read twice)."""
        controls = ticket.controls
        if not self._memory_only or ticket.items is not None or controls.no_read:
            return None
        key = ticket.key
        entry = self._read(key, self._memory.read(key), controls.max_age)
        served = entry.serve(call.stream) if entry is not None else None
        if served is not None:
            assert entry is not None
            self._hit(ticket, entry)
        ticket.looked = True
        return served

    async def lookup(self, call: CachedCall, ticket: Ticket) -> Answer:
        """A hit or a coalesced answer for `call`, or None: it goes upstream with
        `ticket`, which keeps its answer. After `served_at_once`, what it read is not read
        again."""
        key = ticket.key
        if ticket.items is not None:
            return await self._embeddings(call, ticket, ticket.items)
        controls = ticket.controls
        # The worker's memory, when it is the whole backend, may have been read already.
        unread = not ticket.looked
        while True:
            if not controls.no_read:
                entry = None
                if unread:
                    entry = self._read(key, await self.backend.get(key), controls.max_age)
                unread = True
                served = entry.serve(call.stream) if entry is not None else None
                if served is not None:
                    assert entry is not None
                    self._hit(ticket, entry)
                    return served
                flight = self._flights.get(ticket.key)
                if flight is not None:
                    answer = await self._join(flight, ticket, call.stream)
                    if answer is not None:
                        ticket.state = COALESCED
                        self.metrics.coalesced.inc(1)
                        return answer
                    if flight.done and ticket.key in self._flights:
                        continue  # it ended with nothing to give, and another leads now
            ticket.state = MISS
            self.metrics.misses.inc(1)
            if ticket.key not in self._flights and self._nursery is not None:
                ticket.lead(Flight(ticket.key, ticket, call.stream))
            return None

    def _hit(self, ticket: Ticket, entry: Entry) -> None:
        ticket.hit = True
        ticket.state = HIT
        metrics = self.metrics
        metrics.hits.inc(1)
        if tokens := entry.tokens():
            metrics.cached_tokens.inc(tokens)

    def _read(self, key: str, value: bytes | None, max_age: float | None) -> Entry | None:
        """`decode`, done once per value the worker's memory keeps: a hit's repeats read
        the entry it decoded first (its fields' JSON and its answer's CRC-32 are a
        tenth of a hit's own work), when it can serve them all as it is (`shareable`).
        A value from Redis alone is new bytes every time, decoded every time."""
        if value is None:
            return None
        memory = self._memory
        noted = memory.noted(key, value)
        if isinstance(noted, Entry):
            if max_age is None:  # any age (`fresh`), without the call
                return noted
            return noted if noted.fresh(max_age) else None
        entry = decode(value, None)
        if entry is None:
            return None
        if entry.shareable:
            memory.note(key, value, entry, entry.held_bytes())
        return entry if entry.fresh(max_age) else None

    async def _embeddings(self, call: CachedCall, ticket: Ticket, batch: ItemBatch) -> Answer:
        """A batch answered whole from its items' entries, or sent upstream with the
        items no entry answers (the body's `input` replaced, not changed in place: the
        meter may be counting it in a thread)."""
        controls = ticket.controls
        if not controls.no_read:
            values = await self.backend.get_many(batch.keys)
            for position, value in enumerate(values):
                entry = decode(value, controls.max_age)
                if entry is not None and entry.item is not None:
                    batch.found[position] = entry.item
        if len(batch.found) == len(batch.keys):
            ticket.hit = True
            ticket.state = HIT
            self.metrics.hits.inc(1)
            answer = batch.answer(call.model_group)
            self.metrics.cached_tokens.inc(answer["usage"]["total_tokens"])
            return Completion(answer)
        ticket.state = MISS
        self.metrics.misses.inc(1)
        split = items_of(call.body.get("input"))
        assert split is not None, "an ItemBatch is made only of an input that splits"
        missing = batch.missing(split[0])
        if batch.found:
            call.body["input"] = missing
        return None

    async def _join(self, flight: Flight, ticket: Ticket, stream: bool) -> Answer:
        """Join `flight`: a live subscription for a stream, else its whole answer, once
        known. None: the flight ended without an answer to give (ask again)."""
        if flight.streamed:
            await flight.launched.wait()
        if flight.streamed and not flight.done:
            if stream:
                ticket.follow(flight)
                return flight.join(ticket)
            if flight.native:
                return None  # its events are no whole answer: this request goes upstream
            ticket.follow(flight)
            subscription = flight.join(ticket)
            try:
                await flight.resolved.wait()
            finally:
                with trio.CancelScope(shield=True):
                    await subscription.aclose()
        else:
            ticket.follow(flight)
            flight.subscribers.append(ticket)
            await flight.resolved.wait()
        if (error := flight.failure()) is not None:
            raise error
        served = Entry(orjson.loads(orjson.dumps(flight.kept() or {}))).serve(stream)
        if served is None:
            ticket.flight = None
        return served

    async def store(
        self, key: str, entry: dict[str, Any], ttl: float | None, raw: bytes | None = None
    ) -> None:
        """Keep `entry` (`Entry`'s fields) under `key`, with its whole answer's own bytes
        when there are some (`encode`); one over the entry cap is served, not kept."""
        value = encode(entry, raw)
        if len(value) + len(key) > self.settings.max_entry_bytes:
            self.metrics.not_stored.inc(1)
            return
        with trio.CancelScope(shield=True), trio.move_on_after(WRITE_TIMEOUT):
            await self.backend.set(key, value, ttl if ttl is not None else self.settings.ttl)

    def spawn_pump(self) -> trio.Nursery | None:
        return self._nursery

    def landed(self, flight: Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    def register(self, flight: Flight) -> None:
        self._flights[flight.key] = flight

    # --- the admin routes -------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return {
            "status": "healthy" if await self.backend.ping() else "unhealthy",
            "cache_type": self.backend.kind,
            "ping_response": await self.backend.ping(),
            "litellm_cache_params": self.describe(),
        }

    def describe(self) -> dict[str, Any]:
        """The settings, without the Redis URL (which may hold its password)."""
        settings = self.settings
        return {
            "type": settings.type,
            "ttl": settings.ttl,
            "default_in_memory_ttl": settings.in_memory_ttl,
            "namespace": settings.namespace,
            "supported_call_types": sorted(settings.kinds),
            "mode": "default_off" if settings.default_off else "default_on",
            "scope": settings.scope,
            "max_bytes": settings.max_bytes,
            "max_entry_bytes": settings.max_entry_bytes,
        }

    async def delete(self, keys: list[str]) -> int:
        return await self.backend.delete(keys)

    async def flush(self) -> None:
        await self.backend.flush()


class Ticket:
    """One request's part in the cache: its key, and what became of its answer."""

    __slots__ = (
        "cache", "controls", "flight", "hit", "items", "key", "leads", "looked", "namespaced",
        "native_allowed", "state", "stream",
    )  # fmt: skip

    def __init__(
        self,
        cache: ResponseCache,
        key: str,
        controls: CacheControls,
        stream: bool,
        native_allowed: bool,
        namespaced: bool,
    ) -> None:
        self.cache = cache
        self.key = key
        # A key after a namespace (the config's or the client's), not the digest alone.
        self.namespaced = namespaced
        # What the lookup did, for the response's header: HIT, MISS or COALESCED.
        self.state: bytes | None = None
        # Whether the worker's memory was read for it already (`served_at_once`).
        self.looked = False
        self.controls = controls
        self.stream = stream
        # Whether an answer in the client's own API may be kept (not a Response the
        # upstream stores: a hit would hand out its id again).
        self.native_allowed = native_allowed
        self.hit = False
        self.flight: Flight | None = None
        self.leads = False
        # An embeddings request's items, each cached on its own.
        self.items: ItemBatch | None = None

    def lead(self, flight: Flight) -> None:
        self.flight, self.leads = flight, True
        self.cache.register(flight)

    def follow(self, flight: Flight) -> None:
        self.flight, self.leads = flight, False

    @property
    def coalesced(self) -> bool:
        return self.flight is not None and not self.leads

    # --- a leader's answer ---------------------------------------------------------------

    def share(self, opened: Upstream, deployment: Any) -> Subscription | None:
        """A stream's first chunks are in: its subscription to the flight that now reads
        it, or None when it leads none (it relays `opened` itself)."""
        flight, nursery = self.flight, self.cache.spawn_pump()
        if flight is None or not self.leads or nursery is None or not flight.streamed:
            return None
        return flight.launch(opened, deployment, nursery, self._landed)

    async def _landed(self, flight: Flight) -> None:
        """A shared stream ended: its answer is kept, unless it failed or was cut short."""
        self.cache.landed(flight)
        entry = flight.kept()
        if flight.events is not None and not self.native_allowed:
            entry = None
        if entry is not None and flight.error is None and not self.controls.no_store:
            await self.cache.store(self.key, entry, self.controls.ttl)

    async def answered(self, completion: Completion, usage: Usage) -> Completion:
        """A whole answer, past the hooks, and its usage as billed: kept, and given to the
        requests waiting. The answer the client gets: an embeddings batch's with its
        cached items put back. An answer kept without the upstream's usage keeps the
        usage the client was told (counted), so that no hit counts its tokens again."""
        if self.hit:
            return completion
        if self.items is not None:
            return await self._embedded(completion, self.items)
        if not self.leads:
            return completion
        reported = completion.usage
        body = completion.body
        # The upstream's bytes are the answer's while it is kept as it came.
        raw = completion.raw
        if reported is None:
            reported = usage.to_openai()
            if not completion.native:
                body, raw = {**body, "usage": reported}, None
        entry: dict[str, Any] | None = {"answer": body}
        if completion.native:
            native = {"native": body, "usage": reported}
            entry = native if self.native_allowed else None
        flight = self.flight
        if flight is not None and not flight.streamed:
            flight.resolve(entry, None)
            self.cache.landed(flight)
        if entry is not None and not self.controls.no_store:
            await self.cache.store(self.key, entry, self.controls.ttl, raw)
        return completion

    async def _embedded(self, completion: Completion, batch: ItemBatch) -> Completion:
        fresh = batch.entries(completion.body)
        if fresh is None:
            if batch.found:  # the cached items cannot be put back among these
                raise UpstreamError(
                    "The upstream's embeddings do not match the inputs it was sent."
                )
            return completion
        if not self.controls.no_store:
            for key, item in fresh:
                await self.cache.store(key, {"item": item}, self.controls.ttl)
        if not batch.found:
            return completion
        return Completion(batch.merged(completion.body, fresh))

    def ended(self, error: GatewayError | None) -> None:
        """The request ended without a whole answer given to `answered` (failed, or its
        client left): the requests waiting on it fail with it, or ask again."""
        flight = self.flight
        if flight is None or not self.leads or (flight.launched.is_set() and flight.streamed):
            return
        flight.resolve(None, error)
        self.cache.landed(flight)

    # --- billing ------------------------------------------------------------------------

    def billed(self, own: Any) -> Any:
        """The deployment whose price this request's row bears (None: no cost): a hit
        and a coalesced whole answer pay nothing; a shared stream is paid by its payer."""
        flight = self.flight
        if self.hit:
            return None
        if flight is None or not flight.streamed or not flight.launched.is_set():
            return own if self.leads or flight is None else None
        return flight.deployment if flight.payer is self else None

    def annotate(self, record: Any) -> None:
        """The spend row's cache fields (LiteLLM's `cache_hit`, `cache_key`)."""
        record.cache_key = self.key
        record.cache_hit = self.hit or (self.coalesced and self.billed(None) is None)

"""Coalescing: identical cacheable requests in flight share one upstream call.

The first request to miss becomes a `Flight`'s leader and calls upstream as any
request does. A request with the same key that arrives meanwhile subscribes instead:

- to a stream: once its first chunk has arrived, the flight's pump (a task in the
  cache's nursery, not in any client's request) reads the upstream and keeps every
  batch; each subscriber is sent the batches so far, then the rest as they come.
  The upstream is closed only when its last subscriber has left, and a failure
  reaches every subscriber after the chunks before it.
- to a whole answer: the subscriber waits for it, and is answered with it, or fails
  with its error; if its leader's client left first, it asks again (and may lead).

Billing: every token the upstream produced is billed once. A whole answer is billed
to its leader. A stream is billed, whole, to the subscriber that joined first among
those still there when it ended; if all left before the end, to the last to leave,
which had received every chunk up to then. Every other subscriber's row is a hit at
zero cost.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import orjson
import trio

from trigate.cache.shapes import Assembler, event_entries
from trigate.errors import GatewayError

logger = logging.getLogger("trigate")
# Bounds the upstream's close once a flight's last subscriber has left.
CLOSE_TIMEOUT = 5.0


class Upstream(Protocol):
    """A stream as the pipeline opened it: its first batch, its batches, its close."""

    first: list[Any] | None
    chunks: Any
    native: bool

    async def aclose(self) -> None: ...


class _Frozen:
    """A chunk kept as bytes: each subscriber reads its own copy (the relay changes
    the chunks it is given)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _freeze(item: Any) -> Any:
    return _Frozen(orjson.dumps(item)) if isinstance(item, dict) else item


def _thaw(item: Any) -> Any:
    return orjson.loads(item.data) if type(item) is _Frozen else item


class Flight:
    """One upstream call, and the requests it answers."""

    def __init__(self, key: str, leader: object, streamed: bool) -> None:
        self.key = key
        self.leader = leader
        self.streamed = streamed
        self.batches: list[list[Any]] = []
        # The requests it answers, in the order they came: a stream's subscribers (its
        # leader first), or the requests waiting on a whole answer (its leader apart).
        self.subscribers: list[object] = [leader] if streamed else []
        self.payer: object | None = None
        self.deployment: Any = None
        self.native = False
        # The whole answer in OpenAI's shape, once known; None if none can be given.
        self.answer: dict[str, Any] | None = None
        # A native stream's events, to keep (its answer is then None).
        self.events: list[Any] | None = None
        self.error: GatewayError | None = None
        self.done = False
        # Set once a stream's first chunk is in (or the flight ended without one).
        self.launched = trio.Event()
        # Set once the answer, an error, or its abandonment is known.
        self.resolved = trio.Event()
        self._changed = trio.Event()
        self._pump_scope = trio.CancelScope()
        self._closed = trio.Event()
        self.assembler = Assembler()

    # --- a stream ---------------------------------------------------------------------

    def launch(
        self,
        opened: Upstream,
        deployment: Any,
        nursery: trio.Nursery,
        on_end: Callable[[Flight], Awaitable[None]],
    ) -> Subscription:
        """Start reading `opened` for every subscriber; the leader's subscription."""
        self.deployment = deployment
        self.native = opened.native
        nursery.start_soon(self._pump, opened, on_end)
        self.launched.set()
        return Subscription(self, self.leader)

    async def _pump(self, opened: Upstream, on_end: Callable[[Flight], Awaitable[None]]) -> None:
        read_to_end = False
        try:
            with self._pump_scope:
                if opened.first:
                    self._publish(opened.first)
                async for batch in opened.chunks:
                    self._publish(batch)
                read_to_end = True
                self.answer = self.assembler.answer()
                self.events = self.assembler.events if self.assembler.storable else None
        except GatewayError as error:
            self.error = error
        except Exception as error:
            # A bug on the way: each subscriber's stream ends with an error event, as
            # for an upstream that fails mid-stream; the worker's nursery lives on.
            logger.exception("a shared upstream stream failed (cache key %s)", self.key)
            self.error = GatewayError("The gateway failed unexpectedly.")
            self.error.__cause__ = error
        finally:
            if not read_to_end and self.error is None and self.subscribers:
                # Cancelled from outside (the worker stops): no subscriber may take a
                # cut stream for a whole one.
                self.error = GatewayError("The shared upstream stream ended early.")
            self._end()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await opened.aclose()
                self._closed.set()
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await on_end(self)

    def _publish(self, batch: list[Any]) -> None:
        self.assembler.add(batch)
        self.batches.append([_freeze(item) for item in batch])
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _end(self) -> None:
        self.done = True
        if self.subscribers:
            self.payer = self.subscribers[0]
        self.resolved.set()
        self._wake()

    async def changed(self) -> None:
        await self._changed.wait()

    def join(self, ticket: object) -> Subscription:
        self.subscribers.append(ticket)
        return Subscription(self, ticket)

    async def leave(self, ticket: object) -> None:
        """`ticket`'s client is gone; the last to leave before the end pays for what the
        upstream produced, and the upstream is closed before this returns."""
        if ticket in self.subscribers:
            self.subscribers.remove(ticket)
        if self.done or self.subscribers:
            return
        self.payer = ticket
        self._pump_scope.cancel()
        await self._closed.wait()

    # --- a whole answer ---------------------------------------------------------------

    def resolve(self, answer: dict[str, Any] | None, error: GatewayError | None) -> None:
        """A whole answer's flight ends: answered (an entry's fields), failed, or (both
        None) abandoned."""
        if self.resolved.is_set():
            return
        self.answer, self.error = answer, error
        self.done = True
        self.payer = self.leader
        self.launched.set()
        self.resolved.set()

    def kept(self) -> dict[str, Any] | None:
        """What an entry keeps of the flight's answer (`cache.Entry`'s fields), if any."""
        if self.answer is not None:
            return self.answer if not self.streamed else {"answer": self.answer}
        if self.events is not None:
            return {"events": event_entries(self.events)}
        return None

    def failure(self) -> GatewayError | None:
        """The flight's error, which each subscriber raises as it would have alone (the
        error classes cannot be copied: one instance, raised in each request's task)."""
        return self.error


class Subscription:
    """One subscriber's reading of a stream flight: the batches so far, then the rest
    live; its `aclose` leaves the flight (the relay calls it when its client leaves)."""

    def __init__(self, flight: Flight, ticket: object) -> None:
        self._flight = flight
        self._ticket = ticket
        self._closed = False
        # Whether its events are in the client's own API (`NativeEvent`s).
        self.native = flight.native
        self.first: list[Any] | None = None

    def __aiter__(self) -> AsyncIterator[list[Any]]:
        return self.batches()

    async def batches(self) -> AsyncGenerator[list[Any], None]:
        flight = self._flight
        position = 0
        while True:
            while position < len(flight.batches):
                batch = flight.batches[position]
                position += 1
                yield [_thaw(item) for item in batch]
            if flight.done:
                if (error := flight.failure()) is not None:
                    raise error
                return
            if self._closed:
                return
            await flight.changed()

    def waits_next(self) -> bool:
        """Not told: a subscriber's batches go through its relay's writer, joined."""
        return False

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._flight.leave(self._ticket)

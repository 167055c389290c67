"""One sink's outbox: a bounded queue, sent in batches, retried with back-off.

A finished request is offered to each sink's outbox from the record stage, after its
spend row is queued. `offer` appends to a deque and reaches no checkpoint, so the
request never waits on a sink: a slow or dead sink only lets its own queue fill, and a
full queue drops its oldest rows, each one counted in Prometheus
(`trigate_callback_dropped_rows{callback}`), so memory stays bounded by `max_queued`
rows per sink whatever the sink does.

The sender (one task per outbox, in the gateway's background nursery) waits for a
full batch or `flush_interval`, sends the batch, and on failure waits and sends the
same batch again, doubling the wait from `FIRST_BACKOFF` up to `MAX_BACKOFF`; after
`MAX_ATTEMPTS` the batch is dropped and counted. Rows offered meanwhile wait in the
queue (and past its bound push the oldest out). When the gateway stops, what is queued
is sent once more within `SHUTDOWN_FLUSH_TIMEOUT`, and what is left is counted dropped.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

import trio

logger = logging.getLogger("trigate.export")

T = TypeVar("T")

# LiteLLM's batch loggers send every 5 s (DEFAULT_FLUSH_INTERVAL_SECONDS) or when full.
BATCH_SIZE = 100
FLUSH_INTERVAL = 5.0
MAX_QUEUED = 10_000
SEND_TIMEOUT = 10.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
MAX_ATTEMPTS = 6
SHUTDOWN_FLUSH_TIMEOUT = 5.0


class SinkError(Exception):
    """A batch a sink could not deliver; `retry` False when sending it again cannot help
    (the receiver refused it: 400, 401, 403, 413...)."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class OutboxCounters(Protocol):
    """Where an outbox counts what it sent and dropped (`trigate.metrics`)."""

    def sent(self, sink: str, rows: int) -> None: ...

    def dropped(self, sink: str, rows: int) -> None: ...

    def queued(self, sink: str, rows: int) -> None: ...


Send = Callable[[Sequence[T]], Awaitable[None]]


class Outbox(Generic[T]):
    """The queue and sender of one sink (see the module's docstring)."""

    def __init__(
        self,
        name: str,
        send: Send[T],
        counters: OutboxCounters,
        *,
        batch_size: int | None = None,
        flush_interval: float | None = None,
        max_queued: int | None = None,
        send_timeout: float | None = None,
    ) -> None:
        """Unset bounds are the module's (read when the outbox is made)."""
        self.name = name
        self._send = send
        self._counters = counters
        self._batch_size = batch_size or BATCH_SIZE
        self._flush_interval = flush_interval or FLUSH_INTERVAL
        self._max_queued = max_queued or MAX_QUEUED
        self._send_timeout = send_timeout or SEND_TIMEOUT
        self._queue: deque[T] = deque()
        self._work = trio.Event()
        self._batch_full = trio.Event()
        self.dropped = 0
        self.sent = 0

    def offer(self, item: T) -> None:
        """Queue `item`; never waits, never reaches a checkpoint. A full queue drops its
        oldest item (counted)."""
        queue = self._queue
        queue.append(item)
        if len(queue) > self._max_queued:
            queue.popleft()
            self._drop(1)
        if len(queue) >= self._batch_size:
            self._batch_full.set()
        self._work.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        """The sender, until cancelled; then one bounded, shielded flush."""
        try:
            while True:
                await self._work.wait()
                with trio.move_on_after(self._flush_interval):
                    await self._batch_full.wait()
                await self._send_queued()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_FLUSH_TIMEOUT):
                while self._queue and await self._deliver(self._take(), attempts=1):
                    pass
            if self._queue:
                self._drop(len(self._queue))
                self._queue.clear()
            self._counters.queued(self.name, 0)

    async def _send_queued(self) -> None:
        while self._queue:
            batch = self._take()
            await self._deliver(batch, attempts=MAX_ATTEMPTS)
        self._work = trio.Event()
        self._batch_full = trio.Event()
        self._counters.queued(self.name, 0)

    def _take(self) -> list[T]:
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(self._batch_size, len(queue)))]
        self._counters.queued(self.name, len(queue))
        return batch

    async def _deliver(self, batch: list[T], *, attempts: int) -> bool:
        """Send `batch`, retrying with back-off; False (and the batch counted dropped)
        once it is given up."""
        backoff = FIRST_BACKOFF
        problem = "no attempt"
        for attempt in range(attempts):
            try:
                with trio.fail_after(self._send_timeout):
                    await self._send(batch)
            except trio.TooSlowError:
                problem = f"no answer within {self._send_timeout:g} s"
            except SinkError as error:
                problem = str(error)
                if not error.retry:
                    break
            except Exception as error:  # a sink's bug must not end its sender
                logger.exception("callback %s: sending a batch failed", self.name)
                problem = type(error).__name__
                break
            else:
                self.sent += len(batch)
                self._counters.sent(self.name, len(batch))
                return True
            if attempt + 1 < attempts:
                await trio.sleep(backoff)
                backoff = min(2 * backoff, MAX_BACKOFF)
        logger.warning(
            "callback %s: %d rows dropped after %d attempts (%s)",
            self.name, len(batch), attempts, problem,
        )  # fmt: skip
        self._drop(len(batch))
        return False

    def _drop(self, rows: int) -> None:
        self.dropped += rows
        self._counters.dropped(self.name, rows)

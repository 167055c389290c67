"""The streaming relay: one per-request nursery between an upstream and a client.

The relay is a Quart response body, driven (by the model API, as by Quart) as
`async with body as it: async for frame in it: await send(frame)`, so the body
owns a nursery for exactly as long as the response is being sent. Inside it,
the provider reader runs as a child task and feeds SSE frames into a memory
channel of capacity 100; the client writer is the task iterating the body.

- A client disconnect closes the upstream connection at once (`client_left`,
  called by whoever hears the disconnect), and only then cancels the request's
  scope; the reader ends with it, and the body's exit closes whatever is left.
  The connection never goes back to a pool half-read.
- When hundreds of clients leave together, each close is cheap but each
  unwinding (hypercorn's processing of the end-of-file, the cancellation, the
  exits) costs several times more; run in turn, every close would wait behind
  the unwinding of every departure before it. So after its close, a departure
  waits for a place in a worker-wide lane (`TEARDOWN_LANE_WIDTH` wide) before
  the server goes on, and keeps it until the body has exited; its record is
  written after it has left the lane.
- A slow client blocks the writer; the channel fills to 100 frames and then
  blocks the reader, which stops reading the upstream: memory stays bounded.
- While the writer waits for frames (nothing queued, no write under way), the
  reader writes a frame to the client's connection itself when the upstream trickles
  (its next batch has yet to arrive, `ChunkStream.waits_next`) or the stream is ending, and the
  socket takes it at once (`write_to`): a chunk that arrives on its own, as a model's
  tokens do, then costs no wake-up of the writer. Batches that follow one another at
  once go through the channel, where the writer joins them into one write; whatever
  the socket does not take goes through it too, so the writer alone waits on a slow
  client.
- Accounting runs in `__aexit__` under a shield with a time bound, so a record
  is written however the stream ended.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import orjson
import trio
from quart.wrappers.response import ResponseBody
from trio.lowlevel import RunVar

from trigate.errors import GatewayError, UpstreamError
from trigate.providers import ChunkStream, NativeEvent, passed_chunks
from trigate.usage import UsageMeter

if TYPE_CHECKING:
    from trigate.serving import BodyWriter

CHANNEL_CAPACITY = 100
# The writer sends whatever frames are waiting in one write, up to this many.
MAX_FRAMES_PER_WRITE = 64
# Closing an upstream or writing a record must not hold a cancelled request forever.
CLOSE_TIMEOUT = 5.0
FINISH_TIMEOUT = 10.0
# How many departed streams unwind at once; the others' upstreams are already closed.
TEARDOWN_LANE_WIDTH = 8
# A departure unwinds once no other client has left for this long, or this long after it left.
TEARDOWN_QUIET = 0.002
TEARDOWN_MAX_HOLD = 0.05
_teardown_lane: RunVar[_TeardownLane] = RunVar("teardown_lane")

DONE_FRAME = b"data: [DONE]\n\n"


class _FramedRest(bytes):
    """The rest of a frame the reader began writing to the client (`BodyWriter.try_write`):
    the writer writes it as it is, before anything else."""

    __slots__ = ()


class _StreamEnd:
    """What the relay gives its chunk hook once the upstream's stream has ended: the
    hook answers with the chunks it still held (a list, perhaps empty)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "STREAM_END"


STREAM_END: Final = _StreamEnd()


class _EndStream:
    """What a chunk hook returns to end the stream after the chunks before it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END_STREAM"


END_STREAM: Final = _EndStream()
_CHUNK_IDENTITY = ("id", "created", "model", "system_fingerprint")


def sse_frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class FrameEncoder:
    """How chunks become bytes for the client: OpenAI's SSE frames, unless an ingress
    that speaks another API (Anthropic's Messages) supplies its own encoder."""

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        return sse_frame(chunk)

    def usage(self, chunk: dict[str, Any]) -> bytes:
        """The final usage chunk, sent only when the client asked for usage."""
        return sse_frame(chunk)

    def native(self, event: NativeEvent) -> bytes:
        """An event in the client's own API, from an upstream that speaks it: as it came."""
        return event.frame

    def error(self, error: GatewayError) -> bytes:
        return sse_frame(error.to_dict())

    def end(self) -> bytes:
        return DONE_FRAME


@dataclass(slots=True)
class StreamOutcome:
    """How a relayed stream ended, for its record."""

    completed: bool = False
    cancelled_by_client: bool = False
    error: GatewayError | None = None


class StreamRelay(ResponseBody):
    """A Quart `ResponseBody` relaying one upstream stream as SSE frames (OpenAI's by
    default); a native stream's events (`NativeEvent`) are relayed as they came."""

    def __init__(
        self,
        stream: ChunkStream,
        chunks: AsyncGenerator[list[Any], None],
        first: list[Any] | None,
        meter: UsageMeter,
        *,
        include_usage: bool,
        on_finish: Callable[[StreamOutcome], Awaitable[None]],
        encoder: FrameEncoder | None = None,
        on_backpressure: Callable[[], None] | None = None,
        on_chunk: Callable[[Any], Awaitable[Any]] | None = None,
    ) -> None:
        self._stream = stream
        self._waits_next = stream.waits_next
        # The request's chunk hooks (`trigate.hooks`); None, and never called, without.
        self._on_chunk = on_chunk
        self._encoder = encoder or FrameEncoder()
        # Whether upstream events kept as they came (bytes, `ChunkStream`) go to the client so:
        # OpenAI's SSE out, and no chunk hook that must see each chunk.
        self._passes = on_chunk is None and type(self._encoder) is FrameEncoder
        self._chunks = chunks
        self._first = first
        self._meter = meter
        self._include_usage = include_usage
        self._on_finish = on_finish
        self._on_backpressure = on_backpressure or _no_backpressure
        self._usage_template: dict[str, Any] | None = None
        self._last_chunk: dict[str, Any] | None = None
        # The last events passed on as they came, when they came after `_last_chunk`.
        self._last_passed: bytes | None = None
        # Frames the reader has handed to the channel and the writer not yet taken: the
        # writer takes more than one only when some wait, without failing to.
        self._queued = 0
        # The client's connection, when the writer writes to it directly (`write_to`).
        self._writer: BodyWriter | None = None

        self._frames: trio.MemoryReceiveChannel[bytes] | None = None
        self._nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None
        self.entered = False
        self._client_left = False
        # Set once the body has exited, up to (not including) its record.
        self._unwound = trio.Event()
        # Whether this departure holds a place in the teardown lane.
        self._in_lane = False
        # Set once a departed stream may unwind: it has its lane place, or has unwound.
        self._may_unwind = trio.Event()
        self.outcome = StreamOutcome()

    async def __aenter__(self) -> StreamRelay:
        self.entered = True
        send, self._frames = trio.open_memory_channel[bytes](CHANNEL_CAPACITY)
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        self._nursery.start_soon(self._read_upstream, send)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._nursery is not None and self._nursery_manager is not None
        # The reader must not outlive the writer, whatever stopped the writer.
        self._nursery.cancel_scope.cancel()
        try:
            # A nursery never swallows an exception: its exit returns False or raises.
            await self._nursery_manager.__aexit__(exc_type, exc, tb)
        finally:
            self.outcome.cancelled_by_client = not self.outcome.completed
            await self.close()

    def __aiter__(self) -> StreamRelay:
        return self

    async def __anext__(self) -> bytes:
        assert self._frames is not None
        try:
            frame = await self._frames.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        self._queued -= 1
        if self._queued <= 0 or type(frame) is _FramedRest:
            return frame
        batch = [frame]
        try:
            while self._queued > 0 and len(batch) < MAX_FRAMES_PER_WRITE:
                batch.append(self._frames.receive_nowait())
                self._queued -= 1
        except (trio.WouldBlock, trio.EndOfChannel):
            pass
        return b"".join(batch)

    async def write_to(self, writer: BodyWriter) -> None:
        """The client writer: every frame to `writer`, the client's connection. While it
        waits for frames, the reader may write a frame itself (`_deliver`)."""
        self._writer = writer
        async for frame in self:
            if type(frame) is _FramedRest:
                await writer.write_framed(frame)
            else:
                await writer.write(frame)

    async def client_left(self, request: trio.CancelScope) -> None:
        """The client is gone: close the upstream connection now, then cancel `request`
        (the scope the body is sent in) once this departure has a place in the teardown
        lane, which it keeps until the body has exited. The reader may fail its read
        first, which is no upstream error (`_read_upstream`); `close` runs at exit and
        writes the record."""
        await self.depart()
        request.cancel()

    async def depart(self) -> None:
        """Close the upstream connection now, then wait for a place in the teardown lane
        (at once, unless many departures are unwinding or arriving). The server calls
        this as it reads the client's end-of-file, before it processes it, so its
        processing too waits for the lane, while every departure's close is already done."""
        lane = _lane()
        heard = trio.current_time()
        if not self._client_left:
            lane.heard()
            await self.release_upstream()
        if self._in_lane or self._unwound.is_set():
            return
        await lane.enter(self, heard)
        self._in_lane = True
        self._may_unwind.set()
        if self._unwound.is_set():  # the body exited while this waited
            self._leave_lane()

    def _leave_lane(self) -> None:
        if self._in_lane:
            self._in_lane = False
            _lane().leave(self)

    async def release_upstream(self) -> None:
        """Close the upstream connection now, for a client that has left (its reader's
        failed read is then no upstream error)."""
        self._client_left = True
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            await self._stream.aclose()

    async def close(self) -> None:
        """Release the upstream and write the record; safe to call more than once."""
        # Each step shielded under its own bound, in one scope each: a shielded scope with
        # a deadline is a shield with `move_on_after` inside it, at one scope's cost.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
            await self._chunks.aclose()
            await self._stream.aclose()
        self._unwound.set()
        self._may_unwind.set()
        self._leave_lane()
        on_finish, self._on_finish = self._on_finish, _finished
        with trio.CancelScope(shield=True, deadline=trio.current_time() + FINISH_TIMEOUT):
            await on_finish(self.outcome)

    async def _read_upstream(self, frames: trio.MemorySendChannel[bytes]) -> None:
        # Closed without `aclose`'s checkpoint: the reader is done, and a schedule point
        # here is a trip through the run loop a stream for nothing.
        with frames:
            # What ends the stream (the usage chunk or an error, then the terminator), in
            # one delivery.
            tail = b""
            try:
                if self._first is not None:
                    await self._relay_batch(frames, self._first, at_once=True)
                if self._on_chunk is None:
                    async for batch in self._chunks:
                        # `_relay_batch` without hooks, inline: one call less a read.
                        data = self._encode(batch)
                        if data:
                            await self._deliver(frames, data)
                else:
                    async for batch in self._chunks:
                        await self._relay_batch(frames, batch)
                    # What the hooks held back (a guardrail's unchecked window) goes now.
                    await self._relay_batch(frames, [STREAM_END])
                if self._include_usage:
                    tail = self._encoder.usage(await self._usage_chunk())
            except _HookEnded:
                pass  # the stream ends here; the relay's exit closes the upstream
            except GatewayError as error:
                if self._client_left:
                    # The read failed because the client's departure closed it. Ending now
                    # would end the writer too, and its unwinding would run outside the
                    # teardown lane, ahead of other departures' closes.
                    await self._may_unwind.wait()
                    return
                self.outcome.error = error
                tail = self._encoder.error(error)
            self.outcome.completed = True
            tail += self._encoder.end()
            if tail:
                await self._deliver(frames, tail, at_once=True)

    async def _deliver(
        self,
        frames: trio.MemorySendChannel[bytes],
        data: bytes,
        *,
        at_once: bool = False,
    ) -> None:
        """`data` to the client: written here when the writer waits for frames (it has
        taken every frame queued, and `try_write` finds no write of its under way), the
        upstream's next batch is not here yet or `data` must go `at_once` (the first
        batch, which the client waits on; the end), and the socket takes it at once;
        else through the channel (the rest of a frame begun here first), waiting for
        room only when it is full."""
        writer = self._writer
        if writer is not None and self._queued == 0 and (at_once or self._waits_next()):
            rest = writer.try_write(data)
            if rest is not None:
                if not rest:
                    return
                data = _FramedRest(rest)
        self._queued += 1
        try:
            frames.send_nowait(data)
        except trio.WouldBlock:
            # The client reads slower than the upstream writes: wait for it.
            self._on_backpressure()
            await frames.send(data)

    async def _relay_batch(
        self, frames: trio.MemorySendChannel[bytes], batch: list[Any], *, at_once: bool = False
    ) -> None:
        """One upstream read's chunks become one channel item: a burst of tokens costs
        one hand-over between the tasks, not one per token."""
        stop: Exception | None = None
        if self._on_chunk is not None:
            batch, stop = await self._hooked(self._chunks_of(batch))
        data = self._encode(batch)
        if data:
            await self._deliver(frames, data, at_once=at_once)
        if stop is not None:
            raise stop

    async def _hooked(self, batch: list[Any]) -> tuple[list[Any], Exception | None]:
        """The batch as the chunk hooks pass, rewrite or drop it, and what stops the
        stream after it: a hook that ended it, or failed on a chunk. The chunks the
        hooks passed before that are still sent, however the upstream's reads grouped
        them."""
        assert self._on_chunk is not None
        passed: list[Any] = []
        for chunk in batch:
            try:
                result = await self._on_chunk(chunk)
            except GatewayError as failure:
                return passed, failure
            if type(result) is list:  # chunks a hook held back, released together
                for item in result:
                    if item is END_STREAM:
                        return passed, _HookEnded()
                    passed.append(item)
            elif result is END_STREAM:
                return passed, _HookEnded()
            elif result is not None:
                passed.append(result)
        return passed, None

    def _encode(self, batch: list[Any]) -> bytes:
        """One read's chunks as the client's bytes."""
        if len(batch) == 1:
            return self._frame(batch[0])
        if not self._passes:
            batch = self._chunks_of(batch)
        return b"".join([self._frame(chunk) for chunk in batch])

    def _chunks_of(self, batch: list[Any]) -> list[Any]:
        """The batch with events kept as they came (bytes) read as chunks."""
        if not any(type(item) is bytes for item in batch):
            return batch
        chunks: list[Any] = []
        for item in batch:
            if type(item) is bytes:
                chunks.extend(passed_chunks(item))
            else:
                chunks.append(item)
        return chunks

    def _frame(self, chunk: Any) -> bytes:
        if type(chunk) is bytes:
            if not self._passes:
                return b"".join([self._frame(item) for item in passed_chunks(chunk)])
            # Events with no usage and no error: as they came, their text read only if
            # it must be counted.
            self._meter.observe_frames(chunk)
            self._last_passed = chunk
            return chunk
        if isinstance(chunk, NativeEvent):
            self._meter.report(chunk.usage)
            return self._encoder.native(chunk)
        if not isinstance(chunk, dict):
            raise UpstreamError("The upstream sent a stream chunk that is not an object.")
        self._meter.observe_chunk(chunk)
        usage = chunk.pop("usage", None)
        if usage is not None:
            self._meter.report(usage)
            if not chunk.get("choices"):
                # The usage-only chunk: held back, so a client gets exactly one, last.
                self._usage_template = chunk
                return b""
        self._last_chunk = chunk
        self._last_passed = None
        return self._encoder.chunk(chunk)

    async def _usage_chunk(self) -> dict[str, Any]:
        """The one usage chunk a client that asked for usage gets, before `[DONE]`."""
        chunk = self._usage_template
        if chunk is None:
            last = self._last_chunk or {}
            if self._last_passed is not None:
                last = _last_chunk_of(self._last_passed)
            chunk = {key: last[key] for key in _CHUNK_IDENTITY if key in last}
            chunk.update(object="chat.completion.chunk", choices=[])
        chunk["usage"] = self._meter.reported or (await self._meter.settle()).to_openai()
        return chunk


def _last_chunk_of(passed: bytes) -> dict[str, Any]:
    """The last chunk of events passed on unread, for the identity of a usage chunk the
    gateway makes; {} if it cannot be read (the client has had it as it came)."""
    try:
        return passed_chunks(passed)[-1]
    except UpstreamError:
        return {}


class _HookEnded(Exception):
    """A chunk hook ended the stream."""


class _TeardownLane:
    """Where departed streams unwind: `TEARDOWN_LANE_WIDTH` at a time, and not while
    other clients are still leaving.

    In a mass departure the end-of-files arrive over tens of milliseconds. Each one's
    close is cheap, but an unwinding costs several times more, and Trio runs every
    ready task in each pass of its loop: unwindings running alongside would delay the
    closes still to come. So a departure that has its place waits until no client has
    left for `TEARDOWN_QUIET` seconds, or until `TEARDOWN_MAX_HOLD` after its own
    departure: departures that never pause must still be unwound and billed, and one
    that waited that long for a place goes on at once, so the lane's throughput under
    steady departures is never held down by the wait."""

    __slots__ = ("_last_departure", "_places")

    def __init__(self) -> None:
        self._places = trio.CapacityLimiter(TEARDOWN_LANE_WIDTH)
        self._last_departure = -math.inf

    def heard(self) -> None:
        """A client has just left."""
        self._last_departure = trio.current_time()

    async def enter(self, departure: object, heard: float) -> None:
        """Take a place for `departure`, heard at `heard`, once it may unwind."""
        # A checkpoint even when the lane has room: every departure heard in the same
        # pass of the loop closes its upstream before any goes on.
        await self._places.acquire_on_behalf_of(departure)
        try:
            give_up = heard + TEARDOWN_MAX_HOLD
            # Not an Event: the moment waited for moves with every departure heard.
            while True:
                quiet = min(self._last_departure + TEARDOWN_QUIET, give_up)
                if quiet <= trio.current_time():
                    return
                await trio.sleep_until(quiet)
        except BaseException:
            self._places.release_on_behalf_of(departure)
            raise

    def leave(self, departure: object) -> None:
        self._places.release_on_behalf_of(departure)


def _lane() -> _TeardownLane:
    """This run's teardown lane (a `RunVar`: a limiter belongs to one event loop)."""
    try:
        return _teardown_lane.get()
    except LookupError:
        lane = _TeardownLane()
        _teardown_lane.set(lane)
        return lane


def _no_backpressure() -> None:
    pass


async def _finished(outcome: StreamOutcome) -> None:
    """Stands in for `on_finish` once the record has been written."""

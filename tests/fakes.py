"""A fake OpenAI-compatible upstream on a real socket, scripted per test.

It speaks HTTP/1.1 with h11, records every request it receives, and watches
each connection for the peer's close, so tests assert on what the upstream
actually saw rather than on flags inside the gateway.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import h11
import orjson
import trio


@dataclass
class ReceivedRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class JSONReply:
    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds to "think" before answering, or an event to wait for (a test releases the
    # answer when it is ready); a client leaving meanwhile is counted as aborted.
    delay: float = 0.0
    gate: trio.Event | None = None


@dataclass
class StreamReply:
    """An SSE response. `frames` holds raw bytes to send, floats: seconds to pause, or
    events to wait for (a test releases the stream when it is ready)."""

    frames: Sequence[bytes | float | trio.Event]
    status: int = 200
    # After the frames, keep sending `tail` every `tail_interval` s until the client leaves.
    tail: bytes | None = None
    tail_interval: float = 0.01
    # Send the frames raw, without chunked framing, and close (no Content-Length).
    close_delimited: bool = False
    content_type: str = "text/event-stream"
    # Send the last frame and the body's chunked end in one write, so that a reader of
    # the last frame has the end too.
    end_with_last_frame: bool = False
    # Close the connection after the frames, the body unfinished: a read broken off.
    cut_off: bool = False


Reply = JSONReply | StreamReply
Handler = Callable[[ReceivedRequest], Reply]


def chat_completion(
    content: str = "Hello!", usage: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "upstream-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def tool_call_completion(usage: dict[str, int]) -> dict[str, Any]:
    """A chat completion that calls `get_weather` for Paris."""
    body = chat_completion("", usage)
    body["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    body["choices"][0]["finish_reason"] = "tool_calls"
    return body


def chunk(content: str | None = None, *, finish: str | None = None, **extra: Any) -> bytes:
    return delta_frame({} if content is None else {"content": content}, finish, **extra)


def delta_frame(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    """A chat completion chunk's SSE frame, its one choice carrying `delta`."""
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "upstream-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def usage_chunk(prompt: int, completion: int) -> bytes:
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "upstream-model",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def stream_of(words: list[str], usage: tuple[int, int] | None = (5, 3)) -> StreamReply:
    frames: list[bytes | float] = [chunk(word) for word in words]
    frames.append(chunk(finish="stop"))
    if usage is not None:
        frames.append(usage_chunk(*usage))
    frames.append(DONE)
    return StreamReply(frames)


class FakeUpstream:
    """An HTTP/1.1 server on 127.0.0.1 that answers with scripted replies."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler: Handler = handler or (lambda request: JSONReply(chat_completion()))
        self.requests: list[ReceivedRequest] = []
        self.connections_opened = 0
        self.connections_closed = 0
        # Counts clients that closed a connection before its response was complete.
        self.aborted = 0
        self._changed = trio.Condition()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Block until `predicate()` holds; tests bound this with `trio.fail_after`."""
        async with self._changed:
            while not predicate():
                await self._changed.wait()

    async def _changed_notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections_opened += 1
        await self._changed_notify()
        connection = h11.Connection(h11.SERVER)
        try:
            while await self._serve_one(stream, connection):
                connection.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
                self.connections_closed += 1
                await self._changed_notify()

    async def _serve_one(self, stream: trio.SocketStream, connection: h11.Connection) -> bool:
        request = await _read_request(stream, connection)
        if request is None:
            return False
        self.requests.append(request)
        await self._changed_notify()
        reply = self.handler(request)
        if isinstance(reply, JSONReply):
            waits = reply.delay or reply.gate is not None
            if waits and not await _wait_unless_client_leaves(stream, reply.delay, reply.gate):
                self.aborted += 1
                await self._changed_notify()
                return False
            await _send_json(stream, connection, reply)
            return connection.our_state is h11.DONE and connection.their_state is h11.DONE
        return await self._send_stream(stream, connection, reply)

    async def _send_stream(
        self, stream: trio.SocketStream, connection: h11.Connection, reply: StreamReply
    ) -> bool:
        headers = [("content-type", reply.content_type)]
        send: Callable[[bytes], Awaitable[None]]
        if reply.close_delimited:
            headers.append(("connection", "close"))
            await stream.send_all(
                b"HTTP/1.1 %d OK\r\ncontent-type: %s\r\nconnection: close\r\n\r\n"
                % (reply.status, reply.content_type.encode())
            )
            send = stream.send_all
        else:
            head = h11.Response(status_code=reply.status, headers=headers)
            await stream.send_all(connection.send(head))

            async def send_chunk(data: bytes) -> None:
                written = connection.send(h11.Data(data=data))
                if reply.end_with_last_frame and data is reply.frames[-1]:
                    written += connection.send(h11.EndOfMessage())
                await stream.send_all(written)

            send = send_chunk

        client_left = trio.Event()
        finished = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_for_close, stream, client_left, nursery.cancel_scope)
            finished = await _send_frames(send, reply)
            nursery.cancel_scope.cancel()
        if not finished or client_left.is_set():
            self.aborted += 1
            await self._changed_notify()
            return False
        if reply.close_delimited or reply.cut_off:
            return False
        if connection.our_state is not h11.DONE:
            await stream.send_all(connection.send(h11.EndOfMessage()))
        return True


async def _send_frames(send: Callable[[bytes], Any], reply: StreamReply) -> bool:
    """Send the scripted frames; False if the client left before the end."""
    try:
        for frame in reply.frames:
            if isinstance(frame, float):
                await trio.sleep(frame)
            elif isinstance(frame, trio.Event):
                await frame.wait()
            else:
                await send(frame)
        while reply.tail is not None:
            await trio.sleep(reply.tail_interval)
            await send(reply.tail)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


async def _wait_unless_client_leaves(
    stream: trio.SocketStream, seconds: float, gate: trio.Event | None = None
) -> bool:
    """Sleep (then wait for `gate`), watching the connection; False if the client left
    meanwhile."""
    client_left = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_for_close, stream, client_left, nursery.cancel_scope)
        await trio.sleep(seconds)
        if gate is not None:
            await gate.wait()
        nursery.cancel_scope.cancel()
    return not client_left.is_set()


async def _watch_for_close(
    stream: trio.SocketStream, client_left: trio.Event, scope: trio.CancelScope
) -> None:
    """The client sends nothing while a response streams, so any read result means it left."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.receive_some(1)
    client_left.set()
    scope.cancel()


async def _read_request(
    stream: trio.SocketStream, connection: h11.Connection
) -> ReceivedRequest | None:
    head: h11.Request | None = None
    body = b""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            connection.receive_data(data)
            if not data and head is None:
                return None
            continue
        if isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            headers = {k.decode().lower(): v.decode() for k, v in head.headers}
            return ReceivedRequest(head.method.decode(), head.target.decode(), headers, body)
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def _send_json(
    stream: trio.SocketStream, connection: h11.Connection, reply: JSONReply
) -> None:
    body = orjson.dumps(reply.body) if not isinstance(reply.body, bytes) else reply.body
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    headers += list(reply.headers.items())
    await stream.send_all(connection.send(h11.Response(status_code=reply.status, headers=headers)))
    await stream.send_all(connection.send(h11.Data(data=body)))
    await stream.send_all(connection.send(h11.EndOfMessage()))


async def sse_lines(response: Any) -> AsyncIterator[str]:
    """The `data:` payloads of an httpx streaming response, in order."""
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            event, buffer = buffer.split("\n\n", 1)
            for line in event.splitlines():
                if line.startswith("data: "):
                    yield line[6:]

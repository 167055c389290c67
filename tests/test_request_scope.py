"""The cancel scope a request runs in on the lean HTTP/1.1 path.

An app run on its connection's own task is given the connection's scope
(`REQUEST_SCOPE_EXTENSION`) rather than entering one of its own. Only a departed client
may cancel it; these tests hold the cases where it must not be used, or not be cancelled,
to what a request's own scope did: the connection then carries its next request.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.lowlevel
import trio.testing
from fakes import FakeUpstream, JSONReply, StreamReply, chat_completion, stream_of
from helpers import MASTER_KEY, RunningGateway, openai_config, start_gateway

from trigate import http1

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
TERMINATOR = b"0\r\n\r\n"


def _request(body: dict[str, Any]) -> bytes:
    data = orjson.dumps(body)
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
        f"authorization: Bearer {MASTER_KEY}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n\r\n"
    ).encode() + data


async def _connect(running: RunningGateway) -> trio.SocketStream:
    url = httpx.URL(running.url)
    assert url.port is not None
    return await trio.open_tcp_stream(url.host, url.port)


async def _fixed_length_answer(stream: trio.SocketStream, buffer: bytes) -> tuple[bytes, bytes]:
    """One fixed-length answer's head and body; an empty head if the connection ended."""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            return b"", buffer
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int(fields.get(b"content-length", b"0"))
    while len(rest) < length:
        data = await stream.receive_some(65536)
        if not data:
            return head, rest
        rest += data
    return head, rest[:length]


def _slow_last_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client slow to take a stream's last bytes: the write of its terminator waits for
    room, shielded as every write on the lean path is (half a frame would break the
    framing of all that follows)."""
    original = http1._Exchange._write

    async def write(self: http1._Exchange, data: bytes, *, head: bytes | None = None) -> None:
        if data == TERMINATOR:
            with trio.CancelScope(shield=True):
                await trio.sleep(10)
        await original(self, data, head=head)

    monkeypatch.setattr(http1._Exchange, "_write", write)


@pytest.mark.parametrize("pipelined", [True, False])
async def test_a_response_timeout_passing_in_a_shielded_write_spares_the_next_request(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    virtual_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    pipelined: bool,
) -> None:
    """`response_timeout` passes while a stream's last write waits, shielded: the answer
    still ends whole, and the connection's next request (pipelined behind it, or sent
    once it ended) is answered and recorded as any other, not cut off (a deadline set on
    the connection's own scope would have cancelled it)."""
    _slow_last_write(monkeypatch)
    config = {**openai_config(upstream), "general_settings": {"response_timeout": 5}}
    running = await start_gateway(nursery, config)
    replies: list[JSONReply | StreamReply] = [
        stream_of(["Once ", "upon"]),
        JSONReply(chat_completion("Again")),
    ]
    upstream.handler = lambda request: replies.pop(0)
    stream = await _connect(running)
    second = _request(CHAT)
    await stream.send_all(_request({**CHAT, "stream": True}) + (second if pipelined else b""))
    data = b""
    while TERMINATOR not in data:
        piece = await stream.receive_some(65536)
        assert piece, data
        data += piece
    if not pipelined:
        await stream.send_all(second)
    head, body = await _fixed_length_answer(stream, data.partition(TERMINATOR)[2])
    assert head.startswith(b"HTTP/1.1 200"), (head, body)
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "Again"
    records = await running.records.wait_for(2)
    assert [record.status for record in records] == [200, 200]
    await stream.aclose()
    await running.stop()


async def test_the_graceful_timeout_closes_an_unanswered_request_as_on_other_paths(
    nursery: trio.Nursery, upstream: FakeUpstream, virtual_clock: trio.testing.MockClock
) -> None:
    """Shutdown's `graceful_timeout` cuts off a request still waiting for its upstream: its
    connection closes with no answer, as hypercorn's path and a task per request close
    it (the server's cancellation is not the request's own to answer), recorded 499."""
    config = {**openai_config(upstream), "general_settings": {"graceful_timeout": 5}}
    running = await start_gateway(nursery, config)
    upstream.handler = lambda request: JSONReply(chat_completion(), delay=100)
    stream = await _connect(running)
    await stream.send_all(_request(CHAT))
    await upstream.wait_for(lambda: len(upstream.requests) == 1)
    nursery.start_soon(running.stop)
    data = b""
    with trio.fail_after(60):
        while piece := await stream.receive_some(65536):
            data += piece
    assert data == b""
    assert [record.status for record in running.records.records] == [499]


def _recording_sender(log: list[Any], accepts: bool | None, body_pending: bool) -> Any:
    """A `_ResponseSender` over a server that logs what it is sent, with a whole writer
    that takes the answer (slowly: a disconnect must wait for it), refuses it (as
    HTTP/2 and hypercorn's own h11 path do), or is not offered (None)."""
    from trigate.api.context import RequestContext, _ResponseSender

    async def send(message: Any) -> None:
        fields = [tuple(field) for field in message.get("headers", [])]
        log.append((message["type"], message.get("status"), message.get("body"), fields))

    async def receive() -> Any:
        await trio.sleep(0.01)
        return {"type": "http.disconnect"}

    context = RequestContext("r" * 32, 0.0, None)
    sender = _ResponseSender(send, receive, context, body_pending, None)
    if accepts is not None:

        async def whole(status: int, fields: list[tuple[bytes, bytes]], body: bytes) -> bool:
            await trio.sleep(0.05)
            log.append(("whole", status, body, [tuple(field) for field in fields]))
            return accepts

        sender.whole_writer = whole
    return sender


async def _hear_departure(sender: Any, log: list[Any]) -> None:
    await sender.receive()
    log.append("departure heard")


@pytest.mark.parametrize("accepts", [True, False, None])
@pytest.mark.parametrize("body_pending", [True, False])
async def test_a_whole_answer_in_one_call_is_its_two_messages(
    accepts: bool | None, body_pending: bool, autojump_clock: trio.testing.MockClock
) -> None:
    """`whole_sender` (a fixed-length answer's start and body in one call) sends what
    the start and the body sent one after the other do: the gateway's fields, the
    close of a connection whose body is unread, the server's whole writer or the two
    messages where it refuses or is absent; and a client's departure is heard only
    once the answer is out."""
    from trigate.api.context import whole_sender

    headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
    logs: list[list[Any]] = []
    for in_one_call in (True, False):
        log: list[Any] = []
        sender = _recording_sender(log, accepts, body_pending)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_hear_departure, sender, log)
            await trio.lowlevel.checkpoint()
            whole = whole_sender(sender)
            if in_one_call and whole is not None:
                await whole(200, list(headers), b"{}")
            else:
                start = {"type": "http.response.start", "status": 200, "headers": list(headers)}
                await sender(start)
                await sender({"type": "http.response.body", "body": b"{}", "more_body": False})
        logs.append(log)
    assert logs[0] == logs[1]
    assert logs[0][-1] == "departure heard"
    assert any(b"x-trigate-request-id" in dict(entry[3]) for entry in logs[0][:-1])

"""Plain events from an OpenAI-compatible upstream pass to an OpenAI client as they came
(`SSEDecoder.plain`, `OpenAIChunkStream`): what the gateway must act on (usage, errors,
`[DONE]`) is still read, and the text of what passed is counted when it must be."""

from __future__ import annotations

import orjson
import pytest
import trio
from fakes import DONE, FakeUpstream, StreamReply, chunk, sse_lines, usage_chunk
from helpers import MESSAGES, RunningGateway, streamed_chunks, streamed_events

from trigate.sse import SSEDecoder

NULL_USAGE = {"usage": None}


def one_read(*frames: bytes) -> StreamReply:
    """The frames in one write, so the gateway reads them together."""
    return StreamReply([b"".join(frames)])


@pytest.mark.parametrize("together", [True, False])
async def test_usage_comes_exactly_once_and_last_when_asked(
    gateway: RunningGateway, upstream: FakeUpstream, together: bool
) -> None:
    """OpenAI puts `"usage":null` in every chunk of a stream that asks for usage."""
    frames = [chunk("a", **NULL_USAGE), chunk("b", **NULL_USAGE), usage_chunk(4, 2), DONE]
    upstream.handler = lambda request: one_read(*frames) if together else StreamReply([*frames])
    chunks = await streamed_chunks(gateway, "gpt-test", stream_options={"include_usage": True})
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
    assert (with_usage[0].usage.prompt_tokens, with_usage[0].usage.completion_tokens) == (4, 2)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ab"
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.usage_source) == (
        4,
        2,
        "upstream",
    )


async def test_no_usage_chunk_reaches_a_client_that_did_not_ask(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    frames = [chunk("a"), chunk("b"), usage_chunk(4, 2), DONE]
    upstream.handler = lambda request: one_read(*frames)
    events = await streamed_events(gateway, "gpt-test")
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = [orjson.loads(event) for event in events[:-1]]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["a", "b"]
    assert all(c.get("usage") is None for c in chunks)
    [record] = await gateway.records.wait_for(1)
    assert record.completion_tokens == 2 and record.usage_source == "upstream"


@pytest.mark.parametrize("together", [True, False])
async def test_a_stream_without_usage_is_counted_from_what_passed(
    gateway: RunningGateway, upstream: FakeUpstream, together: bool
) -> None:
    frames = [chunk("Hello"), chunk(" world"), chunk(finish="stop"), DONE]
    upstream.handler = lambda request: one_read(*frames) if together else StreamReply([*frames])
    chunks = await streamed_chunks(gateway, "gpt-test", stream_options={"include_usage": True})
    counter = gateway.gateway.counter
    expected = counter.count_text("upstream-model", "Hello world")
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == expected
    # The usage chunk the gateway makes carries the stream's identity.
    assert chunks[-1].id == "chatcmpl-fake" and chunks[-1].model == "upstream-model"
    [record] = await gateway.records.wait_for(1)
    assert record.usage_source == "counted" and record.completion_tokens == expected


async def test_unknown_fields_pass_through_as_they_came(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    odd = chunk("x", x_vendor={"score": 0.5, "tags": ["a"]}, service_tier="flex")
    upstream.handler = lambda request: one_read(odd, chunk(finish="stop"), DONE)
    events = await streamed_events(gateway, "gpt-test")
    assert events[0].encode() == odd[len(b"data: ") : -2]


async def test_a_client_that_leaves_is_billed_what_was_streamed(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: StreamReply(
        [chunk("Once "), chunk("upon ")], tail=chunk("more "), tail_interval=0.005
    )
    seen: list[str] = []
    body = {"model": "gpt-test", "messages": MESSAGES, "stream": True}
    async with (
        gateway.client() as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        async for data in sse_lines(response):
            seen.append(orjson.loads(data)["choices"][0]["delta"]["content"])
            if len(seen) == 4:
                break
    with trio.fail_after(5):
        [record] = await gateway.records.wait_for(1)
    assert record.cancelled_by_client and record.usage_source == "counted"
    # At least what the client read was billed, and no more than was passed to it.
    counter = gateway.gateway.counter
    assert record.completion_tokens >= counter.count_text("upstream-model", "".join(seen))
    assert record.completion_tokens <= counter.count_text("upstream-model", "".join(seen)) + 200


async def test_a_mid_stream_error_after_passed_events_is_an_error_frame(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    error = b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n'
    upstream.handler = lambda request: one_read(chunk("partial"), error)
    events = await streamed_events(gateway, "gpt-test")
    assert "partial" in events[0] and "overloaded" in events[-2] and events[-1] == "[DONE]"
    [record] = await gateway.records.wait_for(1)
    assert record.status == 502


def test_plain_events_are_told_from_everything_else() -> None:
    one = b'data: {"a":1}\n\n'
    assert SSEDecoder().plain(one * 2) == (len(one) * 2, False)
    assert SSEDecoder().plain(one + DONE) == (len(one), True)
    assert SSEDecoder().plain(one + b'data: {"b"') == (len(one), False)
    assert SSEDecoder().whole_plain(one * 3)
    for other in (
        b": keep-alive\n\n" + one,
        b"event: x\n" + one,
        b'data: {"a":\ndata: 1}\n\n',
        b'data: {"a":1}\r\n\r\n',
        b"data: not json\n\n",
        one + b"\n",
    ):
        assert not SSEDecoder().whole_plain(other), other
    decoder = SSEDecoder()
    decoder.feed(b'data: {"a"')  # an event in progress: the next read is not plain
    assert decoder.plain(b":1}\n\n" + one) is None

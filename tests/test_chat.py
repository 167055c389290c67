"""Chat completions end to end: the OpenAI SDK against hypercorn, a fake upstream on a socket."""

from __future__ import annotations

from typing import Any, cast

import openai
import orjson
import pytest
import trio
from fakes import (
    DONE,
    FakeUpstream,
    JSONReply,
    StreamReply,
    chat_completion,
    chunk,
    stream_of,
)
from helpers import (
    MASTER_KEY,
    MESSAGES,
    UPSTREAM_KEY,
    RunningGateway,
    mock_config,
    openai_config,
    sdk,
    start_gateway,
    streamed_chunks,
    streamed_events,
)
from openai.types.chat import ChatCompletionMessageParam

# MESSAGES as the OpenAI SDK types a chat's messages (helpers.py leaves it a list of dicts).
CHAT = cast("list[ChatCompletionMessageParam]", MESSAGES)


async def test_sdk_non_stream(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.handler = lambda request: JSONReply(
        chat_completion(
            "Hello there", {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
        )
    )
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(model="gpt-test", messages=CHAT)
    assert completion.choices[0].message.content == "Hello there"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 2)
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.usage_source) == (
        11,
        2,
        "upstream",
    )
    assert (
        record.model_group == "gpt-test"
        and record.status == 200
        and record.key_identity == "master"
    )


async def test_upstream_sees_its_own_key_model_and_untouched_fields(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    async with sdk(gateway) as client:
        await client.chat.completions.create(
            model="gpt-test",
            messages=CHAT,
            temperature=0.3,
            extra_body={"future_field": {"nested": [1, 2, 3]}, "seed": 7},
        )
    [received] = upstream.requests
    assert received.target == "/v1/chat/completions"
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert MASTER_KEY not in str(received.headers)
    body = received.json
    assert body["model"] == "upstream-model"
    assert body["future_field"] == {"nested": [1, 2, 3]}
    assert body["seed"] == 7 and body["temperature"] == 0.3
    assert body["messages"] == MESSAGES


async def test_sdk_stream_without_usage_request(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: stream_of(["Hel", "lo", "!"], usage=(9, 3))
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(model="gpt-test", messages=CHAT, stream=True)
        chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello!"
    assert all(c.usage is None for c in chunks), "usage goes only to clients that asked"
    assert all(c.choices for c in chunks)
    # The gateway asked on the client's behalf, and billed what the upstream reported.
    assert upstream.requests[0].json["stream_options"] == {"include_usage": True}
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (9, 3)
    assert record.stream and not record.cancelled_by_client and record.ttft_ms is not None


async def test_sdk_stream_with_usage_gets_exactly_one_usage_chunk(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: stream_of(["a", "b"], usage=(4, 2))
    chunks = await streamed_chunks(gateway, "gpt-test", stream_options={"include_usage": True})
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
    assert with_usage[0].usage.prompt_tokens == 4 and with_usage[0].usage.completion_tokens == 2
    assert with_usage[0].choices == []


async def test_usage_on_every_chunk_is_reduced_to_one(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    """Some OpenAI-compatible servers repeat cumulative usage on each chunk."""
    frames: list[bytes | float | trio.Event] = [
        chunk("one ", usage={"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}),
        chunk("two", usage={"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}),
        chunk(finish="stop", usage={"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}),
        DONE,
    ]
    upstream.handler = lambda request: StreamReply(frames)
    chunks = await streamed_chunks(gateway, "gpt-test", stream_options={"include_usage": True})
    usages = [c.usage for c in chunks if c.usage is not None]
    assert len(usages) == 1 and usages[0].completion_tokens == 2
    [record] = await gateway.records.wait_for(1)
    assert record.completion_tokens == 2 and record.usage_source == "upstream"


async def test_stream_without_upstream_usage_is_counted_with_tiktoken(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: stream_of(["Hello", " world"], usage=None)
    chunks = await streamed_chunks(gateway, "gpt-test", stream_options={"include_usage": True})
    counter = gateway.gateway.counter
    expected_prompt = counter.count_prompt("upstream-model", MESSAGES)
    expected_completion = counter.count_text("upstream-model", "Hello world")
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (expected_prompt, expected_completion)
    [record] = await gateway.records.wait_for(1)
    assert record.usage_source == "counted"
    assert (record.prompt_tokens, record.completion_tokens) == (
        expected_prompt,
        expected_completion,
    )


async def test_tool_call_arguments_are_counted(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": '},
    }
    more = {"index": 0, "function": {"arguments": '"Paris"}'}}

    def tool_chunk(tool_call: dict[str, Any]) -> bytes:
        return chunk(None).replace(
            b'"delta":{}', b'"delta":{"tool_calls":[%s]}' % orjson.dumps(tool_call)
        )

    upstream.handler = lambda request: StreamReply(
        [tool_chunk(call), tool_chunk(more), chunk(finish="tool_calls"), DONE]
    )
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    chunks = await streamed_chunks(gateway, "gpt-test", tools=tools)
    arguments = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert arguments == '{"city": "Paris"}'
    [record] = await gateway.records.wait_for(1)
    counter = gateway.gateway.counter
    assert record.completion_tokens == counter.count_text("upstream-model", arguments)
    assert record.prompt_tokens == counter.count_prompt("upstream-model", MESSAGES, tools)


async def test_reported_zero_usage_is_a_real_zero(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: stream_of(["cached"], usage=(0, 0))
    chunks = await streamed_chunks(gateway, "gpt-test", stream_options={"include_usage": True})
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 0
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.usage_source) == (
        0,
        0,
        "upstream",
    )


async def test_non_stream_without_usage_is_counted_and_returned(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Bonjour tout le monde"))
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(model="gpt-test", messages=CHAT)
    counter = gateway.gateway.counter
    assert completion.usage is not None
    assert completion.usage.completion_tokens == counter.count_text(
        "upstream-model", "Bonjour tout le monde"
    )
    assert completion.usage.prompt_tokens == counter.count_prompt("upstream-model", MESSAGES)


async def test_mid_stream_failure_becomes_one_error_frame_then_done(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    error = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    upstream.handler = lambda request: StreamReply([chunk("partial"), error])
    events = await streamed_events(gateway, "gpt-test")
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert '"error"' in events[-2] and "overloaded" in events[-2]
    assert "partial" in events[0]
    [record] = await gateway.records.wait_for(1)
    assert record.status == 502 and record.error is not None
    assert record.completion_tokens == gateway.gateway.counter.count_text(
        "upstream-model", "partial"
    )


async def test_upstream_dropping_mid_stream_becomes_error_frame(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    # A close-delimited body cut short: the upstream just goes away.
    upstream.handler = lambda request: StreamReply([chunk("x")], close_delimited=True)
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(model="gpt-test", messages=CHAT, stream=True)
        chunks = [c async for c in stream]
    # Ending without [DONE] on a close-delimited body is a normal end for lenient upstreams.
    assert [c.choices[0].delta.content for c in chunks] == ["x"]


@pytest.mark.parametrize(
    ("upstream_status", "client_status", "exception"),
    [
        (400, 400, openai.BadRequestError),
        (404, 404, openai.NotFoundError),
        (422, 422, openai.UnprocessableEntityError),
        (401, 401, openai.AuthenticationError),
        (403, 401, openai.AuthenticationError),
        (500, 502, openai.APIStatusError),
        (503, 503, openai.InternalServerError),
        (529, 503, openai.InternalServerError),
    ],
)
async def test_upstream_errors_before_the_stream_are_real_statuses(
    gateway: RunningGateway,
    upstream: FakeUpstream,
    upstream_status: int,
    client_status: int,
    exception: type[openai.APIStatusError],
) -> None:
    upstream.handler = lambda request: JSONReply(
        {"error": {"message": f"Incorrect API key provided: {UPSTREAM_KEY}", "type": "x"}},
        status=upstream_status,
    )
    async with sdk(gateway) as client:
        for stream in (False, True):
            with pytest.raises(exception) as caught:
                await client.chat.completions.create(model="gpt-test", messages=CHAT, stream=stream)
            assert caught.value.status_code == client_status
            body = caught.value.body
            assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
            assert UPSTREAM_KEY not in str(body) and "[redacted]" in body["message"]


async def test_upstream_rate_limit_keeps_retry_after(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(
        {"error": {"message": "Rate limit reached"}}, status=429, headers={"retry-after": "7"}
    )
    async with gateway.client() as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "gpt-test", "messages": MESSAGES}
        )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["type"] == "rate_limit_error"


async def test_unreachable_upstream_is_502(nursery: trio.Nursery, upstream: FakeUpstream) -> None:
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens here now
    config = openai_config(upstream, api_base=f"http://127.0.0.1:{port}/v1")
    running = await start_gateway(nursery, config)
    async with sdk(running) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="gpt-test", messages=CHAT)
    assert caught.value.status_code == 502
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "upstream_unreachable"
    await running.stop()


async def test_stalled_first_token_is_504(nursery: trio.Nursery, upstream: FakeUpstream) -> None:
    upstream.handler = lambda request: StreamReply([5.0, chunk("late"), DONE])
    running = await start_gateway(nursery, openai_config(upstream, stream_timeout=0.2))
    async with sdk(running) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="gpt-test", messages=CHAT, stream=True)
    assert caught.value.status_code == 504
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
    await running.stop()


async def test_mock_provider_streams_and_counts(nursery: trio.Nursery) -> None:
    running = await start_gateway(nursery, mock_config(mock_response="Hi from the mock"))
    async with sdk(running) as client:
        completion = await client.chat.completions.create(model="mock", messages=CHAT)
        stream = await client.chat.completions.create(
            model="mock", messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    counter = running.gateway.counter
    assert completion.choices[0].message.content == "Hi from the mock"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == counter.count_text("gpt-4o", "Hi from the mock")
    assert completion.usage.prompt_tokens == counter.count_prompt("gpt-4o", MESSAGES)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi from the mock"
    )
    assert chunks[-1].usage == completion.usage
    await running.stop()


async def test_a_whole_answer_past_the_cap_is_a_clear_502(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A non-stream body past `max_upstream_response_size_mb` is not held: the client
    gets a 502 naming the setting, and the connection is closed unread. A stream of the
    same size is relayed: its events are never held whole."""
    config = openai_config(upstream)
    config["general_settings"] = {"max_upstream_response_size_mb": 1}
    config["router_settings"] = {"num_retries": 0}
    running = await start_gateway(nursery, config)
    big = "x" * (2 * 1024 * 1024)
    upstream.handler = lambda request: JSONReply(chat_completion(big))
    async with running.client() as client:
        reply = await client.post(
            "/v1/chat/completions", json={"model": "gpt-test", "messages": MESSAGES}
        )
        assert reply.status_code == 502, reply.text[:300]
        assert "max_upstream_response_size_mb" in reply.json()["error"]["message"]
        upstream.handler = lambda request: stream_of([big[:600_000]] * 3)
        streamed = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-test", "messages": MESSAGES, "stream": True},
        )
        assert streamed.status_code == 200 and streamed.text.count(big[:600_000]) == 3
        upstream.handler = lambda request: JSONReply(chat_completion("small"))
        assert (
            await client.post(
                "/v1/chat/completions", json={"model": "gpt-test", "messages": MESSAGES}
            )
        ).status_code == 200
    await running.stop()

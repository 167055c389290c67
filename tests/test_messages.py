"""Anthropic's Messages API end to end: the anthropic SDK against the gateway, over an
OpenAI-speaking fake upstream and the built-in mock provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import anthropic
import orjson
import pytest
import trio
from anthropic.types import MessageParam, TextBlockParam, ToolParam
from fake_anthropic import (
    MODEL,
    PING,
    anthropic_config,
    error_body,
    message,
    message_end,
    message_start,
    text_block,
    tool_block,
)
from fakes import (
    DONE,
    FakeUpstream,
    JSONReply,
    ReceivedRequest,
    Reply,
    StreamReply,
    chat_completion,
    delta_frame,
    stream_of,
    tool_call_completion,
    usage_chunk,
)
from helpers import (
    MASTER_KEY,
    UPSTREAM_KEY,
    RunningGateway,
    left_mid_stream,
    mock_config,
    start_gateway,
)

MESSAGES: list[MessageParam] = [{"role": "user", "content": "Say hello"}]
# The `anthropic-version` this SDK sends with every request.
SDK_VERSION = anthropic.Anthropic(api_key="unused").default_headers["anthropic-version"]
WEATHER_TOOL: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def sdk(gateway: RunningGateway, key: str = MASTER_KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0)


async def test_non_stream_translates_request_and_answer(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 4,
        "total_tokens": 34,
        "prompt_tokens_details": {"cached_tokens": 10},
    }
    upstream.handler = lambda request: JSONReply(chat_completion("Hello there", usage))
    async with sdk(gateway) as client:
        message = await client.messages.create(
            model="gpt-test",
            max_tokens=64,
            system="Be brief.",
            messages=MESSAGES,
            extra_body={"temperature": 0.2},
            stop_sequences=["END"],
            metadata={"user_id": "user-7"},
        )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "gpt-test"
    assert message.content[0].type == "text" and message.content[0].text == "Hello there"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (20, 4)
    assert message.usage.cache_read_input_tokens == 10
    [received] = upstream.requests
    assert received.target == "/v1/chat/completions"
    assert received.json == {
        "model": "upstream-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"},
        ],
        "max_tokens": 64,
        "temperature": 0.2,
        "stop": ["END"],
        "user": "user-7",
    }
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.status) == (30, 4, 200)
    assert record.model_group == "gpt-test"


async def test_stream_text_deltas_final_message_and_usage(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: stream_of(["Hel", "lo"], usage=(9, 2))
    async with (
        sdk(gateway) as client,
        client.messages.stream(model="gpt-test", max_tokens=32, messages=MESSAGES) as stream,
    ):
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == ["Hel", "lo"]
    assert final.content[0].type == "text" and final.content[0].text == "Hello"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 2)
    [received] = upstream.requests
    assert received.json["stream"] is True
    assert received.json["stream_options"] == {"include_usage": True}
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.stream) == (9, 2, True)


async def test_stream_wire_format_has_events_and_no_done(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: stream_of(["Hi"], usage=(3, 1))
    body = {"model": "gpt-test", "max_tokens": 8, "messages": MESSAGES, "stream": True}
    async with gateway.client() as client:
        response = await client.post("/v1/messages", json=body)
    assert response.status_code == 200
    assert b"[DONE]" not in response.content
    events = [block.split("\n")[0] for block in response.text.strip().split("\n\n")]
    assert events == [
        "event: message_start",
        "event: content_block_start",
        "event: content_block_delta",
        "event: content_block_stop",
        "event: message_delta",
        "event: message_stop",
    ]


async def test_tool_use_round_trip(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    usage = {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}
    upstream.handler = lambda request: JSONReply(tool_call_completion(usage))
    async with sdk(gateway) as client:
        message = await client.messages.create(
            model="gpt-test",
            max_tokens=64,
            messages=MESSAGES,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "any"},
        )
        [tool_use] = message.content
        assert tool_use.type == "tool_use"
        assert (tool_use.id, tool_use.name, tool_use.input) == (
            "call_1",
            "get_weather",
            {"city": "Paris"},
        )
        assert message.stop_reason == "tool_use"
        upstream.handler = lambda request: JSONReply(chat_completion("Sunny in Paris."))
        answer = await client.messages.create(
            model="gpt-test",
            max_tokens=64,
            tools=[WEATHER_TOOL],
            messages=[
                *MESSAGES,
                {"role": "assistant", "content": message.content},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "Sunny"}
                    ],
                },
            ],
        )
    assert answer.content[0].type == "text" and answer.content[0].text == "Sunny in Paris."
    first, second = (request.json for request in upstream.requests)
    assert first["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["input_schema"],
                "description": "The weather in a city.",
            },
        }
    ]
    assert first["tool_choice"] == "required"
    assert second["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
    ]


async def test_streamed_tool_use_sends_input_json_deltas(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    call = {"index": 0, "id": "call_1", "type": "function"}
    frames: list[bytes | float | trio.Event] = [
        delta_frame({"role": "assistant", "content": "Checking."}),
        delta_frame(
            {"tool_calls": [{**call, "function": {"name": "get_weather", "arguments": ""}}]}
        ),
        delta_frame({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        delta_frame({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        delta_frame({}, finish="tool_calls"),
        usage_chunk(12, 6),
        DONE,
    ]
    upstream.handler = lambda request: StreamReply(frames)
    async with (
        sdk(gateway) as client,
        client.messages.stream(
            model="gpt-test", max_tokens=64, messages=MESSAGES, tools=[WEATHER_TOOL]
        ) as stream,
    ):
        partials = [event.partial_json async for event in stream if event.type == "input_json"]
        final = await stream.get_final_message()
    assert "".join(partials) == '{"city": "Paris"}'
    text, tool_use = final.content
    assert text.type == "text" and text.text == "Checking."
    assert tool_use.type == "tool_use" and tool_use.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == 6


async def test_mock_provider_answers_and_streams(nursery: trio.Nursery) -> None:
    running = await start_gateway(nursery, mock_config(mock_response="Hi from the mock"))
    counter = running.gateway.counter
    async with sdk(running) as client:
        message = await client.messages.create(model="mock", max_tokens=16, messages=MESSAGES)
        async with client.messages.stream(model="mock", max_tokens=16, messages=MESSAGES) as stream:
            texts = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        raw = await client.messages.create(
            model="mock", max_tokens=16, messages=MESSAGES, stream=True
        )
        kinds = [event.type async for event in raw]
    assert message.content[0].type == "text" and message.content[0].text == "Hi from the mock"
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    expected = counter.count_text("gpt-4o", "Hi from the mock")
    assert message.usage.output_tokens == expected
    assert "".join(texts) == "Hi from the mock"
    assert final.usage.output_tokens == expected
    assert final.usage.input_tokens == message.usage.input_tokens > 0
    await running.records.wait_for(3)
    await running.stop()


async def test_count_tokens_uses_the_gateway_counter(gateway: RunningGateway) -> None:
    async with sdk(gateway) as client:
        counted = await client.messages.count_tokens(
            model="gpt-test", system="Be brief.", messages=MESSAGES
        )
    messages = [{"role": "system", "content": "Be brief."}, *MESSAGES]
    assert counted.input_tokens == gateway.gateway.counter.count_prompt("upstream-model", messages)


async def test_bad_key_is_an_authentication_error(gateway: RunningGateway) -> None:
    async with sdk(gateway, key="sk-wrong-key-0000000000") as client:
        with pytest.raises(anthropic.AuthenticationError) as raised:
            await client.messages.create(model="gpt-test", max_tokens=8, messages=MESSAGES)
    body = raised.value.body
    assert isinstance(body, dict)
    assert body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": body["error"]["message"]},
    }


async def test_unknown_model_is_not_found(gateway: RunningGateway) -> None:
    async with sdk(gateway) as client:
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.create(model="no-such-model", max_tokens=8, messages=MESSAGES)
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.count_tokens(model="no-such-model", messages=MESSAGES)


async def test_missing_max_tokens_is_a_bad_request(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        response = await client.post(
            "/v1/messages", json={"model": "gpt-test", "messages": MESSAGES}
        )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_upstream_rate_limit_keeps_retry_after(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(
        {"error": {"message": "slow down", "type": "rate_limit_error"}},
        status=429,
        headers={"retry-after": "7"},
    )
    async with sdk(gateway) as client:
        with pytest.raises(anthropic.RateLimitError) as raised:
            await client.messages.create(model="gpt-test", max_tokens=8, messages=MESSAGES)
    assert raised.value.response.headers["retry-after"] == "7"
    body = raised.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "rate_limit_error"


async def test_mid_stream_failure_is_one_error_event(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    failure = b'data: {"error": {"message": "boom", "type": "server_error"}}\n\n'
    upstream.handler = lambda request: StreamReply([delta_frame({"content": "Hi"}), failure])
    body = {"model": "gpt-test", "max_tokens": 8, "messages": MESSAGES, "stream": True}
    async with gateway.client() as client:
        response = await client.post("/v1/messages", json=body)
    last = response.text.strip().split("\n\n")[-1]
    kind, data = last.split("\n")
    assert kind == "event: error"
    assert orjson.loads(data.removeprefix("data: "))["type"] == "error"
    assert "message_stop" not in response.text


async def test_virtual_key_model_access_is_a_permission_error(gateway: RunningGateway) -> None:
    async with gateway.client() as admin:
        reply = await admin.post("/key/generate", json={"models": ["other"]})
    key = reply.json()["key"]
    async with sdk(gateway, key=key) as client:
        with pytest.raises(anthropic.PermissionDeniedError):
            await client.messages.create(model="gpt-test", max_tokens=8, messages=MESSAGES)
        with pytest.raises(anthropic.PermissionDeniedError):
            await client.messages.count_tokens(model="gpt-test", messages=MESSAGES)
    [record] = await gateway.records.wait_for(1)
    assert record.status == 403


# --- native pass-through to `anthropic/` deployments -----------------------------------


@pytest.fixture
async def claude(nursery: trio.Nursery, upstream: FakeUpstream) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(nursery, anthropic_config(upstream))
    yield running
    await running.stop()


CACHED_SYSTEM: list[TextBlockParam] = [
    {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
]


def native(upstream: FakeUpstream, reply: Reply) -> None:
    """Answer with `reply` only what arrived natively: the deployment's key, the client's
    version (the SDK's) or else the deployment's, and `model` rewritten to the upstream's."""

    def handle(request: ReceivedRequest) -> Reply:
        headers = request.headers
        if request.target != "/v1/messages" or headers.get("x-api-key") != UPSTREAM_KEY:
            return JSONReply(error_body("authentication_error", "bad key or route"), status=401)
        version = headers.get("anthropic-version")
        if version not in (SDK_VERSION, "2023-06-01") or request.json["model"] != MODEL:
            return JSONReply(error_body("invalid_request_error", "bad version or model"), 400)
        return reply

    upstream.handler = handle


async def test_native_non_stream_passes_body_and_answer_through(
    claude: RunningGateway, upstream: FakeUpstream
) -> None:
    answer = message(
        [{"type": "text", "text": "Hi"}],
        input_tokens=10,
        output_tokens=5,
        cache_read_input_tokens=100,
        cache_creation_input_tokens=20,
    )
    native(upstream, JSONReply(answer))
    async with sdk(claude) as client:
        reply = await client.messages.create(
            model="claude",
            max_tokens=64,
            system=CACHED_SYSTEM,
            messages=MESSAGES,
            extra_body={"top_k": 5, "future_field": {"x": 1}},
        )
    [received] = upstream.requests
    assert received.json == {
        "model": MODEL,
        "max_tokens": 64,
        "system": CACHED_SYSTEM,
        "messages": MESSAGES,
        "top_k": 5,
        "future_field": {"x": 1},
    }
    assert MASTER_KEY not in str(received.headers)
    assert reply.model_dump(exclude_none=True) == anthropic.types.Message.model_validate(
        answer
    ).model_dump(exclude_none=True)
    [record] = await claude.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (130, 5)
    assert record.usage_source == "upstream" and record.status == 200


async def test_native_stream_relays_the_upstream_events(
    claude: RunningGateway, upstream: FakeUpstream
) -> None:
    frames: list[bytes | float | trio.Event] = [
        message_start(input_tokens=25, output_tokens=1, cache_read_input_tokens=40),
        PING,
        *text_block(0, "Hel", "lo"),
        *message_end("end_turn", output_tokens=15),
    ]
    native(upstream, StreamReply(frames))
    body = {"model": "claude", "max_tokens": 32, "messages": MESSAGES, "stream": True}
    async with claude.client() as http:
        response = await http.post("/v1/messages", json=body)
    assert response.content == b"".join(f for f in frames if isinstance(f, bytes))
    assert upstream.requests[0].json == {**body, "model": MODEL}
    async with (
        sdk(claude) as client,
        client.messages.stream(model="claude", max_tokens=32, messages=MESSAGES) as stream,
    ):
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == ["Hel", "lo"] and final.id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (25, 15)
    assert final.usage.cache_read_input_tokens == 40
    records = await claude.records.wait_for(2)
    assert all((r.prompt_tokens, r.completion_tokens) == (65, 15) for r in records)
    assert all(r.usage_source == "upstream" and r.status == 200 for r in records)


async def test_native_streamed_tool_use(claude: RunningGateway, upstream: FakeUpstream) -> None:
    frames: list[bytes | float | trio.Event] = [
        message_start(input_tokens=400, output_tokens=1, cache_creation_input_tokens=30),
        *tool_block(0, "toolu_01A", "get_weather", '{"city": ', '"Paris"}'),
        *message_end("tool_use", output_tokens=89),
    ]
    native(upstream, StreamReply(frames))
    async with (
        sdk(claude) as client,
        client.messages.stream(
            model="claude", max_tokens=64, messages=MESSAGES, tools=[WEATHER_TOOL]
        ) as stream,
    ):
        final = await stream.get_final_message()
    assert upstream.requests[0].json["tools"] == [WEATHER_TOOL]
    [block] = final.content
    assert block.type == "tool_use" and block.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"
    [record] = await claude.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (430, 89)


async def test_native_stream_client_disconnect_closes_the_upstream(
    claude: RunningGateway, upstream: FakeUpstream
) -> None:
    start = message_start(input_tokens=25, output_tokens=1)
    native(upstream, StreamReply([start, *text_block(0, "Once")], tail=PING))
    body = {"model": "claude", "max_tokens": 32, "messages": MESSAGES, "stream": True}
    record = await left_mid_stream(claude, upstream, "/v1/messages", body, "content_block_delta")
    assert record.cancelled_by_client and record.status == 499
    assert (record.prompt_tokens, record.completion_tokens) == (25, 1)


# --- Claude Code: a mid-conversation system message, betas, `?beta=true` -------------

# What Claude Code 2.1 sends: `system` turns inside `messages` and fields that are legal
# only with their betas named in `anthropic-beta`.
CLAUDE_CODE_MESSAGES: list[Any] = [
    {"role": "user", "content": "Say hi"},
    {"role": "assistant", "content": "Hi."},
    {"role": "system", "content": [{"type": "text", "text": "The user is in /work."}]},
    {"role": "user", "content": "Again"},
]
CLAUDE_CODE_BETAS = "claude-code-20250219,context-management-2025-06-27,mid-conversation-system"
BETA_FIELDS = {
    "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
    "output_config": {"effort": "medium"},
    "thinking": {"type": "adaptive"},
}
# A request as Claude Code makes it, in the Anthropic SDK's words: its betas, `?beta=true`.
AS_CLAUDE_CODE: dict[str, Any] = {
    "max_tokens": 64,
    "messages": CLAUDE_CODE_MESSAGES,
    "extra_headers": {"anthropic-beta": CLAUDE_CODE_BETAS},
    "extra_query": {"beta": "true"},
}


async def test_claude_code_request_reaches_anthropic_untouched_with_its_headers(
    claude: RunningGateway, upstream: FakeUpstream
) -> None:
    frames = [message_start(input_tokens=25, output_tokens=1), *text_block(0, "Hi"), PING]
    replies: list[Reply] = [JSONReply(message([{"type": "text", "text": "Hi"}]))]
    replies.append(StreamReply([*frames, *message_end("end_turn", output_tokens=3)]))
    accepted = JSONReply({})
    native(upstream, accepted)
    check = upstream.handler

    def handle(request: ReceivedRequest) -> Reply:
        checked = check(request)
        return replies.pop(0) if checked is accepted else checked

    upstream.handler = handle
    async with sdk(claude) as client:
        reply = await client.messages.create(
            model="claude", **AS_CLAUDE_CODE, extra_body=BETA_FIELDS
        )
        async with client.messages.stream(model="claude", **AS_CLAUDE_CODE) as stream:
            final = await stream.get_final_message()
    assert reply.content[0].type == "text" and reply.content[0].text == "Hi"
    assert final.content[0].type == "text" and final.content[0].text == "Hi"
    whole, streamed = upstream.requests
    assert whole.json == {
        "model": MODEL,
        "max_tokens": 64,
        "messages": CLAUDE_CODE_MESSAGES,
        **BETA_FIELDS,
    }
    assert streamed.json["messages"] == CLAUDE_CODE_MESSAGES and streamed.json["stream"]
    for received in (whole, streamed):
        assert received.target == "/v1/messages"
        assert received.headers["anthropic-beta"] == CLAUDE_CODE_BETAS
        assert received.headers["anthropic-version"] == SDK_VERSION
        assert received.headers["x-api-key"] == UPSTREAM_KEY


async def test_a_deployments_version_serves_only_clients_that_send_none(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    config = anthropic_config(
        upstream, anthropic_version="2024-01-01", extra_headers={"anthropic-beta": "ops-beta"}
    )
    gateway = await start_gateway(nursery, config)
    upstream.handler = lambda request: JSONReply(message([{"type": "text", "text": "Hi"}]))
    body = {"model": "claude", "max_tokens": 8, "messages": MESSAGES}
    client_headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "client-beta"}
    async with gateway.client() as client:
        for headers in ({}, client_headers):
            response = await client.post("/v1/messages", json=body, headers=headers)
            assert response.status_code == 200
    plain, versioned = (request.headers for request in upstream.requests)
    assert (plain["anthropic-version"], plain["anthropic-beta"]) == ("2024-01-01", "ops-beta")
    assert versioned["anthropic-version"] == "2023-06-01"
    assert versioned["anthropic-beta"] == "ops-beta,client-beta"
    await gateway.stop()


async def test_a_mid_conversation_system_message_is_a_system_message_when_translated(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Hi"))
    async with sdk(gateway) as client:
        reply = await client.messages.create(model="gpt-test", **AS_CLAUDE_CODE)
    assert reply.content[0].type == "text" and reply.content[0].text == "Hi"
    [received] = upstream.requests
    assert received.json["messages"] == [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "Hi."},
        {"role": "system", "content": [{"type": "text", "text": "The user is in /work."}]},
        {"role": "user", "content": "Again"},
    ]
    assert "anthropic-beta" not in received.headers


async def test_a_body_only_anthropic_can_read_is_refused_only_by_a_translated_deployment(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    config = anthropic_config(upstream)
    config["model_list"].append(
        {
            "model_name": "gpt-test",
            "litellm_params": {
                "model": "openai/upstream-model",
                "api_base": upstream.base_url,
                "api_key": UPSTREAM_KEY,
            },
        }
    )
    gateway = await start_gateway(nursery, config)
    upstream.handler = lambda request: JSONReply(message([{"type": "text", "text": "Hi"}]))
    # Cast: a role Anthropic's API does not have, to see which routes refuse it.
    turns = cast("list[MessageParam]", [*MESSAGES, {"role": "critic", "content": "Shorter."}])
    async with sdk(gateway) as client:
        await client.messages.create(model="claude", max_tokens=8, messages=turns)
        with pytest.raises(anthropic.BadRequestError) as refused:
            await client.messages.create(model="gpt-test", max_tokens=8, messages=turns)
    assert "critic" in refused.value.message
    [received] = upstream.requests
    assert received.json["messages"] == turns
    await gateway.stop()


async def test_a_messages_requests_fallbacks_are_the_gateways_not_the_upstreams(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """LiteLLM's per-request `fallbacks` are popped on `/v1/messages` as on every model
    route: never sent upstream, and followed when the group fails."""
    second = FakeUpstream()
    await second.start(nursery)
    config = anthropic_config(upstream)
    config["model_list"].append(
        {
            "model_name": "backup",
            "litellm_params": {
                "model": f"anthropic/{MODEL}",
                "api_base": f"http://127.0.0.1:{second.port}",
                "api_key": UPSTREAM_KEY,
            },
        }
    )
    running = await start_gateway(nursery, config)
    upstream.handler = lambda request: JSONReply(error_body("api_error", "down"), status=500)
    answer = message([{"type": "text", "text": "Hi"}], input_tokens=3, output_tokens=1)
    native(second, JSONReply(answer))
    async with sdk(running) as client:
        reply = await client.messages.create(
            model="claude", max_tokens=16, messages=MESSAGES, extra_body={"fallbacks": ["backup"]}
        )
    block = reply.content[0]
    assert block.type == "text" and block.text == "Hi"
    assert "fallbacks" not in upstream.requests[0].json
    assert "fallbacks" not in second.requests[0].json
    await running.stop()

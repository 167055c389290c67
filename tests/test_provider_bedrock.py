"""The `bedrock/` provider: OpenAI's SDK against the gateway, a fake Bedrock Runtime behind it.

The fake (fake_bedrock.py) checks every body against botocore's service model and every
SigV4 signature from what arrived on the socket, and answers in binary event-stream frames.
What every provider owes (errors, usage chunk, tool calls, disconnects) is in
test_provider_contract.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import quote

import openai
import orjson
import pytest
import trio
from botocore.validate import validate_parameters
from fake_bedrock import (
    ACCESS_KEY,
    CONVERSE_INPUT,
    MODEL_ID,
    REGION,
    SECRET_KEY,
    SESSION_TOKEN,
    aws_error,
    bedrock,
    bedrock_config,
    converse_response,
    event,
    event_stream,
    exception,
    metadata,
    model_id,
    signature_problem,
    split_at,
    text_events,
)
from fakes import FakeUpstream, JSONReply
from helpers import (
    MESSAGES,
    WEATHER_TOOL,
    RunningGateway,
    sdk,
    start_gateway,
    streamed_chunks,
    streamed_events,
)
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)

from trigate.errors import Failure, InvalidRequest, UpstreamError
from trigate.providers.bedrock import (
    StreamTranslator,
    bedrock_error,
    converse_request,
    finish_reason,
    to_completion,
    to_usage,
)
from trigate.providers.eventstream import EventStreamDecoder

# helpers' MESSAGES and WEATHER_TOOL as the OpenAI SDK types them (helpers keeps plain
# dicts, for every SDK).
CHAT_MESSAGES = cast(list[ChatCompletionMessageParam], MESSAGES)
CHAT_WEATHER_TOOL = cast(ChatCompletionFunctionToolParam, WEATHER_TOOL)


@pytest.fixture
async def gateway(nursery: trio.Nursery, upstream: FakeUpstream) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(nursery, bedrock_config(upstream))
    yield running
    await running.stop()


# --- end to end through the OpenAI SDK ---------------------------------------------------


async def test_non_stream_translates_both_ways(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = bedrock(
        lambda request: JSONReply(
            converse_response(
                [{"text": "Hello there"}],
                usage={"inputTokens": 11, "outputTokens": 2},
            ),
            headers={"x-amzn-requestid": "2d4e6f80-aaaa-bbbb-cccc-0123456789ab"},
        )
    )
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(
            model="claude",
            messages=[{"role": "system", "content": "Be brief."}, *CHAT_MESSAGES],
            max_tokens=50,
            temperature=0.2,
            stop="END",
            presence_penalty=0.5,
            user="someone",
        )
    assert completion.choices[0].message.content == "Hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id == "chatcmpl-2d4e6f80-aaaa-bbbb-cccc-0123456789ab"
    assert completion.model == MODEL_ID
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 2)
    [received] = upstream.requests
    assert received.target == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    assert received.headers["accept"] == "application/json"
    assert signature_problem(received) is None
    assert "x-amz-security-token" not in received.headers
    assert received.json == {
        "messages": [{"role": "user", "content": [{"text": "Say hello"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.2, "stopSequences": ["END"]},
    }
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.usage_source) == (
        11,
        2,
        "upstream",
    )


async def test_cache_tokens_count_as_prompt_tokens(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    usage = {"inputTokens": 5, "outputTokens": 7, "cacheReadInputTokens": 100}
    usage["cacheWriteInputTokens"] = 20
    upstream.handler = bedrock(
        lambda r: JSONReply(converse_response([{"text": "ok"}], usage=usage))
    )
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(model="claude", messages=CHAT_MESSAGES)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 125 and completion.usage.total_tokens == 132
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (125, 7)
    # Cache reads and writes reached billing, each at its own price.
    price = gateway.gateway.router.groups.deployments("claude")[0].price
    assert price is not None and price.input is not None and price.output is not None
    assert price.cache_read and price.cache_write
    assert price.cache_read != price.input
    expected = 5 * price.input + 100 * price.cache_read + 20 * price.cache_write + 7 * price.output
    assert record.cost == pytest.approx(expected)


async def test_session_token_is_sent_and_signed(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = bedrock(
        lambda r: JSONReply(converse_response([{"text": "ok"}])), token=SESSION_TOKEN
    )
    running = await start_gateway(
        nursery, bedrock_config(upstream, aws_session_token=SESSION_TOKEN)
    )
    async with sdk(running) as client:
        completion = await client.chat.completions.create(model="claude", messages=CHAT_MESSAGES)
    assert completion.choices[0].message.content == "ok"
    [received] = upstream.requests
    assert received.headers["x-amz-security-token"] == SESSION_TOKEN
    assert signature_problem(received, SESSION_TOKEN) is None
    await running.stop()


async def test_credentials_fall_back_to_the_aws_environment(
    nursery: trio.Nursery, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    monkeypatch.setenv("AWS_REGION", REGION)
    upstream.handler = bedrock(
        lambda r: JSONReply(converse_response([{"text": "ok"}])), token=SESSION_TOKEN
    )
    config = bedrock_config(upstream)
    params = config["model_list"][0]["litellm_params"]
    for name in ("aws_access_key_id", "aws_secret_access_key", "aws_region_name"):
        del params[name]
    running = await start_gateway(nursery, config)
    async with sdk(running) as client:
        await client.chat.completions.create(model="claude", messages=CHAT_MESSAGES)
    assert signature_problem(upstream.requests[0], SESSION_TOKEN) is None
    await running.stop()


async def test_converse_route_prefix_and_an_arn_model_id(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    arn = "arn:aws:bedrock:eu-west-3:123456789012:inference-profile/eu.anthropic.claude-3-haiku"
    upstream.handler = bedrock(lambda r: JSONReply(converse_response([{"text": "ok"}])))
    running = await start_gateway(
        nursery, bedrock_config(upstream, model=f"bedrock/converse/{arn}")
    )
    async with sdk(running) as client:
        completion = await client.chat.completions.create(model="claude", messages=CHAT_MESSAGES)
    [received] = upstream.requests
    assert received.target == f"/model/{quote(arn, safe='')}/converse"
    assert model_id(received) == arn and completion.model == arn
    assert signature_problem(received) is None
    await running.stop()


async def test_bedrock_api_key_is_a_bearer_token(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = bedrock(
        lambda r: JSONReply(converse_response([{"text": "ok"}])), signed=False
    )
    config = bedrock_config(upstream, api_key="bedrock-api-key-0123456789")
    params = config["model_list"][0]["litellm_params"]
    del params["aws_access_key_id"], params["aws_secret_access_key"]
    running = await start_gateway(nursery, config)
    async with sdk(running) as client:
        await client.chat.completions.create(model="claude", messages=CHAT_MESSAGES)
    [received] = upstream.requests
    assert received.headers["authorization"] == "Bearer bedrock-api-key-0123456789"
    assert "x-amz-date" not in received.headers
    await running.stop()


async def test_no_credentials_fail_without_calling_bedrock(
    nursery: trio.Nursery, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_BEARER_TOKEN_BEDROCK"):
        monkeypatch.delenv(name, raising=False)
    config = bedrock_config(upstream)
    params = config["model_list"][0]["litellm_params"]
    del params["aws_access_key_id"], params["aws_secret_access_key"]
    running = await start_gateway(nursery, config)
    async with sdk(running) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="claude", messages=CHAT_MESSAGES)
    assert caught.value.status_code == 502
    assert "aws_access_key_id" in caught.value.message
    assert upstream.requests == []
    await running.stop()


async def test_tool_round_trip_non_stream(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    content: list[dict[str, Any]] = [
        {"text": "Let me check."},
        {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}},
    ]
    upstream.handler = bedrock(lambda r: JSONReply(converse_response(content, "tool_use")))
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(
            model="claude",
            messages=CHAT_MESSAGES,
            tools=[CHAT_WEATHER_TOOL],
            tool_choice="required",
        )
        message = completion.choices[0].message
        assert completion.choices[0].finish_reason == "tool_calls"
        assert message.content == "Let me check."
        assert message.tool_calls is not None
        [call] = message.tool_calls
        assert isinstance(call, ChatCompletionMessageFunctionToolCall)
        assert (call.id, call.function.name) == ("tooluse_1", "get_weather")
        assert orjson.loads(call.function.arguments) == {"city": "Paris"}
        # The answer goes back with the tool's result; Bedrock checks the shape of both.
        upstream.handler = bedrock(lambda r: JSONReply(converse_response([{"text": "Sunny."}])))
        answer = await client.chat.completions.create(
            model="claude",
            messages=[
                *CHAT_MESSAGES,
                # The SDK's answer, dumped, is the assistant message the API takes back.
                cast(ChatCompletionAssistantMessageParam, message.model_dump(exclude_none=True)),
                {"role": "tool", "tool_call_id": "tooluse_1", "content": "22C, sunny"},
            ],
            tools=[CHAT_WEATHER_TOOL],
        )
    assert answer.choices[0].message.content == "Sunny."
    first, second = (request.json for request in upstream.requests)
    assert first["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "get_weather",
                    "description": "The weather in a city",
                    "inputSchema": {"json": CHAT_WEATHER_TOOL["function"]["parameters"]},
                }
            }
        ],
        "toolChoice": {"any": {}},
    }
    assert second["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"text": "Let me check."},
                {
                    "toolUse": {
                        "toolUseId": "tooluse_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    }
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "22C, sunny"}]}}
            ],
        },
    ]


async def test_stream_split_at_awkward_offsets(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    data = b"".join([*text_events("Hel", "lo", " wörld"), metadata(inputTokens=9, outputTokens=3)])
    # Mid-prelude, right after the prelude CRC, mid-header, mid-payload, mid-final-CRC.
    offsets = [1, 5, 12, 13, 40, 100, 101, 150, 230, 231, 232, len(data) - 2]
    upstream.handler = bedrock(lambda r: event_stream(split_at(data, offsets)))
    chunks = await streamed_chunks(gateway, "claude", stream_options={"include_usage": True})
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello wörld"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (9, 3)
    [received] = upstream.requests
    assert received.target.endswith("/converse-stream")
    assert received.headers["accept"] == "application/vnd.amazon.eventstream"
    assert signature_problem(received) is None
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.status) == (9, 3, 200)


async def test_streamed_tool_calls(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    def tool(block: int, tool_id: str, *pieces: str) -> list[bytes]:
        start = {"toolUse": {"toolUseId": tool_id, "name": "get_weather"}}
        return [
            event("contentBlockStart", contentBlockIndex=block, start=start),
            *(
                event("contentBlockDelta", contentBlockIndex=block, delta={"toolUse": {"input": p}})
                for p in pieces
            ),
            event("contentBlockStop", contentBlockIndex=block),
        ]

    frames = [
        event("messageStart", role="assistant"),
        event("contentBlockDelta", contentBlockIndex=0, delta={"text": "Checking."}),
        event("contentBlockStop", contentBlockIndex=0),
        *tool(1, "tooluse_a", '{"ci', 'ty": "Pa', 'ris"}'),
        *tool(2, "tooluse_b", '{"city": "Oslo"}'),
        event("messageStop", stopReason="tool_use"),
        metadata(inputTokens=30, outputTokens=20),
    ]
    upstream.handler = bedrock(lambda r: event_stream([*frames]))
    chunks = await streamed_chunks(gateway, "claude", tools=[WEATHER_TOOL])
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(call.index, {"arguments": ""})
            if call.id:
                entry["id"], entry["name"] = call.id, call.function.name
            entry["arguments"] += call.function.arguments or ""
    assert calls == {
        0: {"id": "tooluse_a", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        1: {"id": "tooluse_b", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (30, 20)


async def test_stream_usage_with_cache_tokens(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    usage = metadata(
        inputTokens=4, outputTokens=2, cacheReadInputTokens=300, cacheWriteInputTokens=0
    )
    upstream.handler = bedrock(lambda r: event_stream([*text_events("ok"), usage]))
    chunks = await streamed_chunks(gateway, "claude", stream_options={"include_usage": True})
    final = chunks[-1].usage
    assert final is not None
    assert (final.prompt_tokens, final.completion_tokens, final.total_tokens) == (304, 2, 306)
    assert final.prompt_tokens_details is not None
    assert final.prompt_tokens_details.cached_tokens == 300
    assert final.model_extra == {"cache_creation_input_tokens": 0}


async def test_crc_mismatch_fails_the_stream_after_what_came_before(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    good = text_events("partial")[:2]
    corrupt = bytearray(event("contentBlockDelta", contentBlockIndex=0, delta={"text": "x"}))
    corrupt[-10] ^= 0xFF  # a payload byte: the message CRC no longer matches
    upstream.handler = bedrock(lambda r: event_stream([*good, 0.01, bytes(corrupt)]))
    events = await streamed_events(gateway, "claude")
    assert "partial" in "".join(events[:-2])
    error = orjson.loads(events[-2])["error"]
    assert "checksum" in error["message"].lower() and events[-1] == "[DONE]"
    [record] = await gateway.records.wait_for(1)
    assert record.status == 502
    assert record.completion_tokens == gateway.gateway.counter.count_text(MODEL_ID, "partial")


@pytest.mark.parametrize(
    ("name", "error_type", "status"),
    [
        ("throttlingException", "rate_limit_error", 429),
        ("modelStreamErrorException", "api_error", 502),
        ("serviceUnavailableException", "api_error", 503),
        ("validationException", "invalid_request_error", 400),
    ],
)
async def test_exception_frames_mid_stream(
    gateway: RunningGateway, upstream: FakeUpstream, name: str, error_type: str, status: int
) -> None:
    frames = [*text_events("so far")[:2], exception(name, "Something went wrong.")]
    upstream.handler = bedrock(lambda r: event_stream(frames))
    events = await streamed_events(gateway, "claude")
    assert "so far" in events[1]
    error = orjson.loads(events[-2])["error"]
    assert error["type"] == error_type and "Something went wrong." in error["message"]
    [record] = await gateway.records.wait_for(1)
    assert record.status == status


# Bedrock's own errors; the contract suite covers throttling, a bad token, a too-long input,
# a malformed request, 500 and 503.
@pytest.mark.parametrize(
    ("status", "error_type", "message", "client_status", "exception_class", "code"),
    [
        (429, "ModelNotReadyException", "Model is not ready for inference.",
         429, openai.RateLimitError, "rate_limit_exceeded"),
        (403, "AccessDeniedException", "You don't have access to the model.",
         401, openai.AuthenticationError, "upstream_authentication_error"),
        (400, "ValidationException", "Model error: too many input tokens",
         400, openai.BadRequestError, "context_length_exceeded"),
        (408, "ModelTimeoutException", "Model has timed out in processing the request.",
         504, openai.APIStatusError, "upstream_timeout"),
        (424, "ModelErrorException", "The model encountered an error.",
         502, openai.APIStatusError, "upstream_error"),
    ],
)  # fmt: skip
async def test_errors_before_the_answer(
    gateway: RunningGateway,
    upstream: FakeUpstream,
    status: int,
    error_type: str,
    message: str,
    client_status: int,
    exception_class: type[openai.APIStatusError],
    code: str,
) -> None:
    upstream.handler = bedrock(
        lambda r: aws_error(status, error_type, message, **{"retry-after": "3"})
    )
    async with sdk(gateway) as client:
        for stream in (False, True):
            with pytest.raises(exception_class) as caught:
                await client.chat.completions.create(
                    model="claude", messages=CHAT_MESSAGES, stream=stream
                )
            assert caught.value.status_code == client_status
            assert isinstance(caught.value.body, dict)
            assert caught.value.body["message"].endswith(message)
            assert caught.value.body["code"] == code
            if client_status == 429:
                assert caught.value.response.headers["retry-after"] == "3"


async def test_secrets_never_reach_the_logs(
    nursery: trio.Nursery, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.handler = bedrock(
        lambda r: JSONReply(converse_response([{"text": "ok"}])), token=SESSION_TOKEN
    )
    running = await start_gateway(
        nursery, bedrock_config(upstream, aws_session_token=SESSION_TOKEN)
    )
    async with sdk(running) as client:
        await client.chat.completions.create(model="claude", messages=CHAT_MESSAGES)
    await running.stop()
    assert caplog.records, "DEBUG logging was on"
    assert SECRET_KEY not in caplog.text and SESSION_TOKEN not in caplog.text


# --- the translation, piece by piece ------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "message", "kind"),
    [
        (429, "ThrottlingException", "Too many requests", Failure.RATE_LIMIT),
        (429, "ModelNotReadyException", "Model is not ready", Failure.RATE_LIMIT),
        (403, "AccessDeniedException", "No access", Failure.AUTH),
        (403, "UnrecognizedClientException", "Bad token", Failure.AUTH),
        (
            400,
            "ValidationException",
            "Input is too long for requested model.",
            Failure.CONTEXT_WINDOW,
        ),
        (400, "ValidationException", "too many input tokens", Failure.CONTEXT_WINDOW),
        (400, "ValidationException", "extraneous key [foo]", Failure.BAD_REQUEST),
        (424, "ModelErrorException", "The model failed", Failure.SERVER),
        (500, "InternalServerException", "Oops", Failure.SERVER),
        (503, "ServiceUnavailableException", "Unavailable", Failure.SERVER),
    ],
)
def test_error_kinds_steer_retries_and_cooldowns(
    status: int, error_type: str, message: str, kind: Failure
) -> None:
    assert bedrock_error(status, message, {}, error_type).kind is kind


def test_request_translation() -> None:
    image = "data:image/jpeg;base64,/9j/4AAQSkZJRg=="
    body = {
        "model": "claude",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "What is here?",
                        "cache_control": {"type": "ephemeral"},
                    },
                    {"type": "image_url", "image_url": {"url": image}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
                    {"id": "t2", "type": "function", "function": {"name": "b", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "one"},
            {"role": "tool", "tool_call_id": "t2", "content": [{"type": "text", "text": "two"}]},
            {"role": "user", "content": "Thanks"},
            {"role": "developer", "content": "Answer in French."},
        ],
        "max_completion_tokens": 100,
        "max_tokens": 5,
        "top_p": 0.9,
        "stop": ["a", "b"],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "n": 1,
        "seed": 7,
        "stream_options": {"include_usage": True},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    request = converse_request(body)
    assert request["system"] == [{"text": "Be brief."}, {"text": "Answer in French."}]
    assert request["messages"] == [
        {
            "role": "user",
            "content": [
                {"text": "What is here?"},
                {"cachePoint": {"type": "default"}},
                {"image": {"format": "jpeg", "source": {"bytes": "/9j/4AAQSkZJRg=="}}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"toolUse": {"toolUseId": "t1", "name": "a", "input": {}}},
                {"toolUse": {"toolUseId": "t2", "name": "b", "input": {}}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "t1", "content": [{"text": "one"}]}},
                {"toolResult": {"toolUseId": "t2", "content": [{"text": "two"}]}},
                {"text": "Thanks"},
            ],
        },
    ]
    assert request["inferenceConfig"] == {
        "maxTokens": 100,
        "topP": 0.9,
        "stopSequences": ["a", "b"],
    }
    assert request["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}
    assert request["additionalModelRequestFields"] == {"thinking": body["thinking"]}
    assert set(request) == {
        "messages",
        "system",
        "inferenceConfig",
        "toolConfig",
        "additionalModelRequestFields",
    }
    validate_parameters({**request, "modelId": MODEL_ID}, CONVERSE_INPUT)


@pytest.mark.parametrize(
    ("choice", "history", "expected"),
    [
        ("auto", False, {"auto": {}}),
        ("required", False, {"any": {}}),
        (None, False, None),
        ("none", False, "no tool config"),
        ("none", True, None),
    ],
)
def test_tool_choice(choice: str | None, history: bool, expected: Any) -> None:
    messages: list[dict[str, Any]] = list(MESSAGES)
    if history:
        call = {
            "id": "t1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"},
        }
        messages += [
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "t1", "content": "rain"},
        ]
    body: dict[str, Any] = {"messages": messages, "tools": [WEATHER_TOOL]}
    if choice is not None:
        body["tool_choice"] = choice
    request = converse_request(body)
    if expected == "no tool config":
        assert "toolConfig" not in request
    else:
        assert request["toolConfig"].get("toolChoice") == expected


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
        [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
        [{"type": "text"}],
    ],
)
def test_unsupported_content_is_a_client_error(content: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidRequest):
        converse_request({"messages": [{"role": "user", "content": content}]})


def test_response_translation_with_reasoning() -> None:
    data = converse_response(
        [
            {"reasoningContent": {"reasoningText": {"text": "Think.", "signature": "sig"}}},
            {"text": "Answer."},
        ],
        "max_tokens",
    )
    completion = to_completion(data, MODEL_ID, "chatcmpl-1")
    assert completion["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "Answer.", "reasoning_content": "Think."},
        "finish_reason": "length",
    }


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ],
)
def test_finish_reasons(stop_reason: str, expected: str) -> None:
    assert finish_reason(stop_reason) == expected


def test_usage_counts_cache_tokens_as_prompt_tokens() -> None:
    usage = {"inputTokens": 5, "outputTokens": 7, "cacheReadInputTokens": 100}
    assert to_usage({**usage, "cacheWriteInputTokens": 20, "totalTokens": 132}) == {
        "prompt_tokens": 125,
        "completion_tokens": 7,
        "total_tokens": 132,
        "prompt_tokens_details": {"cached_tokens": 100},
        "cache_creation_input_tokens": 20,
    }


def test_usage_zero_is_real_and_absent_is_none() -> None:
    assert to_usage({"inputTokens": 0, "outputTokens": 0, "totalTokens": 0}) == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert to_usage({"totalTokens": 3}) is None


def test_decoder_byte_by_byte_and_in_one_piece() -> None:
    data = b"".join(text_events("a", "b"))
    decoder = EventStreamDecoder()
    one_by_one = [frame for i in range(len(data)) for frame in decoder.feed(data[i : i + 1])]
    assert not decoder.pending
    whole = list(EventStreamDecoder().feed(data))
    assert one_by_one == whole and len(whole) == 5
    assert whole[1].headers[":event-type"] == "contentBlockDelta"
    assert orjson.loads(whole[1].payload)["delta"] == {"text": "a"}
    cut = EventStreamDecoder()
    assert len(list(cut.feed(data[:-3]))) == 4 and cut.pending


@pytest.mark.parametrize("position", [9, -1], ids=["prelude CRC", "message CRC"])
def test_decoder_checks_both_crcs(position: int) -> None:
    frame = bytearray(event("messageStart", role="assistant"))
    frame[position] ^= 0x01
    frames = EventStreamDecoder().feed(text_events("ok")[0] + bytes(frame))
    assert next(frames).headers[":event-type"] == "messageStart"
    with pytest.raises(UpstreamError, match=r"(?i)checksum"):
        next(frames)


def test_one_batch_per_read_then_the_exception() -> None:
    data = b"".join([*text_events("a", "b")[:3], exception("throttlingException", "Slow down")])
    read = StreamTranslator(MODEL_ID, "chatcmpl-1").read(EventStreamDecoder().feed(data))
    assert [c["choices"][0]["delta"] for c in read.chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "a"},
        {"content": "b"},
    ]
    assert read.failure is not None and read.failure.kind is Failure.RATE_LIMIT
    assert read.failure.code == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("model_id", "answers", "expected_usage"),
    [
        (
            "amazon.titan-embed-text-v2:0",
            [{"embedding": [0.1, 0.2], "inputTextTokenCount": 3},
             {"embedding": [0.3, 0.4], "inputTextTokenCount": 4}],
            7,
        ),
        ("cohere.embed-english-v3", [{"embeddings": [[0.1, 0.2], [0.3, 0.4]]}], None),
    ],
)  # fmt: skip
async def test_embeddings_through_invoke_model(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    model_id: str,
    answers: list[dict[str, Any]],
    expected_usage: int | None,
) -> None:
    replies = iter(answers)
    upstream.handler = lambda request: JSONReply(next(replies))
    config = bedrock_config(upstream)
    config["model_list"][0]["litellm_params"]["model"] = f"bedrock/{model_id}"
    running = await start_gateway(nursery, config)
    async with sdk(running) as client:
        result = await client.embeddings.create(model="claude", input=["first", "second"])
    assert [item.embedding for item in result.data] == [[0.1, 0.2], [0.3, 0.4]]
    for request in upstream.requests:
        assert request.target == f"/model/{quote(model_id, safe='')}/invoke"
        assert signature_problem(request) is None
    if expected_usage is None:  # Cohere reports none: the gateway counts
        counter = running.gateway.counter
        expected_usage = counter.count_text(model_id, "first") + counter.count_text(
            model_id, "second"
        )
        assert upstream.requests[0].json == {
            "texts": ["first", "second"],
            "input_type": "search_document",
        }
    else:
        assert [r.json for r in upstream.requests] == [
            {"inputText": "first"},
            {"inputText": "second"},
        ]
    assert result.usage.prompt_tokens == expected_usage
    await running.stop()

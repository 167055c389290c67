"""`gemini/`: the OpenAI SDK against the gateway, a fake Gemini API (fake_gemini.py) behind it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import openai
import orjson
import pytest
import trio
import trio.testing
from fake_gemini import BLOCKED, MODEL, answer, gemini_config, gemini_error, sse
from fakes import FakeUpstream, JSONReply, ReceivedRequest, StreamReply
from helpers import (
    MASTER_KEY,
    MESSAGES,
    UPSTREAM_KEY,
    RunningGateway,
    sdk,
    start_gateway,
    streamed_chunks,
    streamed_events,
)
from openai.types import ReasoningEffort
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from trigate.errors import Failure, InvalidRequest, UpstreamError, from_upstream_status
from trigate.providers.gemini import (
    SKIP_SIGNATURE,
    gemini_schema,
    openai_usage,
    reclassified,
    to_gemini,
    to_openai,
)

# helpers.MESSAGES as the OpenAI SDK types it (helpers keeps plain dicts, for every SDK).
CHAT_MESSAGES = cast(list[ChatCompletionMessageParam], MESSAGES)
WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture
async def gateway(nursery: trio.Nursery, upstream: FakeUpstream) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(nursery, gemini_config(upstream))
    yield running
    await running.stop()


USAGE = {
    "promptTokenCount": 12,
    "candidatesTokenCount": 3,
    "thoughtsTokenCount": 20,
    "cachedContentTokenCount": 8,
    "totalTokenCount": 35,
}


async def test_non_stream(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.handler = lambda request: JSONReply(answer([{"text": "Hello there"}], usage=USAGE))
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(
            model="gemini-test",
            messages=[{"role": "system", "content": "Be brief."}, *CHAT_MESSAGES],
            temperature=0.2,
            max_tokens=50,
            stop="END",
        )
    assert completion.choices[0].message.content == "Hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 23)
    prompt_details = completion.usage.prompt_tokens_details
    assert prompt_details is not None and prompt_details.cached_tokens == 8
    completion_details = completion.usage.completion_tokens_details
    assert completion_details is not None and completion_details.reasoning_tokens == 20
    [received] = upstream.requests
    assert received.target == f"/v1beta/models/{MODEL}:generateContent"
    assert received.headers["x-goog-api-key"] == UPSTREAM_KEY
    assert UPSTREAM_KEY not in received.target and MASTER_KEY not in str(received.headers)
    assert received.json == {
        "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.2, "maxOutputTokens": 50, "stopSequences": ["END"]},
    }
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.usage_source) == (
        12,
        23,
        "upstream",
    )
    assert record.status == 200 and record.model == f"gemini/{MODEL}"


def _text_stream(request: ReceivedRequest) -> StreamReply:
    partial = {"promptTokenCount": 9, "totalTokenCount": 9}
    return sse(
        answer([{"text": "Hel"}], finish=None, usage=partial),
        answer([{"text": "lo!"}], finish=None, usage=partial),
        answer(
            [{"text": ""}],
            usage={
                "promptTokenCount": 9,
                "candidatesTokenCount": 3,
                "thoughtsTokenCount": 4,
                "cachedContentTokenCount": 2,
                "totalTokenCount": 16,
            },
        ),
    )


async def test_stream_with_usage(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.handler = _text_stream
    chunks = await streamed_chunks(gateway, "gemini-test", stream_options={"include_usage": True})
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (9, 7)
    assert usage.prompt_tokens_details.cached_tokens == 2
    assert usage.completion_tokens_details.reasoning_tokens == 4
    assert upstream.requests[0].target == f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    assert "stream" not in upstream.requests[0].json
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.usage_source) == (
        9,
        7,
        "upstream",
    )


async def test_streamed_tool_call_and_its_result(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    call = {
        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
        "thoughtSignature": "c2lnbmF0dXJl",
    }
    upstream.handler = lambda request: sse(
        answer(
            [call],
            usage={"promptTokenCount": 30, "candidatesTokenCount": 5, "totalTokenCount": 35},
        )
    )
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(
            model="gemini-test",
            messages=CHAT_MESSAGES,
            tools=[WEATHER_TOOL],
            tool_choice="required",
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
        [delta] = [
            c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls
        ]
        assert delta.tool_calls is not None
        [tool_call] = delta.tool_calls
        assert tool_call.id and tool_call.id.startswith("call_") and tool_call.index == 0
        assert tool_call.function is not None and tool_call.function.name == "get_weather"
        assert tool_call.function.arguments is not None
        assert orjson.loads(tool_call.function.arguments) == {"city": "Paris"}
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        assert tool_call.model_extra is not None
        signature = tool_call.model_extra["extra_content"]["google"]["thought_signature"]
        assert signature == "c2lnbmF0dXJl"

        upstream.handler = lambda request: JSONReply(answer([{"text": "Sunny."}]))
        history = [
            *CHAT_MESSAGES,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [tool_call.model_dump(exclude={"index"})],
            },
            {"role": "tool", "tool_call_id": tool_call.id, "content": '{"sky": "clear"}'},
        ]
        completion = await client.chat.completions.create(
            model="gemini-test",
            # The tool call goes back as the SDK dumped it, with Gemini's `extra_content`,
            # which the SDK's message type has no field for.
            messages=cast(list[ChatCompletionMessageParam], history),
            tools=[WEATHER_TOOL],
        )
    assert completion.choices[0].message.content == "Sunny."
    first, second = (request.json for request in upstream.requests)
    assert first["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather in a city",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                }
            ]
        }
    ]
    assert first["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert second["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "c2lnbmF0dXJl",
                }
            ],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"sky": "clear"}}}],
        },
    ]
    records = await gateway.records.wait_for(2)
    assert (records[0].prompt_tokens, records[0].completion_tokens) == (30, 5)


# Gemini's own ways of refusing credentials; the contract suite covers the other errors.
@pytest.mark.parametrize(
    "reply",
    [
        gemini_error(403, "PERMISSION_DENIED", "Permission denied."),
        gemini_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid key."),
    ],
    ids=["403", "400-bad-key"],
)
async def test_refused_credentials_are_a_401(
    gateway: RunningGateway, upstream: FakeUpstream, reply: JSONReply
) -> None:
    upstream.handler = lambda request: reply
    async with sdk(gateway) as client:
        for stream in (False, True):
            with pytest.raises(openai.AuthenticationError) as caught:
                await client.chat.completions.create(
                    model="gemini-test", messages=CHAT_MESSAGES, stream=stream
                )
            assert caught.value.status_code == 401
            body = caught.value.body
            assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
            assert body["message"].endswith(reply.body["error"]["message"])
            assert body["code"] == "upstream_authentication_error"


def quota_exceeded(delay: str) -> JSONReply:
    """A 429 as the Gemini API sends it: its wait in a RetryInfo detail, no Retry-After."""
    reply = gemini_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded")
    reply.body["error"]["details"] = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
    ]
    return reply


async def test_a_rate_limits_retry_delay_reaches_the_client(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: quota_exceeded("36.5s")
    async with sdk(gateway) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="gemini-test", messages=CHAT_MESSAGES)
    assert caught.value.response.headers["retry-after"] == "37"


async def test_the_router_waits_out_a_rate_limits_retry_delay(
    nursery: trio.Nursery, upstream: FakeUpstream, virtual_clock: trio.testing.MockClock
) -> None:
    running = await start_gateway(nursery, gemini_config(upstream, num_retries=1))
    arrivals: list[float] = []

    def handler(request: ReceivedRequest) -> JSONReply:
        arrivals.append(trio.current_time())
        return quota_exceeded("20s") if len(arrivals) == 1 else JSONReply(answer([{"text": "hi"}]))

    upstream.handler = handler
    async with sdk(running) as client:
        await client.chat.completions.create(model="gemini-test", messages=CHAT_MESSAGES)
    assert len(arrivals) == 2 and arrivals[1] - arrivals[0] >= 20
    await running.stop()


async def test_blocked_prompt_takes_the_content_policy_fallback(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    config = gemini_config(upstream, content_policy_fallbacks=[{"gemini-test": ["mock"]}])
    running = await start_gateway(nursery, config)
    upstream.handler = lambda request: sse(BLOCKED)
    async with sdk(running) as client:
        stream = await client.chat.completions.create(
            model="gemini-test", messages=CHAT_MESSAGES, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.startswith("This is a mock response")
    await running.stop()


async def test_safety_stop_mid_answer_is_content_filter(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: sse(
        answer([{"text": "Once upon"}], finish=None), answer([], finish="SAFETY")
    )
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(
            model="gemini-test", messages=CHAT_MESSAGES, stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices[0].finish_reason == "content_filter"


async def test_error_event_mid_stream(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    upstream.handler = lambda request: StreamReply(
        [
            b"data: " + orjson.dumps(answer([{"text": "partial"}], finish=None)) + b"\r\n\r\n",
            0.05,
            b"data: " + orjson.dumps(error) + b"\r\n\r\n",
        ]
    )
    events = await streamed_events(gateway, "gemini-test")
    assert "partial" in events[0]
    assert "overloaded" in events[-2] and events[-1] == "[DONE]"
    [record] = await gateway.records.wait_for(1)
    assert record.status == 503 and record.usage_source == "counted"


# --- translation units -----------------------------------------------------------------


def test_request_translation_of_media_and_options() -> None:
    body = {
        "model": "gemini-test",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Rule one."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                ],
            },
        ],
        "top_p": 0.9,
        "max_completion_tokens": 100,
        "max_tokens": 10,
        "n": 2,
        "seed": 3,
        "response_format": {"type": "json_object"},
        "user": "ignored",
    }
    assert to_gemini(body) == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "What is this?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}},
                    {
                        "fileData": {
                            "fileUri": "https://example.com/cat.jpg",
                            "mimeType": "image/jpeg",
                        }
                    },
                    {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                ],
            }
        ],
        "systemInstruction": {"parts": [{"text": "Rule one."}]},
        "generationConfig": {
            "topP": 0.9,
            "candidateCount": 2,
            "seed": 3,
            "maxOutputTokens": 100,
            "responseMimeType": "application/json",
        },
    }


def test_parallel_tool_calls_and_results() -> None:
    calls = [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "b", "type": "function", "function": {"name": "g", "arguments": ""}},
    ]
    payload = to_gemini(
        {
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": "Calling.", "tool_calls": calls},
                {"role": "tool", "tool_call_id": "b", "content": "plain text"},
                {"role": "tool", "tool_call_id": "a", "content": [{"type": "text", "text": "[1]"}]},
                {"role": "user", "content": "thanks"},
            ],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
        }
    )
    model, results, user = payload["contents"][1:]
    # No signature came back from the client: the documented placeholder goes on the first call.
    assert model["parts"] == [
        {"text": "Calling."},
        {"functionCall": {"name": "f", "args": {"x": 1}}, "thoughtSignature": SKIP_SIGNATURE},
        {"functionCall": {"name": "g", "args": {}}},
    ]
    assert results == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "g", "response": {"output": "plain text"}}},
            {"functionResponse": {"name": "f", "response": {"output": "[1]"}}},
        ],
    }
    assert user == {"role": "user", "parts": [{"text": "thanks"}]}
    assert payload["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}
    }


@pytest.mark.parametrize(
    "message",
    [
        {"role": "tool", "tool_call_id": "unknown", "content": "x"},
        {"role": "user", "content": [{"type": "video", "video": {}}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,abc"}}]},
    ],
)
def test_untranslatable_requests_are_client_errors(message: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        to_gemini({"messages": [message]})


def test_schema_is_cut_to_gemini_subset() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "when": {"type": ["string", "null"], "format": "date-time"},
            "email": {"type": "string", "format": "email", "examples": ["a@b.c"]},
            "kind": {"const": "fixed"},
            "item": {"$ref": "#/$defs/Item"},
            "either": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        },
        "$defs": {
            "Item": {
                "type": "object",
                "properties": {"n": {"type": "integer"}},
                "additionalProperties": False,
            }
        },
        "strict": True,
    }
    assert gemini_schema(schema) == {
        "type": "object",
        "properties": {
            "when": {"type": "string", "nullable": True, "format": "date-time"},
            "email": {"type": "string"},
            "kind": {"enum": ["fixed"]},
            "item": {"type": "object", "properties": {"n": {"type": "integer"}}},
            "either": {"type": "integer", "nullable": True},
        },
    }
    recursive = {
        "$ref": "#/$defs/Node",
        "$defs": {"Node": {"properties": {"next": {"$ref": "#/$defs/Node"}}}},
    }
    with pytest.raises(InvalidRequest):
        gemini_schema(recursive)


def test_function_without_parameters_sends_none() -> None:
    tool = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
    native: dict[str, dict[str, Any]] = {"googleSearch": {}}
    assert to_gemini({"messages": MESSAGES, "tools": [tool, native]})["tools"] == [
        {"functionDeclarations": [{"name": "now"}]},
        native,
    ]


def test_json_schema_response_format() -> None:
    body = {
        "messages": MESSAGES,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"a": {"type": "string"}},
                    "additionalProperties": False,
                },
            },
        },
    }
    assert to_gemini(body)["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {"type": "object", "properties": {"a": {"type": "string"}}},
    }


@pytest.mark.parametrize(
    ("model", "effort", "thinking"),
    [
        ("gemini-2.5-flash", "low", {"thinkingBudget": 1024, "includeThoughts": True}),
        ("gemini-2.5-pro", "medium", {"thinkingBudget": 2048, "includeThoughts": True}),
        ("gemini-2.5-pro", "high", {"thinkingBudget": 4096, "includeThoughts": True}),
        ("gemini-2.5-flash", "minimal", {"thinkingBudget": 1, "includeThoughts": True}),
        ("gemini-2.5-flash-lite", "minimal", {"thinkingBudget": 512, "includeThoughts": True}),
        ("gemini-2.5-pro", "minimal", {"thinkingBudget": 128, "includeThoughts": True}),
        ("gemini-2.5-flash", "none", {"thinkingBudget": 0, "includeThoughts": False}),
        ("gemini-3-pro-preview", "high", {"thinkingLevel": "high", "includeThoughts": True}),
        ("gemini-3-pro-preview", "minimal", {"thinkingLevel": "low", "includeThoughts": True}),
        (
            "gemini-3-flash-preview",
            "minimal",
            {"thinkingLevel": "minimal", "includeThoughts": True},
        ),
        (
            "gemini-3-flash-preview",
            "disable",
            {"thinkingLevel": "minimal", "includeThoughts": False},
        ),
        ("gemini-flash-latest", "low", {"thinkingLevel": "low", "includeThoughts": True}),
    ],
)
def test_reasoning_effort_becomes_a_thinking_config(
    model: str, effort: str, thinking: dict[str, Any]
) -> None:
    """As LiteLLM maps it: a thinking level from Gemini 3 on, a token budget before."""
    body = {"messages": MESSAGES, "reasoning_effort": effort, "max_tokens": 100}
    config = to_gemini(body, model)["generationConfig"]
    assert config == {"maxOutputTokens": 100, "thinkingConfig": thinking}


async def test_an_unknown_reasoning_effort_is_the_clients_400(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    async with sdk(gateway) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="gemini-test",
                messages=CHAT_MESSAGES,
                # Not an effort the API knows: the gateway's answer to one is the test.
                reasoning_effort=cast(ReasoningEffort, "extreme"),
            )
    assert "reasoning_effort" in caught.value.message
    assert upstream.requests == []


async def test_reasoning_effort_reaches_gemini(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(answer([{"text": "hi"}]))
    async with sdk(gateway) as client:
        await client.chat.completions.create(
            model="gemini-test", messages=CHAT_MESSAGES, reasoning_effort="high"
        )
    [request] = upstream.requests
    thinking = orjson.loads(request.body)["generationConfig"]["thinkingConfig"]
    assert thinking == {"thinkingBudget": 4096, "includeThoughts": True}


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
    ],
)
def test_finish_reasons(reason: str, finish: str) -> None:
    body = to_openai(answer([{"text": "x"}], finish=reason), MODEL)
    assert body["choices"][0]["finish_reason"] == finish


def test_answer_translation_with_thoughts_and_calls() -> None:
    data = answer(
        [
            {"text": "Thinking it over", "thought": True},
            {"text": "Checking."},
            {"functionCall": {"name": "f", "args": {"q": "x"}}},
            {"functionCall": {"name": "g"}},
        ]
    )
    body = to_openai(data, MODEL)
    assert body["id"] == "chatcmpl-resp-1" and body["model"] == MODEL
    assert body["object"] == "chat.completion" and "usage" not in body
    [choice] = body["choices"]
    message = choice["message"]
    assert message["content"] == "Checking." and message["reasoning_content"] == "Thinking it over"
    assert [c["function"] for c in message["tool_calls"]] == [
        {"name": "f", "arguments": '{"q":"x"}'},
        {"name": "g", "arguments": "{}"},
    ]
    ids = [c["id"] for c in message["tool_calls"]]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    assert choice["finish_reason"] == "tool_calls"


def test_usage_counts_thoughts_as_output_and_absent_counts_as_zero() -> None:
    assert openai_usage({"promptTokenCount": 5, "toolUsePromptTokenCount": 2}) == {
        "prompt_tokens": 7,
        "completion_tokens": 0,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert openai_usage(None) is None


def test_reclassification_of_gemini_400s() -> None:
    def error(message: str, status: int = 400) -> UpstreamError:
        return reclassified(from_upstream_status(status, message, {}))

    assert error("exceeds the maximum number of tokens allowed").kind is Failure.CONTEXT_WINDOW
    bad_key = error("API key expired. Please renew the API key.")
    assert bad_key.kind is Failure.AUTH and bad_key.status == 401
    assert error("Invalid JSON payload").kind is Failure.BAD_REQUEST
    assert error("API key not valid", status=500).kind is Failure.SERVER


async def test_embeddings_batch_and_count_usage(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    answer = {"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]}
    upstream.handler = lambda request: JSONReply(answer)
    async with sdk(gateway) as client:
        result = await client.embeddings.create(
            model="gemini-test", input=["first", "second"], dimensions=2
        )
    assert [item.embedding for item in result.data] == [[0.1, 0.2], [0.3, 0.4]]
    [received] = upstream.requests
    assert received.target == f"/v1beta/models/{MODEL}:batchEmbedContents"
    assert received.headers["x-goog-api-key"] == UPSTREAM_KEY
    assert received.json == {
        "requests": [
            {"model": f"models/{MODEL}", "content": {"parts": [{"text": text}]},
             "outputDimensionality": 2}
            for text in ("first", "second")
        ]
    }  # fmt: skip
    counter = gateway.gateway.counter
    expected = counter.count_text(MODEL, "first") + counter.count_text(MODEL, "second")
    assert result.usage.prompt_tokens == expected, "Gemini reports none: the gateway counts"
    [record] = await gateway.records.wait_for(1)
    assert record.usage_source == "counted" and record.prompt_tokens == expected

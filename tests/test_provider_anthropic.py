"""The `anthropic/` provider: OpenAI's SDK against the gateway, a fake Messages API behind it.

The fake (fake_anthropic.py) speaks Anthropic's wire format and vets each request as the
Messages API would, so a translation slip shows as Anthropic's own 400. What every provider
owes (errors, usage chunk, tool calls, disconnects) is in test_provider_contract.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import openai
import orjson
import pytest
import trio
from fake_anthropic import (
    MODEL,
    PING,
    UPSTREAM_MODEL,
    anthropic_config,
    block_delta,
    block_start,
    error_body,
    event,
    message,
    message_end,
    message_start,
    serve,
    text_block,
    tool_block,
)
from fakes import FakeUpstream, JSONReply, StreamReply
from helpers import (
    MASTER_KEY,
    MESSAGES,
    WEATHER_TOOL,
    RunningGateway,
    sdk,
    start_gateway,
    streamed_events,
)
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
)
from openai.types.shared_params import ResponseFormatJSONSchema

from trigate.errors import Failure, UpstreamError
from trigate.providers.anthropic import (
    StreamTranslator,
    messages_url,
    openai_usage,
    to_anthropic,
    to_openai,
)
from trigate.sse import ServerSentEvent

# MESSAGES as the OpenAI SDK types a chat's messages (helpers.py leaves it a list of dicts).
CHAT = cast("list[ChatCompletionMessageParam]", MESSAGES)
# WEATHER_TOOL as the OpenAI SDK types a function tool.
TOOL = cast("ChatCompletionFunctionToolParam", WEATHER_TOOL)


@pytest.fixture
async def claude(nursery: trio.Nursery, upstream: FakeUpstream) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(nursery, anthropic_config(upstream))
    yield running
    await running.stop()


async def streamed(client: openai.AsyncOpenAI, **options: Any) -> list[Any]:
    options.setdefault("messages", MESSAGES)
    stream = await client.chat.completions.create(model="claude", stream=True, **options)
    return [chunk async for chunk in stream]


# --- end to end ------------------------------------------------------------------------


async def test_non_stream_request_and_answer(
    claude: RunningGateway, upstream: FakeUpstream
) -> None:
    content: list[dict[str, Any]] = [
        {"type": "text", "text": "Hello", "citations": None},
        {"type": "text", "text": "!"},
    ]
    answer = message(
        content,
        input_tokens=10,
        output_tokens=5,
        cache_read_input_tokens=100,
        cache_creation_input_tokens=20,
    )
    serve(upstream, lambda body: JSONReply(answer))
    async with sdk(claude) as client:
        completion = await client.chat.completions.create(
            model="claude",
            messages=[{"role": "system", "content": "Be brief."}, *CHAT],
            temperature=0.2,
            top_p=0.9,
            stop="END",
            user="user-42",
            seed=7,
            n=1,
            frequency_penalty=0.5,
            extra_body={"future_field": {"x": 1}, "top_k": 5},
        )
    [received] = upstream.requests
    assert received.headers["anthropic-version"] == "2023-06-01"
    assert received.headers["content-type"] == "application/json"
    assert "authorization" not in received.headers and MASTER_KEY not in str(received.headers)
    assert received.json == {
        "model": MODEL,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}],
        "system": [{"type": "text", "text": "Be brief."}],
        "max_tokens": 4096,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 5,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
    }
    assert completion.id == "msg_01XFDUDYJgAACzvnptvVoYEL" and completion.model == UPSTREAM_MODEL
    assert completion.choices[0].message.content == "Hello!"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    # The prompt counts cache reads and writes too; their split reaches billing (below).
    assert (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
        completion.usage.total_tokens,
    ) == (130, 5, 135)
    [record] = await claude.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.usage_source) == (
        130,
        5,
        "upstream",
    )
    # claude-sonnet-4-5 list prices: $3/M in, $0.30/M cache reads, $3.75/M writes, $15/M out.
    assert record.cost == pytest.approx(10 * 3e-6 + 100 * 3e-7 + 20 * 3.75e-6 + 5 * 1.5e-5)


async def test_deployment_settings_reach_the_upstream(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    config = anthropic_config(
        upstream, api_base=upstream.base_url, anthropic_version="2023-01-01", max_tokens=1000
    )
    running = await start_gateway(nursery, config)
    serve(upstream, lambda body: JSONReply(message([{"type": "text", "text": "ok"}])))
    async with sdk(running) as client:
        await client.chat.completions.create(model="claude", messages=CHAT)
        await client.chat.completions.create(
            model="claude", messages=CHAT, max_completion_tokens=50
        )
    first, second = upstream.requests
    assert first.target == "/v1/messages"  # an api_base ending in /v1 is not doubled
    assert first.headers["anthropic-version"] == "2023-01-01"
    assert (first.json["max_tokens"], second.json["max_tokens"]) == (1000, 50)
    await running.stop()


async def test_stream_of_text(claude: RunningGateway, upstream: FakeUpstream) -> None:
    frames: list[bytes | float | trio.Event] = [
        message_start(input_tokens=25, output_tokens=1, cache_read_input_tokens=0),
        PING,
        *text_block(0, "Hel", "lo", " there"),
        *message_end("end_turn", output_tokens=15),
    ]
    serve(upstream, lambda body: StreamReply(frames))
    async with sdk(claude) as client:
        plain = await streamed(client)
        with_usage = await streamed(client, stream_options={"include_usage": True})
    assert all(
        r.json["stream"] is True and "stream_options" not in r.json for r in upstream.requests
    )
    for chunks in (plain, with_usage):
        content = [c for c in chunks if c.choices]
        assert content[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in content) == "Hello there"
        assert [c.choices[0].finish_reason for c in content][-1] == "stop"
        assert {c.id for c in chunks} == {"msg_01XFDUDYJgAACzvnptvVoYEL"}
    assert all(c.usage is None for c in plain)
    assert [c.usage is not None for c in with_usage].count(True) == 1
    usage = with_usage[-1].usage
    assert with_usage[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (25, 15, 40)
    records = await claude.records.wait_for(2)
    assert all((r.prompt_tokens, r.completion_tokens) == (25, 15) for r in records)
    assert all(r.usage_source == "upstream" and r.stream for r in records)


async def test_stream_of_tool_calls(claude: RunningGateway, upstream: FakeUpstream) -> None:
    frames: list[bytes | float | trio.Event] = [
        message_start(input_tokens=400, output_tokens=1),
        *text_block(0, "Let me check."),
        *tool_block(1, "toolu_01A", "get_weather", '{"city": ', '"Paris"}'),
        *tool_block(2, "toolu_01B", "get_weather", '{"city": "Oslo"}'),
        *message_end("tool_use", output_tokens=89),
    ]
    serve(upstream, lambda body: StreamReply(frames))
    async with sdk(claude) as client:
        chunks = await streamed(
            client, tools=[TOOL], tool_choice="required", parallel_tool_calls=False
        )
    sent = upstream.requests[0].json
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city",
            "input_schema": TOOL["function"]["parameters"],
        }
    ]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.id or ""
            entry["name"] += call.function.name or ""
            entry["arguments"] += call.function.arguments or ""
    # OpenAI indexes tool calls among tool calls, not among Anthropic's content blocks.
    assert calls == {
        0: {"id": "toolu_01A", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        1: {"id": "toolu_01B", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Let me check."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    [record] = await claude.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (400, 89)


async def test_tool_conversation_and_tool_call_answer(
    claude: RunningGateway, upstream: FakeUpstream
) -> None:
    answer: list[dict[str, Any]] = [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"city": "Rome"}},
    ]
    serve(upstream, lambda body: JSONReply(message(answer, stop_reason="tool_use")))
    calls: list[ChatCompletionMessageFunctionToolCallParam] = [
        {"id": f"call_{c}", "type": "function", "function": {"name": "get_weather", "arguments": a}}
        for c, a in (("1", '{"city": "Paris"}'), ("2", '{"city": "Oslo"}'))
    ]
    conversation: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "9C"}]},
        {"role": "user", "content": "And Rome?"},
    ]
    async with sdk(claude) as client:
        completion = await client.chat.completions.create(
            model="claude", messages=conversation, tools=[TOOL], tool_choice="auto"
        )
    sent = upstream.requests[0].json
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Oslo?"}]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_2",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "9C"}],
                },
                {"type": "text", "text": "And Rome?"},
            ],
        },
    ]
    assert sent["tool_choice"] == {"type": "auto"}
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert (call.id, call.function.name) == ("toolu_02", "get_weather")
    assert orjson.loads(call.function.arguments) == {"city": "Rome"}


async def test_thinking(claude: RunningGateway, upstream: FakeUpstream) -> None:
    thought = {"type": "thinking", "thinking": "Hmm, greet.", "signature": "EqQBCgIYAhIM"}
    frames: list[bytes | float | trio.Event] = [
        message_start(input_tokens=30, output_tokens=1),
        block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        block_delta(0, {"type": "thinking_delta", "thinking": "Hmm, "}),
        block_delta(0, {"type": "thinking_delta", "thinking": "greet."}),
        block_delta(0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}),
        event({"type": "content_block_stop", "index": 0}),
        *text_block(1, "Hi!"),
        *message_end("end_turn", output_tokens=70, output_tokens_details={"thinking_tokens": 60}),
    ]
    serve(
        upstream,
        lambda body: (
            StreamReply(frames)
            if body.get("stream")
            else JSONReply(message([thought, {"type": "text", "text": "Hi!"}]))
        ),
    )
    async with sdk(claude) as client:
        completion = await client.chat.completions.create(
            model="claude", messages=CHAT, reasoning_effort="low"
        )
        chunks = await streamed(
            client, reasoning_effort="high", stream_options={"include_usage": True}
        )
    first, second = (r.json for r in upstream.requests)
    assert first["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert first["max_tokens"] == 4096 + 1024  # the answer keeps its room beside the budget
    assert second["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    answer = completion.choices[0].message
    assert answer.content == "Hi!"
    assert answer.model_extra == {"reasoning_content": "Hmm, greet.", "thinking_blocks": [thought]}
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert reasoning == "Hmm, greet."
    assert "".join(d.content or "" for d in deltas) == "Hi!"
    signatures = [b for d in deltas for b in (d.model_extra or {}).get("thinking_blocks") or []]
    assert signatures == [{"type": "thinking", "thinking": "", "signature": "EqQBCgIYAhIM"}]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 60


async def test_json_mode_is_a_forced_tool(claude: RunningGateway, upstream: FakeUpstream) -> None:
    schema: dict[str, object] = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
    }
    tool_use = {
        "type": "tool_use",
        "id": "toolu_03",
        "name": "json_tool_call",
        "input": {"name": "Ada"},
    }
    frames: list[bytes | float | trio.Event] = [
        message_start(),
        *tool_block(0, "toolu_03", "json_tool_call", '{"name": ', '"Ada"}'),
        *message_end("tool_use", output_tokens=9),
    ]
    serve(
        upstream,
        lambda body: (
            StreamReply(frames)
            if body.get("stream")
            else JSONReply(message([tool_use], stop_reason="tool_use"))
        ),
    )
    response_format: ResponseFormatJSONSchema = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": schema},
    }
    async with sdk(claude) as client:
        completion = await client.chat.completions.create(
            model="claude", messages=CHAT, response_format=response_format
        )
        chunks = await streamed(client, response_format=response_format)
    for request in upstream.requests:
        assert request.json["tools"] == [{"name": "json_tool_call", "input_schema": schema}]
        assert request.json["tool_choice"] == {"type": "tool", "name": "json_tool_call"}
    choice = completion.choices[0]
    assert (choice.finish_reason, choice.message.tool_calls) == ("stop", None)
    assert orjson.loads(choice.message.content or "") == {"name": "Ada"}
    content = [c.choices[0] for c in chunks if c.choices]
    assert "".join(c.delta.content or "" for c in content) == '{"name": "Ada"}'
    assert not any(c.delta.tool_calls for c in content)
    assert content[-1].finish_reason == "stop"


async def test_mid_stream_error_event(claude: RunningGateway, upstream: FakeUpstream) -> None:
    overloaded = event(error_body("overloaded_error", "Overloaded"))
    frames: list[bytes | float | trio.Event] = [
        message_start(),
        *text_block(0, "partial")[:-1],
        overloaded,
    ]
    serve(upstream, lambda body: StreamReply(frames))
    events = await streamed_events(claude, "claude")
    assert events[-1] == "[DONE]"
    assert "partial" in events[-3]
    error = orjson.loads(events[-2])["error"]
    assert error["code"] == "upstream_overloaded" and "Overloaded" in error["message"]
    [record] = await claude.records.wait_for(1)
    assert record.status == 503
    assert record.completion_tokens == claude.gateway.counter.count_text(MODEL, "partial")


async def test_untranslatable_request_is_a_400_that_never_leaves(
    claude: RunningGateway, upstream: FakeUpstream
) -> None:
    call: ChatCompletionMessageFunctionToolCallParam = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": "{oops"},
    }
    conversation: list[ChatCompletionMessageParam] = [
        *CHAT,
        {"role": "assistant", "tool_calls": [call]},
    ]
    async with sdk(claude) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="claude", messages=conversation)
    body = caught.value.body
    assert isinstance(body, dict) and "JSON object" in body["message"]
    assert upstream.requests == []


def translate(**body: Any) -> dict[str, Any]:
    return to_anthropic({"model": "claude", **body}, MODEL, 4096)


def test_system_messages_are_lifted_and_turns_merged() -> None:
    cached = {"type": "ephemeral"}
    sent = translate(
        messages=[
            {"role": "system", "content": "One."},
            {"role": "user", "content": "Hi"},
            {"role": "developer", "content": [{"type": "text", "text": "Two."}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Again", "cache_control": cached}],
            },
            {"role": "assistant", "content": ""},  # empty: dropped, the users merge
            {"role": "user", "content": "Third", "cache_control": cached},
            {"role": "assistant", "content": "Sure"},
            {"role": "assistant", "content": [{"type": "text", "text": "thing"}]},
        ]
    )
    assert sent["system"] == [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Hi"},
                {"type": "text", "text": "Again", "cache_control": cached},
                {"type": "text", "text": "Third", "cache_control": cached},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Sure"}, {"type": "text", "text": "thing"}],
        },
    ]


def test_assistant_turn_is_thinking_then_text_then_tool_calls() -> None:
    thought = {"type": "thinking", "thinking": "Weather, so a tool.", "signature": "EqQB"}
    call = {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    turn = {"role": "assistant", "content": "Checking.", "tool_calls": [call]}
    sent = translate(messages=[*MESSAGES, turn | {"thinking_blocks": [thought]}])
    assistant = sent["messages"][1]
    assert assistant["content"] == [
        thought,
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
    ]


def test_images() -> None:
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ]
    [turn] = translate(messages=[{"role": "user", "content": parts}])["messages"]
    assert turn["content"][1:] == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    bad = [{"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]
    with pytest.raises(UpstreamError) as caught:
        translate(messages=[{"role": "user", "content": bad}])
    assert (caught.value.status, caught.value.kind) == (400, Failure.BAD_REQUEST)


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, None, None),
    ],
)  # fmt: skip
def test_tool_choice(tool_choice: Any, parallel: Any, expected: dict[str, Any] | None) -> None:
    sent = translate(
        messages=MESSAGES,
        tools=[WEATHER_TOOL],
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
    )
    assert sent.get("tool_choice") == expected


def test_tool_without_parameters_and_tool_choice_without_tools() -> None:
    bare = {"type": "function", "function": {"name": "now"}}
    sent = translate(messages=MESSAGES, tools=[bare], stop=["a", "b"])
    assert sent["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]
    assert sent["stop_sequences"] == ["a", "b"]
    assert "tool_choice" not in translate(messages=MESSAGES, tool_choice="auto")


def test_max_tokens_precedence() -> None:
    assert translate(messages=MESSAGES, max_tokens=10)["max_tokens"] == 10
    assert translate(messages=MESSAGES, max_tokens=10, max_completion_tokens=20)["max_tokens"] == 20
    thinking = {"type": "enabled", "budget_tokens": 2000}
    assert translate(messages=MESSAGES, thinking=thinking)["max_tokens"] == 6096
    assert translate(messages=MESSAGES, reasoning_effort="none").keys() == {
        "model",
        "messages",
        "max_tokens",
    }


def test_json_object_response_format() -> None:
    sent = translate(messages=MESSAGES, response_format={"type": "json_object"})
    [tool] = sent["tools"]
    assert tool["input_schema"] == {
        "type": "object",
        "additionalProperties": True,
        "properties": {},
    }
    assert "tools" not in translate(messages=MESSAGES, response_format={"type": "text"})


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ],
)
def test_finish_reasons(stop_reason: str, finish: str) -> None:
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    content = [tool_use] if stop_reason == "tool_use" else [{"type": "text", "text": "x"}]
    data = message(content, stop_reason=stop_reason)
    assert to_openai(data, json_mode=False)["choices"][0]["finish_reason"] == finish


def test_usage_counts_cache_reads_and_writes_in_the_prompt() -> None:
    usage = message(
        [],
        input_tokens=10,
        output_tokens=5,
        cache_read_input_tokens=100,
        cache_creation_input_tokens=20,
    )["usage"]
    assert to_openai(message([], **usage), json_mode=False)["usage"] == {
        "prompt_tokens": 130,
        "completion_tokens": 5,
        "total_tokens": 135,
        "prompt_tokens_details": {"cached_tokens": 100},
        "cache_creation_input_tokens": 20,
    }


def test_usage_zeros_are_real_and_missing_cache_counts_are_zero() -> None:
    assert openai_usage({"input_tokens": 0, "output_tokens": 0}) == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "prompt_tokens_details": {"cached_tokens": 0},
        "cache_creation_input_tokens": 0,
    }


def sse(*frames: bytes | float) -> list[ServerSentEvent]:
    """The events in `frames`, as the gateway's decoder would hand them over."""
    events = []
    for frame in frames:
        if isinstance(frame, bytes):
            kind, data = frame.decode().strip().split("\n")
            events.append(
                ServerSentEvent(kind.removeprefix("event: "), data.removeprefix("data: "))
            )
    return events


def test_stream_translator_reads_in_batches_and_ignores_unknown_events() -> None:
    translator = StreamTranslator(json_mode=False)
    first = translator.translate(sse(message_start(input_tokens=3), PING))
    assert [c["choices"][0]["delta"] for c in first.chunks] == [
        {"role": "assistant", "content": ""}
    ]
    unknown = ServerSentEvent("future_event", '{"type": "future_event", "x": 1}')
    second = translator.translate([unknown, *sse(*tool_block(4, "toolu_9", "f", "{}"))])
    assert [c["choices"][0]["delta"] for c in second.chunks] == [
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_9",
                    "type": "function",
                    "function": {"name": "f", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
    ]
    last = translator.translate(sse(*message_end("tool_use", output_tokens=4)))
    assert last.done and last.chunks[0]["choices"][0]["finish_reason"] == "tool_calls"
    assert last.chunks[1]["choices"] == [] and last.chunks[1]["usage"]["total_tokens"] == 7


@pytest.mark.parametrize(
    ("kind", "text", "status", "failure"),
    [
        ("overloaded_error", "Overloaded", 503, Failure.SERVER),
        ("rate_limit_error", "Slow down", 429, Failure.RATE_LIMIT),
        ("invalid_request_error", "prompt is too long", 400, Failure.CONTEXT_WINDOW),
        ("api_error", "Internal server error", 502, Failure.SERVER),
    ],
)
def test_stream_error_events_are_classified(
    kind: str, text: str, status: int, failure: Failure
) -> None:
    translator = StreamTranslator(json_mode=False)
    read = translator.translate(sse(message_start(), event(error_body(kind, text)), PING))
    assert len(read.chunks) == 1 and read.failure is not None
    assert (read.failure.status, read.failure.kind) == (status, failure)


@pytest.mark.parametrize(
    "base",
    [
        "https://api.anthropic.com",
        "https://api.anthropic.com/",
        "https://api.anthropic.com/v1",
        "https://api.anthropic.com/v1/messages",
    ],
)
def test_messages_url(base: str) -> None:
    assert messages_url(base) == "https://api.anthropic.com/v1/messages"

"""What every provider owes its clients, run against each provider family's fake upstream.

Each family's fake answers in its own wire format (OpenAI's chunks, Azure's filter
results, Anthropic's Messages events, Gemini's candidates, Bedrock's binary event
stream, each checked the way that upstream checks requests); the client is the
OpenAI SDK against the real app on a real socket, and what it gets must be the same
everywhere: one usage chunk when asked for, OpenAI's error statuses and types, tool
calls whole and streamed, a 400 for an operation the provider lacks, and a client's
disconnect closing the upstream connection. What is particular to one provider stays
in its own test file; each family's fake is in tests/fake_<family>.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import fake_anthropic as anthropic_wire
import fake_azure as azure_wire
import fake_bedrock as bedrock_wire
import fake_gemini as gemini_wire
import openai
import orjson
import pytest
import trio
from fakes import (
    DONE,
    FakeUpstream,
    JSONReply,
    ReceivedRequest,
    Reply,
    StreamReply,
    chat_completion,
    chunk,
    usage_chunk,
)
from helpers import MESSAGES, WEATHER_TOOL, RunningGateway, openai_config, sdk, start_gateway
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from trigate.providers.bedrock import EVENT_STREAM

# MESSAGES as the OpenAI SDK types a chat's messages (helpers.py leaves it a list of dicts).
CHAT = cast("list[ChatCompletionMessageParam]", MESSAGES)
# WEATHER_TOOL as the OpenAI SDK types a function tool.
TOOL = cast("ChatCompletionFunctionToolParam", WEATHER_TOOL)

CITY = {"city": "Paris"}

# What the client sees for each upstream failure, whatever the upstream's wire format:
# (status, type, code); a code of None is the upstream's own, passed through.
ERRORS: dict[str, tuple[int, str, str | None]] = {
    "bad_request": (400, "invalid_request_error", None),  # the family's bad_request_code
    "auth": (401, "authentication_error", "upstream_authentication_error"),
    "rate_limit": (429, "rate_limit_error", "rate_limit_exceeded"),
    "server_error": (502, "api_error", "upstream_error"),
    "overloaded": (503, "api_error", "upstream_overloaded"),
    "context_window": (400, "invalid_request_error", "context_length_exceeded"),
    "content_policy": (400, "invalid_request_error", "content_policy_violation"),
}
RETRY_AFTER = "7"
CONTEXT = "context_length_exceeded"


@dataclass(frozen=True)
class Family:
    """One provider family's fake: its config, its wire format for each contract case."""

    name: str
    group: str
    config: Callable[[FakeUpstream], dict[str, Any]]
    # How this upstream vets a request before answering it (signature, schema).
    vet: Callable[[Callable[[ReceivedRequest], Reply]], Callable[[ReceivedRequest], Reply]]
    # A text answer streamed as "Hel", "lo"; with `tail`, more text until the client leaves.
    text_stream: Callable[[bytes | None], StreamReply]
    tail: bytes
    stream_usage: tuple[int, int]
    tool_answer: Callable[[], Reply]
    tool_stream: Callable[[], Reply]
    # Each error case: the reply (given `stream`) and a text the client's message keeps.
    errors: dict[str, Callable[[bool], tuple[Reply, str]]]
    # The code a client sees for a plain bad request: the upstream's own, passed through.
    bad_request_code: str | None
    # Operations the provider does not serve: (path, body).
    unsupported: tuple[tuple[str, dict[str, Any]], ...] = ()


def _plain(reply: Callable[[ReceivedRequest], Reply]) -> Callable[[ReceivedRequest], Reply]:
    return reply


# --- OpenAI's wire format: openai/, the compatible families, azure/ ----------------------


def _openai_error(status: int, message: str, code: str | None = None, **headers: str) -> Reply:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return JSONReply({"error": error}, status=status, headers=headers)


def _openai_errors(name: str) -> dict[str, Callable[[bool], tuple[Reply, str]]]:
    def case(reply: Reply, text: str) -> Callable[[bool], tuple[Reply, str]]:
        return lambda stream: (reply, text)

    policy = "Your request was rejected as a result of our safety system."
    errors = {
        "bad_request": case(
            _openai_error(400, "Invalid value for 'temperature'", "invalid_value"),
            "Invalid value for 'temperature'",
        ),
        "auth": case(_openai_error(401, "Incorrect API key provided"), "Incorrect API key"),
        "rate_limit": case(
            _openai_error(
                429, "Rate limit reached", "rate_limit_exceeded", **{"retry-after": RETRY_AFTER}
            ),
            "Rate limit reached",
        ),
        "server_error": case(_openai_error(500, "The server had an error"), "server had an error"),
        "overloaded": case(_openai_error(503, "The engine is overloaded"), "engine is overloaded"),
        "context_window": case(
            _openai_error(
                400,
                "This model's maximum context length is 128000 tokens.",
                "context_length_exceeded",
            ),
            "maximum context length",
        ),
        "content_policy": case(_openai_error(400, policy, "content_policy_violation"), policy),
    }
    if name == "azure":
        # Azure's own envelope: its code and a message, no type.
        def azure(status: int, code: str, text: str, **headers: str) -> Reply:
            return JSONReply({"error": {"code": code, "message": text}}, status, headers)

        retry = {"retry-after": RETRY_AFTER}
        errors["auth"] = case(azure(401, "401", "Access denied."), "Access denied.")
        errors["rate_limit"] = case(azure(429, "429", "Rate limit is exceeded.", **retry), "Rate")
        errors["server_error"] = case(azure(500, "InternalServerError", "Backend error."), "Back")
        errors["overloaded"] = case(azure(503, "ServiceUnavailable", "Unavailable."), "Unavail")
        errors["content_policy"] = case(
            JSONReply(azure_wire.FILTERED_PROMPT, status=400), "content management policy"
        )
    return errors


def _tool_chunk(call: dict[str, Any]) -> bytes:
    return chunk(None).replace(b'"delta":{}', b'"delta":{"tool_calls":[%s]}' % orjson.dumps(call))


def _openai_text_stream(first: list[bytes | float]) -> Callable[[bytes | None], StreamReply]:
    def reply(tail: bytes | None) -> StreamReply:
        if tail is not None:
            return StreamReply([*first, chunk("Hel"), chunk("lo")], tail=tail)
        frames: list[bytes | float] = [chunk("Hel"), chunk("lo"), chunk(finish="stop")]
        return StreamReply([*first, *frames, usage_chunk(5, 3), DONE])

    return reply


def _openai_tool_answer() -> Reply:
    body = chat_completion()
    call: dict[str, Any] = {"id": "call_1", "type": "function", "function": {"name": "get_weather"}}
    call["function"]["arguments"] = orjson.dumps(CITY).decode()
    body["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
    body["choices"][0]["finish_reason"] = "tool_calls"
    return JSONReply(body)


def _openai_tool_stream(first: list[bytes | float]) -> Callable[[], Reply]:
    opening = {"index": 0, "id": "call_1", "type": "function"}
    opening["function"] = {"name": "get_weather", "arguments": ""}
    return lambda: StreamReply(
        [
            *first,
            _tool_chunk(opening),
            _tool_chunk({"index": 0, "function": {"arguments": '{"city":'}}),
            _tool_chunk({"index": 0, "function": {"arguments": ' "Paris"}'}}),
            chunk(finish="tool_calls"),
            DONE,
        ]
    )


def _openai_family(name: str, group: str, config: Callable[[FakeUpstream], Any]) -> Family:
    # Azure opens every stream with a chunk of the prompt's filter results.
    first: list[bytes | float] = [azure_wire.PROMPT_FILTER_CHUNK] if name == "azure" else []
    unsupported = (("/v1/completions", {"prompt": "Say hello"}),) if name == "azure" else ()
    return Family(
        name=name,
        group=group,
        config=config,
        vet=_plain,
        text_stream=_openai_text_stream(first),
        tail=chunk(" more"),
        stream_usage=(5, 3),
        tool_answer=_openai_tool_answer,
        tool_stream=_openai_tool_stream(first),
        errors=_openai_errors(name),
        bad_request_code="invalid_value",
        unsupported=unsupported,
    )


# --- anthropic/ ---------------------------------------------------------------------------


def _anthropic_vet(
    reply: Callable[[ReceivedRequest], Reply],
) -> Callable[[ReceivedRequest], Reply]:
    def handle(request: ReceivedRequest) -> Reply:
        if problem := anthropic_wire.wire_problem(request):
            body = anthropic_wire.error_body("invalid_request_error", problem)
            return JSONReply(body, status=400)
        return reply(request)

    return handle


def _anthropic_text_stream(tail: bytes | None) -> StreamReply:
    start = anthropic_wire.message_start(input_tokens=25, output_tokens=1)
    text = anthropic_wire.text_block(0, "Hel", "lo")
    if tail is not None:
        return StreamReply([start, *text[:-1]], tail=tail)
    return StreamReply([start, *text, *anthropic_wire.message_end("end_turn", output_tokens=15)])


def _anthropic_error(status: int, kind: str, text: str) -> Callable[[bool], tuple[Reply, str]]:
    headers = {"retry-after": RETRY_AFTER} if status == 429 else {}
    reply = JSONReply(anthropic_wire.error_body(kind, text), status=status, headers=headers)
    return lambda stream: (reply, text)


RATE_LIMITED = "Number of request tokens has exceeded your per-minute rate limit"
TOO_LONG = "prompt is too long: 208573 tokens > 200000 maximum"


def _anthropic_family() -> Family:
    tool_use = {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": CITY}
    invalid = "invalid_request_error"
    return Family(
        name="anthropic",
        group="claude",
        config=anthropic_wire.anthropic_config,
        vet=_anthropic_vet,
        text_stream=_anthropic_text_stream,
        tail=anthropic_wire.block_delta(0, {"type": "text_delta", "text": " more"}),
        stream_usage=(25, 15),
        tool_answer=lambda: JSONReply(anthropic_wire.message([tool_use], stop_reason="tool_use")),
        tool_stream=lambda: StreamReply(
            [
                anthropic_wire.message_start(),
                *anthropic_wire.tool_block(0, "toolu_01", "get_weather", '{"city":', ' "Paris"}'),
                *anthropic_wire.message_end("tool_use", output_tokens=9),
            ]
        ),
        errors={
            "bad_request": _anthropic_error(400, invalid, "max_tokens: Field required"),
            "auth": _anthropic_error(401, "authentication_error", "invalid x-api-key"),
            "rate_limit": _anthropic_error(429, "rate_limit_error", RATE_LIMITED),
            "server_error": _anthropic_error(500, "api_error", "Internal server error"),
            "overloaded": _anthropic_error(529, "overloaded_error", "Overloaded"),
            "context_window": _anthropic_error(400, invalid, TOO_LONG),
            "content_policy": _anthropic_error(
                400, invalid, "Output blocked by content filtering policy"
            ),
        },
        bad_request_code="invalid_request_error",
        unsupported=(
            ("/v1/completions", {"prompt": "Say hello"}),
            ("/v1/embeddings", {"input": "Say hello"}),
        ),
    )


# --- gemini/ ------------------------------------------------------------------------------


def _gemini_frame(body: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\r\n\r\n"


def _gemini_text_stream(tail: bytes | None) -> StreamReply:
    partial = {"promptTokenCount": 9, "totalTokenCount": 9}
    final = {"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12}
    frames = [
        _gemini_frame(gemini_wire.answer([{"text": "Hel"}], finish=None, usage=partial)),
        _gemini_frame(gemini_wire.answer([{"text": "lo"}], finish=None, usage=partial)),
    ]
    if tail is not None:
        return StreamReply([*frames], tail=tail)
    return StreamReply([*frames, _gemini_frame(gemini_wire.answer([{"text": ""}], usage=final))])


def _gemini_error(status: int, code: str, text: str) -> Callable[[bool], tuple[Reply, str]]:
    headers = {"retry-after": RETRY_AFTER} if status == 429 else {}
    reply = gemini_wire.gemini_error(status, code, text, **headers)
    return lambda stream: (reply, text)


def _gemini_family() -> Family:
    call = {"functionCall": {"name": "get_weather", "args": CITY}}
    usage = {"promptTokenCount": 30, "candidatesTokenCount": 5, "totalTokenCount": 35}
    blocked = gemini_wire.BLOCKED

    def content_policy(stream: bool) -> tuple[Reply, str]:
        return (gemini_wire.sse(blocked) if stream else JSONReply(blocked)), "SAFETY"

    return Family(
        name="gemini",
        group="gemini-test",
        config=gemini_wire.gemini_config,
        vet=_plain,
        text_stream=_gemini_text_stream,
        tail=_gemini_frame(gemini_wire.answer([{"text": " more"}], finish=None)),
        stream_usage=(9, 3),
        tool_answer=lambda: JSONReply(gemini_wire.answer([call], usage=usage)),
        tool_stream=lambda: gemini_wire.sse(gemini_wire.answer([call], usage=usage)),
        errors={
            "bad_request": _gemini_error(400, "INVALID_ARGUMENT", "Invalid value at 'contents'"),
            "auth": _gemini_error(401, "UNAUTHENTICATED", "Request had invalid credentials."),
            "rate_limit": _gemini_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded"),
            "server_error": _gemini_error(500, "INTERNAL", "An internal error has occurred."),
            "overloaded": _gemini_error(503, "UNAVAILABLE", "The model is overloaded."),
            "context_window": _gemini_error(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens "
                "allowed (1048576).",
            ),
            "content_policy": content_policy,
        },
        bad_request_code=None,  # Gemini's status name is not passed on as a code
        unsupported=(("/v1/completions", {"prompt": "Say hello"}),),
    )


# --- bedrock/ -----------------------------------------------------------------------------


def _bedrock_text_stream(tail: bytes | None) -> StreamReply:
    events = bedrock_wire.text_events("Hel", "lo")
    if tail is not None:
        return StreamReply([*events[:3]], content_type=EVENT_STREAM, tail=tail)
    usage = bedrock_wire.metadata(inputTokens=9, outputTokens=3)
    return bedrock_wire.event_stream([*events, usage])


def _bedrock_tool_stream() -> Reply:
    event = bedrock_wire.event
    start = {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}}
    return bedrock_wire.event_stream(
        [
            event("messageStart", role="assistant"),
            event("contentBlockStart", contentBlockIndex=0, start=start),
            event("contentBlockDelta", contentBlockIndex=0, delta={"toolUse": {"input": '{"ci'}}),
            event(
                "contentBlockDelta",
                contentBlockIndex=0,
                delta={"toolUse": {"input": 'ty": "Paris"}'}},
            ),
            event("contentBlockStop", contentBlockIndex=0),
            event("messageStop", stopReason="tool_use"),
            bedrock_wire.metadata(inputTokens=30, outputTokens=20),
        ]
    )


def _bedrock_error(status: int, error_type: str, text: str) -> Callable[[bool], tuple[Reply, str]]:
    headers = {"retry-after": RETRY_AFTER} if status == 429 else {}
    reply = bedrock_wire.aws_error(status, error_type, text, **headers)
    return lambda stream: (reply, text)


def _bedrock_family() -> Family:
    tool_use = {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": CITY}}
    delta = {"text": " more"}
    return Family(
        name="bedrock",
        group="claude",
        config=bedrock_wire.bedrock_config,
        vet=lambda reply: bedrock_wire.bedrock(reply),
        text_stream=_bedrock_text_stream,
        tail=bedrock_wire.event("contentBlockDelta", contentBlockIndex=0, delta=delta),
        stream_usage=(9, 3),
        tool_answer=lambda: JSONReply(
            bedrock_wire.converse_response([tool_use], stop_reason="tool_use")
        ),
        tool_stream=_bedrock_tool_stream,
        # Bedrock has no content-policy error: a guardrail ends the answer instead.
        errors={
            "bad_request": _bedrock_error(
                400, "ValidationException", "Malformed input request: extraneous key [foo]"
            ),
            "auth": _bedrock_error(
                403, "UnrecognizedClientException", "The security token is invalid."
            ),
            "rate_limit": _bedrock_error(429, "ThrottlingException", "Too many requests."),
            "server_error": _bedrock_error(
                500, "InternalServerException", "The server encountered an internal error."
            ),
            "overloaded": _bedrock_error(
                503, "ServiceUnavailableException", "The service is unavailable."
            ),
            "context_window": _bedrock_error(
                400, "ValidationException", "Input is too long for requested model."
            ),
        },
        bad_request_code="ValidationException",
        unsupported=(("/v1/completions", {"prompt": "Say hello"}),),
    )


FAMILIES = [
    _openai_family("openai", "gpt-test", openai_config),
    _openai_family("groq", "gpt-test", lambda up: openai_config(up, model="groq/llama-3.3-70b")),
    _openai_family("azure", "azure-test", azure_wire.azure_config),
    _anthropic_family(),
    _gemini_family(),
    _bedrock_family(),
]


@dataclass
class Provider:
    """A family's fake upstream with the real gateway in front of it."""

    family: Family
    upstream: FakeUpstream
    gateway: RunningGateway

    def answer(self, reply: Callable[[ReceivedRequest], Reply]) -> None:
        self.upstream.handler = self.family.vet(reply)

    def client(self) -> openai.AsyncOpenAI:
        return sdk(self.gateway)


@asynccontextmanager
async def _provider(
    nursery: trio.Nursery, upstream: FakeUpstream, family: Family, **router: Any
) -> AsyncIterator[Provider]:
    config = family.config(upstream)
    config["router_settings"].update(router)
    running = await start_gateway(nursery, config)
    yield Provider(family, upstream, running)
    await running.stop()


@pytest.fixture(params=FAMILIES, ids=[family.name for family in FAMILIES])
async def provider(
    request: pytest.FixtureRequest, nursery: trio.Nursery, upstream: FakeUpstream
) -> AsyncIterator[Provider]:
    async with _provider(nursery, upstream, request.param) as running:
        yield running


def _always(reply: Reply) -> Callable[[ReceivedRequest], Reply]:
    """A handler that answers every request with `reply`."""
    return lambda request: reply


async def _streamed(provider: Provider, **options: Any) -> list[Any]:
    async with provider.client() as client:
        stream = await client.chat.completions.create(
            model=provider.family.group, messages=CHAT, stream=True, **options
        )
        return [c async for c in stream]


def _text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# --- usage ----------------------------------------------------------------------------------


async def test_a_stream_ends_with_one_usage_chunk_when_asked(provider: Provider) -> None:
    provider.answer(lambda request: provider.family.text_stream(None))
    asked = await _streamed(provider, stream_options={"include_usage": True})
    not_asked = await _streamed(provider)
    assert _text(asked) == _text(not_asked) == "Hello"
    assert [c.choices[-1].finish_reason for c in asked if c.choices][-1] == "stop"
    [with_usage] = [c for c in asked if c.usage is not None]
    assert with_usage is asked[-1] and with_usage.choices == []
    usage = with_usage.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == provider.family.stream_usage
    assert usage.total_tokens == sum(provider.family.stream_usage)
    assert all(c.usage is None for c in not_asked)
    # Asked for or not, the upstream's counts are what is billed.
    records = await provider.gateway.records.wait_for(2)
    assert {(r.prompt_tokens, r.completion_tokens) for r in records} == {
        provider.family.stream_usage
    }
    assert all(r.usage_source == "upstream" and r.status == 200 for r in records)


# --- errors ---------------------------------------------------------------------------------

ERROR_CASES = [
    pytest.param(family, case, id=f"{family.name}-{case}")
    for family in FAMILIES
    for case in ERRORS
    if case in family.errors
]


@pytest.mark.parametrize(("family", "case"), ERROR_CASES)
async def test_upstream_errors_reach_the_client_in_openai_terms(
    nursery: trio.Nursery, upstream: FakeUpstream, family: Family, case: str
) -> None:
    status, error_type, code = ERRORS[case]
    async with _provider(nursery, upstream, family) as provider:
        async with provider.client() as client:
            for stream in (False, True):
                reply, text = family.errors[case](stream)
                provider.answer(_always(reply))
                with pytest.raises(openai.APIStatusError) as caught:
                    await client.chat.completions.create(
                        model=family.group, messages=CHAT, stream=stream
                    )
                assert caught.value.status_code == status
                body = caught.value.body
                assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
                assert body["type"] == error_type and text in body["message"]
                assert body["code"] == (code if case != "bad_request" else family.bad_request_code)
                if status == 429:
                    assert isinstance(caught.value, openai.RateLimitError)
                    assert caught.value.response.headers["retry-after"] == RETRY_AFTER
        records = await provider.gateway.records.wait_for(2)
        assert [r.status for r in records] == [status, status]
        assert len(upstream.requests) == 2


# --- tool calls -----------------------------------------------------------------------------


async def test_a_tool_call_answer(provider: Provider) -> None:
    provider.answer(lambda request: provider.family.tool_answer())
    async with provider.client() as client:
        completion = await client.chat.completions.create(
            model=provider.family.group, messages=CHAT, tools=[TOOL]
        )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.id and call.type == "function" and call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == CITY


async def test_a_streamed_tool_call(provider: Provider) -> None:
    provider.answer(lambda request: provider.family.tool_stream())
    chunks = await _streamed(provider, tools=[TOOL])
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
    assert {t.index for t in calls} == {0}
    assert [t.id for t in calls if t.id][:1] and len({t.id for t in calls if t.id}) == 1
    assert "".join(t.function.name or "" for t in calls if t.function) == "get_weather"
    arguments = "".join(t.function.arguments or "" for t in calls if t.function)
    assert orjson.loads(arguments) == CITY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


# --- operations a provider lacks ------------------------------------------------------------

UNSUPPORTED = [
    pytest.param(family, path, body, id=f"{family.name}-{path.rsplit('/', 1)[1]}")
    for family in FAMILIES
    for path, body in family.unsupported
]


@pytest.mark.parametrize(("family", "path", "body"), UNSUPPORTED)
async def test_an_unsupported_operation_is_a_400_without_retry_or_cooldown(
    nursery: trio.Nursery, upstream: FakeUpstream, family: Family, path: str, body: dict[str, Any]
) -> None:
    router = {"num_retries": 2, "allowed_fails": 0, "cooldown_time": 60}
    async with _provider(nursery, upstream, family, **router) as provider:
        provider.answer(lambda request: family.text_stream(None))
        async with provider.gateway.client() as client:
            response = await client.post(path, json={"model": family.group, **body})
            assert response.status_code == 400
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error" and error["message"]
            assert response.headers["x-trigate-attempted-retries"] == "0"
            assert upstream.requests == []
            # The deployment is not cooling down: the next chat request reaches it.
            assert len(await _streamed(provider)) > 0
        assert len(upstream.requests) == 1


# --- a client leaving -----------------------------------------------------------------------


async def test_a_client_leaving_mid_stream_closes_the_upstream(provider: Provider) -> None:
    """The fake keeps streaming until it sees its connection closed; nothing else ends it."""
    provider.answer(lambda request: provider.family.text_stream(provider.family.tail))
    with trio.fail_after(10):
        async with provider.client() as client:
            stream = await client.chat.completions.create(
                model=provider.family.group, messages=CHAT, stream=True
            )
            async for part in stream:
                if part.choices and part.choices[0].delta.content:
                    break
            await stream.close()
        fake = provider.upstream
        # Aborted: the fake's socket saw the close before its endless answer was done.
        await fake.wait_for(lambda: fake.aborted == 1 and fake.connections_closed == 1)
    assert len(fake.requests) == 1

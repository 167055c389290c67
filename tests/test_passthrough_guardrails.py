"""Guardrails and hooks on the pass-through routes (issue 23): each provider's real SDK
through `/anthropic`, `/openai` and `/gemini` with a virtual key, fakes of the providers
on real sockets behind them. What the fake receives is what the guardrails let through,
masked where they mask; a block never reaches it; a stream blocked mid-way closes its
connection; a call the guardrails cannot read is refused while they apply to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import google.oauth2.credentials
import httpx
import openai
import orjson
import pytest
import trio
from fake_anthropic import PING, message, message_end, message_start, text_block, tool_block
from fake_gemini import answer, sse
from fake_vertex import PROJECT, TokenServer
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
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from helpers import MASTER_KEY, UPSTREAM_KEY, RunningGateway, openai_config, start_gateway
from test_guardrails import CARD, EMAIL, content_filter  # emails masked; cards, "forbidden" blocked
from test_passthrough_routes import CLAUDE, GEMINI, USAGE, VERTEX_CLAUDE, _key
from test_passthrough_routes import config as routes_config


def config(upstream: FakeUpstream, *guardrails: dict[str, Any], **extra: Any) -> dict[str, Any]:
    base = f"http://127.0.0.1:{upstream.port}"

    def entry(name: str, model: str, api_base: str = base) -> dict[str, Any]:
        params = {"model": model, "api_base": api_base, "api_key": UPSTREAM_KEY}
        return {"model_name": name, "litellm_params": params}

    return {
        "model_list": [
            entry("claude", f"anthropic/{CLAUDE}"),
            entry("gpt", "openai/gpt-4o", f"{base}/v1"),
            entry("gemini", f"gemini/{GEMINI}"),
            entry("command", "cohere/command-a-03-2025"),
        ],
        "router_settings": {"num_retries": 0},
        "guardrails": list(guardrails),
        **extra,
    }


@pytest.fixture
async def start(nursery: trio.Nursery, upstream: FakeUpstream) -> AsyncIterator[Any]:
    running: list[RunningGateway] = []

    async def started(*guardrails: dict[str, Any], **extra: Any) -> RunningGateway:
        gateway = await start_gateway(nursery, config(upstream, *guardrails, **extra))
        running.append(gateway)
        return gateway

    yield started
    for gateway in running:
        await gateway.stop()


def claude(gateway: RunningGateway, key: str = MASTER_KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=f"{gateway.url}/anthropic", api_key=key, max_retries=0)


def gemini(gateway: RunningGateway) -> genai.Client:
    options = genai_types.HttpOptions(base_url=f"{gateway.url}/gemini")
    return genai.Client(api_key=MASTER_KEY, http_options=options)


def first_text(reply: anthropic.types.Message) -> str:
    """The text of the answer's first block, which the test expects to be text."""
    block = reply.content[0]
    assert block.type == "text", block
    return block.text


def _anthropic_reply(request: ReceivedRequest) -> Reply:
    return JSONReply(message([{"type": "text", "text": "Noted."}]))


# --- Anthropic ---------------------------------------------------------------------------


async def test_anthropic_sdk_masked_and_blocked_before_the_call(
    start: Any, upstream: FakeUpstream
) -> None:
    """pre_call on Anthropic's own request: its system prompt, text and tool blocks are
    masked where they are, the rest of the body as the client sent it; a block answers
    in Anthropic's envelope (the SDK's own exception) and never reaches Anthropic."""
    upstream.handler = _anthropic_reply
    gateway = await start(content_filter("cf", "pre_call"))
    messages: list[Any] = [
        {"role": "user", "content": f"Write to {EMAIL}"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "send", "input": {"to": EMAIL}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": f"sent to {EMAIL}"},
            {"type": "text", "text": "thanks", "cache_control": {"type": "ephemeral"}}]},
    ]  # fmt: skip
    reply = await claude(gateway).messages.with_raw_response.create(
        model=CLAUDE, max_tokens=50, system=f"The user is {EMAIL}", messages=messages
    )
    assert reply.headers["x-litellm-applied-guardrails"] == "cf"
    assert first_text(await reply.parse()) == "Noted."
    [sent] = upstream.requests
    masked = "[EMAIL_REDACTED]"
    assert sent.json == {
        "model": CLAUDE, "max_tokens": 50, "system": f"The user is {masked}",
        "messages": [
            {"role": "user", "content": f"Write to {masked}"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "send", "input": {"to": masked}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": f"sent to {masked}"},
                {"type": "text", "text": "thanks", "cache_control": {"type": "ephemeral"}}]},
        ],
    }  # fmt: skip
    with pytest.raises(anthropic.BadRequestError) as blocked:
        await claude(gateway).messages.create(
            model=CLAUDE, max_tokens=50, messages=[{"role": "user", "content": f"card {CARD}"}]
        )
    assert isinstance(blocked.value.body, dict) and blocked.value.body["type"] == "error"
    assert "cf" in blocked.value.message and "credit_card" in blocked.value.message
    assert len(upstream.requests) == 1
    first, refused = await gateway.records.wait_for(2)
    assert [i["guardrail_status"] for i in first.metadata["guardrail_information"]] == ["success"]
    assert refused.status == 400 and refused.cost == 0 and CARD not in repr(refused)


async def test_anthropic_sdk_stream_masked_as_it_passes(start: Any, upstream: FakeUpstream) -> None:
    """post_call on Anthropic's own stream, a window at a time: an email split across
    deltas, and one in a tool use's input, are masked in the events the SDK reads."""
    frames = [
        message_start(),
        *text_block(0, "Mail ada@exa", "mple.com ", "now"),
        *tool_block(1, "toolu_1", "send", '{"to": "ada@', 'example.com"}'),
        *message_end("tool_use", output_tokens=9),
    ]
    upstream.handler = lambda request: StreamReply(frames)
    gateway = await start(content_filter("cf", "post_call", stream_window=8))
    async with claude(gateway).messages.stream(
        model=CLAUDE, max_tokens=50, messages=[{"role": "user", "content": "mail?"}]
    ) as stream:
        final = await stream.get_final_message()
    assert first_text(final) == "Mail [EMAIL_REDACTED] now"
    tool_use = final.content[1]
    assert tool_use.type == "tool_use" and tool_use.input == {"to": "[EMAIL_REDACTED]"}
    [record] = await gateway.records.wait_for(1)
    assert record.status == 200 and (record.prompt_tokens, record.completion_tokens) == (12, 9)


async def test_anthropic_stream_blocked_mid_way_closes_the_upstream(
    start: Any, upstream: FakeUpstream
) -> None:
    """A block at the third delta: the SDK has the text before it, then Anthropic's
    error event; the upstream (which would stream on) sees its connection close, and
    the call is billed its prompt and what the provider streamed (more than it reported
    so far)."""
    frames = [message_start(output_tokens=1), *text_block(0, "one ", "two ", "forbidden ", "three")]
    upstream.handler = lambda request: StreamReply(frames, tail=PING)
    gateway = await start(content_filter("cf", "post_call", stream_window=1))
    text = ""
    with pytest.raises(anthropic.APIStatusError) as blocked:
        async with claude(gateway).messages.stream(
            model=CLAUDE, max_tokens=50, messages=[{"role": "user", "content": "count"}]
        ) as stream:
            async for piece in stream.text_stream:
                text += piece
    assert text == "one two "
    assert isinstance(blocked.value.body, dict)
    assert blocked.value.body["error"]["type"] == "invalid_request_error"
    assert "forbidden" in blocked.value.message
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
    [record] = await gateway.records.wait_for(1)
    counted = gateway.gateway.counter.count_text(CLAUDE, "one two forbidden ")
    assert record.status == 400 and record.stream
    assert (record.prompt_tokens, record.completion_tokens) == (12, counted)


async def test_a_litellm_hook_sees_and_rewrites_the_providers_own_body(
    start: Any, upstream: FakeUpstream
) -> None:
    """A LiteLLM hook is handed the provider's own body, as LiteLLM's pass-through hands
    it (`pass_through_endpoint`), and what it rewrites is what Anthropic is sent."""
    upstream.handler = _anthropic_reply
    gateway = await start(litellm_settings={"callbacks": ["hook_examples.litellm_redact"]})
    await claude(gateway).messages.create(
        model=CLAUDE, max_tokens=10,
        messages=[{"role": "user", "content": "pay with 4111-1111-1111-1111"}],
    )  # fmt: skip
    [sent] = upstream.requests
    assert sent.json["messages"] == [{"role": "user", "content": "pay with [card]"}]


# --- OpenAI ------------------------------------------------------------------------------


async def test_openai_sdk_masked_before_and_after_the_call(
    start: Any, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion(f"Mail {EMAIL}."))
    gateway = await start(content_filter("in", "pre_call"), content_filter("out", "post_call"))
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/openai/v1", api_key=MASTER_KEY,
                                max_retries=0)  # fmt: skip
    answer_ = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"I am {EMAIL}"}]
    )
    assert answer_.choices[0].message.content == "Mail [EMAIL_REDACTED]."
    [sent] = upstream.requests
    assert sent.target == "/v1/chat/completions"
    assert sent.json["messages"] == [{"role": "user", "content": "I am [EMAIL_REDACTED]"}]
    upstream.handler = lambda request: JSONReply(chat_completion(f"Card {CARD}"))
    with pytest.raises(openai.BadRequestError) as blocked:
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "card?"}]
        )
    assert "credit_card" in blocked.value.message and CARD not in blocked.value.message


async def test_openai_stream_blocked_mid_way_closes_the_upstream(
    start: Any, upstream: FakeUpstream
) -> None:
    """The usage the gateway asks the stream for is not the client's; a block ends the
    stream with OpenAI's error frame, which the SDK raises, and closes the upstream."""
    words = [" w1", " w2", " w3"]
    frames: list[bytes | float] = [*map(chunk, words), chunk(" forbidden")]
    upstream.handler = lambda request: StreamReply(frames, tail=chunk(" more"))
    gateway = await start(content_filter("cf", "post_call", stream_window=1))
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/openai/v1", api_key=MASTER_KEY,
                                max_retries=0)  # fmt: skip
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "count"}], stream=True
    )
    text = ""
    with pytest.raises(openai.APIError) as blocked:
        async for part in stream:
            text += part.choices[0].delta.content or ""
    assert text == "".join(words) and "forbidden" in blocked.value.message
    assert upstream.requests[0].json["stream_options"] == {"include_usage": True}
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
    [record] = await gateway.records.wait_for(1)
    assert record.status == 400
    streamed = text + " forbidden"
    assert record.completion_tokens == gateway.gateway.counter.count_text("gpt-4o", streamed)
    # A stream that passes: the client did not ask for usage, and is not sent it.
    upstream.handler = lambda request: StreamReply(
        [*map(chunk, words), chunk(finish="stop"), usage_chunk(5, 3), DONE]
    )
    async with gateway.client() as raw:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                "stream": True}  # fmt: skip
        passed = (await raw.post("/openai/v1/chat/completions", json=body)).text
    assert '"usage"' not in passed and passed.endswith("data: [DONE]\n\n")
    [_, whole] = await gateway.records.wait_for(2)
    assert (whole.prompt_tokens, whole.completion_tokens) == (5, 3)


async def test_a_hook_reads_and_rewrites_the_providers_own_stream_events(
    start: Any, upstream: FakeUpstream
) -> None:
    """A chunk hook is handed each event of OpenAI's stream as its JSON object, and what
    it rewrites is what the client reads."""
    upstream.handler = lambda request: StreamReply([chunk("hello"), chunk(" there"), DONE])
    gateway = await start(litellm_settings={"callbacks": ["hook_examples.shout"]})
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/openai/v1", api_key=MASTER_KEY,
                                max_retries=0)  # fmt: skip
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join([part.choices[0].delta.content or "" async for part in stream]) == (
        "HELLO THERE"
    )


# --- Gemini ------------------------------------------------------------------------------


async def test_google_genai_masked_before_the_call_and_on_the_stream(
    start: Any, upstream: FakeUpstream
) -> None:
    """Gemini's own request (system instruction, contents) masked where it is; its SSE
    stream masked as it passes, window by window."""
    upstream.handler = lambda request: JSONReply(answer([{"text": "Hi"}], usage=USAGE))
    gateway = await start(content_filter("in", "pre_call"),
                          content_filter("out", "post_call", stream_window=8))  # fmt: skip
    client = gemini(gateway)
    system = genai_types.GenerateContentConfig(system_instruction=f"The user is {EMAIL}")
    reply = await trio.to_thread.run_sync(
        lambda: client.models.generate_content(
            model=GEMINI, contents=f"Mail {EMAIL}", config=system
        )
    )
    assert reply.text == "Hi"
    [sent] = upstream.requests
    texts = [part["text"] for content in sent.json["contents"] for part in content["parts"]]
    assert texts == ["Mail [EMAIL_REDACTED]"]
    assert sent.json["systemInstruction"]["parts"] == [{"text": "The user is [EMAIL_REDACTED]"}]
    upstream.handler = lambda request: sse(
        answer([{"text": "Write to ada@exa"}], finish=None),
        answer([{"text": "mple.com today"}], usage=USAGE),
    )

    def streamed() -> str:
        chunks = client.models.generate_content_stream(model=GEMINI, contents="mail?")
        return "".join(part.text or "" for part in chunks)

    assert await trio.to_thread.run_sync(streamed) == "Write to [EMAIL_REDACTED] today"
    assert upstream.requests[1].target.endswith(":streamGenerateContent?alt=sse")


async def test_google_genai_stream_blocked_mid_way_closes_the_upstream(
    start: Any, upstream: FakeUpstream
) -> None:
    tail = b"data: " + orjson.dumps(answer([{"text": " more"}], finish=None)) + b"\r\n\r\n"
    events = [answer([{"text": word}], finish=None) for word in ("one", " two", " forbidden")]
    upstream.handler = lambda request: StreamReply(
        [b"data: " + orjson.dumps(event) + b"\r\n\r\n" for event in events], tail=tail
    )
    gateway = await start(content_filter("cf", "post_call", stream_window=1))
    client = gemini(gateway)
    got: list[str] = []

    def streamed() -> None:
        stream = client.models.generate_content_stream(model=GEMINI, contents="count")
        got.extend(part.text or "" for part in stream)

    with pytest.raises(genai_errors.ClientError) as blocked:
        await trio.to_thread.run_sync(streamed)
    assert got == ["one", " two"]
    assert blocked.value.code == 400 and blocked.value.status == "INVALID_ARGUMENT"
    assert "forbidden" in (blocked.value.message or "")
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
    # A pre_call block, in Google's envelope, which the SDK raises as its own.
    gateway = await start(content_filter("cf", "pre_call"))
    client = gemini(gateway)  # held: a client collected closes its connections
    with pytest.raises(genai_errors.ClientError) as refused:
        await trio.to_thread.run_sync(
            lambda: client.models.generate_content(model=GEMINI, contents=CARD)
        )
    assert refused.value.code == 400 and "credit_card" in (refused.value.message or "")
    assert len(upstream.requests) == 1


async def test_gemini_function_calls_results_and_embeddings_masked_where_they_are(
    start: Any, upstream: FakeUpstream
) -> None:
    def reply(request: ReceivedRequest) -> JSONReply:
        if request.target.endswith(":batchEmbedContents"):
            return JSONReply({"embeddings": [{"values": [0.1]}]})
        return JSONReply(answer([{"text": "ok"}], usage=USAGE))

    upstream.handler = reply
    gateway = await start(content_filter("in", "pre_call"))
    call = {"name": "send", "args": {"to": EMAIL, "cc": [EMAIL], "n": 1}}
    result = {"name": "send", "response": {"result": f"sent to {EMAIL}"}}
    contents = [
        {"role": "user", "parts": [{"text": "send it"}]},
        {"role": "model", "parts": [{"functionCall": call, "thoughtSignature": "c2ln"}]},
        {"role": "user", "parts": [{"functionResponse": result}]},
    ]
    embed = {"requests": [{"model": "models/gemini-embedding-001",
                           "content": {"parts": [{"text": f"about {EMAIL}"}]}}]}  # fmt: skip
    async with httpx.AsyncClient(base_url=f"{gateway.url}/gemini/v1beta/models",
                                 headers={"x-goog-api-key": MASTER_KEY}) as client:  # fmt: skip
        generated = await client.post(f"/{GEMINI}:generateContent", json={"contents": contents})
        embedded = await client.post("/gemini-embedding-001:batchEmbedContents", json=embed)
    assert generated.status_code == embedded.status_code == 200
    masked = "[EMAIL_REDACTED]"
    sent, sent_embed = (request.json for request in upstream.requests)
    assert sent["contents"][1]["parts"] == [
        {"functionCall": {"name": "send", "args": {"to": masked, "cc": [masked], "n": 1}},
         "thoughtSignature": "c2ln"}
    ]  # fmt: skip
    assert sent["contents"][2]["parts"][0]["functionResponse"]["response"] == {
        "result": f"sent to {masked}"
    }
    assert sent_embed["requests"][0]["content"]["parts"] == [{"text": f"about {masked}"}]


# --- modes, selection, failing closed ----------------------------------------------------


async def test_during_call_blocks_and_closes_the_upstream_call(
    start: Any, upstream: FakeUpstream
) -> None:
    """The provider holds its answer; the guardrail beside it blocks without waiting for
    it, and the provider's connection is closed. A call that passes waits for both. (Held
    until the test says, never here: a deadline raced against a provider's delay could
    be lost on a loaded machine.)"""
    held = trio.Event()
    upstream.handler = lambda request: JSONReply(message([{"type": "text", "text": "late"}]),
                                                 gate=held)  # fmt: skip
    moderation = {"guardrail_name": "moderation", "litellm_params": {
        "guardrail": "guardrail_examples.SlowBlock", "mode": "during_call", "default_on": True,
        "delay": 0.3}}  # fmt: skip
    gateway = await start(moderation)
    # Against a hang: answered, the provider still holding.
    with trio.fail_after(30), pytest.raises(anthropic.BadRequestError):
        await claude(gateway).messages.create(
            model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "my card"}]
        )
    with trio.fail_after(30):  # against a hang, not a timing assertion
        await upstream.wait_for(lambda: upstream.aborted == 1)
    [record] = await gateway.records.wait_for(1)
    assert record.status == 400 and record.completion_tokens == 0 and record.prompt_tokens > 0
    upstream.handler = _anthropic_reply
    passed = await claude(gateway).messages.create(
        model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hello"}]
    )
    assert first_text(passed) == "Noted."


async def test_logging_only_leaves_the_call_as_it_was(start: Any, upstream: FakeUpstream) -> None:
    """logging_only reads the request and the answer, and changes neither: its findings
    are what the record masks, with its outcome in `guardrail_information`."""
    upstream.handler = lambda request: JSONReply(message([{"type": "text", "text": EMAIL}]))
    gateway = await start(content_filter("log", "logging_only"))
    reply = await claude(gateway).messages.create(
        model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": f"I am {EMAIL}"}]
    )
    assert first_text(reply) == EMAIL
    assert EMAIL in upstream.requests[0].body.decode()
    [record] = await gateway.records.wait_for(1)
    runs = record.metadata["guardrail_information"]
    assert [(run["guardrail_mode"], run["masked_entity_count"]) for run in runs] == [
        ("logging_only", {"email": 1}),
        ("logging_only", {"email": 1}),
    ]
    assert EMAIL not in repr(record)


async def test_guardrails_by_key_team_and_request_as_on_every_route(
    start: Any, upstream: FakeUpstream
) -> None:
    """Not `default_on`: a guardrail runs where the key, the team or the request names
    it (LiteLLM's `guardrails`, which is taken out of the provider's body)."""
    upstream.handler = _anthropic_reply
    gateway = await start(content_filter("pii", "pre_call", default_on=False))
    plain = await _key(gateway)
    named = await _key(gateway, guardrails=["pii"])
    async with gateway.client() as admin:
        team = (await admin.post("/team/new", json={"guardrails": ["pii"]})).json()
    teamed = await _key(gateway, team_id=team["team_id"])
    hello: list[anthropic.types.MessageParam] = [{"role": "user", "content": f"I am {EMAIL}"}]
    for key in (plain, named, teamed):
        await claude(gateway, key).messages.create(model=CLAUDE, max_tokens=5, messages=hello)
    await claude(gateway, plain).messages.create(
        model=CLAUDE, max_tokens=5, messages=hello,
        extra_body={"metadata": {"user_id": "u1", "guardrails": ["pii"]}},
    )  # fmt: skip
    sent = [request.json for request in upstream.requests]
    assert [body["messages"][0]["content"] for body in sent] == [
        f"I am {EMAIL}",
        *["I am [EMAIL_REDACTED]"] * 3,
    ]
    assert sent[3]["metadata"] == {"user_id": "u1"}
    with pytest.raises(anthropic.BadRequestError) as unknown:
        await claude(gateway).messages.create(
            model=CLAUDE, max_tokens=5, messages=hello, extra_body={"guardrails": ["nope"]}
        )
    assert "nope" in unknown.value.message and len(upstream.requests) == 4


async def test_a_call_the_guardrails_cannot_read_is_refused_while_they_apply(
    start: Any, upstream: FakeUpstream
) -> None:
    """Cohere's API, a non-JSON body: refused (403, naming why) for a key the guardrails
    apply to; a key they do not apply to passes as before."""
    upstream.handler = lambda request: JSONReply({"id": "c1", "message": {"content": []}})
    gateway = await start(content_filter("pii", "pre_call", default_on=False))
    guarded = await _key(gateway, guardrails=["pii"])
    plain = await _key(gateway)
    body = {"model": "command-a-03-2025", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        refused = await client.post("/cohere/v2/chat", json=body,
                                    headers={"authorization": f"Bearer {guarded}"})  # fmt: skip
        not_json = await client.post(
            "/openai/v1/chat/completions", content=b"model=gpt-4o",
            headers={"authorization": f"Bearer {guarded}", "content-type": "text/plain"},
        )  # fmt: skip
        passed = await client.post("/cohere/v2/chat", json=body,
                                   headers={"authorization": f"Bearer {plain}"})  # fmt: skip
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "pass_through_closed_by_hooks"
    assert "/cohere/v2/chat" in refused.json()["error"]["message"]
    assert not_json.status_code == 403 and "not a JSON object" in not_json.text
    assert passed.status_code == 200
    assert [request.target for request in upstream.requests] == ["/v2/chat"]


# --- OpenAI's Responses API --------------------------------------------------------------

RESPONSES_USAGE = {"input_tokens": 5, "output_tokens": 4, "total_tokens": 9,
                   "input_tokens_details": {"cached_tokens": 0},
                   "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip
ITEM = "msg_0001"


def _response(text: str, status: str = "completed") -> dict[str, Any]:
    """A Response as OpenAI's API answers one."""
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return {"id": "resp_0001", "object": "response", "created_at": 1700000000,
            "status": status, "model": "gpt-4o", "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": [], "usage": RESPONSES_USAGE,
            "output": [{"type": "message", "id": ITEM, "status": "completed",
                        "role": "assistant", "content": content}]}  # fmt: skip


def _response_events(*deltas: str) -> StreamReply:
    """A Responses stream as OpenAI sends it: the deltas, then the events that repeat
    their text whole."""
    text = "".join(deltas)
    where = {"item_id": ITEM, "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": "", "annotations": []}
    done_item = _response(text)["output"][0]
    payloads: list[dict[str, Any]] = [
        {"type": "response.created",
         "response": {**_response(""), "status": "in_progress", "output": [], "usage": None}},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**done_item, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **where, "part": part},
        *[{"type": "response.output_text.delta", **where, "delta": delta, "logprobs": []}
          for delta in deltas],
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": done_item},
        {"type": "response.completed", "response": _response(text)},
    ]  # fmt: skip
    return StreamReply([
        b"event: %s\ndata: %s\n\n" % (p["type"].encode(), orjson.dumps({**p, "sequence_number": i}))
        for i, p in enumerate(payloads)
    ])  # fmt: skip


async def test_responses_api_masked_in_its_input_and_its_stream(
    start: Any, upstream: FakeUpstream
) -> None:
    """The Responses API's own request (instructions, input items) masked where it is; its
    stream masked in the deltas and in every event that repeats their text whole."""
    upstream.handler = lambda request: JSONReply(_response("ok"))
    gateway = await start(content_filter("in", "pre_call"),
                          content_filter("out", "post_call", stream_window=8))  # fmt: skip
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/openai/v1", api_key=MASTER_KEY,
                                max_retries=0)  # fmt: skip
    calls: Any = [
        {"role": "user", "content": [{"type": "input_text", "text": f"mail {EMAIL}"}]},
        {"type": "function_call", "call_id": "c1", "name": "send",
         "arguments": orjson.dumps({"to": EMAIL}).decode()},
        {"type": "function_call_output", "call_id": "c1", "output": f"sent to {EMAIL}"},
    ]  # fmt: skip
    reply = await client.responses.create(
        model="gpt-4o", instructions=f"The user is {EMAIL}", input=calls
    )
    assert reply.output_text == "ok"
    sent = upstream.requests[0].json
    assert sent["instructions"] == "The user is [EMAIL_REDACTED]"
    assert sent["input"][0]["content"][0]["text"] == "mail [EMAIL_REDACTED]"
    assert orjson.loads(sent["input"][1]["arguments"]) == {"to": "[EMAIL_REDACTED]"}
    assert sent["input"][2]["output"] == "sent to [EMAIL_REDACTED]"
    upstream.handler = lambda request: _response_events("Write to ada@exa", "mple.com", " today")
    async with client.responses.stream(model="gpt-4o", input="mail?") as stream:
        deltas = [
            event.delta async for event in stream if event.type == "response.output_text.delta"
        ]
        final = await stream.get_final_response()
    masked = "Write to [EMAIL_REDACTED] today"
    assert "".join(deltas) == masked and final.output_text == masked
    async with gateway.client() as raw:
        body = {"model": "gpt-4o", "input": "hi", "stream": True}
        events = (await raw.post("/openai/v1/responses", json=body)).text
    assert EMAIL not in events and events.count("[EMAIL_REDACTED]") == 5


async def test_an_answer_the_guardrails_cannot_read_goes_no_further(
    start: Any, upstream: FakeUpstream
) -> None:
    """A whole answer that is not a JSON object is a 502, never the client's; a stream
    event that is not one ends the stream with an error event, the upstream closed."""
    upstream.handler = lambda request: JSONReply("not an object")
    gateway = await start(content_filter("out", "post_call", stream_window=1))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    async with gateway.client() as client:
        whole = await client.post("/openai/v1/chat/completions", json=body)
        # In one read: what was decoded before the unreadable event still goes out.
        upstream.handler = lambda request: StreamReply(
            [chunk("fine") + b"data: {not json\n\n"], tail=chunk(" more")
        )
        streamed = await client.post("/openai/v1/chat/completions", json={**body, "stream": True})
    assert whole.status_code == 502 and "not an object" not in whole.text
    assert whole.json()["error"]["code"] == "pass_through_unreadable_answer"
    events = [line[6:] for line in streamed.text.split("\n") if line.startswith("data: ")]
    assert [orjson.loads(e)["choices"][0]["delta"] for e in events[:1]] == [{"content": "fine"}]
    assert orjson.loads(events[1])["error"]["code"] == "pass_through_unreadable_answer"
    assert events[2:] == ["[DONE]"]
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)


async def test_the_unified_responses_route_repeats_the_masked_text_too(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """`/v1/responses` on an `openai/` deployment relays the upstream's own events: there
    too, the closing events and the stored Response repeat the deltas as masked."""
    upstream.handler = lambda request: _response_events("Write to ada@exa", "mple.com", " today")
    config = {**openai_config(upstream),
              "guardrails": [content_filter("out", "post_call", stream_window=8)]}  # fmt: skip
    running = await start_gateway(nursery, config)
    try:
        async with running.client() as client:
            body = {"model": "gpt-test", "input": "hi", "stream": True}
            events = (await client.post("/v1/responses", json=body)).text
            response_id = orjson.loads(
                next(line for line in events.split("\n") if "response.completed" in line
                     and line.startswith("data: "))[6:]
            )["response"]["id"]  # fmt: skip
            stored = (await client.get(f"/v1/responses/{response_id}")).text
    finally:
        await running.stop()
    assert EMAIL not in events and events.count("[EMAIL_REDACTED]") == 5
    assert EMAIL not in stored and "Write to [EMAIL_REDACTED] today" in stored


# --- Vertex AI ---------------------------------------------------------------------------


async def test_claude_and_gemini_on_vertex_are_guarded_in_their_own_apis(
    nursery: trio.Nursery, upstream: FakeUpstream, tokens: TokenServer
) -> None:
    """Claude on Vertex (`streamRawPredict`): a stream blocked mid-way, in Anthropic's
    format; Gemini on Vertex: its request masked where its text is."""
    guarded = {**routes_config(upstream, tokens),
               "guardrails": [content_filter("in", "pre_call"),
                              content_filter("out", "post_call", stream_window=1)]}  # fmt: skip
    gateway = await start_gateway(nursery, guarded)
    frames = [message_start(), *text_block(0, "one ", "forbidden ", "two")]
    upstream.handler = lambda request: StreamReply(frames, tail=PING)
    claude_ = anthropic.AsyncAnthropicVertex(
        region="us-east5", project_id=PROJECT, access_token=MASTER_KEY,
        base_url=f"{gateway.url}/vertex_ai/v1", max_retries=0,
    )  # fmt: skip
    text = ""
    with pytest.raises(anthropic.APIStatusError) as blocked:
        async with claude_.messages.stream(
            model=VERTEX_CLAUDE, max_tokens=50, messages=[{"role": "user", "content": "count"}]
        ) as stream:
            async for piece in stream.text_stream:
                text += piece
    assert text == "one " and "forbidden" in blocked.value.message
    assert upstream.requests[0].target.endswith(f"{VERTEX_CLAUDE}:streamRawPredict")
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
    upstream.handler = lambda request: JSONReply(answer([{"text": "Hi"}], usage=USAGE))
    client = genai.Client(
        vertexai=True, project=PROJECT, location="us-east5",
        # google-auth's Credentials constructor has no annotations.
        credentials=google.oauth2.credentials.Credentials(token=MASTER_KEY),  # type: ignore[no-untyped-call]
        http_options=genai_types.HttpOptions(base_url=f"{gateway.url}/vertex_ai"),
    )  # fmt: skip
    reply = await trio.to_thread.run_sync(
        lambda: client.models.generate_content(model=GEMINI, contents=f"Mail {EMAIL}")
    )
    assert reply.text == "Hi"
    sent = upstream.requests[1]
    assert sent.target.endswith(f"/publishers/google/models/{GEMINI}:generateContent")
    assert sent.json["contents"][0]["parts"] == [{"text": "Mail [EMAIL_REDACTED]"}]
    await gateway.stop()


# --- what the guardrails read is what the provider is sent --------------------------------


async def test_a_body_with_duplicate_keys_goes_as_the_guardrails_read_it(
    start: Any, upstream: FakeUpstream
) -> None:
    """JSON with a key twice: the gateway reads the last, another parser may read the
    first. The provider is sent the body as the guardrails read it, never the raw one
    the guardrails may not have seen, even when they changed nothing."""
    upstream.handler = _anthropic_reply
    gateway = await start(content_filter("cf", "pre_call"))
    raw = (
        b'{"model": "%s", "max_tokens": 5, "messages": [{"role": "user",'
        b' "content": "card %s", "content": "hello"}]}' % (CLAUDE.encode(), CARD.encode())
    )
    async with gateway.client() as client:
        reply = await client.post("/anthropic/v1/messages", content=raw,
                                  headers={"content-type": "application/json"})  # fmt: skip
    assert reply.status_code == 200
    [sent] = upstream.requests
    assert CARD not in sent.body.decode() and sent.body.count(b'"content"') == 1
    assert sent.json["messages"] == [{"role": "user", "content": "hello"}]


async def test_a_whole_answer_is_held_only_while_a_hook_reads_answers(
    start: Any, upstream: FakeUpstream
) -> None:
    """Met only by a `pre_call` guardrail, a whole answer goes to the client as it comes:
    its first bytes arrive while the provider still holds the rest. (A `post_call` one
    holds it until it is checked whole: the OpenAI SDK's test above.)"""
    whole = orjson.dumps(message([{"type": "text", "text": "Noted."}]))
    released = trio.Event()
    upstream.handler = lambda request: StreamReply(
        [whole[:20], released, whole[20:]], content_type="application/json"
    )
    gateway = await start(content_filter("in", "pre_call"))
    body = {"model": CLAUDE, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        gateway.client() as client,
        client.stream("POST", "/anthropic/v1/messages", json=body) as reply,
    ):
        pieces = reply.aiter_raw()
        with trio.fail_after(5):
            first = await anext(pieces)
        released.set()
        rest = b"".join([piece async for piece in pieces])
    assert first == whole[:20] and first + rest == whole


async def test_a_stream_cut_short_is_billed_what_the_provider_streamed(
    start: Any, upstream: FakeUpstream
) -> None:
    """A client that leaves mid-stream, no guardrail meeting the call: Anthropic has
    reported one output token so far and streamed many; the call is billed the tokens
    of the text streamed, the larger."""
    words = [f" word{n}" for n in range(30)]
    frames = [message_start(output_tokens=1), *text_block(0, *words)[:-1]]
    upstream.handler = lambda request: StreamReply(frames, tail=PING)
    gateway = await start(content_filter("pii", "pre_call", default_on=False))
    body = {"model": CLAUDE, "max_tokens": 99, "stream": True,
            "messages": [{"role": "user", "content": "count"}]}  # fmt: skip
    got = b""
    async with (
        gateway.client() as client,
        client.stream("POST", "/anthropic/v1/messages", json=body) as reply,
    ):
        async for piece in reply.aiter_raw():
            got += piece
            if b"word29" in got:
                break
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
    [record] = await gateway.records.wait_for(1)
    counted = gateway.gateway.counter.count_text(CLAUDE, "".join(words))
    assert record.cancelled_by_client and counted > 1
    assert (record.prompt_tokens, record.completion_tokens) == (12, counted)


async def test_every_text_of_a_pass_through_request_is_read(
    start: Any, upstream: FakeUpstream
) -> None:
    """A pass-through body goes upstream as it is, so every text of it is read, not only
    what a guardrail reads of a chat request: metadata, a custom tool's description;
    binary data, names and ids go unchanged. (An item of a
    kind no reader knows is refused: see the test of calls they cannot read.)"""
    upstream.handler = lambda request: JSONReply(_response("ok"))
    gateway = await start(content_filter("in", "pre_call"))
    image = "data:image/png;base64," + "iVBORw0KGgo" * 40
    body = {
        "model": "gpt-4o",
        "metadata": {"who": EMAIL, "name": EMAIL},
        "tools": [{"type": "custom", "name": "apply_patch", "description": f"ask {EMAIL}"}],
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"},
                                         {"type": "input_image", "image_url": image}]},
            {"type": "function_call", "call_id": "c1", "name": "look", "arguments": "{}",
             "id": "fc_1", "status": "completed"},
        ],
    }  # fmt: skip
    async with gateway.client() as raw:
        answered = await raw.post("/openai/v1/responses", json=body)
    assert answered.status_code == 200, answered.text
    sent = upstream.requests[0].json
    assert EMAIL not in orjson.dumps(sent).decode()
    assert sent["metadata"] == {"who": "[EMAIL_REDACTED]", "name": "[EMAIL_REDACTED]"}
    assert sent["tools"][0]["description"] == "ask [EMAIL_REDACTED]"
    assert sent["input"][0]["content"][1]["image_url"] == image
    assert sent["input"][1]["id"] == "fc_1" and sent["input"][1]["name"] == "look"

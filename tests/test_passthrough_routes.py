"""LiteLLM's pass-through routes (`/anthropic`, `/gemini`, `/vertex_ai`, `/openai`, `/bedrock`,
`/cohere`, custom `pass_through_endpoints`): each provider's real SDK against the gateway
with a virtual key, faithful fakes of the providers behind it on real sockets. The fakes
see the provider's credential, never the virtual key; the spend rows carry the model and
the usage the answers reported."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import anthropic

# boto3 ships no types, and its stubs (boto3-stubs) are not among the dev dependencies.
import boto3  # type: ignore[import-untyped]
import cohere
import google.oauth2.credentials
import httpx
import openai
import pytest
import trio
from fake_anthropic import message, message_end, message_start, text_block
from fake_bedrock import (
    ACCESS_KEY,
    MODEL_ID,
    REGION,
    SECRET_KEY,
    converse_response,
    event_stream,
    metadata,
    signature_problem,
    text_events,
)
from fake_cohere import chat
from fake_gemini import answer, sse
from fake_vertex import PROJECT, TokenServer, service_account
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
from google.genai import types as genai_types
from helpers import MASTER_KEY, MESSAGES, UPSTREAM_KEY, RunningGateway, start_gateway
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionStreamOptionsParam

from trigate.usage import UsageMeter

# helpers.MESSAGES as each SDK types it (helpers keeps plain dicts, for every SDK).
CLAUDE_MESSAGES = cast(list[anthropic.types.MessageParam], MESSAGES)
CHAT_MESSAGES = cast(list[ChatCompletionMessageParam], MESSAGES)

CLAUDE = "claude-sonnet-4-5-20250929"
GEMINI = "gemini-2.5-flash"
VERTEX_CLAUDE = "claude-sonnet-4-5@20250929"
USAGE = {"promptTokenCount": 10, "candidatesTokenCount": 4, "totalTokenCount": 14}


def config(upstream: FakeUpstream, tokens: TokenServer) -> dict[str, Any]:
    base = f"http://127.0.0.1:{upstream.port}"

    def entry(name: str, **params: Any) -> dict[str, Any]:
        return {"model_name": name, "litellm_params": params}

    vertex = {"api_base": base, "vertex_project": PROJECT, "vertex_location": "us-east5",
              "vertex_credentials": json.dumps(service_account(tokens.upstream))}  # fmt: skip
    return {
        "model_list": [
            entry("claude", model=f"anthropic/{CLAUDE}", api_base=base, api_key=UPSTREAM_KEY),
            entry("gemini", model=f"gemini/{GEMINI}", api_base=base, api_key=UPSTREAM_KEY),
            entry("vertex-claude", model=f"vertex_ai/{VERTEX_CLAUDE}", **vertex),
            entry("vertex-gemini", model=f"vertex_ai/{GEMINI}", **vertex),
            entry("gpt", model="openai/gpt-4o", api_base=f"{base}/v1", api_key=UPSTREAM_KEY),
            entry("command", model="cohere/command-a-03-2025", api_base=base, api_key=UPSTREAM_KEY),
            entry("bedrock-claude", model=f"bedrock/{MODEL_ID}", api_base=base,
                  aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                  aws_region_name=REGION),
        ],
        "router_settings": {"num_retries": 0},
        "general_settings": {
            "pass_through_endpoints": [
                {"path": "/custom/rerank", "target": f"{base}/v1/rerank", "auth": True,
                 "headers": {"Authorization": f"Bearer {UPSTREAM_KEY}"}},
            ]
        },
    }  # fmt: skip


@pytest.fixture
async def gateway(
    nursery: trio.Nursery, upstream: FakeUpstream, tokens: TokenServer
) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(nursery, config(upstream, tokens))
    yield running
    await running.stop()


async def _key(gateway: RunningGateway, **body: Any) -> str:
    async with gateway.client() as client:
        reply = await client.post("/key/generate", json=body)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["key"])


def _anthropic_reply(request: ReceivedRequest) -> Reply:
    if request.json.get("stream"):
        frames = [
            message_start(),
            *text_block(0, "Hel", "lo"),
            *message_end("end_turn", output_tokens=6),
        ]
        return StreamReply(frames)
    return JSONReply(message([{"type": "text", "text": "Hello"}]))


async def test_anthropic_sdk_with_a_virtual_key(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = _anthropic_reply
    key = await _key(gateway, models=["claude"])
    client = anthropic.AsyncAnthropic(
        base_url=f"{gateway.url}/anthropic", api_key=key, max_retries=0
    )
    reply = await client.messages.create(
        model=CLAUDE, max_tokens=100, messages=CLAUDE_MESSAGES,
        extra_headers={"anthropic-beta": "context-management-2025-06-27"},
    )  # fmt: skip
    first_block = reply.content[0]
    assert first_block.type == "text" and first_block.text == "Hello"
    async with client.messages.stream(
        model=CLAUDE, max_tokens=100, messages=CLAUDE_MESSAGES
    ) as stream:
        assert "".join([piece async for piece in stream.text_stream]) == "Hello"
    whole, streamed = upstream.requests
    assert whole.target == streamed.target == "/v1/messages" and streamed.json["stream"]
    assert whole.headers["x-api-key"] == UPSTREAM_KEY and key not in str(whole.headers)
    assert whole.headers["anthropic-beta"] == "context-management-2025-06-27"
    assert whole.json == {"model": CLAUDE, "max_tokens": 100, "messages": MESSAGES}
    first, second = await gateway.records.wait_for(2)
    assert (first.prompt_tokens, first.completion_tokens, first.usage_source) == (12, 6, "upstream")
    assert first.model == f"anthropic/{CLAUDE}" and first.model_group == "claude"
    assert first.cost == pytest.approx(12 * 3e-6 + 6 * 15e-6)
    assert first.key_hash is not None and first.metadata == {
        "pass_through_route": "/anthropic/v1/messages"
    }
    assert second.stream and (second.prompt_tokens, second.completion_tokens) == (12, 6)


async def test_a_keys_models_bind_the_model_in_the_body(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    key = await _key(gateway, models=["gpt"])
    client = anthropic.AsyncAnthropic(
        base_url=f"{gateway.url}/anthropic", api_key=key, max_retries=0
    )
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        await client.messages.create(model=CLAUDE, max_tokens=10, messages=CLAUDE_MESSAGES)
    # In Anthropic's envelope, which its SDK reads.
    assert isinstance(refused.value.body, dict) and refused.value.body["type"] == "error"
    assert upstream.requests == []


async def test_a_budget_binds_pass_through_calls(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = _anthropic_reply
    key = await _key(gateway, max_budget=0.0)
    client = anthropic.AsyncAnthropic(
        base_url=f"{gateway.url}/anthropic", api_key=key, max_retries=0
    )
    with pytest.raises(anthropic.APIStatusError) as refused:
        await client.messages.create(model=CLAUDE, max_tokens=10, messages=CLAUDE_MESSAGES)
    assert "budget" in str(refused.value).lower()
    assert upstream.requests == []


async def test_no_key_no_call(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient() as client:
        reply = await client.post(f"{gateway.url}/anthropic/v1/messages", json={"model": CLAUDE})
    assert reply.status_code == 401 and upstream.requests == []


async def test_a_client_that_leaves_closes_the_upstream(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    tail = b'event: ping\ndata: {"type": "ping"}\n\n'
    upstream.handler = lambda request: StreamReply([message_start()], tail=tail)
    key = await _key(gateway)
    body = {"model": CLAUDE, "max_tokens": 10, "messages": MESSAGES, "stream": True}
    async with (
        httpx.AsyncClient() as client,
        client.stream(
            "POST", f"{gateway.url}/anthropic/v1/messages", json=body, headers={"x-api-key": key}
        ) as reply,
    ):
        async for _ in reply.aiter_bytes():
            break
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
    [record] = await gateway.records.wait_for(1)
    assert record.cancelled_by_client and record.prompt_tokens == 12


async def test_gemini_sdk(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.handler = lambda request: JSONReply(answer([{"text": "Hi"}], usage=USAGE))
    key = await _key(gateway, models=["gemini"])
    client = genai.Client(
        api_key=key, http_options=genai_types.HttpOptions(base_url=f"{gateway.url}/gemini")
    )
    # google-genai's async client runs on asyncio: its sync one, in a thread, under Trio.
    reply = await trio.to_thread.run_sync(
        lambda: client.models.generate_content(model=GEMINI, contents="Say hello")
    )
    assert reply.text == "Hi"
    [received] = upstream.requests
    # The SDK's own API version, as it chose it: the path goes on as it came.
    assert received.target.endswith(f"/models/{GEMINI}:generateContent")
    assert received.headers["x-goog-api-key"] == UPSTREAM_KEY and key not in str(received.headers)
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (10, 4)
    assert record.model == f"gemini/{GEMINI}" and record.cost > 0


async def test_gemini_key_in_the_query_is_not_sent_on(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(answer([{"text": "Hi"}], usage=USAGE))
    key = await _key(gateway)
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{gateway.url}/gemini/v1beta/models/{GEMINI}:generateContent?key={key}",
            json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        )
    assert reply.status_code == 200
    assert key not in upstream.requests[0].target


async def test_gemini_stream_is_billed_from_its_last_usage(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    partial = {"promptTokenCount": 10, "totalTokenCount": 10}
    upstream.handler = lambda request: sse(
        answer([{"text": "Hel"}], finish=None, usage=partial), answer([{"text": "lo"}], usage=USAGE)
    )
    key = await _key(gateway)
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{gateway.url}/gemini/v1beta/models/{GEMINI}:streamGenerateContent?alt=sse",
            json=body, headers={"x-goog-api-key": key},
        )  # fmt: skip
    assert reply.text.count("data: ") == 2  # the events as Gemini sent them
    assert upstream.requests[0].target.endswith(":streamGenerateContent?alt=sse")
    [record] = await gateway.records.wait_for(1)
    assert record.stream and (record.prompt_tokens, record.completion_tokens) == (10, 4)


async def test_gemini_embeddings_are_counted_as_gemini_reports_none(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply({"embeddings": [{"values": [0.1]}] * 2})
    key = await _key(gateway)
    model = "gemini-embedding-001"
    body = {"requests": [{"model": f"models/{model}", "content": {"parts": [{"text": text}]}}
                         for text in ("first text", "the second text")]}  # fmt: skip
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{gateway.url}/gemini/v1beta/models/{model}:batchEmbedContents",
            json=body, headers={"x-goog-api-key": key},
        )  # fmt: skip
    assert reply.status_code == 200
    counter = gateway.gateway.counter
    expected = counter.count_text(model, "first text") + counter.count_text(
        model, "the second text"
    )
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.usage_source) == (expected, "counted")


async def test_a_group_on_one_provider_allows_its_model_there_only(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(answer([{"text": "Hi"}], usage=USAGE))
    key = await _key(gateway, models=["vertex-gemini"])
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    async with httpx.AsyncClient() as client:
        gemini = await client.post(
            f"{gateway.url}/gemini/v1beta/models/{GEMINI}:generateContent",
            json=body, headers={"x-goog-api-key": key},
        )  # fmt: skip
        vertex = await client.post(
            f"{gateway.url}/vertex_ai/v1/projects/{PROJECT}/locations/us-east5/publishers/"
            f"google/models/{GEMINI}:generateContent",
            json=body, headers={"authorization": f"Bearer {key}"},
        )  # fmt: skip
    assert gemini.status_code == 403 and vertex.status_code == 200
    assert len(upstream.requests) == 1


async def test_anthropic_vertex_sdk(
    gateway: RunningGateway, upstream: FakeUpstream, tokens: TokenServer
) -> None:
    upstream.handler = lambda request: JSONReply(message([{"type": "text", "text": "Hello"}]))
    key = await _key(gateway)
    client = anthropic.AsyncAnthropicVertex(
        region="us-east5", project_id=PROJECT, access_token=key,
        base_url=f"{gateway.url}/vertex_ai/v1", max_retries=0,
    )  # fmt: skip
    reply = await client.messages.create(
        model=VERTEX_CLAUDE, max_tokens=50, messages=CLAUDE_MESSAGES
    )
    first_block = reply.content[0]
    assert first_block.type == "text" and first_block.text == "Hello"
    [received] = upstream.requests
    assert received.target == (
        f"/v1/projects/{PROJECT}/locations/us-east5/publishers/anthropic/models/"
        f"{VERTEX_CLAUDE}:rawPredict"
    )
    assert received.headers["authorization"] == "Bearer ya29.token-1"
    [record] = await gateway.records.wait_for(1)
    assert record.model == f"vertex_ai/{VERTEX_CLAUDE}" and record.model_group == "vertex-claude"
    # Claude on Vertex, priced at Vertex's price for it: not "unknown".
    assert record.cost == pytest.approx(12 * 3e-6 + 6 * 15e-6)


async def test_google_genai_in_vertex_mode(
    gateway: RunningGateway, upstream: FakeUpstream, tokens: TokenServer
) -> None:
    upstream.handler = lambda request: JSONReply(answer([{"text": "Hi"}], usage=USAGE))
    key = await _key(gateway)
    client = genai.Client(
        vertexai=True, project=PROJECT, location="us-east5",
        # google-auth's Credentials constructor has no annotations.
        credentials=google.oauth2.credentials.Credentials(token=key),  # type: ignore[no-untyped-call]
        http_options=genai_types.HttpOptions(base_url=f"{gateway.url}/vertex_ai"),
    )  # fmt: skip
    reply = await trio.to_thread.run_sync(
        lambda: client.models.generate_content(model=GEMINI, contents="Say hello")
    )
    assert reply.text == "Hi"
    [received] = upstream.requests
    assert received.target.endswith(f"/publishers/google/models/{GEMINI}:generateContent")
    assert received.headers["authorization"] == "Bearer ya29.token-1"
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (10, 4)


async def test_openai_sdk(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    upstream.handler = lambda request: JSONReply(chat_completion("Hi", usage))
    key = await _key(gateway)
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/openai/v1", api_key=key, max_retries=0)
    reply = await client.chat.completions.create(model="gpt-4o", messages=CHAT_MESSAGES)
    assert reply.choices[0].message.content == "Hi"
    [received] = upstream.requests
    assert received.target == "/v1/chat/completions"
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (7, 2)
    assert record.cost == pytest.approx(7 * 2.5e-6 + 2 * 1e-5)


async def test_a_call_whose_usage_is_unknown_costs_its_reservation(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    # An answer with no usage in it: billed its prompt and its `max_tokens` at gpt-4o's
    # price, what admission reserved, never nothing.
    answer = {k: v for k, v in chat_completion("Hi").items() if k != "usage"}
    upstream.handler = lambda request: JSONReply(answer)
    # 1,000 output tokens at $10 a million reserve $0.01 and more: the key's $0.01 pays one.
    key = await _key(gateway, max_budget=0.01)
    url = f"{gateway.url}/openai/v1"
    async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0) as client:
        await client.chat.completions.create(
            model="gpt-4o", messages=CHAT_MESSAGES, max_tokens=1000
        )
        [record] = await gateway.records.wait_for(1)
        prompt = await UsageMeter(
            gateway.gateway.counter, "gpt-4o", {"model": "gpt-4o", "messages": MESSAGES}
        ).prompt_tokens()
        assert prompt > 0 and record.usage_source == "unknown"
        assert record.cost == pytest.approx(prompt * 2.5e-6 + 1000 * 1e-5)
        with pytest.raises(openai.BadRequestError, match=r"(?i)budget"):
            await client.chat.completions.create(
                model="gpt-4o", messages=CHAT_MESSAGES, max_tokens=1000
            )
    assert len(upstream.requests) == 1
    # A call the upstream refused cost nothing.
    upstream.handler = lambda request: JSONReply({"error": {"message": "no"}}, status=400)
    async with openai.AsyncOpenAI(base_url=url, api_key=MASTER_KEY, max_retries=0) as admin:
        with pytest.raises(openai.BadRequestError):
            await admin.chat.completions.create(
                model="gpt-4o", messages=CHAT_MESSAGES, max_tokens=10
            )
    *_, over_budget, refused = await gateway.records.wait_for(3)
    assert over_budget.cost == 0 and (refused.status, refused.cost) == (400, 0)
    assert refused.usage_source == "unknown"
    # Token counting, which Anthropic does not charge for, costs nothing either.
    upstream.handler = lambda request: JSONReply({"input_tokens": 12})
    async with anthropic.AsyncAnthropic(
        base_url=f"{gateway.url}/anthropic", api_key=await _key(gateway), max_retries=0
    ) as counter:
        counted = await counter.messages.count_tokens(model=CLAUDE, messages=CLAUDE_MESSAGES)
    assert counted.input_tokens == 12
    *_, free = await gateway.records.wait_for(4)
    assert (free.status, free.usage_source, free.cost) == (200, "unknown", 0)


async def test_an_openai_stream_is_asked_for_its_usage(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    def reply(request: ReceivedRequest) -> Reply:
        asked = (request.json.get("stream_options") or {}).get("include_usage")
        extra = {"usage": None} if asked else {}
        frames = [chunk("Hel", **extra), chunk("lo", **extra), chunk(finish="stop", **extra)]
        # The usage-only chunk, as OpenAI sends it: split across two reads.
        counted = usage_chunk(40, 2) if asked else b""
        return StreamReply([*frames, counted[:30], counted[30:], DONE])

    upstream.handler = reply
    key = await _key(gateway, max_budget=1.0)
    url = f"{gateway.url}/openai/v1"
    async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=CHAT_MESSAGES, stream=True,
        )  # fmt: skip
        async with stream:
            # The client that did not ask for usage gets no usage-only chunk (no choices).
            text = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert text == "Hello"
        asking = await client.chat.completions.create(
            model="gpt-4o", messages=CHAT_MESSAGES, stream=True,
            # `continuous_usage_stats` is vLLM's, not in OpenAI's type: it must pass through.
            stream_options=cast(ChatCompletionStreamOptionsParam,
                                {"include_usage": True, "continuous_usage_stats": False}),
        )  # fmt: skip
        async with asking:
            chunks = [piece async for piece in asking]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 40
    first, second = upstream.requests
    assert first.json["stream_options"] == {"include_usage": True}
    assert second.json["stream_options"] == {"include_usage": True, "continuous_usage_stats": False}
    assert first.json["messages"] == MESSAGES
    records = await gateway.records.wait_for(2)
    for record in records:
        assert (record.prompt_tokens, record.completion_tokens) == (40, 2)
        assert record.usage_source == "upstream"
        assert record.cost == pytest.approx(40 * 2.5e-6 + 2 * 1e-5)


async def test_only_an_admin_reaches_a_providers_account(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply({"object": "list", "data": []})
    key = await _key(gateway)
    async with gateway.client() as master:
        made = await master.post("/user/new", json={"user_id": "ada", "user_role": "proxy_admin"})
        assert made.status_code == 200, made.text
    admins_key = await _key(gateway, user_id="ada")
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        for method, path in [("GET", "/openai/v1/files"), ("GET", "/openai/v1/files/f/content"),
                             ("POST", "/openai/v1/fine_tuning/jobs"),
                             ("POST", "/anthropic/v1/messages/batches"),
                             ("GET", "/openai/v1/chat/completions"),
                             ("POST", "/openai/v1/threads/t/messages"),
                             ("GET", f"/vertex_ai/v1/projects/{PROJECT}/locations/us-east5/"
                                     "endpoints")]:  # fmt: skip
            body = {"model": "gpt-4o"} if method == "POST" else None
            refused = await client.request(
                method, path, json=body, headers={"authorization": f"Bearer {key}"}
            )
            assert refused.status_code == 403, (path, refused.text)
            assert "does not call a model" in refused.text
        assert upstream.requests == []
        for admin in (MASTER_KEY, admins_key):
            listed = await client.get(
                "/openai/v1/files", headers={"authorization": f"Bearer {admin}"}
            )
            assert listed.status_code == 200
    assert [request.target for request in upstream.requests] == ["/v1/files"] * 2
    records = await gateway.records.wait_for(9)
    # Not a model call: its usage unknown, and no model to price it by.
    assert records[-1].usage_source == "unknown" and records[-1].cost == 0


async def test_the_path_names_the_model(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.handler = lambda request: JSONReply(answer([{"text": "Hi"}], usage=USAGE))
    key = await _key(gateway)
    url = f"{gateway.url}/gemini/v1beta/models/gemini-2.5-pro:generateContent"
    contents = [{"role": "user", "parts": [{"text": "hi"}]}]
    async with httpx.AsyncClient(headers={"x-goog-api-key": key}) as client:
        mismatched = await client.post(url, json={"model": GEMINI, "contents": contents})
        same = await client.post(url, json={"model": "models/gemini-2.5-pro", "contents": contents})
    assert mismatched.status_code == 400
    # Google's envelope, which google-genai reads, the gateway's code its ErrorInfo reason.
    error = mismatched.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["details"][0]["reason"] == "model_mismatch"
    assert same.status_code == 200 and len(upstream.requests) == 1
    records = await gateway.records.wait_for(2)
    assert records[-1].model == "gemini/gemini-2.5-pro"
    # A key allowed the body's model is not thereby allowed the path's.
    flash_only = await _key(gateway, models=["gemini"])
    async with httpx.AsyncClient() as client:
        refused = await client.post(
            url, json={"contents": contents}, headers={"x-goog-api-key": flash_only}
        )
    assert refused.status_code == 403 and len(upstream.requests) == 1


async def test_an_encoded_route_prefix_is_refused(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply({"results": [], "usage": {"total_tokens": 1}})
    key = await _key(gateway)
    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"authorization": f"Bearer {key}"}
    ) as client:
        for path in ("/%63ustom/rerank", "/custom/reran%6b", "/%6fpenai/v1/chat/completions"):
            refused = await client.post(path, json={"model": "gpt-4o"})
            assert refused.status_code == 400, (path, refused.text)
            assert refused.json()["error"]["code"] == "encoded_route_prefix"
        assert upstream.requests == []
        passed = await client.post("/custom/rerank", json={"query": "q"})
    assert passed.status_code == 200
    assert [request.target for request in upstream.requests] == ["/v1/rerank"]


async def test_an_open_custom_endpoint_is_named_at_start(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    tokens: TokenServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    open_one = {"path": "/open/rerank", "target": f"http://127.0.0.1:{upstream.port}/v1/rerank"}
    configured = config(upstream, tokens)
    configured["general_settings"]["pass_through_endpoints"].append(open_one)
    with caplog.at_level(logging.WARNING, logger="trigate"):
        running = await start_gateway(nursery, configured)
        await running.stop()
    [warning] = [r for r in caplog.records if "pass_through_endpoints" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "/open/rerank" in warning.getMessage()
    assert "/custom/rerank" not in warning.getMessage()


def _signed(reply: Callable[[], Reply]) -> Callable[[ReceivedRequest], Reply]:
    """Bedrock: a request not signed with the deployment's AWS keys is AWS's 403."""

    def handle(request: ReceivedRequest) -> Reply:
        problem = signature_problem(request)
        return JSONReply({"message": problem}, status=403) if problem else reply()

    return handle


def _boto3(gateway: RunningGateway, key: str) -> Any:
    """boto3 signs with whatever AWS keys it has (none of the gateway's), and sends the
    virtual key in LiteLLM's header (botocore sends a bearer token only over HTTPS)."""
    client = boto3.client(
        "bedrock-runtime", region_name=REGION, endpoint_url=f"{gateway.url}/bedrock",
        aws_access_key_id="unused", aws_secret_access_key="unused",
    )  # fmt: skip

    def add_key(request: Any, **_: Any) -> None:
        request.headers["x-litellm-api-key"] = key

    client.meta.events.register("before-send.bedrock-runtime.*", add_key)
    return client


async def test_boto3_against_bedrock(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.handler = _signed(lambda: JSONReply(converse_response([{"text": "Hi"}])))
    key = await _key(gateway)

    def converse() -> Any:
        return _boto3(gateway, key).converse(
            modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": "Say hello"}]}]
        )

    reply = await trio.to_thread.run_sync(converse)
    assert reply["output"]["message"]["content"][0]["text"] == "Hi"
    [received] = upstream.requests
    assert received.headers["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/"
    )
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (12, 3)
    assert record.model == f"bedrock/{MODEL_ID}" and record.cost > 0


async def test_boto3_converse_stream_is_billed_from_its_metadata_frame(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    events = [*text_events("Hel", "lo"), metadata(inputTokens=9, outputTokens=2)]
    upstream.handler = _signed(lambda: event_stream(events))
    key = await _key(gateway)

    def converse_stream() -> str:
        client = _boto3(gateway, key)
        reply = client.converse_stream(
            modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": "Say hello"}]}]
        )
        return "".join(
            event["contentBlockDelta"]["delta"]["text"]
            for event in reply["stream"]
            if "contentBlockDelta" in event
        )

    assert await trio.to_thread.run_sync(converse_stream) == "Hello"
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.usage_source) == (
        9,
        2,
        "upstream",
    )


async def test_cohere_sdk(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.handler = lambda request: JSONReply(chat("Hello!"))
    key = await _key(gateway)
    async with httpx.AsyncClient() as http:
        client = cohere.AsyncClientV2(
            api_key=key, base_url=f"{gateway.url}/cohere", httpx_client=http
        )
        reply = await client.chat(
            model="command-a-03-2025", messages=[cohere.UserChatMessageV2(content="hi")]
        )
    assert reply.message.content is not None
    first_item = reply.message.content[0]
    assert first_item.type == "text" and first_item.text == "Hello!"
    [received] = upstream.requests
    assert (
        received.target == "/v2/chat"
        and received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    )
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (11, 5)


async def test_a_custom_pass_through_endpoint(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(
        {"id": "r", "results": [{"index": 0, "relevance_score": 0.5}], "usage": {"total_tokens": 9}}
    )
    key = await _key(gateway)
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{gateway.url}/custom/rerank", json={"model": "bge", "query": "q", "documents": ["d"]},
            headers={"authorization": f"Bearer {key}"},
        )  # fmt: skip
        refused = await client.post(f"{gateway.url}/custom/rerank", json={})
    assert reply.status_code == 200 and refused.status_code == 401
    [received] = upstream.requests
    assert received.target == "/v1/rerank"
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    [record] = await gateway.records.wait_for(1)
    assert record.metadata == {"pass_through_route": "/custom/rerank"}


async def test_no_call_bypasses_a_configured_hook(
    nursery: trio.Nursery, upstream: FakeUpstream, tokens: TokenServer
) -> None:
    """A hook reads the provider APIs the gateway knows (test_passthrough_guardrails.py);
    any other call is refused while the hook applies, in the route's own envelope."""
    guarded = {
        **config(upstream, tokens),
        "litellm_settings": {"callbacks": ["hook_examples.litellm_redact"]},
    }
    running = await start_gateway(nursery, guarded)
    try:
        async with running.client() as client:
            reply = await client.get("/anthropic/v1/models")
    finally:
        await running.stop()
    assert reply.status_code == 403
    # Anthropic's envelope, on Anthropic's route.
    assert reply.json()["type"] == "error" and reply.json()["error"]["type"] == "permission_error"
    assert "no call may bypass them" in reply.text.lower()
    assert "a GET request is not a model call" in reply.text
    assert upstream.requests == []


async def test_a_call_in_flight_reserves_its_most_expensive_outcome(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    tail = b'event: ping\ndata: {"type": "ping"}\n\n'
    upstream.handler = lambda request: StreamReply([message_start()], tail=tail)
    key = await _key(gateway, max_budget=0.01)
    # 10,000 output tokens at Claude Sonnet 4.5's $15 a million may cost $0.15: the first
    # call reserves all of the key's $0.01 while it streams, so the second is refused.
    body = {"model": CLAUDE, "max_tokens": 10_000, "messages": MESSAGES, "stream": True}
    headers = {"x-api-key": key}
    async with httpx.AsyncClient() as client:
        url = f"{gateway.url}/anthropic/v1/messages"
        async with client.stream("POST", url, json=body, headers=headers) as first:
            assert first.status_code == 200
            second = await client.post(url, json=body, headers=headers)
    assert second.status_code == 400 and "budget" in second.text.lower()
    assert len(upstream.requests) == 1

"""`vertex_ai/`: the OpenAI and Anthropic SDKs against the gateway, a fake Vertex AI behind it
(Gemini's and Anthropic's wire shapes at Vertex's paths) and a fake Google token server
that the deployment's service account signs its JWT grant for."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import anthropic
import pytest
import trio
from anthropic.types import MessageParam
from fake_anthropic import message, message_end, message_start, text_block
from fake_gemini import answer, sse
from fake_vertex import PROJECT, TokenServer, service_account
from fakes import FakeUpstream, JSONReply, ReceivedRequest, Reply, StreamReply
from helpers import MASTER_KEY, MESSAGES, RunningGateway, sdk, start_gateway
from openai.types.chat import ChatCompletionMessageParam

from trigate.config import LiteLLMParams
from trigate.errors import UpstreamError
from trigate.providers.vertex import VertexLocation

# MESSAGES as the OpenAI SDK types a chat's messages (helpers.py leaves it a list of dicts).
CHAT = cast("list[ChatCompletionMessageParam]", MESSAGES)
# And as Anthropic's SDK types them.
ASK = cast("list[MessageParam]", MESSAGES)

GEMINI = "gemini-2.5-flash"
CLAUDE = "claude-sonnet-4-5@20250929"
PREFIX = f"/v1/projects/{PROJECT}/locations/us-east5/publishers"


def vertex_config(upstream: FakeUpstream, credentials: Any) -> dict[str, Any]:
    common = {
        "api_base": f"http://127.0.0.1:{upstream.port}",
        "vertex_location": "us-east5",
        "vertex_credentials": credentials,
    }
    return {
        "model_list": [
            {"model_name": "gemini", "litellm_params": {"model": f"vertex_ai/{GEMINI}", **common}},
            {"model_name": "claude", "litellm_params": {"model": f"vertex_ai/{CLAUDE}", **common}},
            {
                "model_name": "embedder",
                "litellm_params": {"model": "vertex_ai/text-embedding-005", **common},
            },
        ],
        "router_settings": {"num_retries": 0},
    }


@pytest.fixture
async def gateway(
    nursery: trio.Nursery, upstream: FakeUpstream, tokens: TokenServer
) -> AsyncIterator[RunningGateway]:
    # The JSON itself, as `os.environ/VERTEX_CREDENTIALS` would give it.
    credentials = json.dumps(service_account(tokens.upstream))
    running = await start_gateway(nursery, vertex_config(upstream, credentials))
    yield running
    await running.stop()


USAGE = {"promptTokenCount": 10, "candidatesTokenCount": 4, "totalTokenCount": 14}


async def test_gemini_over_generate_content_with_a_service_account(
    gateway: RunningGateway, upstream: FakeUpstream, tokens: TokenServer
) -> None:
    upstream.handler = lambda request: JSONReply(answer([{"text": "Hi"}], usage=USAGE))
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(model="gemini", messages=CHAT)
    assert completion.choices[0].message.content == "Hi"
    [received] = upstream.requests
    assert received.target == f"{PREFIX}/google/models/{GEMINI}:generateContent"
    assert received.headers["authorization"] == "Bearer ya29.token-1"
    # Gemini's own translation, as gemini/ sends it.
    assert received.json == {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}
    assert MASTER_KEY not in str(received.headers)
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (10, 4)
    assert record.model == f"vertex_ai/{GEMINI}"
    # Vertex's list price for gemini-2.5-flash: $0.30 in, $2.50 out per million tokens.
    assert record.cost == pytest.approx(10 * 0.3e-6 + 4 * 2.5e-6)


async def test_gemini_stream(
    gateway: RunningGateway, upstream: FakeUpstream, tokens: TokenServer
) -> None:
    upstream.handler = lambda request: sse(
        answer([{"text": "Hel"}], finish=None), answer([{"text": "lo"}], usage=USAGE)
    )
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(model="gemini", messages=CHAT, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello"
    [received] = upstream.requests
    assert received.target == f"{PREFIX}/google/models/{GEMINI}:streamGenerateContent?alt=sse"
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.status) == (10, 4, 200)


async def test_concurrent_requests_share_one_token_refresh(
    gateway: RunningGateway, upstream: FakeUpstream, tokens: TokenServer
) -> None:
    upstream.handler = lambda request: JSONReply(answer([{"text": "Hi"}], usage=USAGE))
    async with sdk(gateway) as client, trio.open_nursery() as requests:
        for _ in range(8):
            requests.start_soon(
                lambda: client.chat.completions.create(model="gemini", messages=CHAT)
            )
    assert len(upstream.requests) == 8
    assert tokens.issued == 1
    assert {r.headers["authorization"] for r in upstream.requests} == {"Bearer ya29.token-1"}


async def test_a_token_near_its_expiry_is_refreshed_before_use(
    gateway: RunningGateway, upstream: FakeUpstream, tokens: TokenServer
) -> None:
    # google-auth counts a token within minutes of its expiry as stale: each request finds
    # the minute-long token stale and refreshes it first, never sending an expiring one.
    tokens.expires_in = 60
    upstream.handler = lambda request: JSONReply(answer([{"text": "Hi"}], usage=USAGE))
    async with sdk(gateway) as client:
        for _ in range(2):
            await client.chat.completions.create(model="gemini", messages=CHAT)
    assert tokens.issued == 2
    assert [r.headers["authorization"] for r in upstream.requests] == [
        "Bearer ya29.token-1",
        "Bearer ya29.token-2",
    ]


async def test_a_refused_service_account_is_an_authentication_error(
    gateway: RunningGateway, upstream: FakeUpstream, tokens: TokenServer
) -> None:
    tokens.refuse = True
    async with sdk(gateway) as client:
        with pytest.raises(Exception) as failure:
            await client.chat.completions.create(model="gemini", messages=CHAT)
    assert "Vertex AI credentials could not be refreshed" in str(failure.value)
    assert "PRIVATE KEY" not in str(failure.value)
    assert upstream.requests == []
    [record] = await gateway.records.wait_for(1)
    assert record.status >= 400 and record.error and "PRIVATE KEY" not in record.error


def _claude_reply(request: ReceivedRequest) -> Reply:
    if request.target.endswith(":streamRawPredict"):
        return StreamReply(
            [
                message_start(),
                *text_block(0, "Hel", "lo"),
                *message_end("end_turn", output_tokens=6),
            ]
        )
    return JSONReply(message([{"type": "text", "text": "Hello"}]))


async def test_claude_over_raw_predict_with_the_clients_messages_body(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = _claude_reply
    client = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=MASTER_KEY, max_retries=0)
    answer_ = await client.messages.create(
        model="claude",
        max_tokens=100,
        messages=ASK,
        extra_headers={"anthropic-beta": "context-management-2025-06-27"},
    )
    block = answer_.content[0]
    assert block.type == "text" and block.text == "Hello"
    async with client.messages.stream(model="claude", max_tokens=100, messages=ASK) as stream:
        text = "".join([piece async for piece in stream.text_stream])
    assert text == "Hello"
    whole, streamed = upstream.requests
    assert whole.target == f"{PREFIX}/anthropic/models/{CLAUDE}:rawPredict"
    assert streamed.target == f"{PREFIX}/anthropic/models/{CLAUDE}:streamRawPredict"
    # The model is in the URL, the API version in the body; the client's beta goes on.
    assert whole.json == {
        "max_tokens": 100,
        "messages": MESSAGES,
        "anthropic_version": "vertex-2023-10-16",
    }
    assert whole.headers["anthropic-beta"] == "context-management-2025-06-27"
    assert "anthropic-version" not in whole.headers and "x-api-key" not in whole.headers
    assert whole.headers["authorization"].startswith("Bearer ya29.")
    assert streamed.json["stream"] is True and "model" not in streamed.json
    first, second = await gateway.records.wait_for(2)
    assert (first.prompt_tokens, first.completion_tokens) == (12, 6)
    # Vertex's own price for Claude Sonnet 4.5: $3 in, $15 out per million tokens.
    assert first.cost == pytest.approx(12 * 3e-6 + 6 * 15e-6)
    assert second.stream and second.completion_tokens == 6


async def test_openai_chat_to_claude_on_vertex(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = _claude_reply
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(model="claude", messages=CHAT)
    assert completion.choices[0].message.content == "Hello"
    [received] = upstream.requests
    assert received.target.endswith(":rawPredict")
    assert received.json["anthropic_version"] == "vertex-2023-10-16"
    assert "model" not in received.json and received.json["max_tokens"] == 4096


async def test_embeddings_over_predict(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    def predictions(request: ReceivedRequest) -> Reply:
        return JSONReply(
            {
                "predictions": [
                    {"embeddings": {"values": [0.1, 0.2], "statistics": {"token_count": 3}}},
                    {"embeddings": {"values": [0.3, 0.4], "statistics": {"token_count": 5}}},
                ]
            }
        )

    upstream.handler = predictions
    async with sdk(gateway) as client:
        result = await client.embeddings.create(
            model="embedder",
            input=["first one", "second one"],
            dimensions=2,
            extra_body={"task_type": "RETRIEVAL_QUERY"},
        )
    assert [item.embedding for item in result.data] == [[0.1, 0.2], [0.3, 0.4]]
    [received] = upstream.requests
    assert received.target == f"{PREFIX}/google/models/text-embedding-005:predict"
    assert received.json == {
        "instances": [
            {"content": "first one", "task_type": "RETRIEVAL_QUERY"},
            {"content": "second one", "task_type": "RETRIEVAL_QUERY"},
        ],
        "parameters": {"outputDimensionality": 2},
    }
    [record] = await gateway.records.wait_for(1)
    assert record.prompt_tokens == 8  # Vertex's own counts
    assert record.cost == pytest.approx(8 * 1e-7)


async def test_credentials_from_a_file(
    nursery: trio.Nursery, upstream: FakeUpstream, tokens: TokenServer, tmp_path: Path
) -> None:
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps(service_account(tokens.upstream)))
    running = await start_gateway(nursery, vertex_config(upstream, str(path)))
    upstream.handler = lambda request: JSONReply(answer([{"text": "Hi"}], usage=USAGE))
    try:
        async with sdk(running) as client:
            await client.chat.completions.create(model="gemini", messages=CHAT)
    finally:
        await running.stop()
    assert tokens.issued == 1
    assert upstream.requests[0].headers["authorization"] == "Bearer ya29.token-1"


async def test_locations_and_projects() -> None:
    def where(**params: Any) -> VertexLocation:
        return VertexLocation(LiteLLMParams(model=f"vertex_ai/{GEMINI}", **params))

    regional = where(vertex_project="p", vertex_location="europe-west4")
    assert regional.model_url("google", GEMINI) == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/p/locations/europe-west4"
        f"/publishers/google/models/{GEMINI}"
    )
    assert where(vertex_project="p", vertex_location="global").model_url("google", GEMINI) == (
        "https://aiplatform.googleapis.com/v1/projects/p/locations/global"
        f"/publishers/google/models/{GEMINI}"
    )
    inline = json.dumps({"type": "service_account", "project_id": "from-key"})
    assert where(vertex_credentials=inline).project == "from-key"
    # A deployment that cannot be served refuses its requests with the reason, unsent.
    for settings, reason in (
        ({"vertex_project": "p", "vertex_credentials": "{not json"}, "not valid JSON"),
        ({"vertex_project": "p", "vertex_credentials": "/nonexistent/key.json"}, "cannot be read"),
        ({"vertex_credentials": '{"type": "external_account"}'}, "service account"),
    ):
        with pytest.raises(UpstreamError, match=reason) as refused:
            await where(**settings).token.headers()
        assert refused.value.status == 502


async def test_a_deployment_without_a_project_starts_and_answers_502(
    nursery: trio.Nursery, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("VERTEXAI_PROJECT", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    entry = {"model": f"vertex_ai/{GEMINI}", "api_base": f"http://127.0.0.1:{upstream.port}"}
    config = {"model_list": [{"model_name": "gemini", "litellm_params": entry}]}
    running = await start_gateway(nursery, config)
    try:
        async with running.client() as client:
            reply = await client.post(
                "/v1/chat/completions", json={"model": "gemini", "messages": MESSAGES}
            )
    finally:
        await running.stop()
    assert reply.status_code == 502 and "vertex_project is required" in reply.text
    assert upstream.requests == []

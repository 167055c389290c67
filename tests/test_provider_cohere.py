"""`cohere/` (chat v2, embed, rerank) and `/v1/rerank` (also `hosted_vllm/`, `jina_ai/` and
`voyage/`): the OpenAI and Cohere SDKs against the gateway, fakes of each upstream
behind it (fake_cohere.py checks Cohere's answers against its SDK's types)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import cohere
import httpx
import pytest
import trio
from fake_cohere import USAGE, chat, embeddings, reranked, text_stream, tool_stream
from fakes import FakeUpstream, JSONReply
from helpers import (
    MASTER_KEY,
    MESSAGES,
    UPSTREAM_KEY,
    WEATHER_TOOL,
    RunningGateway,
    sdk,
    start_gateway,
)
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
)

# MESSAGES as the OpenAI SDK types a chat's messages (helpers.py leaves it a list of dicts).
CHAT = cast("list[ChatCompletionMessageParam]", MESSAGES)
# WEATHER_TOOL as the OpenAI SDK types a function tool.
TOOL = cast("ChatCompletionFunctionToolParam", WEATHER_TOOL)

DOCUMENTS = ["Carson City is the capital of Nevada.", "Washington, D.C. is the US capital."]


def config(upstream: FakeUpstream) -> dict[str, Any]:
    base = f"http://127.0.0.1:{upstream.port}"

    def entry(name: str, model: str, api_base: str = base) -> dict[str, Any]:
        params = {"model": model, "api_base": api_base, "api_key": UPSTREAM_KEY}
        return {"model_name": name, "litellm_params": params}

    return {
        "model_list": [
            entry("command", "cohere/command-a-03-2025"),
            entry("embed", "cohere/embed-english-v3.0"),
            entry("rerank", "cohere/rerank-v3.5"),
            entry("vllm-rerank", "hosted_vllm/BAAI/bge-reranker-v2-m3", f"{base}/v1"),
            entry("voyage-rerank", "voyage/rerank-2", f"{base}/v1"),
            entry("gpt", "openai/gpt-4o", f"{base}/v1"),
        ],
        "router_settings": {"num_retries": 0},
    }


@pytest.fixture
async def gateway(nursery: trio.Nursery, upstream: FakeUpstream) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(nursery, config(upstream))
    yield running
    await running.stop()


async def test_chat_v2(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.handler = lambda request: JSONReply(chat("Hello!"))
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(
            model="command",
            messages=[{"role": "developer", "content": "Be brief."}, *CHAT],
            top_p=0.5,
            stop="END",
            max_tokens=20,
            tools=[TOOL],
            tool_choice="required",
        )
    assert completion.choices[0].message.content == "Hello!"
    assert completion.choices[0].finish_reason == "stop"
    [received] = upstream.requests
    assert received.target == "/v2/chat"
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert received.json == {
        "model": "command-a-03-2025",
        "messages": [{"role": "system", "content": "Be brief."}, *MESSAGES],
        "max_tokens": 20,
        "tools": [WEATHER_TOOL],
        "p": 0.5,
        "stop_sequences": ["END"],
        "tool_choice": "REQUIRED",
    }
    # What Cohere bills (`billed_units`), not the tokens it counted with its template.
    assert completion.usage is not None and completion.usage.prompt_tokens == 11
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (11, 5)
    assert record.cost == pytest.approx(11 * 2.5e-6 + 5 * 1e-5)


async def test_chat_response_format_is_coheres_json_object(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    """OpenAI's JSON modes as Cohere's one `json_object`, holding the schema if any."""
    upstream.handler = lambda request: JSONReply(chat('{"city": "Paris"}'))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    formats: list[Any] = [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
        {"type": "text"},
    ]
    async with sdk(gateway) as client:
        for response_format in formats:
            await client.chat.completions.create(
                model="command", messages=CHAT, response_format=response_format
            )
    assert [received.json.get("response_format") for received in upstream.requests] == [
        {"type": "json_object"},
        {"type": "json_object", "json_schema": schema},
        None,
    ]


async def test_chat_tool_call_and_its_result(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    call: ChatCompletionMessageFunctionToolCallParam = {
        "id": "get_weather_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    upstream.handler = lambda request: JSONReply(chat("", tool_calls=[call]))
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(
            model="command",
            messages=[
                *CHAT,
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "get_weather_1", "content": "Sunny"},
            ],
        )
    assert completion.choices[0].finish_reason == "tool_calls"
    tool_calls = completion.choices[0].message.tool_calls
    assert tool_calls is not None
    first = tool_calls[0]
    assert first.type == "function" and first.function.name == "get_weather"
    messages = upstream.requests[0].json["messages"]
    assert messages[1] == {"role": "assistant", "tool_calls": [call]}
    assert messages[2] == {"role": "tool", "tool_call_id": "get_weather_1", "content": "Sunny"}


async def test_chat_stream(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.handler = lambda request: text_stream("Hel", "lo")
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(
            model="command", messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert upstream.requests[0].json["stream"] is True
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.status) == (11, 5, 200)


async def test_streamed_tool_call(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.handler = lambda request: tool_stream()
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(model="command", messages=CHAT, stream=True)
        chunks = [chunk async for chunk in stream]
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    functions = [c.function for c in calls if c.function is not None]
    assert len(functions) == len(calls), "every tool call delta carries its function"
    assert calls[0].id == "get_weather_1byjy32y4hvq" and functions[0].name == "get_weather"
    assert "".join(f.arguments or "" for f in functions) == '{"city": "Paris"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


async def test_embed_with_input_and_embedding_types(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(embeddings([[0.1, 0.2], [0.3, 0.4]], 6))
    async with sdk(gateway) as client:
        result = await client.embeddings.create(
            model="embed",
            input=["first", "second"],
            encoding_format="float",
            extra_body={"input_type": "search_query"},
        )
    assert [item.embedding for item in result.data] == [[0.1, 0.2], [0.3, 0.4]]
    [received] = upstream.requests
    assert received.target == "/v2/embed"
    assert received.json == {
        "model": "embed-english-v3.0",
        "texts": ["first", "second"],
        "input_type": "search_query",
        "embedding_types": ["float"],
    }
    [record] = await gateway.records.wait_for(1)
    assert record.prompt_tokens == 6 and record.cost == pytest.approx(6 * 1e-7)


async def test_rerank_with_the_cohere_sdk_against_v2_rerank(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(reranked([(1, 0.98), (0, 0.12)]))
    async with httpx.AsyncClient() as http:
        client = cohere.AsyncClientV2(api_key=MASTER_KEY, base_url=gateway.url, httpx_client=http)
        result = await client.rerank(
            model="rerank", query="What is the capital of the United States?",
            documents=DOCUMENTS, top_n=2,
        )  # fmt: skip
    assert [(r.index, r.relevance_score) for r in result.results] == [(1, 0.98), (0, 0.12)]
    [received] = upstream.requests
    assert received.target == "/v2/rerank"
    assert received.json == {
        "model": "rerank-v3.5",
        "query": "What is the capital of the United States?",
        "documents": DOCUMENTS,
        "top_n": 2,
    }
    [record] = await gateway.records.wait_for(1)
    # Cohere's price for rerank-v3.5: $2 per thousand searches.
    assert record.cost == pytest.approx(0.002) and record.model == "cohere/rerank-v3.5"


async def test_v1_rerank_in_litellms_shape(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.handler = lambda request: JSONReply(reranked([(1, 0.98)], searches=1))
    body = {"model": "rerank", "query": "capital?", "documents": DOCUMENTS, "top_n": 1,
            "return_documents": True}  # fmt: skip
    async with gateway.client() as client:
        response = await client.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["results"] == [
        {"index": 1, "relevance_score": 0.98, "document": {"text": DOCUMENTS[1]}}
    ]
    assert answer["meta"]["billed_units"] == {"search_units": 1}
    # Cohere's v2 API takes no `return_documents`: the gateway adds them itself.
    assert "return_documents" not in upstream.requests[0].json


@pytest.mark.parametrize(
    "body",
    [
        {"model": "rerank", "documents": DOCUMENTS},
        {"model": "rerank", "query": "q", "documents": []},
        {"model": "rerank", "query": "q", "documents": DOCUMENTS, "top_n": 0},
    ],
)
async def test_invalid_rerank_requests_are_400s(
    gateway: RunningGateway, upstream: FakeUpstream, body: dict[str, Any]
) -> None:
    async with gateway.client() as client:
        response = await client.post("/v1/rerank", json=body)
    assert response.status_code == 400
    assert upstream.requests == []


async def test_a_model_that_does_not_rerank_is_a_400(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    async with gateway.client() as client:
        unknown = await client.post(
            "/v1/rerank", json={"model": "no-such-model", "query": "q", "documents": DOCUMENTS}
        )
        chat_only = await client.post(
            "/v1/rerank", json={"model": "gpt", "query": "q", "documents": DOCUMENTS}
        )
    assert unknown.status_code == 404
    assert chat_only.status_code == 400
    assert chat_only.json()["error"]["code"] == "unsupported_operation"
    assert upstream.requests == []


async def test_hosted_vllm_rerank(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    vllm = {
        "id": "rerank-8b3c", "model": "BAAI/bge-reranker-v2-m3", "usage": {"total_tokens": 42},
        "results": [{"index": 0, "document": {"text": DOCUMENTS[0]}, "relevance_score": 0.7}],
    }  # fmt: skip
    upstream.handler = lambda request: JSONReply(vllm)
    async with gateway.client() as client:
        response = await client.post(
            "/rerank", json={"model": "vllm-rerank", "query": "q", "documents": DOCUMENTS}
        )
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["document"] == {"text": DOCUMENTS[0]}
    assert upstream.requests[0].target == "/v1/rerank"
    [record] = await gateway.records.wait_for(1)
    assert record.prompt_tokens == 42


async def test_voyage_rerank(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    voyage = {
        "object": "list", "model": "rerank-2", "usage": {"total_tokens": 30},
        "data": [{"relevance_score": 0.9, "index": 1}, {"relevance_score": 0.2, "index": 0}],
    }  # fmt: skip
    upstream.handler = lambda request: JSONReply(voyage)
    body = {"model": "voyage-rerank", "query": "q", "documents": DOCUMENTS, "top_n": 2}
    async with gateway.client() as client:
        response = await client.post("/v1/rerank", json=body)
    assert [r["index"] for r in response.json()["results"]] == [1, 0]
    received = upstream.requests[0]
    assert received.target == "/v1/rerank"
    assert received.json == {"model": "rerank-2", "query": "q", "documents": DOCUMENTS, "top_k": 2}
    [record] = await gateway.records.wait_for(1)
    assert record.prompt_tokens == 30
    assert record.cost == pytest.approx(30 * 5e-8)


def test_usage_is_cohere_billed_units() -> None:
    from trigate.providers.cohere import openai_usage

    assert openai_usage(USAGE) == {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    counted = openai_usage({"tokens": {"input_tokens": 3, "output_tokens": 1}})
    assert counted is not None and counted["prompt_tokens"] == 3

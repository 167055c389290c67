"""Legacy completions and embeddings: the same auth, routing and spend as chat."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import trio
from fakes import DONE, FakeUpstream, JSONReply, ReceivedRequest, StreamReply
from helpers import RunningGateway, mock_config, sdk, start_gateway


@pytest.fixture
async def mock_gateway(nursery: trio.Nursery) -> RunningGateway:
    return await start_gateway(nursery, mock_config(mock_response="Once upon a time"))


async def test_text_completion(mock_gateway: RunningGateway) -> None:
    async with sdk(mock_gateway) as client:
        completion = await client.completions.create(model="mock", prompt="Tell me a story")
    counter = mock_gateway.gateway.counter
    assert completion.choices[0].text == "Once upon a time"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == counter.count_text("gpt-4o", "Tell me a story")
    assert completion.usage.completion_tokens == counter.count_text("gpt-4o", "Once upon a time")
    [record] = await mock_gateway.records.wait_for(1)
    assert record.prompt_tokens == completion.usage.prompt_tokens


async def test_text_completion_stream_with_usage(mock_gateway: RunningGateway) -> None:
    async with sdk(mock_gateway) as client:
        stream = await client.completions.create(
            model="mock", prompt="Go", stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "Once upon a time"
    usages = [c.usage for c in chunks if c.usage is not None]
    assert len(usages) == 1 and chunks[-1].usage is not None
    [record] = await mock_gateway.records.wait_for(1)
    assert record.stream and record.completion_tokens == usages[0].completion_tokens


async def test_embeddings(mock_gateway: RunningGateway) -> None:
    async with sdk(mock_gateway) as client:
        result = await client.embeddings.create(model="mock", input=["alpha", "beta", "alpha"])
    vectors = [item.embedding for item in result.data]
    assert len(vectors) == 3 and vectors[0] == vectors[2] != vectors[1]
    assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-3
    counter = mock_gateway.gateway.counter
    expected = counter.count_text("gpt-4o", "alpha") * 2 + counter.count_text("gpt-4o", "beta")
    assert result.usage.prompt_tokens == expected
    [record] = await mock_gateway.records.wait_for(1)
    assert record.prompt_tokens == expected and record.completion_tokens == 0


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": "mock"}, "prompt"),
        ("/v1/completions", {"model": "mock", "prompt": []}, "prompt"),
        ("/v1/completions", {"prompt": "x"}, "model"),
        ("/v1/embeddings", {"model": "mock"}, "input"),
        ("/v1/embeddings", {"model": "mock", "input": ""}, "input"),
        ("/v1/embeddings", {"model": "mock", "input": {"a": 1}}, "input"),
    ],
)
async def test_bad_requests(
    mock_gateway: RunningGateway, path: str, body: dict[str, Any], param: str
) -> None:
    async with mock_gateway.client() as client:
        response = await client.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_keys_and_limits_apply(mock_gateway: RunningGateway) -> None:
    async with mock_gateway.client() as admin:
        key = (await admin.post("/key/generate", json={"models": ["other"]})).json()["key"]
    async with sdk(mock_gateway, key) as client:
        with pytest.raises(openai.PermissionDeniedError):
            await client.embeddings.create(model="mock", input="x")
        with pytest.raises(openai.PermissionDeniedError):
            await client.completions.create(model="mock", prompt="x")
    async with sdk(mock_gateway, "sk-" + "n" * 40) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.embeddings.create(model="mock", input="x")


async def test_openai_upstream_serves_completions_and_embeddings(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    def answer(request: ReceivedRequest) -> JSONReply | StreamReply:
        if request.target.endswith("/embeddings"):
            usage = {"prompt_tokens": 3, "total_tokens": 3}
            return JSONReply(
                {"object": "list", "data": [{"embedding": [0.5, 0.5]}], "usage": usage}
            )
        if request.json.get("stream"):
            text = b'{"id":"c","object":"text_completion","choices":[{"text":"Hi","index":0}]}'
            frames: list[bytes | float | trio.Event] = [b"data: " + text + b"\n\n", DONE]
            return StreamReply(frames)
        return JSONReply(
            {
                "id": "c",
                "object": "text_completion",
                "choices": [{"text": "Hi", "index": 0, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
            }
        )

    upstream.handler = answer
    async with sdk(gateway) as client:
        embedded = await client.embeddings.create(model="gpt-test", input="hello")
        completion = await client.completions.create(model="gpt-test", prompt="Say hi")
        stream = await client.completions.create(
            model="gpt-test", prompt="Say hi", stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert embedded.data[0].embedding == [0.5, 0.5] and embedded.usage.prompt_tokens == 3
    assert completion.choices[0].text == "Hi" and completion.usage is not None
    targets = [request.target for request in upstream.requests]
    assert targets == ["/v1/embeddings", "/v1/completions", "/v1/completions"]
    assert all(request.json["model"] == "upstream-model" for request in upstream.requests)
    assert upstream.requests[2].json["stream_options"] == {"include_usage": True}
    # The upstream's stream reported no usage: the gateway counted it, and sent one chunk.
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 1
    records = await gateway.records.wait_for(3)
    assert [r.prompt_tokens for r in records[:2]] == [3, 2]

"""`azure/`: the OpenAI SDK against the gateway, a fake Azure OpenAI (fake_azure.py) behind it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import openai
import pytest
import trio
from fake_azure import (
    DEPLOYMENT,
    FILTERED_PROMPT,
    PROMPT_FILTER_CHUNK,
    azure_completion,
    azure_config,
)
from fakes import DONE, FakeUpstream, JSONReply, StreamReply, chunk, usage_chunk
from helpers import (
    MESSAGES,
    UPSTREAM_KEY,
    RunningGateway,
    sdk,
    start_gateway,
    streamed_chunks,
    streamed_events,
)
from openai.types.chat import ChatCompletionMessageParam

from trigate.config import ConfigError, parse_config
from trigate.errors import Failure
from trigate.providers.azure import DEFAULT_API_VERSION

# helpers.MESSAGES as the OpenAI SDK types it (helpers keeps plain dicts, for every SDK).
CHAT_MESSAGES = cast(list[ChatCompletionMessageParam], MESSAGES)


@pytest.fixture
async def gateway(nursery: trio.Nursery, upstream: FakeUpstream) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(nursery, azure_config(upstream))
    yield running
    await running.stop()


async def test_non_stream_path_query_header(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(azure_completion("Hello there"))
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(
            model="azure-test", messages=CHAT_MESSAGES, temperature=0.1
        )
    assert completion.choices[0].message.content == "Hello there"
    assert completion.usage is not None and completion.usage.prompt_tokens == 14
    [received] = upstream.requests
    assert received.target == (
        f"/openai/deployments/{DEPLOYMENT}/chat/completions?api-version={DEFAULT_API_VERSION}"
    )
    assert received.headers["api-key"] == UPSTREAM_KEY
    assert "authorization" not in received.headers
    assert received.json == {"model": DEPLOYMENT, "messages": MESSAGES, "temperature": 0.1}
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.usage_source) == (
        14,
        2,
        "upstream",
    )


async def test_api_version_and_entra_token_from_params(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    config = azure_config(
        upstream, api_key=None, api_version="2025-04-01-preview", azure_ad_token="entra-token-123"
    )
    running = await start_gateway(nursery, config)
    async with sdk(running) as client:
        await client.chat.completions.create(model="azure-test", messages=CHAT_MESSAGES)
    [received] = upstream.requests
    assert received.target.endswith("?api-version=2025-04-01-preview")
    assert received.headers["authorization"] == "Bearer entra-token-123"
    assert "api-key" not in received.headers
    await running.stop()


async def test_stream_starting_with_prompt_filter_results(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: StreamReply(
        [
            PROMPT_FILTER_CHUNK,
            chunk("Hel"),
            chunk("lo"),
            chunk(finish="stop"),
            usage_chunk(6, 2),
            DONE,
        ]
    )
    chunks = await streamed_chunks(gateway, "azure-test", stream_options={"include_usage": True})
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[0].choices == [] and chunks[0].model_extra["prompt_filter_results"]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 6
    assert [c for c in chunks if c.usage is not None] == [chunks[-1]]
    sent = upstream.requests[0].json
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.status) == (6, 2, 200)


async def test_filtered_answer_takes_the_content_policy_fallback(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    config = azure_config(upstream, router={"content_policy_fallbacks": [{"azure-test": ["mock"]}]})
    running = await start_gateway(nursery, config)
    upstream.handler = lambda request: JSONReply(azure_completion(None, finish="content_filter"))
    async with sdk(running) as client:
        completion = await client.chat.completions.create(
            model="azure-test", messages=CHAT_MESSAGES
        )
        upstream.handler = lambda request: StreamReply(
            [PROMPT_FILTER_CHUNK, chunk(finish="content_filter"), DONE]
        )
        stream = await client.chat.completions.create(
            model="azure-test", messages=CHAT_MESSAGES, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert (completion.choices[0].message.content or "").startswith("This is a mock response")
    assert text.startswith("This is a mock response")
    await running.stop()


async def test_filtered_answer_without_fallback_is_400(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(
        azure_completion("Partial", finish="content_filter")
    )
    async with sdk(gateway) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="azure-test", messages=CHAT_MESSAGES)
    assert caught.value.code == "content_policy_violation"


async def test_filter_mid_stream_ends_with_an_error_frame(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: StreamReply(
        [chunk("Once upon"), 0.05, chunk("a time"), chunk(finish="content_filter"), DONE]
    )
    events = await streamed_events(gateway, "azure-test")
    assert "Once upon" in events[0] and "a time" in events[1]
    assert "content_policy_violation" in events[-2] and events[-1] == "[DONE]"


async def test_a_missing_deployment_is_a_404(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    """Azure names the deployment in the path; the contract suite covers the other errors."""
    error = {"code": "DeploymentNotFound", "message": "The API deployment does not exist."}
    upstream.handler = lambda request: JSONReply({"error": error}, status=404)
    async with sdk(gateway) as client:
        for stream in (False, True):
            with pytest.raises(openai.NotFoundError) as caught:
                await client.chat.completions.create(
                    model="azure-test", messages=CHAT_MESSAGES, stream=stream
                )
            assert caught.value.status_code == 404
            assert error["message"] in caught.value.message


def test_api_base_is_required() -> None:
    """Caught when the config loads, naming the key, not when a worker starts."""
    raw = {"model_list": [{"model_name": "m", "litellm_params": {"model": "azure/x"}}]}
    with pytest.raises(ConfigError, match="litellm_params: api_base is required for `azure/`"):
        parse_config(raw, {})


def test_content_filter_classification_in_errors_module() -> None:
    from trigate.errors import from_upstream_status

    message = FILTERED_PROMPT["error"]["message"]
    assert isinstance(message, str)
    error = from_upstream_status(400, message, {}, "content_filter")
    assert error.kind is Failure.CONTENT_POLICY and error.code == "content_policy_violation"


async def test_embeddings_use_the_deployment_path(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    usage = {"prompt_tokens": 2, "total_tokens": 2}
    upstream.handler = lambda request: JSONReply(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
            "model": DEPLOYMENT,
            "usage": usage,
        }
    )
    async with sdk(gateway) as client:
        result = await client.embeddings.create(model="azure-test", input="hello")
    assert result.data[0].embedding == [0.1] and result.usage.prompt_tokens == 2
    [received] = upstream.requests
    assert received.target == (
        f"/openai/deployments/{DEPLOYMENT}/embeddings?api-version={DEFAULT_API_VERSION}"
    )
    assert received.headers["api-key"] == UPSTREAM_KEY
    [record] = await gateway.records.wait_for(1)
    assert record.prompt_tokens == 2 and record.model_group == "azure-test"

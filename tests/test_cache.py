"""The response cache (issue 22): LiteLLM's `litellm_settings.cache`, hits for each
surface, streamed replay, coalescing of identical requests in flight, its operators'
view (headers, spend rows, metrics, admin routes) and Redis's failures."""

from __future__ import annotations

from typing import Any

import anthropic
import orjson
import pytest
import trio
from fakes import (
    DONE,
    FakeUpstream,
    JSONReply,
    StreamReply,
    chat_completion,
    chunk,
    stream_of,
    tool_call_completion,
    usage_chunk,
)
from helpers import MASTER_KEY, MESSAGES, RunningGateway, openai_config, sdk, start_gateway

from trigate.cache.keys import cache_key

USAGE = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
PRICES = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002}


def cached_config(upstream: FakeUpstream, **params: Any) -> dict[str, Any]:
    config = openai_config(upstream, **PRICES)
    config["litellm_settings"] = {"cache": True, "cache_params": {"type": "local", **params}}
    return config


async def _post(gateway: RunningGateway, path: str, body: dict[str, Any]) -> Any:
    async with gateway.client() as client:
        return await client.post(path, json=body)


async def _stream(gateway: RunningGateway, body: dict[str, Any]) -> tuple[Any, str]:
    async with (
        gateway.client() as client,
        client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response,
    ):
        return response, (await response.aread()).decode()


def _chat(text: str = "Say hello", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": text}], **extra}


# --- the key ------------------------------------------------------------------------------


def test_the_key_is_the_same_however_the_json_keys_are_ordered() -> None:
    one = orjson.loads(
        b'{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,'
        b'"response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{"b":1,"a":2}}}}'
    )
    two = orjson.loads(
        b'{"response_format":{"json_schema":{"schema":{"a":2,"b":1},"name":"a"},"type":"json_schema"},'
        b'"temperature":0.5,"messages":[{"content":"hi","role":"user"}]}'
    )
    assert cache_key("chat", "g", "", one, None) == cache_key("chat", "g", "", two, None)
    # What does not shape the answer is left out; what does is not.
    three = {**two, "stream": True, "user": "u1", "metadata": {"a": 1}, "stream_options": {}}
    assert cache_key("chat", "g", "", three, None) == cache_key("chat", "g", "", one, None)
    assert cache_key("chat", "g", "", {**one, "temperature": 0.6}, None) != cache_key(
        "chat", "g", "", one, None
    )
    assert cache_key("chat", "h", "", one, None) != cache_key("chat", "g", "", one, None)
    assert cache_key("messages", "g", "", one, None) != cache_key("chat", "g", "", one, None)
    assert cache_key("chat", "g", "", one, "ns").startswith("ns:")


# --- hits -----------------------------------------------------------------------------------


async def test_a_repeated_chat_request_is_a_hit_with_its_headers_and_a_free_spend_row(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Cached!", USAGE))
    running = await start_gateway(nursery, cached_config(upstream))
    first = await _post(running, "/v1/chat/completions", _chat())
    assert first.headers["x-trigate-cache"] == "miss"
    key = first.headers["x-litellm-cache-key"]
    # The same request, its JSON keys in another order and another `user`.
    body = {"messages": [{"content": "Say hello", "role": "user"}], "model": "gpt-test"}
    second = await _post(running, "/v1/chat/completions", {**body, "user": "someone"})
    assert second.headers["x-trigate-cache"] == "hit"
    assert second.headers["x-litellm-cache-key"] == key
    assert second.json()["choices"][0]["message"]["content"] == "Cached!"
    assert second.json()["usage"] == USAGE
    assert len(upstream.requests) == 1
    records = await running.records.wait_for(2)
    assert [(r.cache_hit, r.cache_key) for r in records] == [(False, key), (True, key)]
    assert records[0].cost == pytest.approx(7 * 0.001 + 4 * 0.002)
    assert records[1].cost == 0.0 and records[1].deployment is None
    await running.stop()

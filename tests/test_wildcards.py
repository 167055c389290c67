"""LiteLLM's wildcard deployments and `model_group_alias`, against fake upstreams that
show which model they were asked for."""

from __future__ import annotations

from typing import Any, cast

import pytest
import trio
from fake_anthropic import message, serve
from fakes import FakeUpstream, JSONReply, chat_completion
from helpers import MESSAGES, UPSTREAM_KEY, RunningGateway, sdk, start_gateway
from openai.types.chat import ChatCompletionMessageParam

from trigate.config import ConfigError, parse_config

# helpers.MESSAGES as the OpenAI SDK types it (helpers keeps plain dicts, for every SDK).
CHAT_MESSAGES = cast(list[ChatCompletionMessageParam], MESSAGES)


def _config(anthropic: FakeUpstream, openai: FakeUpstream, **router: Any) -> dict[str, Any]:
    anthropic_base = f"http://127.0.0.1:{anthropic.port}"
    return {
        "model_list": [
            {
                "model_name": "anthropic/*",
                "litellm_params": {
                    "model": "anthropic/*",
                    "api_base": anthropic_base,
                    "api_key": UPSTREAM_KEY,
                },
            },
            {
                "model_name": "*",
                "litellm_params": {
                    "model": "openai/*",
                    "api_base": openai.base_url,
                    "api_key": UPSTREAM_KEY,
                },
            },
            {"model_name": "team/*/v*", "litellm_params": {"model": "mock/*-*"}},
            {"model_name": "mock", "litellm_params": {"model": "mock/gpt-4o"}},
        ],
        "router_settings": {"num_retries": 0, **router},
    }


async def _upstreams(nursery: trio.Nursery) -> tuple[FakeUpstream, FakeUpstream]:
    anthropic, openai = FakeUpstream(), FakeUpstream()
    await anthropic.start(nursery)
    await openai.start(nursery)
    serve(anthropic, lambda body: JSONReply(message([{"type": "text", "text": body["model"]}])))
    openai.handler = lambda request: JSONReply(chat_completion(request.json["model"]))
    return anthropic, openai


async def _answer(gateway: RunningGateway, model: str) -> str:
    completion = await sdk(gateway).chat.completions.create(model=model, messages=CHAT_MESSAGES)
    return str(completion.choices[0].message.content)


async def test_a_wildcard_sends_the_requested_model_to_its_provider(nursery: trio.Nursery) -> None:
    anthropic, openai = await _upstreams(nursery)
    gateway = await start_gateway(nursery, _config(anthropic, openai))
    # The most specific pattern wins: `anthropic/*` before `*`.
    assert await _answer(gateway, "anthropic/claude-sonnet-4-5") == "claude-sonnet-4-5"
    assert anthropic.requests[-1].json["model"] == "claude-sonnet-4-5"
    assert await _answer(gateway, "anthropic/claude-haiku-4-5") == "claude-haiku-4-5"
    assert await _answer(gateway, "gpt-4.1-mini") == "gpt-4.1-mini"
    assert openai.requests[-1].json["model"] == "gpt-4.1-mini"
    assert openai.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    # Each `*` takes what the pattern's matched, in order.
    async with gateway.client() as client:
        reply = await client.post(
            "/v1/chat/completions", json={"model": "team/alpha/v2", "messages": MESSAGES}
        )
    assert reply.status_code == 200
    assert reply.json()["model"] == "alpha-2"
    # A configured group is never shadowed by a pattern that also matches it.
    async with gateway.client() as client:
        reply = await client.post(
            "/v1/chat/completions", json={"model": "mock", "messages": MESSAGES}
        )
    assert reply.headers["x-trigate-model-group"] == "mock"
    assert len(openai.requests) == 1


async def test_a_wildcard_without_a_provider_is_the_clients_400(nursery: trio.Nursery) -> None:
    config = {"model_list": [{"model_name": "*", "litellm_params": {"model": "*"}}]}
    gateway = await start_gateway(nursery, config)
    async with gateway.client() as client:
        bare = await client.post(
            "/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES}
        )
        prefixed = await client.post(
            "/v1/chat/completions", json={"model": "mock/anything", "messages": MESSAGES}
        )
    assert bare.status_code == 400 and "provider prefix" in bare.json()["error"]["message"]
    assert prefixed.status_code == 200


async def test_model_group_alias_serves_its_target_and_hidden_ones_are_not_listed(
    nursery: trio.Nursery,
) -> None:
    anthropic, openai = await _upstreams(nursery)
    aliases = {
        "claude": "anthropic/claude-sonnet-4-5",
        "fast": {"model": "mock", "hidden": True},
        "default": {"model": "mock"},
    }
    gateway = await start_gateway(nursery, _config(anthropic, openai, model_group_alias=aliases))
    assert await _answer(gateway, "claude") == "claude-sonnet-4-5"
    async with gateway.client() as client:
        for alias in ("fast", "default"):
            reply = await client.post(
                "/v1/chat/completions", json={"model": alias, "messages": MESSAGES}
            )
            assert reply.status_code == 200
        listed = [model["id"] for model in (await client.get("/v1/models")).json()["data"]]
    assert listed == ["mock", "claude", "default"]
    assert not openai.requests


def test_a_bad_alias_or_a_stray_wildcard_stops_start_up_naming_it() -> None:
    raw: dict[str, Any] = {
        "model_list": [],
        "router_settings": {"model_group_alias": {"a": {"hidden": True}}},
    }
    with pytest.raises(ConfigError, match=r"model_group_alias\.a"):
        parse_config(raw, {})
    stray = {"model_list": [{"model_name": "gpt", "litellm_params": {"model": "openai/*"}}]}
    with pytest.raises(ConfigError, match=r"model_list\[0\].*only a wildcard deployment"):
        parse_config(stray, {})


async def test_a_key_limited_to_a_wildcard_may_use_what_it_matches(nursery: trio.Nursery) -> None:
    anthropic, openai = await _upstreams(nursery)
    gateway = await start_gateway(nursery, _config(anthropic, openai))
    async with gateway.client() as admin:
        made = await admin.post("/key/generate", json={"models": ["anthropic/*"]})
    key = made.json()["key"]
    async with gateway.client() as client:
        allowed = await client.post(
            "/v1/chat/completions",
            json={"model": "anthropic/claude-haiku-4-5", "messages": MESSAGES},
            headers={"authorization": f"Bearer {key}"},
        )
        refused = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4.1-mini", "messages": MESSAGES},
            headers={"authorization": f"Bearer {key}"},
        )
    assert allowed.status_code == 200
    assert refused.status_code == 403
    assert openai.requests == []

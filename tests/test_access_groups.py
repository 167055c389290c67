"""LiteLLM's model access groups: `model_info.access_groups` on deployments (config
file and `/model/new`), granted to keys and teams by name in their `models`; listed by
`/v1/models?only_model_access_groups=True`; on wildcard deployments, the group of the
pattern a name is routed to. And `/model_group/info` lists the models a wildcard
deployment stands for, not the pattern."""

from __future__ import annotations

from typing import Any, cast

import openai
import pytest
import trio
from fakes import FakeUpstream, JSONReply, chat_completion
from helpers import (
    MASTER_KEY,
    MESSAGES,
    UPSTREAM_KEY,
    RunningGateway,
    new_key,
    sdk,
    start_gateway,
)
from openai.types.chat import ChatCompletionMessageParam

from trigate.spend.prices import PriceTable

# MESSAGES as the OpenAI SDK types a chat's messages (helpers.py leaves it a list of dicts).
CHAT = cast("list[ChatCompletionMessageParam]", MESSAGES)


def _deployment(
    upstream: FakeUpstream, name: str, model: str, groups: list[str] | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "model_name": name,
        "litellm_params": {"model": model, "api_base": upstream.base_url, "api_key": UPSTREAM_KEY},
    }
    if groups is not None:
        entry["model_info"] = {"access_groups": groups}
    return entry


def _config(upstream: FakeUpstream) -> dict[str, Any]:
    """LiteLLM's documented example: two models in `beta-models`, one outside it."""
    upstream.handler = lambda request: JSONReply(chat_completion(request.json["model"]))
    return {
        "model_list": [
            _deployment(upstream, "gpt-4", "openai/fake", ["beta-models"]),
            _deployment(upstream, "llama-70b", "openai/llama", ["beta-models", "open-models"]),
            _deployment(upstream, "gpt-4o", "openai/gpt-4o"),
        ],
        "router_settings": {"num_retries": 0},
    }


async def _status(gateway: RunningGateway, key: str, model: str) -> int:
    async with gateway.client(key) as client:
        reply = await client.post(
            "/v1/chat/completions", json={"model": model, "messages": MESSAGES}
        )
    return reply.status_code


async def _listed(gateway: RunningGateway, key: str, **flags: str) -> list[str]:
    async with gateway.client(key) as client:
        reply = await client.get("/v1/models", params=flags)
    assert reply.status_code == 200, reply.text
    return [model["id"] for model in reply.json()["data"]]


async def test_a_key_granted_an_access_group_uses_every_model_of_it_and_no_other(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, _config(upstream))
    key = await new_key(gateway, models=["beta-models"])
    async with sdk(gateway, key) as client:
        for model in ("gpt-4", "llama-70b"):
            completion = await client.chat.completions.create(model=model, messages=CHAT)
            assert completion.choices[0].message.content is not None
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="gpt-4o", messages=CHAT)
        listed = [model.id async for model in client.models.list()]
    assert listed == ["gpt-4", "llama-70b"]
    # A group name is no model: a request naming it is not routed anywhere.
    assert await _status(gateway, key, "beta-models") in (400, 404)
    await gateway.stop()


async def test_a_team_granted_an_access_group_passes_it_to_its_keys(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, _config(upstream))
    async with gateway.client() as client:
        team = await client.post("/team/new", json={"models": ["open-models"]})
    assert team.status_code == 200, team.text
    key = await new_key(gateway, team_id=team.json()["team_id"])
    assert await _status(gateway, key, "llama-70b") == 200
    assert await _status(gateway, key, "gpt-4") == 403
    assert await _status(gateway, key, "gpt-4o") == 403
    await gateway.stop()


async def test_only_model_access_groups_lists_the_groups_the_caller_may_use(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, _config(upstream))
    master = await _listed(gateway, MASTER_KEY, only_model_access_groups="True")
    assert master == ["beta-models", "open-models"]
    unrestricted = await new_key(gateway)
    assert await _listed(gateway, unrestricted, only_model_access_groups="True") == master
    beta = await new_key(gateway, models=["beta-models"])
    assert await _listed(gateway, beta, only_model_access_groups="true") == ["beta-models"]
    assert await _listed(gateway, beta, include_model_access_groups="True") == [
        "gpt-4",
        "llama-70b",
        "beta-models",
    ]
    one_model = await new_key(gateway, models=["gpt-4o"])
    assert await _listed(gateway, one_model, only_model_access_groups="True") == []
    # Without the flag (or with it false), models as before.
    assert await _listed(gateway, beta, only_model_access_groups="False") == ["gpt-4", "llama-70b"]
    await gateway.stop()


async def test_a_model_added_through_the_api_joins_its_access_groups_at_once(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, _config(upstream))
    key = await new_key(gateway, models=["beta-models"])
    assert await _status(gateway, key, "added") in (400, 403, 404)
    added = _deployment(upstream, "added", "openai/added", ["beta-models"])
    async with gateway.client() as client:
        reply = await client.post("/model/new", json=added)
        assert reply.status_code == 200, reply.text
        bad = {**added, "model_name": "bad", "model_info": {"access_groups": "beta-models"}}
        refused = await client.post("/model/new", json=bad)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "model_info.access_groups"
    assert await _status(gateway, key, "added") == 200
    await gateway.stop()


def _wildcards(upstream: FakeUpstream) -> dict[str, Any]:
    """LiteLLM's documented wildcard example: `openai/*` in `default-models`, the more
    specific `openai/o1-*` in `restricted-models`."""
    upstream.handler = lambda request: JSONReply(chat_completion(request.json["model"]))
    return {
        "model_list": [
            _deployment(upstream, "openai/*", "openai/*", ["default-models"]),
            _deployment(upstream, "openai/o1-*", "openai/o1-*", ["restricted-models"]),
        ],
        "router_settings": {"num_retries": 0},
    }


async def test_a_wildcard_name_belongs_to_the_group_of_the_pattern_it_is_routed_to(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, _wildcards(upstream))
    default = await new_key(gateway, models=["default-models"])
    restricted = await new_key(gateway, models=["restricted-models"])
    assert await _status(gateway, default, "openai/gpt-4") == 200
    assert await _status(gateway, default, "openai/o1-mini") == 403
    assert await _status(gateway, restricted, "openai/o1-mini") == 200
    assert await _status(gateway, restricted, "openai/gpt-4") == 403
    await gateway.stop()


async def test_model_group_info_lists_the_models_a_wildcard_stands_for(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """As LiteLLM's own e2e test (`test_model_group_info_e2e`) expects: `anthropic/*`
    comes out as the Anthropic models the price table knows, each priced; a more
    specific wildcard keeps its own names, and a key sees only what it may use."""
    config = _config(upstream)
    config["model_list"] += [
        _deployment(upstream, "anthropic/*", "anthropic/*"),
        _deployment(upstream, "anthropic/claude-opus-*", "anthropic/claude-opus-*", ["opus"]),
        _deployment(upstream, "local/*", "hosted_vllm/*"),
    ]
    gateway = await start_gateway(nursery, config)
    prices = PriceTable.load()
    known = prices.models_of("anthropic")
    assert known, "the price table lists Anthropic's models"
    async with gateway.client() as client:
        reply = await client.get("/model_group/info")
    assert reply.status_code == 200, reply.text
    groups = {group["model_group"]: group for group in reply.json()["data"]}
    assert "anthropic/*" not in groups and "anthropic/claude-opus-*" not in groups
    expected = {f"anthropic/{model}" for model in known}
    assert expected <= set(groups)
    sample = next(model for model in known if not model.startswith("claude-opus-"))
    price = prices.lookup("anthropic", sample)
    assert price is not None
    assert groups[f"anthropic/{sample}"]["input_cost_per_token"] == price.input
    assert groups[f"anthropic/{sample}"]["providers"] == ["anthropic"]
    # A pattern the table knows no models under is listed as itself.
    assert "local/*" in groups
    assert {"gpt-4", "llama-70b", "gpt-4o"} <= set(groups)
    opus = await new_key(gateway, models=["opus"])
    async with gateway.client(opus) as client:
        mine = await client.get("/model_group/info")
    names = {group["model_group"] for group in mine.json()["data"]}
    assert names == {name for name in expected if name.startswith("anthropic/claude-opus-")}
    assert names
    await gateway.stop()

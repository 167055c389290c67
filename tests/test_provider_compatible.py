"""The OpenAI-compatible families: each prefix reaches its upstream's chat completions."""

from __future__ import annotations

from typing import Any, cast

import httpx
import pytest
import trio
from fakes import DONE, FakeUpstream, JSONReply, StreamReply, chat_completion, chunk, stream_of
from helpers import MESSAGES, UPSTREAM_KEY, deployment_config, sdk, start_gateway
from openai.types.chat import ChatCompletionMessageParam

from trigate.config import ConfigError, LiteLLMParams, parse_config
from trigate.provider_names import PROVIDER_PREFIXES, REQUIRES_API_BASE
from trigate.providers import PROVIDERS
from trigate.providers.compatible import COMPATIBLE, DIALECTS
from trigate.tokens import TokenCounter

# helpers.MESSAGES as the OpenAI SDK types it (helpers keeps plain dicts, for every SDK).
CHAT_MESSAGES = cast(list[ChatCompletionMessageParam], MESSAGES)

DEFAULT_BASES = {
    "groq": "https://api.groq.com/openai/v1",
    "mistral": "https://api.mistral.ai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "together_ai": "https://api.together.xyz/v1",
    "fireworks_ai": "https://api.fireworks.ai/inference/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "perplexity": "https://api.perplexity.ai",
    "xai": "https://api.x.ai/v1",
    "cerebras": "https://api.cerebras.ai/v1",
    "deepinfra": "https://api.deepinfra.com/v1/openai",
    "ollama": "http://localhost:11434/v1",
    "jina_ai": "https://api.jina.ai/v1",
    "voyage": "https://api.voyageai.com/v1",
}
SELF_HOSTED = ("hosted_vllm", "lm_studio")
WITHOUT_STREAM_OPTIONS = {"mistral", "perplexity", "fireworks_ai", "cerebras"}


def family_config(upstream: FakeUpstream, prefix: str, model: str) -> dict[str, Any]:
    params = {"model": f"{prefix}/{model}", "api_base": upstream.base_url}
    return deployment_config("compat", {**params, "api_key": UPSTREAM_KEY})


def test_every_family_is_registered() -> None:
    assert set(DIALECTS) == set(DEFAULT_BASES) | set(SELF_HOSTED)
    assert all(PROVIDERS[prefix] is COMPATIBLE[prefix] for prefix in DIALECTS)


def test_config_validation_knows_every_registered_prefix() -> None:
    """Config validation reads the prefixes from trigate/provider_names.py, not from
    the adapters: the list and the registry must name the same families."""
    assert set(PROVIDERS) == PROVIDER_PREFIXES
    no_default = {prefix for prefix, dialect in DIALECTS.items() if dialect.api_base is None}
    assert no_default | {"azure"} == REQUIRES_API_BASE


@pytest.mark.parametrize("prefix", sorted(DIALECTS))
async def test_prefix_reaches_chat_completions(
    nursery: trio.Nursery, upstream: FakeUpstream, prefix: str
) -> None:
    running = await start_gateway(nursery, family_config(upstream, prefix, "some-model"))
    upstream.handler = lambda request: (
        stream_of(["Hi", "!"], usage=(5, 2))
        if request.json.get("stream")
        else JSONReply(
            chat_completion("Hi!", {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
        )
    )
    async with sdk(running) as client:
        completion = await client.chat.completions.create(model="compat", messages=CHAT_MESSAGES)
        stream = await client.chat.completions.create(
            model="compat",
            messages=CHAT_MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    assert completion.choices[0].message.content == "Hi!"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi!"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    plain, streamed = upstream.requests
    expected_model = (
        "accounts/fireworks/models/some-model" if prefix == "fireworks_ai" else "some-model"
    )
    for request in (plain, streamed):
        assert request.target == "/v1/chat/completions"
        assert request.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert request.json["model"] == expected_model
    if prefix in WITHOUT_STREAM_OPTIONS:
        assert "stream_options" not in streamed.json
    else:
        assert streamed.json["stream_options"] == {"include_usage": True}
    records = await running.records.wait_for(2)
    assert [(r.prompt_tokens, r.completion_tokens) for r in records] == [(5, 2), (5, 2)]
    await running.stop()


@pytest.mark.parametrize(("prefix", "base"), sorted(DEFAULT_BASES.items()))
async def test_default_base_url(prefix: str, base: str) -> None:
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json=chat_completion("ok"))

    params = LiteLLMParams(model=f"{prefix}/m", api_key="k")
    provider = PROVIDERS[prefix](params, httpx.MockTransport(handler), TokenCounter({}))
    await provider.complete({"model": "compat", "messages": MESSAGES})
    assert str(seen[0]) == f"{base}/chat/completions"


@pytest.mark.parametrize("prefix", SELF_HOSTED)
def test_self_hosted_families_need_an_api_base(prefix: str) -> None:
    """Caught when the config loads, naming the key, not when a worker starts."""
    raw = {"model_list": [{"model_name": "m", "litellm_params": {"model": f"{prefix}/m"}}]}
    with pytest.raises(ConfigError, match=f"litellm_params: api_base is required for `{prefix}/`"):
        parse_config(raw, {})


def test_namespaced_fireworks_models_are_kept() -> None:
    dialect = DIALECTS["fireworks_ai"]
    assert dialect.model_name("accounts/me/models/tuned") == "accounts/me/models/tuned"
    assert dialect.model_name("llama-v3p1-8b-instruct") == (
        "accounts/fireworks/models/llama-v3p1-8b-instruct"
    )


async def test_usage_in_the_last_content_chunk_without_stream_options(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Mistral reports usage on its final chunk, alongside the finish reason."""
    usage = {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10}
    upstream.handler = lambda request: StreamReply(
        [chunk("Bon"), chunk("jour", finish="stop", usage=usage), DONE]
    )
    running = await start_gateway(nursery, family_config(upstream, "mistral", "mistral-small"))
    async with sdk(running) as client:
        stream = await client.chat.completions.create(
            model="compat",
            messages=CHAT_MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    assert "stream_options" not in upstream.requests[0].json
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 8
    [record] = await running.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.usage_source) == (
        8,
        2,
        "upstream",
    )
    await running.stop()

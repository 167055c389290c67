"""`general_settings.forward_client_headers_to_llm_api`, LiteLLM's allow-list of client
headers sent on to the upstream, and query strings on the model routes, through the
real app."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import trio
from fake_anthropic import anthropic_config, message
from fake_bedrock import bedrock, bedrock_config, converse_response
from fakes import FakeUpstream, JSONReply, chat_completion
from helpers import (
    MASTER_KEY,
    MESSAGES,
    UPSTREAM_KEY,
    RunningGateway,
    mock_config,
    openai_config,
    start_gateway,
)

from trigate.providers.base import UpstreamClient

# Sent with every request: what may go on, and what never may.
CLIENT_HEADERS = {
    "x-trace-id": "trace-7",
    "x-custom-header": "kept",
    "anthropic-beta": "context-management-2025-06-27",
    "x-stainless-lang": "python",
    "x-api-key": MASTER_KEY,
    "cookie": "session=secret",
    "user-agent": "claude-cli/2.1",
}
FORWARDED = {"x-trace-id", "x-custom-header", "anthropic-beta"}
WITHHELD = {"x-stainless-lang", "cookie", "user-agent"}


def forwarding(config: dict[str, Any], *, enabled: bool = True) -> dict[str, Any]:
    config["general_settings"] = {"forward_client_headers_to_llm_api": enabled}
    return config


async def post(gateway: RunningGateway, path: str, body: dict[str, Any]) -> None:
    async with gateway.client() as client:
        response = await client.post(path, json=body, headers=CLIENT_HEADERS)
    assert response.status_code == 200, response.text


async def test_allow_listed_client_headers_reach_an_openai_upstream(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, forwarding(openai_config(upstream)))
    upstream.handler = lambda request: JSONReply(chat_completion("Hi"))
    await post(gateway, "/v1/chat/completions", {"model": "gpt-test", "messages": MESSAGES})
    [received] = upstream.requests
    assert {name: received.headers[name] for name in FORWARDED} == {
        name: CLIENT_HEADERS[name] for name in FORWARDED
    }
    assert not WITHHELD & received.headers.keys()
    assert "x-api-key" not in received.headers
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert MASTER_KEY not in str(received.headers)
    await gateway.stop()


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions"])
async def test_allow_listed_client_headers_reach_an_anthropic_upstream(
    nursery: trio.Nursery, upstream: FakeUpstream, path: str
) -> None:
    gateway = await start_gateway(nursery, forwarding(anthropic_config(upstream)))
    upstream.handler = lambda request: JSONReply(message([{"type": "text", "text": "Hi"}]))
    await post(gateway, path, {"model": "claude", "max_tokens": 8, "messages": MESSAGES})
    [received] = upstream.requests
    assert {name: received.headers[name] for name in FORWARDED} == {
        name: CLIENT_HEADERS[name] for name in FORWARDED
    }
    assert not WITHHELD & received.headers.keys()
    assert received.headers["x-api-key"] == UPSTREAM_KEY
    assert MASTER_KEY not in str(received.headers)
    await gateway.stop()


async def test_forwarded_headers_are_signed_for_bedrock(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Bedrock signs each request: the forwarded headers go out with a signature that
    holds, and the client's key never replaces the deployment's signature."""
    gateway = await start_gateway(nursery, forwarding(bedrock_config(upstream)))
    text = [{"text": "Hi"}]
    upstream.handler = bedrock(lambda request: JSONReply(converse_response(text)))
    await post(gateway, "/v1/chat/completions", {"model": "claude", "messages": MESSAGES})
    [received] = upstream.requests
    assert received.headers["x-trace-id"] == "trace-7"
    assert received.headers["authorization"].startswith("AWS4-HMAC-SHA256 ")
    assert not WITHHELD & received.headers.keys() and MASTER_KEY not in str(received.headers)
    await gateway.stop()


async def test_client_headers_stay_behind_unless_forwarding_is_on(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, forwarding(openai_config(upstream), enabled=False))
    upstream.handler = lambda request: JSONReply(chat_completion("Hi"))
    await post(gateway, "/v1/chat/completions", {"model": "gpt-test", "messages": MESSAGES})
    [received] = upstream.requests
    assert not (FORWARDED | WITHHELD) & received.headers.keys()
    await gateway.stop()


MODEL_ROUTES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": MESSAGES},
    "/chat/completions": {"messages": MESSAGES},
    "/v1/completions": {"prompt": "Say hello"},
    "/completions": {"prompt": "Say hello"},
    "/v1/embeddings": {"input": "Say hello"},
    "/embeddings": {"input": "Say hello"},
    "/v1/messages": {"messages": MESSAGES, "max_tokens": 8},
    "/v1/messages/count_tokens": {"messages": MESSAGES},
}


async def test_every_model_route_takes_a_query_string(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, mock_config())
    async with gateway.client() as client:
        for path, body in MODEL_ROUTES.items():
            response = await client.post(f"{path}?beta=true", json={"model": "mock", **body})
            assert response.status_code == 200, (path, response.text)
            assert "x-trigate-request-id" in response.headers
    await gateway.stop()


@pytest.mark.parametrize(
    "deployment_headers",
    [
        {"content-type": "application/json", "authorization": "Bearer sk-up"},
        # The deployment sets its own length: httpx keeps it, so its head is built per request.
        {"content-type": "application/json", "Content-Length": "2"},
    ],
)
async def test_an_upstream_request_is_what_httpx_would_build(
    deployment_headers: dict[str, str],
) -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    url = "http://upstream.test:8080/v1/chat/completions"
    upstream = UpstreamClient(httpx.MockTransport(record), url, deployment_headers, 30.0)
    for payload in ({"a": 1}, {"much longer": "x" * 100}):
        await upstream.post(payload)
        content = orjson.dumps(payload)
        expected = httpx.Request("POST", url, headers=deployment_headers, content=content)
        sent = seen[-1]
        assert (sent.method, sent.url, sent.content) == ("POST", expected.url, content)
        assert sent.headers.raw == expected.headers.raw

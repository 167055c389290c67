"""The HTTP surface: auth, bad input, error envelopes, request ids, models and health."""

from __future__ import annotations

import logging
import socket
from typing import Any

import httpx
import openai
import pytest
import trio
from fakes import FakeUpstream
from helpers import MASTER_KEY, UPSTREAM_KEY, RunningGateway, openai_config, sdk, start_gateway
from openai.types.chat import ChatCompletionMessageParam

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
ENVELOPE_KEYS = {"message", "type", "param", "code"}


def assert_envelope(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == ENVELOPE_KEYS
    assert error["type"] == error_type
    return error


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer sk-wrong"},
        {"authorization": "Basic " + MASTER_KEY},
        {"x-api-key": "sk-wrong"},
        {"authorization": "Bearer"},
    ],
)
async def test_bad_or_missing_key_is_401(gateway: RunningGateway, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        for path in ("/v1/models", "/v1/chat/completions"):
            method = "GET" if path.endswith("models") else "POST"
            response = await client.request(
                method, path, headers=headers, json={"model": "gpt-test", "messages": MESSAGES}
            )
            assert_envelope(response, 401, "authentication_error")
            assert "sk-wrong" not in response.text


async def test_x_api_key_header_is_accepted(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        response = await client.get("/v1/models", headers={"x-api-key": MASTER_KEY})
    assert response.status_code == 200


async def test_sdk_sees_authentication_error(gateway: RunningGateway) -> None:
    async with sdk(gateway, "sk-nope") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="gpt-test", messages=MESSAGES)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[1, 2]", None),
        (b'"a string"', None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": 42, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "gpt-test"}', "messages"),
        (b'{"model": "gpt-test", "messages": "hello"}', "messages"),
        (b'{"model": "gpt-test", "messages": []}', "messages"),
        (b'{"model": "gpt-test", "messages": ["hi"]}', "messages"),
        (b'{"model": "gpt-test", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
        (b"\xff\xfe\x00garbage", None),
    ],
)
async def test_malformed_requests_are_400(
    gateway: RunningGateway, upstream: FakeUpstream, body: bytes, param: str | None
) -> None:
    async with gateway.client() as client:
        response = await client.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    error = assert_envelope(response, 400, "invalid_request_error")
    assert error["param"] == param
    assert upstream.requests == []


async def test_unknown_model_is_404_naming_it(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "gpt-nope", "messages": MESSAGES}
        )
    error = assert_envelope(response, 404, "invalid_request_error")
    assert "gpt-nope" in error["message"] and error["code"] == "model_not_found"


async def test_oversized_body_is_413(nursery: trio.Nursery, upstream: FakeUpstream) -> None:
    config = {**openai_config(upstream), "general_settings": {"max_request_size_mb": 0.001}}
    running = await start_gateway(nursery, config)
    async with running.client() as client:
        big = {"model": "gpt-test", "messages": [{"role": "user", "content": "x" * 5000}]}
        response = await client.post("/v1/chat/completions", json=big)
    assert_envelope(response, 413, "invalid_request_error")
    assert upstream.requests == []
    await running.stop()


async def test_unknown_path_and_method_use_the_envelope(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        assert_envelope(await client.get("/v1/nope"), 404, "invalid_request_error")
        assert_envelope(await client.get("/v1/chat/completions"), 405, "invalid_request_error")


async def test_request_id_is_echoed_or_generated(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        given = await client.get("/v1/models", headers={"x-request-id": "trace-123"})
        fresh_a = await client.get("/v1/models")
        fresh_b = await client.get("/v1/nowhere")
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-test", "messages": MESSAGES},
            headers={"x-request-id": "trace-456"},
        )
    assert given.headers["x-request-id"] == "trace-123"
    assert fresh_a.headers["x-request-id"] != fresh_b.headers["x-request-id"]
    assert len(fresh_a.headers["x-request-id"]) == 32
    assert chat.headers["x-request-id"] == "trace-456"
    assert fresh_a.headers["x-trigate-request-id"] == fresh_a.headers["x-request-id"]
    assert len(chat.headers["x-trigate-request-id"]) == 32
    assert float(chat.headers["x-trigate-overhead-ms"]) >= 0
    [record] = await gateway.records.wait_for(1)
    assert record.client_request_id == "trace-456"
    assert record.request_id == chat.headers["x-trigate-request-id"]


TWO_KEYS = [
    [("authorization", f"Bearer {MASTER_KEY}"), ("authorization", "Bearer sk-other")],
    [("authorization", "Bearer sk-other"), ("authorization", f"Bearer {MASTER_KEY}")],
    [("x-api-key", "sk-other"), ("x-api-key", MASTER_KEY)],
    [("authorization", "Bearer sk-other"), ("x-api-key", MASTER_KEY)],
]


@pytest.mark.parametrize("headers", TWO_KEYS)
async def test_ambiguous_credentials_are_400_on_every_route(
    gateway: RunningGateway, headers: list[tuple[str, str]]
) -> None:
    chat = {"model": "gpt-test", "messages": MESSAGES}
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        for method, path in (("POST", "/v1/chat/completions"), ("GET", "/key/list")):
            response = await client.request(method, path, json=chat, headers=headers)
            error = assert_envelope(response, 400, "invalid_request_error")
            assert error["code"] == "ambiguous_credentials" and MASTER_KEY not in response.text
            assert response.headers["x-request-id"]
        messages = {**chat, "max_tokens": 5}
        anthropic = await client.post("/v1/messages", json=messages, headers=headers)
    assert anthropic.status_code == 400
    assert anthropic.json()["type"] == "error"
    assert anthropic.json()["error"]["type"] == "invalid_request_error"


async def test_the_same_key_in_both_headers_is_accepted(gateway: RunningGateway) -> None:
    headers = [("authorization", f"Bearer {MASTER_KEY}"), ("x-api-key", MASTER_KEY)]
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert (await client.get("/v1/models", headers=headers)).status_code == 200


@pytest.mark.parametrize("model", ["m" * 10_000, "bad\r\nx-injected: 1", "nul\u0000byte"])
async def test_an_unknown_model_name_is_echoed_safely(gateway: RunningGateway, model: str) -> None:
    """The name is the client's: capped, and never a header h11 would refuse (a 500)."""
    async with gateway.client() as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": model, "messages": MESSAGES}
        )
    assert_envelope(response, 404, "invalid_request_error")
    echoed = response.headers.get("x-trigate-model-group", "")
    assert len(echoed) <= 256 and "x-injected" not in response.headers


async def test_models_lists_the_aliases(gateway: RunningGateway) -> None:
    async with sdk(gateway) as client:
        models = await client.models.list()
    assert [model.id for model in models.data] == ["gpt-test"]
    async with gateway.client() as http:
        assert (await http.get("/models")).json()["data"][0]["id"] == "gpt-test"


async def test_health_needs_no_auth(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert (await client.get("/health/liveliness")).status_code == 200
        readiness = await client.get("/health/readiness")
    assert readiness.status_code == 200 and readiness.json()["status"] == "healthy"


async def test_chat_without_v1_prefix(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        response = await client.post(
            "/chat/completions", json={"model": "gpt-test", "messages": MESSAGES}
        )
    assert response.status_code == 200


async def test_no_secret_reaches_the_logs(
    gateway: RunningGateway, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with gateway.client() as client:
        await client.post("/v1/chat/completions", json={"model": "gpt-test", "messages": MESSAGES})
        await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-test", "messages": MESSAGES},
            headers={"authorization": "Bearer sk-guess-0123456789"},
        )
    await gateway.records.wait_for(1)
    assert MASTER_KEY not in caplog.text
    assert UPSTREAM_KEY not in caplog.text
    assert "sk-guess-0123456789" not in caplog.text


async def test_a_burst_of_connections_waits_to_be_accepted(gateway: RunningGateway) -> None:
    """Connections that arrive while the worker is busy wait in the listen backlog: at
    hypercorn's default of 100, the rest of a burst would be dropped."""
    url = httpx.URL(gateway.url)
    # Connected synchronously, so this worker's loop cannot accept any of them meanwhile.
    burst = [socket.create_connection((url.host, url.port), timeout=2) for _ in range(300)]
    streams = [trio.SocketStream(trio.socket.from_stdlib_socket(sock)) for sock in burst]
    request = b"GET /health/liveliness HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n"
    try:
        for stream in streams:
            await stream.send_all(request)
        for stream in streams:
            assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 200 ")
    finally:
        for stream in streams:
            await stream.aclose()

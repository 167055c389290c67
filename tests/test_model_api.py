"""The model API's own serving in front of Quart: bodies, limits, errors, disconnects.

Driven through hypercorn on a real socket, since what is under test is how the
gateway reads a request and answers at the HTTP level.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio.testing
from fakes import FakeUpstream, StreamReply, chunk
from helpers import MASTER_KEY, RunningGateway, openai_config, start_gateway
from test_api import assert_envelope

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


async def _open(gateway: RunningGateway) -> trio.SocketStream:
    url = httpx.URL(gateway.url)
    assert url.port is not None  # the gateway's URL names the port it listens on
    return await trio.open_tcp_stream(url.host, url.port)


def _head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {MASTER_KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    ).encode()


async def _read_response(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


async def test_a_streamed_body_past_the_cap_is_413(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """No Content-Length to judge by: the cap holds while the body arrives."""
    config = {**openai_config(upstream), "general_settings": {"max_request_size_mb": 0.001}}
    running = await start_gateway(nursery, config)

    async def body() -> AsyncIterator[bytes]:
        yield b'{"model": "gpt-test", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}]}'

    async with running.client() as client:
        response = await client.post("/v1/chat/completions", content=body())
    assert_envelope(response, 413, "invalid_request_error")
    assert upstream.requests == []
    await running.stop()


async def test_a_body_that_stalls_is_408(
    nursery: trio.Nursery, upstream: FakeUpstream, virtual_clock: trio.testing.MockClock
) -> None:
    config = {**openai_config(upstream), "general_settings": {"request_body_timeout": 30}}
    running = await start_gateway(nursery, config)
    stream = await _open(running)
    await stream.send_all(_head("/v1/chat/completions", 1000) + b'{"model": "gpt-')
    started = trio.current_time()
    answer = await _read_response(stream)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"request_timeout"' in answer
    assert trio.current_time() - started >= 30
    assert upstream.requests == []
    await stream.aclose()
    await running.stop()


async def test_a_client_leaving_mid_body_costs_nothing(
    nursery: trio.Nursery, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_gateway(nursery, openai_config(upstream))
    stream = await _open(running)
    await stream.send_all(_head("/v1/chat/completions", 1000) + b'{"model": "gpt-')
    await trio.sleep(0.05)
    await stream.aclose()
    async with running.client() as client:  # the gateway is still serving
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert len(upstream.requests) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await running.stop()


async def test_messages_errors_keep_anthropics_envelope(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Errors found before the handler runs (here, the size cap) are still rendered in
    the envelope of the API the route speaks."""
    config = {**openai_config(upstream), "general_settings": {"max_request_size_mb": 0.001}}
    running = await start_gateway(nursery, config)
    big = {**CHAT, "max_tokens": 10, "messages": [{"role": "user", "content": "x" * 5000}]}
    async with running.client() as client:
        response = await client.post("/v1/messages", json=big)
        wrong_method = await client.get("/v1/messages")
    assert response.status_code == 413
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "request_too_large"
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["type"] == "error"
    await running.stop()


async def test_an_unexpected_failure_is_a_logged_500_in_the_envelope(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = await start_gateway(nursery, openai_config(upstream))

    async def broken(headers: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(running.gateway.auth, "authenticate", broken)
    async with running.client() as client:
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"x-request-id": "req-bug"}
        )
    error = assert_envelope(response, 500, "api_error")
    assert "req-bug" in error["message"] and "a bug" not in error["message"]
    assert any("req-bug" in r.getMessage() and r.exc_info for r in caplog.records)
    await running.stop()


async def test_response_timeout_cuts_a_stream_and_closes_its_upstream(
    nursery: trio.Nursery, upstream: FakeUpstream, virtual_clock: trio.testing.MockClock
) -> None:
    """`response_timeout`, when set, bounds sending the answer, as Quart's RESPONSE_TIMEOUT
    did: a stream still running then is cut, and its upstream request closed."""
    config = {**openai_config(upstream), "general_settings": {"response_timeout": 5}}
    running = await start_gateway(nursery, config)
    endless = StreamReply([chunk("Once ")], tail=chunk("more "), tail_interval=1.0)
    upstream.handler = lambda request: endless
    stream_body = {**CHAT, "stream": True}
    started = trio.current_time()
    async with (
        running.client() as client,
        client.stream("POST", "/v1/chat/completions", json=stream_body) as response,
    ):
        assert response.status_code == 200
        with trio.fail_after(60), pytest.raises(httpx.RemoteProtocolError):
            async for _ in response.aiter_bytes():
                pass
    assert trio.current_time() - started >= 5
    await upstream.wait_for(lambda: upstream.aborted == 1)
    await running.stop()

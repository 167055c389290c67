"""Authentication from the request's head, before its body (issue 19, items 1 and 3).

A model route checks the key as soon as the head has arrived: a client with no valid
key is answered 401 in its API's envelope, and its connection closed, without one byte
of its body read, so it can neither hold a connection slot nor fill memory with a body.
Driven over a real socket on the virtual clock: a gateway that waited for the body
would answer only when the body timeout fired, with a 408.
"""

from __future__ import annotations

import httpx
import orjson
import pytest
import trio
import trio.testing
from fakes import FakeUpstream
from helpers import MASTER_KEY, RunningGateway, openai_config, start_gateway

from trigate.gateway import load_token_counter

BODY_TIMEOUT = 30
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(autouse=True)
def token_counter_loaded() -> None:
    """Loaded (once per process) on the real clock, before the test's run: its loading
    thread takes real time, in which the virtual clock would pass the start-up timeout."""
    trio.run(load_token_counter)


async def _open(gateway: RunningGateway) -> trio.SocketStream:
    url = httpx.URL(gateway.url)
    assert url.port is not None  # the gateway's URL names the port it listens on
    return await trio.open_tcp_stream(url.host, url.port)


def _head(path: str, length: int, credential: str | None) -> bytes:
    auth = f"authorization: Bearer {credential}\r\n" if credential else ""
    return (
        f"POST {path} HTTP/1.1\r\nhost: gateway\r\n{auth}"
        f"content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    ).encode()


async def _read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the gateway sends until it closes the connection."""
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


@pytest.mark.parametrize(
    ("credential", "path", "kind"),
    [
        (None, "/v1/chat/completions", "authentication_error"),
        ("sk-not-a-key-of-this-gateway", "/v1/chat/completions", "authentication_error"),
        (None, "/v1/responses", "authentication_error"),
        ("sk-not-a-key-of-this-gateway", "/v1/messages", "authentication_error"),
    ],
)
async def test_no_valid_key_is_answered_before_the_body_and_closed(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    virtual_clock: trio.testing.MockClock,
    credential: str | None,
    path: str,
    kind: str,
) -> None:
    config = {
        **openai_config(upstream),
        "general_settings": {"request_body_timeout": BODY_TIMEOUT},
    }
    running = await start_gateway(nursery, config)
    stream = await _open(running)
    started = trio.current_time()
    # A 100 kB body announced, none of it sent.
    await stream.send_all(_head(path, 100_000, credential))
    answer = await _read_until_closed(stream)
    assert trio.current_time() - started < BODY_TIMEOUT
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ")
    assert b"\r\nconnection: close" in head.lower()
    error = orjson.loads(body)
    if path == "/v1/messages":
        assert error["type"] == "error" and error["error"]["type"] == kind
    else:
        assert error["error"]["type"] == kind
    assert upstream.requests == []
    await stream.aclose()
    await running.stop()


async def test_a_valid_key_still_waits_for_a_slow_body(
    nursery: trio.Nursery, upstream: FakeUpstream, virtual_clock: trio.testing.MockClock
) -> None:
    config = {
        **openai_config(upstream),
        "general_settings": {"request_body_timeout": BODY_TIMEOUT},
    }
    running = await start_gateway(nursery, config)
    stream = await _open(running)
    body = orjson.dumps(CHAT)
    await stream.send_all(_head("/v1/chat/completions", len(body), MASTER_KEY))
    for offset in range(0, len(body), 10):
        await trio.sleep(1)
        await stream.send_all(body[offset : offset + 10])
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
        answer += await stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert len(upstream.requests) == 1
    await stream.aclose()
    await running.stop()

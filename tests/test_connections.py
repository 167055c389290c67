"""Client connections: closed when HTTP says so, when idle too long, and at shutdown.

Every test watches the socket itself: a connection counts as closed only when
the client reads end-of-file on it.
"""

from __future__ import annotations

import contextlib
import logging
import resource

import h11
import httpx
import hypercorn.config
import orjson
import pytest
import trio
import trio.testing
from fakes import DONE, FakeUpstream, JSONReply, StreamReply, chat_completion, chunk, usage_chunk
from helpers import MASTER_KEY, RunningGateway, mock_config, openai_config, start_gateway
from hypercorn.typing import ASGIReceiveEvent, HTTPDisconnectEvent, HTTPRequestEvent

from trigate import http1, serving
from trigate.config import parse_config
from trigate.http1 import DirectBody as _DirectBody
from trigate.server import connection_limits, share_open_files
from trigate.serving import raise_open_file_limit
from trigate.sockets import FastStream

CHAT = b'{"model": "mock", "messages": [{"role": "user", "content": "hi"}]}'


def _chat(version: str = "1.1", *extra: str) -> bytes:
    head = [
        f"POST /v1/chat/completions HTTP/{version}",
        "host: gateway",
        f"authorization: Bearer {MASTER_KEY}",
        "content-type: application/json",
        f"content-length: {len(CHAT)}",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + CHAT


def _get(path: str, version: str = "1.1", *extra: str) -> bytes:
    head = [f"GET {path} HTTP/{version}", "host: gateway", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


async def _connect(gateway: RunningGateway) -> trio.SocketStream:
    url = httpx.URL(gateway.url)
    assert url.port is not None, url
    return await trio.open_tcp_stream(url.host, url.port)


async def _read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


def _declared_length(head: bytes) -> int:
    return next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )


async def _read_response(stream: trio.SocketStream) -> bytes:
    """One whole fixed-length response, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = _declared_length(head)
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head


REQUESTS = {
    "quart route, Connection: close": _get("/health/liveliness", "1.1", "connection: close"),
    "quart route, HTTP/1.0": _get("/health/liveliness", "1.0"),
    "quart 404, Connection: close": _get("/nowhere", "1.1", "connection: close"),
    "model API, Connection: close": _chat("1.1", "connection: close"),
    "model API, HTTP/1.0": _chat("1.0"),
    "model API 405, HTTP/1.0": _get("/v1/chat/completions", "1.0"),
}


@pytest.mark.parametrize("request_bytes", REQUESTS.values(), ids=REQUESTS.keys())
async def test_the_connection_closes_right_after_the_answer(
    nursery: trio.Nursery, request_bytes: bytes
) -> None:
    running = await start_gateway(nursery, mock_config())
    stream = await _connect(running)
    await stream.send_all(request_bytes)
    with trio.fail_after(5):
        answer = await _read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 ")
    await running.stop()


async def test_an_idle_keep_alive_connection_closes_at_keep_alive_timeout(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    config = {**mock_config(), "general_settings": {"keep_alive_timeout": 30}}
    running = await start_gateway(nursery, config)
    for request_bytes in (_chat(), _get("/health/liveliness")):
        stream = await _connect(running)
        await stream.send_all(request_bytes)
        assert b" 200 " in await _read_response(stream)
        started = trio.current_time()
        assert await _read_until_closed(stream) == b""
        assert 30 <= trio.current_time() - started < 31
    await running.stop()


async def test_each_idle_connection_closes_keep_alive_timeout_after_its_last_request(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    """The worker's one idle watch closes connections in the order their time comes: a
    request on a connection that was idle gives it a new keep-alive period, and the
    connection idle longer than it closes first."""
    config = {**mock_config(), "general_settings": {"keep_alive_timeout": 30}}
    running = await start_gateway(nursery, config)
    first, second = await _connect(running), await _connect(running)
    started = trio.current_time()
    closed: dict[str, float] = {}

    async def served(name: str, stream: trio.SocketStream, at: tuple[float, ...]) -> None:
        for offset in at:
            await trio.sleep_until(started + offset)
            await stream.send_all(_chat())
            assert b" 200 " in await _read_response(stream)
        assert await _read_until_closed(stream) == b""
        closed[name] = trio.current_time() - started

    async with trio.open_nursery() as clients:
        clients.start_soon(served, "first", first, (0, 20))
        clients.start_soon(served, "second", second, (10,))
    assert 40 <= closed["second"] < 41
    assert 50 <= closed["first"] < 51
    await running.stop()


async def test_a_kept_alive_connection_serves_the_next_request(nursery: trio.Nursery) -> None:
    running = await start_gateway(nursery, mock_config())
    stream = await _connect(running)
    for request_bytes in (_chat(), _get("/health/liveliness"), _chat()):
        await stream.send_all(request_bytes)
        with trio.fail_after(5):
            assert b" 200 " in await _read_response(stream)
    await stream.aclose()
    await running.stop()


async def test_a_body_sent_in_pieces_is_read_whole_and_the_connection_kept(
    nursery: trio.Nursery,
) -> None:
    """The app is handed a body's end as soon as its declared Content-Length has arrived
    (not when the server's empty closing part follows): a body that arrives in pieces
    is still read whole, and an answer sent right after the body (a 400 for bad JSON)
    leaves the connection able to carry the next request."""
    running = await start_gateway(nursery, mock_config())
    stream = await _connect(running)
    request = _chat()
    head, _, body = request.partition(b"\r\n\r\n")
    await stream.send_all(head + b"\r\n\r\n" + body[:10])
    for start in (10, 30):
        await trio.sleep(0.05)
        await stream.send_all(body[start : start + 20] if start == 10 else body[start:])
    with trio.fail_after(5):
        answer = await _read_response(stream)
    assert b" 200 " in answer
    assert b"connection: close" not in answer.lower()
    bad = b"{not json"
    bad_head = (
        _chat()
        .partition(b"\r\n\r\n")[0]
        .replace(f"content-length: {len(CHAT)}".encode(), f"content-length: {len(bad)}".encode())
    )
    for request_bytes, status in ((bad_head + b"\r\n\r\n" + bad, b"400"), (_chat(), b"200")):
        await stream.send_all(request_bytes)
        with trio.fail_after(5):
            answer = await _read_response(stream)
        assert answer.startswith(b"HTTP/1.1 " + status)
        assert b"connection: close" not in answer.lower()
    await stream.aclose()
    await running.stop()


@pytest.mark.parametrize(
    "opening",
    [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"GET /health/liveliness HTTP/1.1\r\nhost: x\r\n"],
    ids=["HTTP/2 preface only", "a request head never finished"],
)
async def test_a_client_that_never_sends_a_request_is_dropped(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock, opening: bytes
) -> None:
    """Within `request_body_timeout`, though keep-alive allows longer."""
    settings = {"keep_alive_timeout": 300, "request_body_timeout": 20}
    running = await start_gateway(nursery, {**mock_config(), "general_settings": settings})
    stream = await _connect(running)
    await stream.send_all(opening)
    started = trio.current_time()
    await _read_until_closed(stream)
    assert trio.current_time() - started <= 21
    await running.stop()


async def test_shutdown_does_not_wait_on_idle_clients(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    config = {**mock_config(), "general_settings": {"keep_alive_timeout": 3000}}
    running = await start_gateway(nursery, config)
    idle = []
    for request_bytes in (_chat(), _get("/health/liveliness")):
        stream = await _connect(running)
        await stream.send_all(request_bytes)
        await _read_response(stream)
        idle.append(stream)
    idle.append(await _connect(running))  # never sent a byte
    started = trio.current_time()
    await running.stop()
    assert trio.current_time() - started < 1
    for stream in idle:
        assert await _read_until_closed(stream) == b""


async def test_readiness_fails_from_the_moment_draining_starts(nursery: trio.Nursery) -> None:
    """A draining worker accepts no new connection, so the question is put to its app
    in-process while a stream it is still serving runs on."""
    slow = {"model_name": "slow", "litellm_params": {"model": "mock/m", "mock_chunk_delay": 0.2}}
    running = await start_gateway(nursery, {"model_list": [slow]})
    in_process = httpx.AsyncClient(
        # One ASGI app, typed two ways: Quart's call takes hypercorn's TypedDicts, httpx's
        # transport plain mappings.
        transport=httpx.ASGITransport(app=running.app),  # type: ignore[arg-type]
        base_url="http://x",
    )
    assert (await in_process.get("/health/readiness")).status_code == 200
    body = {"model": "slow", "messages": [{"role": "user", "content": "a b c d e"}], "stream": True}
    async with (
        running.client() as client,
        client.stream("POST", "/v1/chat/completions", json=body) as stream,
    ):
        nursery.start_soon(running.stop)
        # Draining starts when the stop reaches the server, a few steps of the loop away:
        # a fixed sleep could end first on a loaded machine.
        with trio.fail_after(30):  # against a hang, not a timing assertion
            while not running.gateway.draining:  # noqa: ASYNC110 - no event to wait for
                await trio.sleep(0.01)
        response = await in_process.get("/health/readiness")
        assert response.status_code == 503
        assert response.json()["status"] == "draining"
        assert (await stream.aread()).endswith(b"data: [DONE]\n\n")


async def test_concurrent_oversize_streamed_bodies_are_413_and_closed_cleanly(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """Clients that go on sending a chunked body past the cap, twenty at once: each gets
    its 413 and its connection closed, and the gateway logs no error for any of them."""
    config = {**mock_config(), "general_settings": {"max_request_size_mb": 0.01}}
    running = await start_gateway(nursery, config)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
        f"authorization: Bearer {MASTER_KEY}\r\ntransfer-encoding: chunked\r\n\r\n"
    ).encode()
    answers: list[bytes] = []

    async def oversize_upload() -> None:
        stream = await _connect(running)
        async with trio.open_nursery() as uploads:

            async def send_body() -> None:
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(head)
                    for _ in range(50):
                        await stream.send_all(b"fa0\r\n" + b"x" * 4000 + b"\r\n")

            uploads.start_soon(send_body)
            answers.append(await _read_until_closed(stream))

    with trio.fail_after(20):
        async with trio.open_nursery() as clients:
            for _ in range(20):
                clients.start_soon(oversize_upload)
    assert len(answers) == 20
    assert all(answer.startswith(b"HTTP/1.1 413 ") for answer in answers)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await running.stop()


async def test_a_full_worker_closes_its_longest_idle_connection_for_a_new_one(
    nursery: trio.Nursery,
) -> None:
    config = {**mock_config(), "general_settings": {"max_connections": 3}}
    running = await start_gateway(nursery, config)
    idle = []
    for _ in range(3):
        stream = await _connect(running)
        await stream.send_all(_get("/health/liveliness"))
        await _read_response(stream)
        idle.append(stream)
    newcomer = await _connect(running)
    await newcomer.send_all(_chat())
    with trio.fail_after(5):
        assert b" 200 " in await _read_response(newcomer)
        assert await _read_until_closed(idle[0]) == b""
    for stream in idle[1:]:  # the others are still served
        await stream.send_all(_get("/health/liveliness"))
        with trio.fail_after(5):
            assert b" 200 " in await _read_response(stream)
    await running.stop()


async def test_a_worker_full_of_busy_connections_accepts_once_one_ends(
    nursery: trio.Nursery,
) -> None:
    # The two busy connections' answers wait for the test, not for a delay a loaded
    # machine could outlast (or the gateway take longer than to accept them).
    release = trio.Event()
    upstream = FakeUpstream(lambda request: JSONReply(chat_completion(), gate=release))
    await upstream.start(nursery)
    config = openai_config(upstream)
    config["model_list"][0]["model_name"] = "slow"
    config["general_settings"] = {"max_connections": 2}
    running = await start_gateway(nursery, config)
    busy = [await _connect(running) for _ in range(2)]
    for stream in busy:
        await stream.send_all(_chat().replace(b'"mock"', b'"slow"'))
    with trio.fail_after(30):  # both accepted, and busy upstream
        await upstream.wait_for(lambda: len(upstream.requests) == 2)
    waiting = await _connect(running)  # the kernel's backlog takes it
    await waiting.send_all(_get("/health/liveliness"))
    with trio.move_on_after(0.2):
        await waiting.receive_some(1)
        raise AssertionError("a third connection was served while two were busy")
    release.set()
    with trio.fail_after(30):
        for stream in busy:
            assert b" 200 " in await _read_response(stream)
        assert b" 200 " in await _read_response(waiting)
    await running.stop()


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        assert raise_open_file_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_max_connections_is_lowered_to_what_the_open_file_limit_holds() -> None:
    config = parse_config({"general_settings": {"max_connections": 10_000}}, {})
    assert connection_limits(config, open_files=100_000).max_connections == 10_000
    limits = connection_limits(config, open_files=2_000)
    assert limits.max_connections == limits.max_upstream_connections == (2_000 - 64) // 2


def test_a_low_open_file_limit_is_shared_between_clients_and_the_upstream_pool(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At a hard limit of 1,024 the default upstream pool (1,000) left clients 16."""
    config = parse_config({}, {})
    limits = share_open_files(config, open_files=1_024)
    assert limits.max_connections == limits.max_upstream_connections == (1_024 - 64) // 2
    assert config.general_settings.max_upstream_connections == limits.max_upstream_connections
    assert "holds 480 client and 480 upstream connections" in caplog.text
    small_pool = parse_config({"general_settings": {"max_upstream_connections": 100}}, {})
    limits = share_open_files(small_pool, open_files=1_024)
    assert (limits.max_connections, limits.max_upstream_connections) == (1_024 - 64 - 100, 100)


async def test_clients_leaving_as_their_408_goes_out_log_no_error(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """Each client gives up (closes, its body unsent) just as the gateway's body timeout
    answers 408. Hypercorn then closes the connection from one task while its reader
    answers the cut-short body from another; the two must not collide on the socket.
    (Real time: a second is short, and a virtual clock would not race the two.)"""
    settings = {"request_body_timeout": 1}
    running = await start_gateway(nursery, {**mock_config(), "general_settings": settings})
    head = (
        _chat()
        .partition(b"\r\n\r\n")[0]
        .replace(f"content-length: {len(CHAT)}".encode(), b"content-length: 100")
    )

    async def give_up_after_the_timeout() -> None:
        stream = await _connect(running)
        await stream.send_all(head + b"\r\n\r\n{")
        await trio.sleep(1)
        await stream.aclose()

    async with trio.open_nursery() as clients:
        for _ in range(50):
            clients.start_soon(give_up_after_the_timeout)
    await trio.sleep(1)
    await running.stop()
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == [], errors[0].exc_info


async def test_an_answer_before_the_body_has_arrived_says_connection_close(
    nursery: trio.Nursery,
) -> None:
    """The admin API refuses a request without a key before reading its body; the client
    is still sending it, so the connection cannot carry another request: the answer says
    so (`Connection: close`), and the connection closes after it."""
    running = await start_gateway(nursery, mock_config())
    stream = await _connect(running)
    head = b"POST /key/generate HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
    await stream.send_all(head + b"content-length: 100000\r\n\r\n{")
    with trio.fail_after(5):
        answer = await _read_until_closed(stream)
    status, *headers = answer.partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert status.startswith(b"HTTP/1.1 401")
    assert b"connection: close" in [header.lower() for header in headers]
    await running.stop()


@pytest.mark.parametrize(
    "target",
    [
        "%2fkey%2finfo",
        "/key%2finfo",
        "/key%2Finfo",
        "/v1%5ckey/info",
        "/v1/%2e%2e/key/info",
        "/v1/%2E/chat/completions",
        "/v1/../key/info",
    ],
)
async def test_a_path_with_encoded_separators_or_dot_segments_is_refused(
    nursery: trio.Nursery, target: str
) -> None:
    """A fronting proxy's path rules see the raw target; the gateway must not serve a
    path they would not have recognised (`%2fkey%2finfo` as `/key/info`)."""
    running = await start_gateway(nursery, mock_config())
    stream = await _connect(running)
    extra = (f"authorization: Bearer {MASTER_KEY}", "connection: close")
    await stream.send_all(_get(target, "1.1", *extra))
    with trio.fail_after(5):
        answer = await _read_until_closed(stream)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert orjson.loads(body)["error"]["code"] == "invalid_request_path"
    await running.stop()


async def test_an_impossible_chunk_size_is_refused_at_once(nursery: trio.Nursery) -> None:
    """A chunk of 2^80 bytes can never arrive: 400 now, not a 408 when the body timeout
    (here an hour) runs out."""
    settings = {"request_body_timeout": 3600}
    running = await start_gateway(nursery, {**mock_config(), "general_settings": settings})
    stream = await _connect(running)
    head = (
        _chat()
        .partition(b"\r\n\r\n")[0]
        .replace(f"content-length: {len(CHAT)}".encode(), b"transfer-encoding: chunked")
    )
    await stream.send_all(head + b"\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\n{")
    with trio.fail_after(5):
        answer = await _read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 400 ")
    await running.stop()


STREAM_CHAT = b'{"model": "mock", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'


def _stream_chat(version: str = "1.1", *extra: str, model: str = "mock") -> bytes:
    body = STREAM_CHAT.replace(b'"mock"', orjson.dumps(model))
    request = _chat(version, *extra).replace(CHAT, body)
    return request.replace(
        f"content-length: {len(CHAT)}".encode(), b"content-length: %d" % len(body)
    )


async def _read_chunked_response(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    """One chunked response, its framing checked strictly: (head, decoded body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    body = b""
    while True:
        while b"\r\n" not in rest:
            rest += await stream.receive_some(65536)
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        while len(rest) < size + 2:
            rest += await stream.receive_some(65536)
        assert rest[size : size + 2] == b"\r\n", "a chunk must end in CRLF"
        body, rest = body + rest[:size], rest[size + 2 :]
        if size == 0:
            assert rest == b"", "nothing may follow the last chunk"
            return head, body


def _frames(body: bytes) -> list[bytes]:
    events = [event for event in body.split(b"\n\n") if event]
    assert all(event.startswith(b"data: ") for event in events)
    return [event.removeprefix(b"data: ") for event in events]


@pytest.fixture
def direct_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every piece of a streamed body written by the server's direct writer."""
    written: list[bytes] = []
    write = _DirectBody.write
    try_write = _DirectBody.try_write

    async def counted(self: _DirectBody, data: bytes) -> None:
        written.append(data)
        await write(self, data)

    def tried(self: _DirectBody, data: bytes) -> bytes | None:
        rest = try_write(self, data)
        if rest is not None:
            written.append(data)
        return rest

    monkeypatch.setattr(_DirectBody, "write", counted)
    monkeypatch.setattr(_DirectBody, "try_write", tried)
    return written


async def test_a_stream_written_directly_is_chunked_and_keeps_the_connection_alive(
    nursery: trio.Nursery, direct_writes: list[bytes]
) -> None:
    running = await start_gateway(nursery, mock_config())
    stream = await _connect(running)
    for _ in range(2):
        await stream.send_all(_stream_chat())
        with trio.fail_after(5):
            head, body = await _read_chunked_response(stream)
        assert head.startswith(b"HTTP/1.1 200 ")
        frames = _frames(body)
        assert frames[-1] == b"[DONE]"
        assert all(
            orjson.loads(frame)["object"] == "chat.completion.chunk" for frame in frames[:-1]
        )
    # The same connection serves a plain request after the streams.
    await stream.send_all(_chat())
    with trio.fail_after(5):
        assert b" 200 " in await _read_response(stream)
    assert direct_writes, "the stream's body went through hypercorn's path"
    await stream.aclose()
    await running.stop()


async def test_a_stream_written_directly_honours_connection_close(
    nursery: trio.Nursery, direct_writes: list[bytes]
) -> None:
    running = await start_gateway(nursery, mock_config())
    stream = await _connect(running)
    await stream.send_all(_stream_chat("1.1", "connection: close"))
    with trio.fail_after(5):
        head, body = await _read_chunked_response(stream)
        assert await _read_until_closed(stream) == b""
    assert b"connection: close" in head.lower()
    assert _frames(body)[-1] == b"[DONE]"
    assert direct_writes
    await running.stop()


async def test_a_stream_written_directly_to_an_http_1_0_client_ends_with_the_connection(
    nursery: trio.Nursery, direct_writes: list[bytes]
) -> None:
    """HTTP/1.0 has no chunked encoding: the body is the bytes until the close."""
    running = await start_gateway(nursery, mock_config())
    stream = await _connect(running)
    await stream.send_all(_stream_chat("1.0"))
    with trio.fail_after(5):
        answer = await _read_until_closed(stream)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower()
    frames = _frames(body)
    assert frames[-1] == b"[DONE]"
    assert all(orjson.loads(frame)["object"] == "chat.completion.chunk" for frame in frames[:-1])
    assert direct_writes and not any(piece.endswith(b"\r\n") for piece in direct_writes)
    await running.stop()


@pytest.fixture
def tried_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes | None]]:
    """Every piece the relay's reader offered the connection itself (`try_write`), and
    what was left of it (None: nothing written)."""
    tried: list[tuple[bytes, bytes | None]] = []
    try_write = _DirectBody.try_write

    def recorded(self: _DirectBody, data: bytes) -> bytes | None:
        rest = try_write(self, data)
        tried.append((data, rest))
        return rest

    monkeypatch.setattr(_DirectBody, "try_write", recorded)
    return tried


def _trickle(words: list[str], pause: float, size: int = 0) -> StreamReply:
    """A stream whose chunks come one at a time, `pause` seconds apart, as a model's do."""
    frames: list[bytes | float | trio.Event] = []
    for word in words:
        frames += [chunk(word + "x" * size), pause]
    frames += [chunk(finish="stop"), usage_chunk(5, len(words)), DONE]
    return StreamReply(frames)


async def test_a_trickling_stream_is_written_by_its_reader(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    tried_writes: list[tuple[bytes, bytes | None]],
) -> None:
    """Each chunk that arrives on its own goes to the client from the reader, without
    waking the writer; the stream's end (the usage chunk, `[DONE]`) in one write; the
    next requests on the connection read cleanly."""
    words = ["Once ", "upon ", "a ", "time"]
    upstream.handler = lambda request: _trickle(words, 0.02)
    running = await start_gateway(nursery, openai_config(upstream))
    stream = await _connect(running)
    for _ in range(2):
        tried_writes.clear()
        await stream.send_all(_stream_chat(model="gpt-test"))
        with trio.fail_after(5):
            _, body = await _read_chunked_response(stream)
        contents = [
            orjson.loads(frame)["choices"][0]["delta"].get("content")
            for frame in _frames(body)[:-1]
        ]
        assert "".join(filter(None, contents)) == "".join(words)
        written = [data for data, rest in tried_writes if rest == b""]
        assert [data for data in written if b'"content"' in data] == [
            chunk(word) for word in words
        ], "each chunk went out on its own, written by the reader"
        *_, (last, rest) = tried_writes
        assert rest == b"" and last.endswith(DONE)
    # A plain request next (its model unknown here): the answer is the first bytes read.
    await stream.send_all(_chat())
    with trio.fail_after(5):
        assert (await _read_response(stream)).startswith(b"HTTP/1.1 404 ")
    await stream.aclose()
    await running.stop()


async def test_a_trickling_stream_to_a_client_that_stops_reading_arrives_whole(
    nursery: trio.Nursery, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A piece the client's socket takes only in part: its rest goes out through the
    writer before anything else, so the framing holds, and nothing is lost."""
    written_in_part = trio.Event()
    try_write = _DirectBody.try_write

    def watched(self: _DirectBody, data: bytes) -> bytes | None:
        rest = try_write(self, data)
        if rest:
            written_in_part.set()
        return rest

    monkeypatch.setattr(_DirectBody, "try_write", watched)
    words = [f"w{index} " for index in range(200)]
    upstream.handler = lambda request: _trickle(words, 0.002, size=8 * 1024)
    running = await start_gateway(nursery, openai_config(upstream))
    url = httpx.URL(running.url)
    sock = trio.socket.socket()
    # A small receive window: the gateway's socket fills after a few pieces.
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 8 * 1024)
    await sock.connect((url.host, url.port))
    stream = trio.SocketStream(sock)
    try:
        await stream.send_all(_stream_chat(model="gpt-test"))
        with trio.fail_after(10):
            await written_in_part.wait()  # the client reads nothing until then
            _, body = await _read_chunked_response(stream)
        contents = [
            orjson.loads(frame)["choices"][0]["delta"].get("content")
            for frame in _frames(body)[:-1]
        ]
        assert "".join(filter(None, contents)) == "".join(word + "x" * 8 * 1024 for word in words)
        await stream.send_all(_chat())
        with trio.fail_after(5):
            assert (await _read_response(stream)).startswith(b"HTTP/1.1 404 ")
    finally:
        await stream.aclose()
    await running.stop()


async def test_a_client_leaving_a_stream_written_directly_closes_its_upstream(
    nursery: trio.Nursery, upstream: FakeUpstream, direct_writes: list[bytes]
) -> None:
    upstream.handler = lambda request: StreamReply([chunk("Once ")], tail=chunk("more "))
    running = await start_gateway(nursery, openai_config(upstream))
    stream = await _connect(running)
    await stream.send_all(_stream_chat(model="gpt-test"))
    with trio.fail_after(5):
        while len(direct_writes) < 3:
            await stream.receive_some(65536)
    await stream.aclose()
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
        [record] = await running.records.wait_for(1)
    assert record.status == 499
    await running.stop()


@pytest.fixture
def answer_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write of the gateway's that begins a response (its upstream requests begin
    otherwise): each system call's first attempt, whichever path made it."""
    written: list[bytes] = []
    try_send = FastStream.try_send

    def counted(self: FastStream, data: bytes | bytearray | memoryview) -> int:
        if bytes(data[:7]) == b"HTTP/1.":
            written.append(bytes(data))
        return try_send(self, data)

    monkeypatch.setattr(FastStream, "try_send", counted)
    return written


@pytest.mark.parametrize(
    "requests",
    [
        [_chat(), _get("/health/liveliness"), _chat("1.1", "connection: close")],
        [_get("/nowhere", "1.0")],
    ],
    ids=["keep-alive, then Connection: close", "a 404 to HTTP/1.0"],
)
async def test_a_fixed_length_answer_goes_out_in_one_write(
    nursery: trio.Nursery, answer_writes: list[bytes], requests: list[bytes]
) -> None:
    """Head and body together: hypercorn alone writes them in two system calls."""
    running = await start_gateway(nursery, mock_config())
    stream = await _connect(running)
    for request_bytes in requests:
        await stream.send_all(request_bytes)
        with trio.fail_after(5):
            await _read_response(stream)
    with trio.fail_after(5):
        assert await _read_until_closed(stream) == b""
    assert len(answer_writes) == len(requests)
    for written in answer_writes:
        head, _, body = written.partition(b"\r\n\r\n")
        assert 0 < _declared_length(head) == len(body)
    await running.stop()


@pytest.mark.parametrize(
    "request_bytes",
    [
        _get("/health/liveliness", "1.1", "connection: close").replace(b"GET", b"HEAD", 1),
        b"GET /health/liveliness HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
    ],
    ids=["HEAD", "hypercorn's own 400"],
)
async def test_an_answer_without_body_bytes_is_not_held(
    nursery: trio.Nursery, answer_writes: list[bytes], request_bytes: bytes
) -> None:
    running = await start_gateway(nursery, mock_config())
    stream = await _connect(running)
    await stream.send_all(request_bytes)
    with trio.fail_after(5):
        answer = await _read_until_closed(stream)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 ") and body == b""
    assert answer_writes == [answer]
    await running.stop()


async def test_a_large_answer_to_a_slow_reader_arrives_whole_and_keeps_the_connection(
    nursery: trio.Nursery, upstream: FakeUpstream, answer_writes: list[bytes]
) -> None:
    """An answer bigger than the socket takes at once, and than a head is joined to: the
    head goes out on its own, then the body, the rest written as the client makes room
    (under hypercorn's send lock: nothing else may come between). The next answer on the
    connection follows it intact."""
    content = "".join(f"{i:07d} " for i in range(120_000))  # ~1 MB of checkable text
    upstream.handler = lambda request: JSONReply(chat_completion(content))
    running = await start_gateway(nursery, openai_config(upstream))
    stream = await _connect(running)
    request = (
        _chat()
        .replace(b'"mock"', b'"gpt-test"')
        .replace(b"content-length: 66", b"content-length: 70")
    )
    for _ in range(2):
        await stream.send_all(request)
        # The client starts reading late: a megabyte fills the socket before that.
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(10):
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            while len(body) < _declared_length(head):
                body += await stream.receive_some(65536)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert len(body) == _declared_length(head)
        assert orjson.loads(body)["choices"][0]["message"]["content"] == content
    # Each head was written alone: its body was too long to be copied behind it.
    assert [written.endswith(b"\r\n\r\n") for written in answer_writes] == [True, True]
    await stream.aclose()
    await running.stop()


@pytest.fixture
def h11_responses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The status of every response that went through h11's `send`, event by event,
    rather than whole (`_Connection.send_whole`)."""
    statuses: list[int] = []
    send = h11.Connection.send

    def counted(self: h11.Connection, event: h11._events.Event) -> bytes | None:
        if isinstance(event, h11.Response):
            statuses.append(event.status_code)
        return send(self, event)

    monkeypatch.setattr(h11.Connection, "send", counted)
    return statuses


# Fields whose values are the same for the same answer (others carry ids and times).
_STEADY = (b"content-type", b"content-length", b"server", b"x-litellm-model-group")


def _head_shape(head: bytes) -> list[bytes]:
    """A response head as its status line, then each field's name in order, with the
    value where it does not vary from answer to answer."""
    lines = head.split(b"\r\n")
    shape = [lines[0]]
    for line in lines[1:]:
        name = line.partition(b": ")[0]
        shape.append(line if name.lower() in _STEADY else name)
    return shape


async def _answers(running: RunningGateway, requests: list[bytes]) -> list[bytes]:
    stream = await _connect(running)
    heads = []
    for request_bytes in requests:
        await stream.send_all(request_bytes)
        with trio.fail_after(5):
            heads.append(await _read_response(stream))
    await stream.aclose()
    return heads


async def test_a_whole_answer_is_written_as_h11_writes_it(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, h11_responses: list[int]
) -> None:
    """The same answers, on one kept-alive connection, from the lean path and from
    hypercorn's without the shortcut: the same status lines, fields and framing, and
    only hypercorn's path goes through h11."""
    running = await start_gateway(nursery, mock_config())
    requests = [_chat(), _get("/health/liveliness"), _get("/nowhere"), _chat()]
    whole = await _answers(running, requests)
    assert h11_responses == []

    async def declined(*_: object) -> bool:
        return False

    monkeypatch.setattr(serving._Connection, "send_whole", declined)
    monkeypatch.setattr(http1.LeanConnection, "serves", staticmethod(lambda config: False))
    by_events = await _answers(running, requests)
    assert h11_responses == [200, 200, 404, 200]
    assert [_head_shape(head) for head in whole] == [_head_shape(head) for head in by_events]
    await running.stop()


@pytest.mark.parametrize(
    "request_bytes",
    [
        _chat("1.1", "connection: close"),
        _chat("1.0"),
        _get("/health/liveliness", "1.1").replace(b"GET", b"HEAD", 1),
    ],
    ids=["Connection: close", "HTTP/1.0", "HEAD"],
)
async def test_answers_that_end_or_strip_take_h11s_path(
    nursery: trio.Nursery, h11_responses: list[int], request_bytes: bytes
) -> None:
    """What h11 would rewrite (Connection: close, HTTP/1.0's framing, HEAD's missing
    body) is left to h11: the shortcut declines, and the answer is h11's."""
    running = await start_gateway(nursery, mock_config())
    stream = await _connect(running)
    await stream.send_all(request_bytes)
    with trio.fail_after(5):
        answer = await _read_until_closed(stream) if b"HEAD" not in request_bytes else b""
        if not answer:
            answer = await stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 200")
    assert h11_responses == [200]
    await running.stop()


async def test_the_last_request_a_connection_may_carry_is_answered_with_its_close(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, h11_responses: list[int]
) -> None:
    """At hypercorn's `keep_alive_max_requests`, the answer says Connection: close (which
    only h11's path adds) and the connection ends after it."""
    monkeypatch.setattr(hypercorn.config.Config, "keep_alive_max_requests", 2)
    running = await start_gateway(nursery, mock_config())
    stream = await _connect(running)
    await stream.send_all(_chat())
    with trio.fail_after(5):
        first = await _read_response(stream)
    await stream.send_all(_chat())
    with trio.fail_after(5):
        last = await _read_until_closed(stream)
    assert b"connection: close" not in first.lower()
    assert b"connection: close" in last.lower()
    assert h11_responses == [200]
    await running.stop()


async def test_a_streamed_answers_head_is_written_as_h11_writes_it(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, h11_responses: list[int]
) -> None:
    """A stream's head, written by the gateway, then by h11 (its shortcut declined for
    a connection at its last request): the same fields and chunked framing, and the
    body framed by h11 the same way after either (hypercorn's path: the lean one never
    asks h11 for a plain answer)."""
    monkeypatch.setattr(http1.LeanConnection, "serves", staticmethod(lambda config: False))
    running = await start_gateway(nursery, mock_config())
    stream = await _connect(running)
    await stream.send_all(_stream_chat())
    with trio.fail_after(5):
        head, body = await _read_chunked_response(stream)
    assert h11_responses == []
    monkeypatch.setattr(serving._H11Protocol, "_answers_plainly", lambda *_: False)
    await stream.send_all(_stream_chat())
    with trio.fail_after(5):
        by_h11, body_by_h11 = await _read_chunked_response(stream)
    assert h11_responses == [200]
    assert _head_shape(head) == _head_shape(by_h11)
    assert head.lower().endswith(b"transfer-encoding: chunked")
    assert body.count(b"data: ") == body_by_h11.count(b"data: ") > 2
    await stream.aclose()
    await running.stop()


async def test_the_app_queue_waits_for_events_and_for_room_in_order() -> None:
    """A request's ASGI events: a get waits for the next put, a put waits while the
    queue is full, and a cancelled wait leaves the queue as it was."""
    queue = http1.AppQueue(2)
    got: list[object] = []

    async def get_three() -> None:
        got.extend([await queue.get() for _ in range(3)])

    events: list[ASGIReceiveEvent] = [
        HTTPRequestEvent(type="http.request", body=b"%d" % index, more_body=True)
        for index in range(5)
    ]
    gone = HTTPDisconnectEvent(type="http.disconnect")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(get_three)
        await trio.testing.wait_all_tasks_blocked()
        for event in events[:3]:
            await queue.put(event)
    assert got == events[:3]
    await queue.put(events[3])
    await queue.put(events[4])
    with trio.move_on_after(0.05) as waited:
        await queue.put(gone)
    assert waited.cancelled_caught, "a full queue made room for a third event"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.put, gone)
        await trio.testing.wait_all_tasks_blocked()
        assert await queue.get() == events[3]
    assert [await queue.get(), await queue.get()] == [events[4], gone]
    with trio.move_on_after(0.05) as waited:
        await queue.get()
    assert waited.cancelled_caught

"""HTTP11Transport against real Trio servers on loopback.

Each server is a trio TCP server started in the test's nursery and speaking HTTP/1.1
through h11, so what is asserted is what went over the wire: accepted connections, the
requests seen, and whether the server saw the client close its socket.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import h11
import httpx
import pytest
import trio
import trio.testing
import trustme

from trigate.read_deadlines import ReadDeadlines, TimedOut
from trigate.transport import (
    _MORE,
    HTTP11Transport,
    ResponseTooLarge,
    _ChunkedReader,
    read_whole_body,
    waits_next_of,
)

Handler = Callable[["Peer"], Awaitable[None]]


class Server:
    """What a test server saw."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self.targets: list[bytes] = []

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"


class Peer:
    """The server end of one connection."""

    def __init__(self, server: Server, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER)

    async def receive(self) -> bytes:
        """Next bytes from the client; b"" once it closed or reset the connection."""
        try:
            return bytes(await self.stream.receive_some(65536))
        except trio.BrokenResourceError:
            return b""

    async def request(self) -> tuple[bytes, bytes] | None:
        """The next request's target and body, or None when the client closed instead."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        body = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.receive())
            elif isinstance(event, h11.Request):
                self.server.targets.append(event.target)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return self.server.targets[-1], body
            else:
                return None

    async def send(self, *events: h11.Event) -> None:
        data = b""
        for event in events:
            written = self.h11.send(event)
            assert written is not None, event  # h11 writes nothing only for ConnectionClosed
            data += written
        await self.stream.send_all(data)

    async def respond(
        self, body: bytes = b"ok", headers: list[tuple[str, str]] | None = None
    ) -> None:
        headers = headers or [("content-length", str(len(body)))]
        await self.send(
            h11.Response(status_code=200, headers=headers, reason=b"OK"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )

    async def hang_up(self, reset: bool = False) -> None:
        if reset:
            # Linger 0 makes close() send RST instead of FIN, on the TCP stream under any TLS.
            tcp = self.stream
            if isinstance(tcp, trio.SSLStream):
                tcp = tcp.transport_stream
            assert isinstance(tcp, trio.SocketStream)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.stream.aclose()

    async def wait_closed(self) -> None:
        """Return once the client closed the connection (EOF or reset)."""
        while await self.receive():
            pass


async def answer(peer: Peer) -> None:
    """Keep-alive handler answering every request with its target."""
    while (got := await peer.request()) is not None:
        await peer.respond(b"ok " + got[0])


async def serve(
    nursery: trio.Nursery, handler: Handler = answer, ssl_context: ssl.SSLContext | None = None
) -> Server:
    server = Server()

    async def on_connection(stream: trio.abc.Stream) -> None:
        server.accepted += 1
        if ssl_context is not None:
            stream = trio.SSLStream(stream, ssl_context, server_side=True)
        try:
            await handler(Peer(server, stream))
        except trio.BrokenResourceError:
            pass  # the client hung up: several tests do that on purpose
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(partial(trio.serve_tcp, on_connection, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server


def client(**kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=HTTP11Transport(**kwargs))


async def observed(event: trio.Event) -> None:
    # Only a guard against hanging on a regression; never reached when things work.
    with trio.fail_after(10):
        await event.wait()


async def test_keep_alive_reuses_one_connection(nursery: trio.Nursery) -> None:
    server = await serve(nursery)
    async with client() as c:
        first = await c.get(server.url("/a?x=1"))
        second = await c.get(server.url("/b"))
    assert (first.status_code, first.content, second.content) == (200, b"ok /a?x=1", b"ok /b")
    assert first.http_version == "HTTP/1.1"
    assert first.reason_phrase == "OK"
    assert server.accepted == 1


async def test_request_bodies_bytes_and_streamed(nursery: trio.Nursery) -> None:
    async def echo(peer: Peer) -> None:
        while (got := await peer.request()) is not None:
            await peer.respond(got[1])

    async def parts() -> AsyncIterator[bytes]:
        yield b'{"stream'
        yield b'ed": 1}'

    server = await serve(nursery, echo)
    async with client() as c:
        fixed = await c.post(server.url(), content=b'{"a": 1}')
        streamed = await c.post(server.url(), content=parts())
        empty = await c.post(server.url(), content=b"")
    assert (fixed.content, streamed.content, empty.content) == (
        b'{"a": 1}',
        b'{"streamed": 1}',
        b"",
    )
    assert server.accepted == 1


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@dataclass(frozen=True)
class TLS:
    """A test server's TLS context with a certificate for 127.0.0.1, and a client's
    context that trusts it."""

    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def tls(ca: trustme.CA) -> TLS:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return TLS(server, client)


async def test_tls_with_trusted_certificate(nursery: trio.Nursery, tls: TLS) -> None:
    server = await serve(nursery, answer, tls.server)
    async with client(ssl_context=tls.client) as c:
        first = await c.get(server.url("/a", scheme="https"))
        second = await c.get(server.url("/b", scheme="https"))
    assert (first.content, second.content) == (b"ok /a", b"ok /b")
    assert server.accepted == 1


async def test_tls_with_untrusted_certificate_is_connect_error(
    nursery: trio.Nursery, tls: TLS
) -> None:
    server = await serve(nursery, answer, tls.server)
    async with client() as c:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await c.get(server.url(scheme="https"))


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize("idle_check", [True, False], ids=["checked", "unchecked"])
async def test_idle_connection_closed_by_server_is_replaced(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, reset: bool, idle_check: bool
) -> None:
    if not idle_check:
        # Blind the liveness check on checkout, so that the request really goes out on the
        # dead socket and the retry has to catch it (failed send or EOF before any response).
        with trio.socket.socket() as probe:
            monkeypatch.setattr(type(probe), "is_readable", lambda self: False)
    closed = trio.Event()

    async def one_request_per_connection(peer: Peer) -> None:
        await peer.request()
        await peer.respond()
        await peer.hang_up(reset)
        closed.set()

    server = await serve(nursery, one_request_per_connection)
    async with client() as c:
        assert (await c.get(server.url())).content == b"ok"
        await observed(closed)
        assert (await c.post(server.url(), content=b"{}")).content == b"ok"
    assert server.accepted == 2


def dies_after_first_response(reset: bool = False) -> Handler:
    """First connection: answer one request, then take the next one and hang up on it.

    That is the race of a server closing an idle connection just as the client reuses it.
    """

    async def handler(peer: Peer) -> None:
        if peer.server.accepted > 1:
            await answer(peer)
            return
        await peer.request()
        await peer.respond()
        await peer.request()
        await peer.hang_up(reset)

    return handler


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_stale_connection_is_retried_on_a_fresh_one(
    nursery: trio.Nursery, reset: bool
) -> None:
    server = await serve(nursery, dies_after_first_response(reset))
    async with client() as c:
        await c.get(server.url("/1"))
        second = await c.post(server.url("/2"), content=b"{}")
    assert second.content == b"ok /2"
    assert server.targets == [b"/1", b"/2", b"/2"]
    assert server.accepted == 2


@pytest.mark.parametrize(
    "retries_on_stale",
    [pytest.param(True, id="streamed-body"), pytest.param(False, id="retries-disabled")],
)
async def test_stale_connection_not_retried_without_replayable_body_or_when_disabled(
    nursery: trio.Nursery, retries_on_stale: bool
) -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"{}"

    server = await serve(nursery, dies_after_first_response())
    async with client(retries_on_stale=retries_on_stale) as c:
        await c.get(server.url("/1"))
        content = parts() if retries_on_stale else b"{}"
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await c.post(server.url("/2"), content=content)
    assert server.accepted == 1


async def test_fresh_connection_closed_without_response_is_not_retried(
    nursery: trio.Nursery,
) -> None:
    async def hang_up(peer: Peer) -> None:
        await peer.request()

    server = await serve(nursery, hang_up)
    async with client() as c:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await c.get(server.url())
    assert server.accepted == 1


def holding(release: trio.Event) -> Handler:
    """Answers /hold with one chunk and the rest only after `release`; others right away."""

    async def handler(peer: Peer) -> None:
        while (got := await peer.request()) is not None:
            if got[0] != b"/hold":
                await peer.respond()
                continue
            headers = [("transfer-encoding", "chunked")]
            await peer.send(h11.Response(status_code=200, headers=headers), h11.Data(data=b"a"))
            await release.wait()
            await peer.send(h11.Data(data=b"b"), h11.EndOfMessage())

    return handler


async def test_pool_limit_makes_second_request_wait(nursery: trio.Nursery) -> None:
    release = trio.Event()
    server = await serve(nursery, holding(release))
    results: list[httpx.Response] = []
    async with client(max_connections=1) as c:
        held = await c.send(c.build_request("GET", server.url("/hold")), stream=True)

        async def second() -> None:
            results.append(await c.get(server.url("/second")))

        async with trio.open_nursery() as waiting:
            waiting.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            assert (server.targets, results) == ([b"/hold"], [])
            release.set()
            assert await held.aread() == b"ab"
    assert results[0].content == b"ok"
    assert server.targets == [b"/hold", b"/second"]
    assert server.accepted == 1


async def test_pool_timeout(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    server = await serve(nursery, holding(trio.Event()))
    async with client(max_connections=1) as c:
        held = await c.send(c.build_request("GET", server.url("/hold")), stream=True)
        with pytest.raises(httpx.PoolTimeout):
            await c.get(server.url("/second"), timeout=httpx.Timeout(5.0, pool=1.0))
        await held.aclose()
    assert server.targets == [b"/hold"]


async def test_full_pool_evicts_idle_connection_of_another_origin(
    nursery: trio.Nursery,
) -> None:
    evicted = trio.Event()

    async def answer_then_watch(peer: Peer) -> None:
        await peer.request()
        await peer.respond()
        await peer.wait_closed()
        evicted.set()

    first = await serve(nursery, answer_then_watch)
    second = await serve(nursery)
    async with client(max_connections=1) as c:
        await c.get(first.url())
        assert (await c.get(second.url("/x"))).content == b"ok /x"
        await observed(evicted)


async def test_connection_refused_is_connect_error() -> None:
    with trio.socket.socket() as bound_not_listening:
        await bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]
        async with client() as c:
            with pytest.raises(httpx.ConnectError):
                await c.get(f"http://127.0.0.1:{port}/")


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs")
async def test_connect_timeout(autojump_clock: trio.abc.Clock) -> None:
    with trio.socket.socket() as listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # A backlog of 0 queues one established connection; while it sits unaccepted, Linux
        # drops further SYNs, so the next connect hangs.
        async with await trio.open_tcp_stream("127.0.0.1", port), client() as c:
            with pytest.raises(httpx.ConnectTimeout):
                await c.get(f"http://127.0.0.1:{port}/", timeout=httpx.Timeout(5.0, connect=1.0))


async def test_stalled_tls_handshake_is_connect_timeout(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    gave_up = trio.Event()

    async def never_speak_tls(peer: Peer) -> None:
        await peer.wait_closed()
        gave_up.set()

    server = await serve(nursery, never_speak_tls)
    async with client() as c:
        with pytest.raises(httpx.ConnectTimeout):
            await c.get(server.url(scheme="https"), timeout=httpx.Timeout(5.0, connect=1.0))
    await observed(gave_up)


async def test_read_timeout_closes_the_socket(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    gave_up = trio.Event()

    async def never_answer(peer: Peer) -> None:
        await peer.request()
        await peer.wait_closed()
        gave_up.set()

    server = await serve(nursery, never_answer)
    async with client() as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.get(server.url(), timeout=httpx.Timeout(5.0, read=2.0))
    await observed(gave_up)


class KeptDeadlines(ReadDeadlines):
    """Read deadlines that count what they did: the reads parked with them, and the
    reads they timed out (a read that opened a cancel scope would do neither)."""

    __slots__ = ("parked", "timed_out")

    def __init__(self) -> None:
        super().__init__()
        self.parked = 0
        self.timed_out = 0

    def park(self, waiter: TimedOut, timeout: float) -> None:
        self.parked += 1
        super().park(waiter, timeout)

    def _expire(self, now: float) -> None:
        before = len(self._parked)
        super()._expire(now)
        self.timed_out += before - len(self._parked)


async def kept_client(
    nursery: trio.Nursery, **kwargs: Any
) -> tuple[httpx.AsyncClient, KeptDeadlines]:
    """A client whose transport's read deadlines are kept by a task, as in the gateway."""
    transport = HTTP11Transport(**kwargs)
    transport.read_deadlines = kept = KeptDeadlines()
    await nursery.start(kept.run)
    return httpx.AsyncClient(transport=transport), kept


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_kept_read_deadline_times_out_a_silent_server(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, scheme: str, tls: TLS
) -> None:
    gave_up = trio.Event()

    async def never_answer(peer: Peer) -> None:
        await peer.request()
        await peer.wait_closed()
        gave_up.set()

    server = await serve(nursery, never_answer, tls.server if scheme == "https" else None)
    c, kept = await kept_client(nursery, ssl_context=tls.client)
    async with c:
        started = trio.current_time()
        with pytest.raises(httpx.ReadTimeout):
            await c.get(server.url(scheme=scheme), timeout=httpx.Timeout(5.0, read=2.0))
        assert 2.0 <= trio.current_time() - started < 2.1
    assert kept.parked >= 1 and kept.timed_out == 1
    await observed(gave_up)


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_body_whose_pieces_come_apart_tells_its_next_read_waits(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, scheme: str, tls: TLS
) -> None:
    """A relay writes each piece of a trickling body as it comes (`waits_next_of`), over
    TLS as over plain TCP; a body that came whole with its head is not trickling."""

    async def paced(peer: Peer) -> None:
        while (got := await peer.request()) is not None:
            if got[0] == b"/whole":
                await peer.respond(b"all at once")
                continue
            headers = [("transfer-encoding", "chunked")]
            await peer.send(h11.Response(status_code=200, headers=headers))
            for piece in range(3):
                await trio.sleep(0.5)
                await peer.send(h11.Data(data=b"%d" % piece))
            await peer.send(h11.EndOfMessage())

    server = await serve(nursery, paced, tls.server if scheme == "https" else None)
    # Straight through the transport, as the gateway's upstream client sends (httpx's
    # client would wrap the body in a stream of its own).
    async with HTTP11Transport(ssl_context=tls.client) as transport:
        get = partial(httpx.Request, "GET")
        response = await transport.handle_async_request(get(server.url("/paced", scheme=scheme)))
        waits_next = waits_next_of(response)
        told = [(piece, waits_next()) async for piece in response.aiter_raw()]
        response = await transport.handle_async_request(get(server.url("/whole", scheme=scheme)))
        assert not waits_next_of(response)()
        assert await response.aread() == b"all at once"
    assert told == [(b"0", True), (b"1", True), (b"2", True)]


async def test_kept_read_deadline_bounds_each_wait_not_the_whole_body(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """A stream whose pieces come 1.5 s apart, under a 2 s read timeout, arrives whole
    however long it lasts; one that then falls silent times out 2 s after its last piece,
    also while a read with a longer timeout is waiting on another connection (the task
    sleeping until the later deadline is woken for the earlier one)."""
    closed = trio.Event()

    async def paced_then_silent(peer: Peer) -> None:
        got = await peer.request()
        assert got is not None
        if got[0] == b"/slow":
            await trio.sleep(60)
            await peer.respond(b"late")
            return
        headers = [("transfer-encoding", "chunked")]
        await peer.send(h11.Response(status_code=200, headers=headers))
        for piece in range(5):
            await trio.sleep(1.5)
            await peer.send(h11.Data(data=b"%d" % piece))
        await peer.wait_closed()
        closed.set()

    server = await serve(nursery, paced_then_silent)
    c, kept = await kept_client(nursery)
    async with c:
        slow = trio.Event()

        async def slow_request() -> None:
            response = await c.get(server.url("/slow"), timeout=httpx.Timeout(5.0, read=100.0))
            assert response.content == b"late"
            slow.set()

        nursery.start_soon(slow_request)
        await trio.sleep(0.1)
        request = c.build_request("GET", server.url("/paced"), timeout=httpx.Timeout(5.0, read=2.0))
        response = await c.send(request, stream=True)
        received = b""
        with pytest.raises(httpx.ReadTimeout):
            async for piece in response.aiter_raw():
                received += piece
                last = trio.current_time()
        assert received == b"01234"
        assert 2.0 <= trio.current_time() - last < 2.1
        await observed(closed)
        with trio.fail_after(100):
            await slow.wait()
    assert kept.parked >= 6 and kept.timed_out == 1


async def test_write_timeout(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    async def never_read(peer: Peer) -> None:
        await trio.sleep_forever()

    server = await serve(nursery, never_read)
    # Larger than what loopback socket buffers can absorb, so sending blocks.
    body = bytes(32 * 1024 * 1024)
    async with client() as c:
        with pytest.raises(httpx.WriteTimeout):
            await c.post(server.url(), content=body, timeout=httpx.Timeout(5.0, write=1.0))


def slow_stream(closed: trio.Event) -> Handler:
    """Streams one chunk of a long chunked body, then watches for the client closing."""

    async def handler(peer: Peer) -> None:
        got = await peer.request()
        assert got is not None
        if got[0] == b"/again":
            await peer.respond()
            return
        headers = [("transfer-encoding", "chunked")]
        await peer.send(h11.Response(status_code=200, headers=headers), h11.Data(data=b"first"))
        await peer.wait_closed()
        closed.set()

    return handler


async def test_cancel_mid_body_closes_the_socket(nursery: trio.Nursery) -> None:
    closed = trio.Event()
    server = await serve(nursery, slow_stream(closed))
    chunks: list[bytes] = []
    got_one = trio.Event()
    async with client() as c:
        response = await c.send(c.build_request("GET", server.url()), stream=True)

        async def read_all() -> None:
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
                got_one.set()

        async with trio.open_nursery() as reading:
            reading.start_soon(read_all)
            await got_one.wait()
            # Cancel while the reader is blocked waiting for the second chunk.
            await trio.testing.wait_all_tasks_blocked()
            reading.cancel_scope.cancel()
        await observed(closed)
        assert (await c.get(server.url("/again"))).content == b"ok"
    assert chunks == [b"first"]
    assert server.accepted == 2


async def test_aclose_mid_body_closes_the_socket(nursery: trio.Nursery) -> None:
    closed = trio.Event()
    server = await serve(nursery, slow_stream(closed))
    async with client() as c:
        response = await c.send(c.build_request("GET", server.url()), stream=True)
        async for chunk in response.aiter_raw():
            assert chunk == b"first"
            break
        await response.aclose()
        await observed(closed)
        assert (await c.get(server.url("/again"))).content == b"ok"
    assert server.accepted == 2


async def test_aclose_while_another_task_reads(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    server = await serve(nursery, holding(trio.Event()))
    async with client(max_connections=1) as c:
        response = await c.send(c.build_request("GET", server.url("/hold")), stream=True)

        async def read_rest() -> None:
            with pytest.raises(httpx.ReadError):
                await response.aread()

        async with trio.open_nursery() as reading:
            reading.start_soon(read_rest)
            await trio.testing.wait_all_tasks_blocked()
            await response.aclose()
        # The connection was given up exactly once, so the limit of one still holds.
        held = await c.send(c.build_request("GET", server.url("/hold")), stream=True)
        with pytest.raises(httpx.PoolTimeout):
            await c.get(server.url(), timeout=httpx.Timeout(5.0, pool=1.0))
        await held.aclose()
    assert server.accepted == 2


async def test_body_delimited_by_close(nursery: trio.Nursery) -> None:
    async def http10_style(peer: Peer) -> None:
        await peer.request()
        await peer.stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nhello ")
        await peer.stream.send_all(b"world")

    server = await serve(nursery, http10_style)
    async with client() as c:
        assert (await c.get(server.url())).content == b"hello world"
        assert (await c.get(server.url())).content == b"hello world"
    assert server.accepted == 2


async def test_connection_close_response_is_not_reused(nursery: trio.Nursery) -> None:
    async def close_after_one(peer: Peer) -> None:
        await peer.request()
        await peer.respond(headers=[("content-length", "2"), ("connection", "close")])

    server = await serve(nursery, close_after_one)
    async with client() as c:
        await c.get(server.url())
        await c.get(server.url())
    assert server.accepted == 2


async def test_truncated_body_is_remote_protocol_error(nursery: trio.Nursery) -> None:
    async def truncate(peer: Peer) -> None:
        await peer.request()
        await peer.send(
            h11.Response(status_code=200, headers=[("content-length", "10")]),
            h11.Data(data=b"12345"),
        )

    server = await serve(nursery, truncate)
    async with client() as c:
        with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
            await c.get(server.url())


async def test_informational_responses_are_skipped(nursery: trio.Nursery) -> None:
    async def continue_first(peer: Peer) -> None:
        await peer.request()
        await peer.send(h11.InformationalResponse(status_code=100, headers=[]))
        await peer.respond()

    server = await serve(nursery, continue_first)
    async with client() as c:
        response = await c.get(server.url())
    assert (response.status_code, response.content) == (200, b"ok")


async def test_chunked_sse_stream_arrives_event_by_event(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    events = [b"data: %d\n\n" % i for i in range(5)] + [b"data: [DONE]\n\n"]
    acks_in, acks_out = trio.open_memory_channel[None](0)

    async def sse(peer: Peer) -> None:
        while (got := await peer.request()) is not None:
            if got[0] != b"/events":
                await peer.respond()
                continue
            headers = [("content-type", "text/event-stream"), ("transfer-encoding", "chunked")]
            await peer.send(h11.Response(status_code=200, headers=headers))
            for event in events:
                await peer.send(h11.Data(data=event))
                # The next event is sent only once the client has seen this one.
                await acks_out.receive()
            await peer.send(h11.EndOfMessage())

    server = await serve(nursery, sse)
    received = b""
    # Guards against a transport that buffers the body: that would deadlock here.
    with trio.fail_after(60):
        async with client() as c:
            request = c.build_request("GET", server.url("/events"))
            response = await c.send(request, stream=True)
            async for chunk in response.aiter_raw():
                received += chunk
                if received.endswith(b"\n\n"):
                    await acks_in.send(None)
            await response.aclose()
            assert (await c.get(server.url())).content == b"ok"
    assert response.headers["content-type"] == "text/event-stream"
    assert received == b"".join(events)
    assert server.accepted == 1


async def test_aclose_closes_idle_connections(nursery: trio.Nursery) -> None:
    closed = trio.Event()

    async def answer_then_watch(peer: Peer) -> None:
        await peer.request()
        await peer.respond()
        await peer.wait_closed()
        closed.set()

    server = await serve(nursery, answer_then_watch)
    async with client() as c:
        await c.get(server.url())
    await observed(closed)


async def bodiless_requests(peer: Peer) -> AsyncIterator[None]:
    """Each request without a body (a GET) the client sends, read without h11: the
    answers to them are written raw, which h11's server side would not let follow."""
    buffer = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            received = await peer.receive()
            if not received:
                return
            buffer += received
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        peer.server.targets.append(head.split(b" ")[1])
        yield


def raw_answer(response: bytes) -> Handler:
    """A keep-alive handler answering every GET with the same bytes, as they are."""

    async def handler(peer: Peer) -> None:
        async for _ in bodiless_requests(peer):
            await peer.stream.send_all(response)

    return handler


async def test_chunked_body_with_extensions_and_trailer_keeps_the_connection(
    nursery: trio.Nursery,
) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 1\r\n\r\n"
    )
    server = await serve(nursery, raw_answer(answer))
    async with client() as c:
        for _ in range(2):
            assert (await c.get(server.url())).content == b"hello world"
    assert server.accepted == 1


async def test_chunked_body_split_anywhere_arrives_whole(nursery: trio.Nursery) -> None:
    body = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"

    async def byte_by_byte(peer: Peer) -> None:
        async for _ in bodiless_requests(peer):
            for i in range(len(body)):
                await peer.stream.send_all(body[i : i + 1])
                # Each byte is read on its own: the client waits for the next.
                await trio.testing.wait_all_tasks_blocked()

    server = await serve(nursery, byte_by_byte)
    async with client() as c:
        for _ in range(2):
            assert (await c.get(server.url())).content == b"abcde"
    assert server.accepted == 1


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc", "conflicting"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nabc", "conflicting"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", "chunked is supported"),
        (b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", "illegal header line"),
        (b"HTTP/1.1 200 OK\r\nx: a\x00b\r\n\r\n", "illegal header line"),
        (b"HTTP/1.1 200 OK\r\n folded: first\r\n\r\n", "continuation line"),
        (b"ICY 200 OK\r\n\r\n", "illegal status line"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "chunk header"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\naXY", "chunk footer"),
    ],
)
async def test_malformed_responses_are_remote_protocol_errors(
    nursery: trio.Nursery, answer: bytes, complaint: str
) -> None:
    server = await serve(nursery, raw_answer(answer))
    async with client() as c:
        with pytest.raises(httpx.RemoteProtocolError, match=complaint):
            await c.get(server.url())


async def test_folded_header_line_is_joined(nursery: trio.Nursery) -> None:
    answer = b"HTTP/1.1 200 OK\r\nx-note: one\r\n  two\r\ncontent-length: 2\r\n\r\nok"
    server = await serve(nursery, raw_answer(answer))
    async with client() as c:
        response = await c.get(server.url())
    assert (response.headers["x-note"], response.content) == ("one two", b"ok")


async def test_no_body_for_204_and_http10_is_not_reused(nursery: trio.Nursery) -> None:
    server = await serve(nursery, raw_answer(b"HTTP/1.1 204 No Content\r\n\r\n"))
    async with client() as c:
        for _ in range(2):
            assert (await c.get(server.url())).status_code == 204
    assert server.accepted == 1
    old = await serve(nursery, raw_answer(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"))
    async with client() as c:
        for _ in range(2):
            response = await c.get(old.url())
            assert (response.http_version, response.content) == ("HTTP/1.0", b"ok")
    assert old.accepted == 2


async def test_request_asking_to_close_is_not_reused(nursery: trio.Nursery) -> None:
    server = await serve(nursery)
    async with client() as c:
        for _ in range(2):
            await c.get(server.url(), headers={"connection": "close"})
    assert server.accepted == 2


@pytest.mark.parametrize(
    "headers",
    [{"x-evil": "a\r\nx-injected: 1"}, {"x-evil": "a\nb"}, {"bad name": "v"}, {"x": "\x00"}],
)
async def test_headers_that_would_break_the_framing_are_refused(
    nursery: trio.Nursery, headers: dict[str, str]
) -> None:
    server = await serve(nursery)
    async with client() as c:
        with pytest.raises(httpx.LocalProtocolError, match="Illegal header"):
            await c.get(server.url(), headers=headers)
        # Refused before anything was sent: the pool is as it was.
        assert (await c.get(server.url())).content == b"ok /"
    assert server.targets == [b"/"]


async def test_streamed_request_body_is_chunked(nursery: trio.Nursery) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"one ", b"", b"two"):
            yield piece

    bodies: list[bytes] = []

    async def echo(peer: Peer) -> None:
        while (got := await peer.request()) is not None:
            bodies.append(got[1])
            await peer.respond()

    server = await serve(nursery, echo)
    async with client() as c:
        await c.post(server.url(), content=pieces())
        await c.post(server.url(), content=b"whole")
    assert bodies == [b"one two", b"whole"]
    assert server.accepted == 1


async def test_whole_body_read_straight_or_decoded(nursery: trio.Nursery) -> None:
    packed = gzip.compress(b"hello")
    answers = {
        b"/plain": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        b"/gzip": b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s"
        % (len(packed), packed),
    }

    async def by_path(peer: Peer) -> None:
        async for _ in bodiless_requests(peer):
            await peer.stream.send_all(answers[peer.server.targets[-1]])

    server = await serve(nursery, by_path)
    transport = HTTP11Transport()
    for path in ("/plain", "/gzip", "/plain"):
        response = await transport.handle_async_request(httpx.Request("GET", server.url(path)))
        assert await read_whole_body(response) == b"hello"
    await transport.aclose()
    assert server.accepted == 1


async def test_whole_body_read_keeps_the_size_cap(nursery: trio.Nursery) -> None:
    server = await serve(nursery, raw_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"))
    transport = HTTP11Transport(max_response_bytes=4)
    response = await transport.handle_async_request(httpx.Request("GET", server.url()))
    with pytest.raises(ResponseTooLarge):
        await read_whole_body(response)
    await transport.aclose()


def test_a_burst_of_chunks_reads_the_same_however_the_reads_split_it() -> None:
    """The chunked reader walks its buffer by position: every split of a burst of
    chunks (with extensions and a trailer) gives the same body and leaves what follows
    it in the buffer."""
    frames = [b'data: {"n": %d}\n\n' % n for n in range(12)]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(frame), frame) for frame in frames)
    wire = body + b"0\r\nx-trailer: 1\r\n\r\nNEXT"
    for cut in range(1, len(wire)):
        reader = _ChunkedReader()
        buffer = bytearray(wire[:cut])
        data = []
        while (piece := reader.extract(buffer)) not in (_MORE, None):
            data.append(piece)
        buffer += wire[cut:]
        while (piece := reader.extract(buffer)) is not None:
            assert piece is not _MORE, f"stalled with the whole body buffered (cut {cut})"
            data.append(piece)
        assert b"".join(data) == b"".join(frames), cut
        assert buffer == b"NEXT", cut


def test_a_malformed_chunk_end_is_refused() -> None:
    reader = _ChunkedReader()
    with pytest.raises(httpx.RemoteProtocolError, match="malformed chunk footer"):
        reader.extract(bytearray(b"3\r\nabcXY"))


def test_chunks_that_arrive_one_a_read_each_read_whole() -> None:
    """A paced stream's reads each hold one whole chunk (`_one_whole_chunk`'s case), in
    upper- and lower-case hex, and the body's end after them."""
    frames = [b'data: {"n": %d}\n\n' % n + b"x" * n for n in range(0, 40, 7)]
    reader = _ChunkedReader()
    buffer = bytearray()
    for frame in frames:
        buffer += b"%X\r\n%s\r\n" % (len(frame), frame)
        assert reader.extract(buffer) == frame
        assert buffer == b""
        assert reader.extract(buffer) is _MORE
    buffer += b"0\r\n\r\n"
    assert reader.extract(buffer) is None


@pytest.mark.parametrize(
    "header", [b"+1a", b"1_a", b" 1a", b"1a ", b"-1a", b"1g", b"\xd9\xa1", b"0x1a", b"0X1a"]
)
def test_a_chunk_header_that_is_not_hex_digits_alone_is_refused(header: bytes) -> None:
    """What `int(header, 16)` reads leniently (a sign, `_`, spaces, Unicode digits, a
    `0x` prefix) is no chunk size: a one-chunk read is refused as any other, never read
    by `int`'s rules. (Hex with spaces after it is HTTP's; see the burst test.)"""
    reader = _ChunkedReader()
    frame = b"x" * 26
    buffer = bytearray(header + b"\r\n" + frame + b"\r\n")
    if header == b"1a ":
        assert reader.extract(buffer) == frame  # trailing whitespace is allowed
        return
    with pytest.raises(httpx.RemoteProtocolError, match="illegal chunk header"):
        reader.extract(buffer)

"""The lean HTTP/1.1 path (`trigate.http1`) against hypercorn's, over real sockets.

The same raw requests (plain, odd and invalid) go to a server taking the lean path and
to one that leaves every connection to hypercorn and h11: the app must be handed the
same scopes and events, and the client must read the same bytes (the Date field's value
aside). A request the lean path cannot decide exactly as h11 would is handed over to
hypercorn, so the odd cases exercise the hand-over too.
"""

from __future__ import annotations

import contextvars
import errno
import logging
import re
import select
import socket
import struct
from typing import Any

import hypercorn.logging
import hypothesis
import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from fakes import FakeUpstream, StreamReply, chunk
from helpers import MASTER_KEY, openai_config, start_gateway
from hypercorn.config import Config as HypercornConfig

from trigate import departures, http1
from trigate.serving import ConnectionLimits, serve

# In a list of pieces: the client shuts its side of the connection here.
EOF = b"<eof>"
LIMITS = ConnectionLimits(max_connections=100, first_request_timeout=10, keep_alive_timeout=10)


class Recorder:
    """An ASGI app that records what it is handed and answers as the path asks:
    `/wait` once its client has gone, `/sleep` after a pause, `/stream` in chunks,
    `/fail` by raising, `/fail-late` by raising after its start, `/empty` with 204,
    anything else with a fixed-length echo of the body's size."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                scope["state"]["lifespan"] = "yes"
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        unsteady = ("extensions", "client", "server")
        record = {key: value for key, value in scope.items() if key not in unsteady}
        # The connection's scope is handed only to an app run on the connection's task.
        record["extensions"] = sorted(set(scope["extensions"]) - {http1.REQUEST_SCOPE_EXTENSION})
        # The ports differ from server to server.
        record["hosts"] = (scope["client"][0], scope["server"][0])
        self.seen.append(record)
        size = 0
        while True:
            message = await receive()
            self.seen.append(message)
            size += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        path = scope["path"]
        if path == "/wait":
            self.seen.append(await receive())  # the client's departure
        if path == "/sleep":
            await trio.sleep(0.05)  # an app that waits: the departure watch looks meanwhile
        if path == "/fail":
            raise RuntimeError("the app failed")
        if path == "/empty":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b"ignored"})
            return
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
            for piece in (b"one", b"", b"two"):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        body = b"size %d" % size
        fields = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": fields})
        if path == "/fail-late":
            raise RuntimeError("the app failed after starting")
        await send({"type": "http.response.body", "body": body})


def _config(**settings: Any) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    for name, value in settings.items():
        setattr(config, name, value)
    return config


# Each test so marked runs with apps on their connection's task (where the system has
# epoll for the departure watch) and with a task per request (where it has not).
BOTH_WAYS = pytest.mark.parametrize("inline", [True, False], ids=["inline", "a task per request"])


def _tasks_per_request(patch: pytest.MonkeyPatch) -> None:
    """Serve as on a system without epoll: every app in a task of its own."""
    patch.setattr(departures.DepartureWatch, "made", classmethod(lambda cls: None))


async def _exchange(
    lean: bool,
    pieces: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
    *,
    inline: bool = True,
    app: Any = None,
    **settings: Any,
) -> tuple[list[Any], bytes]:
    """What the app was handed and what the client read, for `pieces` sent one by one
    (a short pause between) on one connection to a fresh server (`inline`: whether the
    lean path may run an app on the connection's task, which needs epoll)."""
    with monkeypatch.context() as patch:
        if not lean:
            patch.setattr(http1.LeanConnection, "serves", staticmethod(lambda config: False))
        if not inline:
            _tasks_per_request(patch)
        app = app or Recorder()
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            host, port = await _serving(app, nursery, shutdown, **settings)
            stream = await trio.open_tcp_stream(host, port)
            for piece in pieces:
                if piece is EOF:
                    await stream.send_eof()
                else:
                    await stream.send_all(piece)
                await trio.sleep(0.02)
            read = await _read_until_quiet(stream)
            await stream.aclose()
            shutdown.set()
    read = re.sub(rb"date: [^\r]*", b"date: -", read)
    if read.startswith(b"HTTP/1.1 101 "):
        # HTTP/2 after the switch (hypercorn's on both paths): its frames' order varies.
        read = read.partition(b"\r\n\r\n")[0]
    return getattr(app, "seen", []), read


async def _read_until_quiet(stream: trio.SocketStream) -> bytes:
    """What the server sends until it closes the connection or is quiet for a moment."""
    read = b""
    while True:
        with trio.move_on_after(0.15):
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return read + b"<reset>"
            if not data:
                return read + b"<closed>"
            read += data
            continue
        return read


def _request(
    target: bytes = b"/",
    *fields: bytes,
    method: bytes = b"GET",
    body: bytes = b"",
    version: bytes = b"1.1",
) -> bytes:
    head = [b"%s %s HTTP/%s" % (method, target, version), b"host: example", *fields]
    if body:
        head.append(b"content-length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


CASES: dict[str, list[bytes]] = {
    "plain GET": [_request()],
    "POST with a body": [_request(b"/echo?a=1&b=%20", method=b"POST", body=b"x" * 100)],
    "a body split across reads": [
        _request(method=b"POST", body=b"y" * 50)[:-30],
        b"y" * 10,
        b"y" * 20,
    ],
    "a head split across reads": [_request(b"/a")[:10], _request(b"/a")[10:]],
    "pipelined pair": [_request(b"/one") + _request(b"/two", method=b"POST", body=b"zz")],
    "three on one connection": [_request(b"/1"), _request(b"/2"), _request(b"/stream")],
    "a streamed answer": [_request(b"/stream")],
    "an app failing before its start": [_request(b"/fail"), _request(b"/after")],
    "an app failing after its start": [_request(b"/fail-late")],
    "a 204 with a body": [_request(b"/empty"), _request()],
    "HEAD": [_request(b"/stream", method=b"HEAD"), _request(method=b"HEAD")],
    "percent-encoded path": [_request(b"/a%2Fb%20c/%C3%A9?q=%41")],
    "HTTP/1.0": [_request(version=b"1.0")],
    "missing Host": [b"GET / HTTP/1.1\r\naccept: */*\r\n\r\n"],
    "two Hosts": [_request(b"/", b"host: other")],
    "duplicate Content-Length": [
        _request(b"/", b"content-length: 2", b"content-length: 2", method=b"POST") + b"ab"
    ],
    "differing Content-Lengths": [
        _request(b"/", b"content-length: 2", b"content-length: 3", method=b"POST") + b"abc"
    ],
    "invalid Content-Length": [_request(b"/", b"content-length: +2", method=b"POST") + b"ab"],
    "Content-Length with a comma": [_request(b"/", b"content-length: 2, 2") + b"ab"],
    "chunked body": [
        _request(b"/", b"transfer-encoding: chunked", method=b"POST") + b"3\r\nabc\r\n0\r\n\r\n"
    ],
    "obs-fold": [_request(b"/", b"x-folded: a", b" b")],
    "bare LF": [b"GET / HTTP/1.1\nhost: example\n\n"],
    "a CR alone in a value": [_request(b"/", b"x-a: b\rc")],
    "space before the colon": [_request(b"/", b"x-a : b")],
    "empty field name": [_request(b"/", b": b")],
    "NUL in a value": [_request(b"/", b"x-a: b\x00c")],
    "lower-case method": [_request(method=b"get")],
    "Connection: close": [_request(b"/", b"connection: close"), _request()],
    "Connection: keep-alive": [_request(b"/", b"connection: keep-alive"), _request()],
    "Expect: 100-continue": [
        _request(b"/", b"expect: 100-continue", b"content-length: 2", method=b"POST"),
        b"ab",
    ],
    "leading CRLF": [b"\r\n" + _request()],
    "garbage": [b"\x16\x03\x01hello"],
    "h2c upgrade": [_request(b"/", b"connection: upgrade, http2-settings", b"upgrade: h2c")],
    "a head cut short": [b"GET / HTTP/1.1\r\nhost: exa"],
    "a body cut short": [_request(b"/", b"content-length: 10", method=b"POST") + b"abc"],
    "a body cut short by the client's end": [
        _request(b"/", b"content-length: 10", method=b"POST") + b"abc",
        EOF,
    ],
    "a head cut short by the client's end": [b"GET / HTTP/1.1\r\nhost: exa", EOF],
    "the client's end after a request": [_request(b"/stream"), EOF],
    "the client's end while the app waits": [_request(b"/wait"), EOF],
    "an app that waits, the next request pipelined": [
        _request(b"/sleep") + _request(b"/two", method=b"POST", body=b"ab")
    ],
    "apps that wait, one request after another": [
        _request(b"/sleep"),
        _request(b"/sleep", method=b"POST", body=b"abc"),
        _request(b"/stream"),
        _request(b"/sleep")
        + _request(b"/", b"transfer-encoding: chunked", method=b"POST")
        + b"1\r\na\r\n0\r\n\r\n",
    ],
    "an app that waits, then the client's end": [_request(b"/sleep"), EOF],
    "the client's end at once": [_request(b"/") + _request(b"/stream"), EOF],
    "huge head": [_request(b"/", b"x-big: " + b"b" * 20_000)],
    "a plain request, then a chunked one": [
        _request(b"/first"),
        _request(b"/", b"transfer-encoding: chunked", method=b"POST") + b"2\r\nab\r\n0\r\n\r\n",
        _request(b"/third"),
    ],
}


@BOTH_WAYS
@pytest.mark.parametrize("pieces", list(CASES.values()), ids=list(CASES))
async def test_the_lean_path_answers_as_hypercorn(
    pieces: list[bytes], inline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    lean = await _exchange(True, pieces, monkeypatch, inline=inline)
    by_hypercorn = await _exchange(False, pieces, monkeypatch)
    assert lean == by_hypercorn


async def test_keep_alive_max_requests_closes_as_hypercorn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pieces = [_request(b"/1"), _request(b"/stream"), _request(b"/3")]
    lean = await _exchange(True, pieces, monkeypatch, keep_alive_max_requests=2)
    by_hypercorn = await _exchange(False, pieces, monkeypatch, keep_alive_max_requests=2)
    assert lean == by_hypercorn
    assert lean[1].count(b"HTTP/1.1 200") == 2 and lean[1].endswith(b"<closed>")


_NAMES = st.sampled_from(
    [b"host", b"content-length", b"x-a", b"connection", b"x a", b"", b"transfer-encoding"]
)
_VALUES = st.sampled_from([b"example", b"3", b" 3", b"03", b"close", b"a\tb", b"", b"-1", b"x"])


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    fields=st.lists(st.tuples(_NAMES, _VALUES), max_size=4),
    method=st.sampled_from([b"GET", b"POST", b"HEAD", b"get"]),
    version=st.sampled_from([b"1.1", b"1.0"]),
)
def test_random_heads_are_read_as_h11_reads_them(
    fields: list[tuple[bytes, bytes]], method: bytes, version: bytes
) -> None:
    """Random heads: the scope, events and bytes are the same on either path."""
    head = [b"%s / HTTP/%s" % (method, version)]
    head += [name + b": " + value for name, value in fields]
    raw = b"\r\n".join(head) + b"\r\n\r\nabc"

    async def both() -> None:
        with pytest.MonkeyPatch.context() as monkeypatch:
            lean = await _exchange(True, [raw], monkeypatch)
            by_hypercorn = await _exchange(False, [raw], monkeypatch)
        assert lean == by_hypercorn

    trio.run(both)


def test_only_plain_heads_take_the_lean_path() -> None:
    assert http1.plain_head(_request(b"/x", b"x-a: 1")) is not None
    for odd in [
        _request(version=b"1.0"),
        _request(b"/", b"transfer-encoding: chunked"),
        _request(b"/", b"upgrade: websocket"),
        _request(b"/", b"expect: 100-continue"),
        _request(b"/", b"connection: keep-alive, Close"),
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\nhost: a\r\n\r\n",
        _request(method=b"CONNECT"),
    ]:
        assert http1.plain_head(odd) is None, odd


def _read(head: bytes, known: http1.KnownLines | None = None) -> object:
    read = http1.plain_head(head, known)
    return None if read is None else (read.method, read.target, read.fields, read.length)


def test_known_lines_read_heads_as_they_are_read_afresh() -> None:
    """One connection's heads, its known lines looked up: each is read as it is alone,
    whatever lines the heads before it had (refused ones among them)."""
    heads = [
        _request(b"/", b"content-length: 2", b"x-a: 1", method=b"POST"),
        _request(b"/", b"content-length: 2", b"x-a: 1", method=b"POST"),
        _request(b"/b", b"content-length: 3", b"x-a: 1", method=b"POST"),
        _request(b"/", b"x-a: 1", b"x-b:  two\t"),
        _request(b"/", b"x-a: 1", b"x-b: b\rc"),
        _request(b"/", b"x-a: 1", b"x-b: b\nc"),
        _request(b"/", b"x-a: 1", b"x\nb: c"),
        _request(b"/", b"x-a: 1", b"x-folded: a", b" b"),
        _request(b"/", b"x-a: 1", b": b"),
        _request(b"/", b"x-a: 1", b"no colon"),
        _request(b"/", b"x-a: 1", b"host: other"),
        _request(b"/", b"x-a: 1", b"connection: close"),
        _request(b"/", b"x-a: 1", b"transfer-encoding: chunked"),
        _request(b"/", b"x-a: 1", b"content-length: 2", b"content-length: 2"),
        _request(b"/", b"X-A: 1", b"x-b:  two\t"),
        _request(b"/"),
        _request(b"/a b"),
        _request(b"/"),
        _request(b"/", version=b"1.0"),
        _request(b"/", method=b"get"),
        _request(b"/", method=b"GET"),
    ]
    known = http1.KnownLines()
    for head in heads:
        assert _read(head, known) == _read(head), head


def test_a_known_request_line_is_not_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection's request line, the same as its last head's, is not matched again;
    another one is."""
    read: list[bytes] = []
    request_line = http1.request_line

    def counted(line: bytes) -> http1.RequestLine | None:
        read.append(line)
        return request_line(line)

    monkeypatch.setattr(http1, "request_line", counted)
    known = http1.KnownLines()
    first = _request(b"/", b"content-length: 2", method=b"POST")
    assert _read(first, known) is not None
    assert _read(first, known) is not None
    assert read == [b"POST / HTTP/1.1"]
    assert _read(_request(b"/b", method=b"POST"), known) is not None
    assert read == [b"POST / HTTP/1.1", b"POST /b HTTP/1.1"]
    # A long line (a long query) is read each time, never held while the connection idles.
    long = b"/q?" + b"x" * http1.KNOWN_LINE_BYTES
    assert _read(_request(long), known) is not None
    assert _read(_request(long), known) is not None
    assert read[2:] == [b"GET " + long + b" HTTP/1.1"] * 2


def test_known_lines_are_not_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection's lines are read once: a head like the one before has only its new
    lines read."""
    read: list[list[bytes]] = []
    read_fields = http1.read_fields

    def counted(lines: list[bytes]) -> http1.Fields | None:
        read.append(list(lines))
        return read_fields(lines)

    monkeypatch.setattr(http1, "read_fields", counted)
    known = http1.KnownLines()
    first = _request(b"/", b"content-length: 2", b"x-a: 1", method=b"POST")
    again = _request(b"/", b"content-length: 3", b"x-a: 1", method=b"POST")
    assert _read(first, known) is not None
    assert _read(first, known) == _read(first)
    read.clear()
    assert _read(again, known) is not None
    assert read == [[b"content-length: 3"]]


def test_a_head_of_many_lines_is_not_kept() -> None:
    """A head of more lines than `KNOWN_LINES` (thousands of short ones fit 16 KiB) is
    read, and its lines are not kept: a kept line costs some 200 bytes beside its own,
    for as long as the connection lives. A small head's are."""
    known = http1.KnownLines()
    many = _request(b"/", *(b"%x:" % i for i in range(http1.KNOWN_LINES + 1)))
    assert _read(many, known) == _read(many)
    assert not known._fields
    small = _request(b"/", b"x-a: 1")
    assert _read(small, known) == _read(small)
    assert known._fields


async def test_a_client_leaving_mid_request_closes_its_upstream_request(
    nursery: trio.Nursery, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that leaves while its request waits on the upstream (no byte of the
    answer yet): the lean path hears the departure, and the upstream sees its request's
    connection close."""
    served: list[bytes] = []
    plain_head = http1.plain_head

    def counted(head: bytes, known: http1.KnownLines | None = None) -> http1.PlainHead | None:
        served.append(head)
        return plain_head(head, known)

    monkeypatch.setattr(http1, "plain_head", counted)
    never = trio.Event()
    upstream.handler = lambda request: StreamReply([never, chunk("late")])
    running = await start_gateway(nursery, openai_config(upstream))
    host, port = running.url.removeprefix("http://").split(":")
    body = b'{"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    request = _request(
        b"/v1/chat/completions",
        b"authorization: Bearer " + MASTER_KEY.encode(),
        b"content-type: application/json",
        method=b"POST",
        body=body,
    )
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(request)
    with trio.fail_after(5):
        await upstream.wait_for(lambda: len(upstream.requests) >= 1)
    await stream.aclose()
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
    assert served, "the request took the lean path"
    await running.stop()


_SEEN_BEFORE: contextvars.ContextVar[str] = contextvars.ContextVar("seen_before", default="")


async def test_each_request_runs_in_a_context_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An app run on the connection's task (a body that came with its head) still gets
    a context of its own, as a task of its own would: what one request sets, the next
    on the connection does not see, whether or not the app waited."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")  # hypercorn goes on without it
        seen.append(_SEEN_BEFORE.get())
        _SEEN_BEFORE.set(scope["path"])
        if scope["path"] == "/sleep":
            await trio.sleep(0.01)
        fields = [(b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 200, "headers": fields})
        await send({"type": "http.response.body", "body": b""})

    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                app, _config(), LIMITS, shutdown_trigger=shutdown.wait, task_status=task_status
            )
        )
        host, port = binds[0].removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        for target in (b"/one", b"/sleep", b"/two", b"/sleep"):
            await stream.send_all(_request(target))
            assert (await _read_until_quiet(stream)).startswith(b"HTTP/1.1 200 ")
        await stream.aclose()
        shutdown.set()
    assert seen == ["", "", "", ""]


async def _serving(
    app: Any, nursery: trio.Nursery, shutdown: trio.Event, **settings: Any
) -> tuple[str, int]:
    """A server for `app` on the lean path, running until `shutdown` is set."""
    binds = await nursery.start(
        lambda task_status: serve(
            app,
            _config(**settings),
            LIMITS,
            shutdown_trigger=shutdown.wait,
            task_status=task_status,
        )
    )
    host, port = binds[0].removeprefix("http://").split(":")
    return host, int(port)


async def test_a_client_reset_before_it_is_served_ends_only_its_connection() -> None:
    """A client that connects and resets (an RST) before its connection is served: its
    addresses cannot be looked up, which ends that connection, not the worker."""
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        host, port = await _serving(Recorder(), nursery, shutdown)
        # Connected and reset before the server's accepting task runs again.
        client = socket.socket()
        client.connect((host, port))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        await trio.sleep(0.05)
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(_request())
        assert (await _read_until_quiet(stream)).startswith(b"HTTP/1.1 200 ")
        await stream.aclose()
        shutdown.set()


class Departing:
    """An ASGI app as trigate's model API is: it registers a departure callback
    (`trigate.departure`) that cancels its call, then waits (for its upstream)."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")  # hypercorn goes on without it
        await receive()
        with trio.CancelScope() as call:

            async def departed() -> None:
                self.seen.append(("departed", scope["path"]))
                call.cancel()

            on_departure = scope["extensions"].get(http1.DEPARTURE_EXTENSION)
            if on_departure is not None:
                on_departure(departed)
            await trio.sleep(0.05)  # the upstream call
            body = b"answer " + scope["path"].encode()
            fields = [(b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": 200, "headers": fields})
            await send({"type": "http.response.body", "body": body})


@BOTH_WAYS
async def test_the_clients_end_after_pipelined_requests_is_not_the_first_ones_departure(
    inline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests in one write, then the client's end (it has sent all it will), while
    the first one's app waits: the end is read once the first is answered (as the
    second's departure, as hypercorn hears it when the second waits too), never as the
    first's, which is answered."""
    pieces = [_request(b"/one") + _request(b"/two"), EOF]
    app = Departing()
    seen, read = await _exchange(True, pieces, monkeypatch, inline=inline, app=app)
    assert ("departed", "/one") not in seen
    assert read.startswith(b"HTTP/1.1 200 ") and b"\r\n\r\nanswer /one" in read


@BOTH_WAYS
async def test_a_failed_app_is_logged_once_as_hypercorn_logs_it(
    inline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged: list[tuple[str, Any]] = []

    async def access(self: Any, request: Any, response: Any, request_time: float) -> None:
        logged.append((request["path"], response and response["status"]))

    monkeypatch.setattr(hypercorn.logging.Logger, "access", access)
    pieces = [_request(b"/fail"), _request(b"/after")]
    access_log = logging.getLogger("test-access")
    await _exchange(True, pieces, monkeypatch, inline=inline, accesslog=access_log)
    lean, logged[:] = logged[:], []
    await _exchange(False, pieces, monkeypatch, accesslog=access_log)
    # The 500 closes the connection: the second request is never read.
    assert lean == logged == [("/fail", 500)]


@BOTH_WAYS
async def test_a_body_cut_short_closes_the_connection_after_its_400_at_once(
    inline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client ends its side within the body: the 400 goes out and the connection
    closes then (as hypercorn closes it), not once the app, still busy, returns."""
    if not inline:
        _tasks_per_request(monkeypatch)
    released = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")
        await released.wait()

    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        host, port = await _serving(app, nursery, shutdown)
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(_request(b"/", b"content-length: 10", method=b"POST") + b"abc")
        await stream.send_eof()
        read = b""
        with trio.fail_after(5):
            while data := await stream.receive_some(65536):
                read += data
        assert read.startswith(b"HTTP/1.1 400 ")
        released.set()
        await stream.aclose()
        shutdown.set()


class CancelledMidBody:
    """An app whose send of a fixed-length body's first piece is cancelled (before it
    went out), which then sends the whole body: `/cut` so, anything else plainly."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")
        await receive()
        fields = [(b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": fields})
        if scope["path"] == "/cut":
            with trio.move_on_after(0):
                await send({"type": "http.response.body", "body": b"AAAA", "more_body": True})
        await send({"type": "http.response.body", "body": b"0123456789"})


@BOTH_WAYS
async def test_a_send_cancelled_before_it_went_out_keeps_the_framing(
    inline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send cancelled (as Trio's cancel points are) did nothing: the answer goes on
    whole and framed, and the connection carries the next request. (hypercorn counts
    the cancelled piece as sent, and fails the answer for its length.)"""
    pieces = [_request(b"/cut"), _request(b"/next")]
    _, read = await _exchange(True, pieces, monkeypatch, inline=inline, app=CancelledMidBody())
    assert read.count(b"\r\n\r\n0123456789HTTP/1.1 200 ") == 1
    assert read.endswith(b"\r\n\r\n0123456789")


async def test_a_failure_in_the_departure_watch_is_its_connections_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's one departure watch failing on one connection (its report raising):
    logged, and that connection's alone; the worker goes on serving."""
    failures: list[int] = []

    def readable(self: http1.LeanConnection) -> None:
        failures.append(1)
        raise RuntimeError("a report that fails")

    monkeypatch.setattr(http1.LeanConnection, "readable", readable)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        host, port = await _serving(Recorder(), nursery, shutdown)
        leaving = await trio.open_tcp_stream(host, port)
        await leaving.send_all(_request(b"/sleep"))
        await trio.sleep(0.01)
        await leaving.send_eof()  # readable while its app waits: the report fails
        assert (await _read_until_quiet(leaving)).startswith(b"HTTP/1.1 200 ")
        await leaving.aclose()
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(_request(b"/sleep"))
        assert (await _read_until_quiet(stream)).startswith(b"HTTP/1.1 200 ")
        await stream.aclose()
        shutdown.set()
    assert failures


_EPOLL: type[select.epoll] | None = getattr(select, "epoll", None)


class _FullEpoll:
    """An epoll set with no room left (`max_user_watches` reached)."""

    def __init__(self) -> None:
        assert _EPOLL is not None
        self._epoll: select.epoll = _EPOLL()

    def fileno(self) -> int:
        return self._epoll.fileno()

    def register(self, fd: int, mask: int) -> None:
        raise OSError(errno.ENOSPC, "no room")

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return self._epoll.poll(timeout)

    def unregister(self, fd: int) -> None:
        self._epoll.unregister(fd)

    def close(self) -> None:
        self._epoll.close()


async def test_a_connection_the_watch_cannot_take_is_still_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The departure watch failing to take a socket (at an app's first wait) leaves
    that request unwatched, served as any other, and the worker unharmed."""
    monkeypatch.setattr(select, "epoll", _FullEpoll)  # the module http1 reads
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        host, port = await _serving(Recorder(), nursery, shutdown)
        stream = await trio.open_tcp_stream(host, port)
        for target in (b"/sleep", b"/sleep"):
            await stream.send_all(_request(target))
            assert (await _read_until_quiet(stream)).startswith(b"HTTP/1.1 200 ")
        await stream.aclose()
        shutdown.set()


@BOTH_WAYS
async def test_a_write_that_finds_the_client_gone_is_its_departure(
    inline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that resets while its answer streams, the break found by a write before
    any read sees it: the request hears its departure (a relayed stream closes its
    upstream by it; it hears no `http.disconnect`), as it would from a read."""
    if not inline:
        _tasks_per_request(monkeypatch)
    departed = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")
        await receive()

        async def gone() -> None:
            departed.set()

        scope["extensions"][http1.DEPARTURE_EXTENSION](gone)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        give_up = trio.current_time() + 5
        # Never waits (a reschedule each time): nothing but a write hears the client.
        while not departed.is_set() and trio.current_time() < give_up:
            await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
            await trio.lowlevel.checkpoint()
        await send({"type": "http.response.body", "body": b""})

    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        host, port = await _serving(app, nursery, shutdown)
        client = socket.socket()
        client.connect((host, port))
        client.sendall(_request())
        await trio.sleep(0.05)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # with unread bytes: a reset
        with trio.fail_after(10):  # against a hang, not a timing assertion
            await departed.wait()
        shutdown.set()


class EarlyHints:
    """An ASGI app answering with a 103, then trying a 200 (which hypercorn refuses:
    one start per answer), as an app may that takes ASGI for HTTP."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")
        await receive()
        await send({"type": "http.response.start", "status": 103, "headers": [(b"link", b"</a>")]})
        fields = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": fields})
        await send({"type": "http.response.body", "body": b"ok"})


async def test_a_1xx_at_the_last_request_is_not_marked_closing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At `keep_alive_max_requests`, hypercorn adds `connection: close` to an answer of
    status 200 or above only, not to a 1xx."""
    pieces = [_request(b"/")]
    lean = await _exchange(True, pieces, monkeypatch, app=EarlyHints(), keep_alive_max_requests=1)
    by_hypercorn = await _exchange(
        False, pieces, monkeypatch, app=EarlyHints(), keep_alive_max_requests=1
    )
    assert lean == by_hypercorn
    assert lean[1].startswith(b"HTTP/1.1 103 ") and b"connection: close" not in lean[1]


class _Vouching:
    """An app answering with fields whose tail it vouches for (`http1.CheckedTail`),
    then, if `tampered`, a field from outside appended after: one that would inject
    another field."""

    def __init__(self, tampered: bool) -> None:
        self._tampered = tampered

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await Recorder()(scope, receive, send)
            return
        await receive()
        own = [(b"x-own", b"1")]
        fields = http1.vouched([(b"content-length", b"2"), *own], own)
        if self._tampered:
            fields.append((b"x-outside", b"a\r\nx-injected: yes"))
        await send({"type": "http.response.start", "status": 200, "headers": fields})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("tampered", [False, True], ids=["as made", "tampered"])
async def test_a_vouched_tail_is_written_as_hypercorn_writes_it(
    tampered: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lean server checks all but a `CheckedTail`'s own fields, and all of them once
    that tail is not the last any more: an injected field is refused as h11 refuses it."""
    pieces = [_request(b"/")]
    lean = await _exchange(True, pieces, monkeypatch, app=_Vouching(tampered))
    by_hypercorn = await _exchange(False, pieces, monkeypatch, app=_Vouching(tampered))
    assert lean == by_hypercorn
    assert (b"x-injected" in lean[1]) is False
    assert (b"x-own: 1" in lean[1]) is not tampered

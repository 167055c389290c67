"""Open-loop HTTP/1.1 load generator and stream client for scripts/bench.

Why not wrk for everything: wrk is closed-loop (a slow response delays the next request on
its connection, so queueing never shows up in its latencies: "coordinated omission"), and it
cannot time the first byte of a stream. This client schedules request i at t0 + i/rate
whatever happened before, and times every request from that schedule. It is plain
non-blocking sockets on epoll in one thread, so it costs tens of microseconds of CPU per
request; the bench measures and prints its ceiling against the bare mock.
"""

from __future__ import annotations

import ctypes
import errno
import select
import selectors
import socket
from collections import deque
from dataclasses import dataclass, field
from time import perf_counter

OVERHEAD_HEADER = b"x-trigate-overhead-ms"
PR_SET_TIMERSLACK = 29


@dataclass(slots=True)
class Outcome:
    """One request's timeline (perf_counter seconds) and result."""

    scheduled: float
    sent: float = 0.0
    first_byte: float = 0.0
    done: float = 0.0
    status: int = 0
    frames: int = 0
    overhead_ms: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """Completed with a 2xx status."""
        return not self.error and 200 <= self.status < 300


@dataclass(slots=True)
class Run:
    """Every outcome of one run plus what the generator itself saw."""

    outcomes: list[Outcome]
    elapsed: float
    peak_inflight: int = 0
    peak_conns: int = 0


@dataclass(slots=True)
class Response:
    """Incremental parser for one response: the head, then a Content-Length or chunked body."""

    keep_body: bool
    buf: bytearray = field(default_factory=bytearray)
    body: bytearray = field(default_factory=bytearray)
    status: int = 0
    chunked: bool = False
    until_close: bool = False
    close: bool = False
    left: int = 0
    first_body: float = 0.0
    overhead_ms: float | None = None
    got_bytes: bool = False

    def feed(self, data: bytes, now: float) -> bool:
        """Consume received bytes; True once the response is complete."""
        self.got_bytes = True
        self.buf += data
        if not self.status:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            self._head(bytes(self.buf[:end]))
            del self.buf[: end + 4]
        if self.chunked:
            return self._chunks(now)
        return self._plain(now)

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ", 2)[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif name == b"connection":
                self.close = value.lower() == b"close"
            elif name == OVERHEAD_HEADER:
                self.overhead_ms = float(value)
        self.until_close = not self.chunked and length is None
        self.left = length or 0

    def _plain(self, now: float) -> bool:
        if self.buf and not self.first_body:
            self.first_body = now
        if self.until_close:
            self._take(len(self.buf))
            return False
        self._take(min(self.left, len(self.buf)))
        return self.left == 0

    def _take(self, n: int) -> None:
        if self.keep_body:
            self.body += self.buf[:n]
        del self.buf[:n]
        if not self.until_close:
            self.left -= n

    def _chunks(self, now: float) -> bool:
        """left counts the current chunk's data plus its trailing CRLF."""
        while True:
            if self.left == 0:
                eol = self.buf.find(b"\r\n")
                if eol < 0:
                    return False
                size = int(self.buf[:eol].split(b";")[0], 16)
                if size == 0:
                    return self.buf.endswith(b"\r\n\r\n")
                del self.buf[: eol + 2]
                self.left = size + 2
            take = min(self.left, len(self.buf))
            if not take:
                return False
            if not self.first_body:
                self.first_body = now
            data = min(take, self.left - 2)
            if self.keep_body and data > 0:
                self.body += self.buf[:data]
            del self.buf[:take]
            self.left -= take

    def frames(self) -> int:
        """SSE data frames in the kept body."""
        return self.body.count(b"\ndata:") + self.body.startswith(b"data:")


class _Conn:
    """One keep-alive connection carrying at most one request at a time."""

    def __init__(self, port: int, sel: selectors.BaseSelector) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sel = sel
        self.connected = False
        self.reused = False
        self.outcome: Outcome | None = None
        self.response: Response | None = None
        code = self.sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            self.sock.close()
            raise OSError(code, "connect failed")
        sel.register(self.sock, selectors.EVENT_WRITE, self)

    def start(self, outcome: Outcome, request: bytes, keep_body: bool) -> None:
        """Attach a request; it is sent now, or as soon as the connect completes."""
        self.outcome = outcome
        self.response = Response(keep_body)
        if self.connected:
            self.reused = True
            self._send(request)

    def on_writable(self, request: bytes) -> None:
        """The non-blocking connect finished: check it, then send the waiting request."""
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, "connect failed")
        self.connected = True
        self.sel.modify(self.sock, selectors.EVENT_READ, self)
        self._send(request)

    def _send(self, request: bytes) -> None:
        assert self.outcome is not None
        self.outcome.sent = perf_counter()
        if self.sock.send(request) != len(request):
            raise OSError(errno.EAGAIN, "short write")

    def close(self) -> None:
        """Forget the socket."""
        self.sel.unregister(self.sock)
        self.sock.close()


class _Loop:
    """The event loop of one run: schedule, dispatch, read, retire.

    Requests that are due but have no connection yet exist only as a count (their scheduled
    times follow from their index), so an overloaded run costs nothing per waiting request.
    """

    def __init__(self, port: int, request: bytes, max_conns: int, keep_body: bool) -> None:
        self.port = port
        self.request = request
        self.max_conns = max_conns
        self.keep_body = keep_body
        self.sel = selectors.EpollSelector()
        self.idle: list[_Conn] = []
        self.conns = 0
        self.inflight = 0
        self.retries: deque[Outcome] = deque()
        self.outcomes: list[Outcome] = []
        self.peak_inflight = 0
        self.peak_conns = 0

    def dispatch(self, due: int, t0: float, rate: float) -> None:
        """Start retries, then requests up to index `due`, on idle or new connections."""
        while self.idle or self.conns < self.max_conns:
            if self.retries:
                outcome = self.retries.popleft()
            elif len(self.outcomes) < due:
                outcome = Outcome(scheduled=t0 + len(self.outcomes) / rate)
                self.outcomes.append(outcome)
            else:
                return
            try:
                conn = self.idle.pop() if self.idle else self._open()
            except OSError as exc:
                outcome.error = f"connect: {exc}"
                continue
            self.inflight += 1
            self.peak_inflight = max(self.peak_inflight, self.inflight)
            try:
                conn.start(outcome, self.request, self.keep_body)
            except OSError as exc:
                self._fail(conn, str(exc))

    def _open(self) -> _Conn:
        conn = _Conn(self.port, self.sel)
        self.conns += 1
        self.peak_conns = max(self.peak_conns, self.conns)
        return conn

    def poll(self, wait: float) -> None:
        """Handle socket events for up to `wait` seconds.

        epoll's own timeout is whole milliseconds, which would send requests up to 1 ms late;
        select() on the epoll descriptor waits with microsecond precision instead.
        """
        if wait > 0:
            select.select([self.sel.fileno()], [], [], wait)
        for key, mask in self.sel.select(0):
            conn: _Conn = key.data
            try:
                if mask & selectors.EVENT_WRITE and not conn.connected:
                    conn.on_writable(self.request)
                else:
                    self._on_readable(conn)
            except OSError as exc:
                self._fail(conn, str(exc))

    def _on_readable(self, conn: _Conn) -> None:
        data = conn.sock.recv(262144)
        now = perf_counter()
        response = conn.response
        if conn.outcome is None or response is None:
            self._drop(conn)
        elif not data:
            if response.until_close:
                self._finish(conn, now)
            else:
                self._fail(conn, "eof")
        elif response.feed(data, now):
            self._finish(conn, now)

    def _finish(self, conn: _Conn, now: float) -> None:
        outcome, response = conn.outcome, conn.response
        assert outcome is not None and response is not None
        outcome.done = now
        outcome.status = response.status
        outcome.first_byte = response.first_body or now
        outcome.overhead_ms = response.overhead_ms
        if self.keep_body:
            outcome.frames = response.frames()
        self.inflight -= 1
        conn.outcome = conn.response = None
        if response.close or response.until_close:
            self._drop(conn)
        else:
            self.idle.append(conn)

    def _fail(self, conn: _Conn, error: str) -> None:
        """A reused keep-alive connection that died before any answer was closed by the server
        while idle: the request never got there, so it is sent again."""
        outcome, response = conn.outcome, conn.response
        self._drop(conn)
        if outcome is None:
            return
        self.inflight -= 1
        if conn.reused and response is not None and not response.got_bytes:
            self.retries.append(outcome)
        else:
            outcome.error = error

    def _drop(self, conn: _Conn) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        conn.close()
        self.conns -= 1

    def close(self, error: str) -> None:
        """Close every connection, failing the requests still in flight or waiting."""
        for outcome in self.retries:
            outcome.error = error
        for key in list(self.sel.get_map().values()):
            conn: _Conn = key.data
            if conn.outcome is not None:
                conn.outcome.error = error
            conn.close()
        self.sel.close()


def open_loop(
    port: int,
    request: bytes,
    rate: float,
    duration: float,
    *,
    max_conns: int = 512,
    timeout: float = 30.0,
    keep_body: bool = False,
    drain: bool = True,
) -> Run:
    """Offer `rate` requests/s for `duration` s to 127.0.0.1:port whatever the responses do.

    With drain=True every scheduled request is sent, late if need be (its latency still
    counts from its schedule); with drain=False the requests still waiting for a connection
    when the duration ends are never sent (see closed_loop).
    """
    loop = _Loop(port, request, max_conns, keep_body)
    total = max(1, round(rate * duration))
    t0 = perf_counter()
    while True:
        now = perf_counter()
        due = min(total, int((now - t0) * rate) + 1)
        if not drain and now >= t0 + duration:
            total = due = len(loop.outcomes)
        loop.dispatch(due, t0, rate)
        finished = len(loop.outcomes) >= total and not loop.retries and not loop.inflight
        if finished or now > t0 + duration + timeout:
            break
        # Requests already due but still undispatched wait for a connection to free up, which
        # only a socket event can bring: sleep until one rather than spin.
        backlogged = due > len(loop.outcomes) or loop.retries
        next_due = now + 0.1 if backlogged or due >= total else t0 + due / rate
        loop.poll(min(next_due - now, 0.1))
    elapsed = perf_counter() - t0
    loop.close("timeout")
    return Run(loop.outcomes, elapsed, loop.peak_inflight, loop.peak_conns)


def closed_loop(
    port: int, request: bytes, concurrency: int, duration: float, *, keep_body: bool = False
) -> Run:
    """Keep `concurrency` requests in flight for `duration` s: a maximum-throughput run."""
    return open_loop(
        port, request, 1e9, duration, max_conns=concurrency, keep_body=keep_body, drain=False
    )


def tighten_timer_slack() -> None:
    """Linux lets a sleeping thread wake up to 50 us late by default; ask for 1 us, so requests
    leave on schedule."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)


def http_request(
    path: str,
    body: bytes,
    auth: str,
    *,
    stream: bool = False,
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """The raw bytes of one keep-alive POST, built once per run."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    )
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    if stream:
        head += "Accept: text/event-stream\r\n"
    return head.encode() + b"\r\n" + body

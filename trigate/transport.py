"""A lean HTTP/1.1 transport for httpx on Trio, built directly on h11.

httpx's default transport (httpcore over anyio) manages about 1.4k requests/s per core on
Trio; the gateway's upstream traffic is plain keep-alive HTTP/1.1 with small JSON bodies,
and for that a pool of h11 state machines over Trio sockets manages about three times as
many. Plugging it in behind ``httpx.AsyncBaseTransport`` keeps all of httpx's client API
(``AsyncClient``, streamed responses, timeout configuration, exception types) unchanged.
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import AsyncIterator, Mapping

import h11
import httpx
import trio

_CHUNK_SIZE = 64 * 1024
# A request body up to this size goes out in one write with its head; a larger one is
# written on its own, in slices of this size: copying it behind the head would double
# it in memory, and TLS encrypts all of one write into a buffer before sending any.
_WRITE_SLICE = 1024 * 1024
# h11's 16 KiB default for an incomplete response head is too tight for some providers'
# header sets; httpcore allows 100 KiB as well.
_MAX_HEAD_SIZE = 100 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A whole (non-streamed) answer is held in memory to be read and rendered: without a cap,
# one upstream (or whoever answers at its address) could make a worker hold any amount.
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
# Streams are relayed as they come, never held whole: their bodies are not capped.
_STREAM_MEDIA_TYPES = frozenset({"text/event-stream", "application/vnd.amazon.eventstream"})
_NO_TIMEOUTS: Mapping[str, float | None] = {}
# h11 events are immutable, so the one that ends every request body can be shared.
_END = h11.EndOfMessage()

Origin = tuple[str, str, int]
_Event = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]


class ResponseTooLarge(httpx.ReadError):
    """A non-stream response body went past the transport's `max_response_bytes`; the
    connection was closed without reading the rest."""


class _StaleConnection(Exception):
    """A reused connection was found dead before any of the response arrived.

    The server closed it while it sat idle in the pool, so the request can safely be sent
    again on a fresh connection.
    """


class _Connection:
    """One socket and the h11 state machine that frames its traffic."""

    __slots__ = ("h11", "origin", "reused", "sock", "stream")

    def __init__(self, origin: Origin, stream: trio.abc.Stream, sock: trio.socket.SocketType):
        self.origin = origin
        self.stream = stream
        # The raw socket, also under TLS: closing it needs no await and it answers the
        # idle-liveness check.
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD_SIZE)
        self.reused = False

    def close(self) -> None:
        # A synchronous close of the raw socket cannot be interrupted by the cancellation that
        # often triggers it, and the peer sees EOF at once. Skipping TLS close_notify is what
        # HTTPS clients do anyway (https_compatible).
        self.sock.close()


class H11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive connection pool for ``httpx.AsyncClient`` on Trio.

    Connections are pooled per (scheme, host, port). A connection is reused only after its
    response was read to the end and neither side asked to close; a response abandoned
    half-read (closed early, cancelled, failed) closes its socket, since the unread rest of
    it would corrupt the next exchange. HTTP/2 is never negotiated.

    Args:
        max_connections: Cap on open connections, idle and active together, across all
            origins. A request finding the pool full closes an idle connection to make room,
            or waits for one up to the pool timeout (``httpx.PoolTimeout``).
        ssl_context: Used for https origins; defaults to ``ssl.create_default_context()``.
        max_response_bytes: Cap on a response body that is not a stream (SSE or AWS's
            event stream); past it, reading raises ``ResponseTooLarge``.
        retries_on_stale: Resend a request once, on a fresh connection, when the pooled
            connection it went out on turns out to have been closed by the server while
            idle and nothing of the response arrived. Only bodies given as bytes are
            resent; streamed bodies cannot be replayed.

    Timeouts come from httpx's per-request ``timeout`` extension (connect/read/write/pool)
    and raise the matching ``httpx.*Timeout``; read and write timeouts bound each socket
    operation, as in httpx's own transport.
    """

    def __init__(
        self,
        *,
        max_connections: int = 1000,
        ssl_context: ssl.SSLContext | None = None,
        retries_on_stale: bool = True,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._max_connections = max_connections
        self._max_response_bytes = max_response_bytes
        self._ssl_context = ssl_context or ssl.create_default_context()
        self._retries_on_stale = retries_on_stale
        # Per origin, most recently used last: reusing the newest connection gives the
        # older ones the chance to be closed by the server's idle timeout.
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open = 0
        self._waiters = trio.lowlevel.ParkingLot()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = _origin(request)
        timeouts = request.extensions.get("timeout", _NO_TIMEOUTS)
        body = _replayable_body(request)
        conn = await self._checkout(origin, request, timeouts, fresh=False)
        try:
            head = await self._exchange(conn, request, body, timeouts)
        except _StaleConnection:
            conn = await self._checkout(origin, request, timeouts, fresh=True)
            head = await self._exchange(conn, request, body, timeouts)
        cap = None if _is_stream(head) else self._max_response_bytes
        stream = _ResponseStream(self, conn, request, _seconds(timeouts.get("read")), cap)
        return httpx.Response(
            head.status_code,
            headers=head.headers.raw_items(),
            stream=stream,
            extensions={
                "http_version": b"HTTP/1.1" if head.http_version == b"1.1" else b"HTTP/1.0",
                "reason_phrase": head.reason,
            },
        )

    async def aclose(self) -> None:
        """Close the idle connections; those in use close when their response ends."""
        self._closed = True
        for idle in self._idle.values():
            while idle:
                self._discard(idle.pop())

    async def _checkout(
        self,
        origin: Origin,
        request: httpx.Request,
        timeouts: Mapping[str, float | None],
        *,
        fresh: bool,
    ) -> _Connection:
        """Reuse an idle connection (unless `fresh`) or open one, waiting for room if full."""
        deadline: float | None = None
        while True:
            if not fresh and (conn := self._pop_idle(origin)) is not None:
                return conn
            if self._open < self._max_connections or self._evict_idle():
                return await self._open_connection(origin, request, timeouts)
            if deadline is None:
                deadline = trio.current_time() + _seconds(timeouts.get("pool"))
            # Every release or close unparks one waiter, which then re-checks from the top:
            # it may take the released connection, or evict it if it is for another origin.
            with trio.move_on_at(deadline):
                await self._waiters.park()
                continue
            raise httpx.PoolTimeout("timed out waiting for a connection", request=request)

    def _pop_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            # An idle socket has nothing legitimate to read: readable means the server closed
            # it (EOF) or sent something unsolicited such as a 408. Either way it is useless,
            # and finding out now beats finding out after sending the request.
            if not conn.sock.is_readable():
                return conn
            self._discard(conn)
        return None

    def _evict_idle(self) -> bool:
        """Close an idle connection, of any origin, to free its slot for the caller."""
        for idle in self._idle.values():
            if idle:
                idle.pop(0).close()
                self._open -= 1
                return True
        return False

    async def _open_connection(
        self, origin: Origin, request: httpx.Request, timeouts: Mapping[str, float | None]
    ) -> _Connection:
        # The slot is taken before connecting, so concurrent connects respect the limit.
        self._open += 1
        try:
            return await self._connect(origin, request, _seconds(timeouts.get("connect")))
        except BaseException:
            self._open -= 1
            self._waiters.unpark()
            raise

    async def _connect(
        self, origin: Origin, request: httpx.Request, connect_timeout: float
    ) -> _Connection:
        scheme, host, port = origin
        with trio.move_on_after(connect_timeout):
            try:
                tcp = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                raise httpx.ConnectError(str(exc), request=request) from exc
            conn = _Connection(origin, tcp, tcp.socket)
            if scheme == "https":
                try:
                    conn.stream = await self._handshake(tcp, host, request)
                except BaseException:
                    conn.close()
                    raise
            return conn
        raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}", request=request)

    async def _handshake(
        self, tcp: trio.SocketStream, host: str, request: httpx.Request
    ) -> trio.SSLStream[trio.SocketStream]:
        # Done here rather than lazily on first send so that certificate and handshake
        # failures count as connect errors, bounded by the connect timeout.
        tls = trio.SSLStream(tcp, self._ssl_context, server_hostname=host, https_compatible=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            raise httpx.ConnectError(_describe(exc), request=request) from exc
        return tls

    async def _exchange(
        self,
        conn: _Connection,
        request: httpx.Request,
        body: bytes | None,
        timeouts: Mapping[str, float | None],
    ) -> h11.Response:
        """Send the request and read the response head; any failure closes the socket."""
        retryable = self._retries_on_stale and conn.reused and body is not None
        try:
            await _send_request(conn, request, body, _seconds(timeouts.get("write")), retryable)
            return await _receive_head(conn, request, _seconds(timeouts.get("read")), retryable)
        except BaseException:
            self._discard(conn)
            raise

    def _release(self, conn: _Connection) -> None:
        """Pool a connection whose response ended, unless it cannot carry another exchange."""
        state = conn.h11
        # Leftover bytes would be misread as the next response; a closed receive side means
        # the body was delimited by EOF.
        if (
            self._closed
            or state.our_state is not h11.DONE
            or state.their_state is not h11.DONE
            or any(state.trailing_data)
        ):
            self._discard(conn)
            return
        state.start_next_cycle()
        conn.reused = True
        self._idle.setdefault(conn.origin, []).append(conn)
        self._waiters.unpark()

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        self._waiters.unpark()


class _ResponseStream(httpx.AsyncByteStream):
    """A response body that owns its connection until the body ends or is abandoned.

    The connection is handed back exactly once: to the pool on reading the end of the body,
    or closed by ``aclose()``, by cancellation or by an error before that.
    """

    def __init__(
        self,
        transport: H11Transport,
        conn: _Connection,
        request: httpx.Request,
        read_timeout: float,
        cap: int | None,
    ) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn
        self._request = request
        self._read_timeout = read_timeout
        # What may still be read before the body counts as too large; None: no cap.
        self._left = cap

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # No cleanup around the yield: an abandoned iterator is finalised by the garbage
        # collector, where nothing can be awaited. _next_chunk and aclose do all of it.
        while (chunk := await self._next_chunk()) is not None:
            yield chunk

    async def _next_chunk(self) -> bytes | None:
        conn = self._conn
        if conn is None:
            return None  # closed by aclose(), possibly from another task
        try:
            event = await _next_body_event(conn, self._request, self._read_timeout)
        except BaseException:
            # Cancelled or failed mid-body: the rest of the response may still arrive, so the
            # socket can never carry another request.
            if self._take() is not None:
                self._transport._discard(conn)
            raise
        if type(event) is h11.Data:
            if self._left is not None:
                self._left -= len(event.data)
                if self._left < 0:
                    await self.aclose()
                    raise ResponseTooLarge(
                        "The response body is larger than the transport accepts.",
                        request=self._request,
                    )
            return bytes(event.data)
        if self._take() is not None:
            self._transport._release(conn)
        return None

    async def aclose(self) -> None:
        conn = self._take()
        if conn is None:
            return
        if _ended_already(conn):
            self._transport._release(conn)
        else:
            self._transport._discard(conn)

    def _take(self) -> _Connection | None:
        """Claim the connection for handing back; None if that has already happened.

        A concurrent aclose() can close the socket while a read is pending, and the reader
        must then not hand the connection back a second time.
        """
        conn, self._conn = self._conn, None
        return conn


def _is_stream(head: h11.Response) -> bool:
    for name, value in head.headers:
        if name == b"content-type":
            media_type = value.partition(b";")[0].strip().lower().decode("latin-1")
            return media_type in _STREAM_MEDIA_TYPES
    return False


def _ended_already(conn: _Connection) -> bool:
    """Whether an abandoned response has in fact ended: its end is in h11's buffer, or in
    the socket, unread. Reads only what is there, never waiting.

    A stream reader stops at its API's own end (OpenAI's `data: [DONE]`), one read
    before the body's end (`0\\r\\n\\r\\n`), which usually comes in the same packet or
    the next. Discarding the connection then cost every stream a new upstream
    connection (and, over TLS, a handshake). A TLS stream's bytes cannot be read here
    without waiting: only what h11 already holds counts there."""
    state = conn.h11
    plain = isinstance(conn.stream, trio.SocketStream)
    while True:
        try:
            event = state.next_event()
        except h11.RemoteProtocolError:
            return False
        if type(event) is h11.EndOfMessage:
            return True
        if type(event) is h11.Data:
            continue  # the rest of a body nobody will read
        if event is not h11.NEED_DATA or not plain:
            return False
        try:
            # Trio's sockets are non-blocking and trio holds no buffer of its own.
            data = os.read(conn.sock.fileno(), _CHUNK_SIZE)
        except OSError:  # BlockingIOError: nothing there yet
            return False
        if not data:
            return False  # the server closed: the connection cannot be reused anyway
        state.receive_data(data)


def _origin(request: httpx.Request) -> Origin:
    url = request.url
    default_port = _DEFAULT_PORTS.get(url.scheme)
    if default_port is None:
        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}", request=request)
    return url.scheme, url.raw_host.decode("ascii"), url.port or default_port


def _replayable_body(request: httpx.Request) -> bytes | None:
    """The request body if httpx already holds it as bytes, else None (a one-shot stream)."""
    try:
        return request.content
    except httpx.RequestNotRead:
        return None


def _seconds(timeout: float | None) -> float:
    return math.inf if timeout is None else timeout


def _describe(exc: BaseException) -> str:
    # Trio wraps the OSError or SSLError that says what actually happened.
    return str(exc.__cause__ or exc) or type(exc).__name__


async def _send_request(
    conn: _Connection,
    request: httpx.Request,
    body: bytes | None,
    write_timeout: float,
    retryable: bool,
) -> None:
    state = conn.h11
    try:
        head = state.send(
            h11.Request(
                method=request.method, target=request.url.raw_path, headers=request.headers.raw
            )
        )
        if body is None:
            await _write(conn, request, head, write_timeout)
            # An AsyncClient's request streams are async, as httpx's own transports assert.
            assert isinstance(request.stream, httpx.AsyncByteStream)
            async for chunk in request.stream:
                await _write(conn, request, state.send(h11.Data(data=chunk)), write_timeout)
            await _write(conn, request, state.send(_END), write_timeout)
            return
        # Head and body in one write: one syscall, and one TCP segment for small bodies.
        parts = [head]
        if body:
            parts.append(state.send(h11.Data(data=body)))
        parts.append(state.send(_END))
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(str(exc), request=request) from exc
    if len(body) <= _WRITE_SLICE:
        await _write(conn, request, b"".join(parts), write_timeout, retryable)
        return
    for part in parts:
        view = memoryview(part)
        for start in range(0, len(view), _WRITE_SLICE):
            await _write(
                conn, request, view[start : start + _WRITE_SLICE], write_timeout, retryable
            )


async def _write(
    conn: _Connection,
    request: httpx.Request,
    data: bytes | memoryview,
    write_timeout: float,
    retryable: bool = False,
) -> None:
    with trio.move_on_after(write_timeout):
        try:
            await conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if retryable:
                raise _StaleConnection from exc
            raise httpx.WriteError(_describe(exc), request=request) from exc
        return
    raise httpx.WriteTimeout("timed out sending the request", request=request)


async def _receive(conn: _Connection, request: httpx.Request, read_timeout: float) -> bytes:
    with trio.move_on_after(read_timeout):
        try:
            data = await conn.stream.receive_some(_CHUNK_SIZE)
            # Trio's sockets and TLS streams give bytes; any other stream may give a bytearray.
            return data if isinstance(data, bytes) else bytes(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpx.ReadError(_describe(exc), request=request) from exc
    raise httpx.ReadTimeout("timed out waiting for the server", request=request)


async def _receive_head(
    conn: _Connection, request: httpx.Request, read_timeout: float, retryable: bool
) -> h11.Response:
    """Read up to the final response head, skipping 1xx responses."""
    state = conn.h11
    while True:
        event = _next_event(state, request)
        if event is h11.NEED_DATA:
            state.receive_data(await _receive_head_bytes(conn, request, read_timeout, retryable))
            # Once the server has answered anything, it has taken the request.
            retryable = False
        elif type(event) is h11.Response:
            return event
        elif type(event) is not h11.InformationalResponse:
            raise httpx.RemoteProtocolError(
                f"unexpected {type(event).__name__} instead of a response", request=request
            )


async def _receive_head_bytes(
    conn: _Connection, request: httpx.Request, read_timeout: float, retryable: bool
) -> bytes:
    try:
        data = await _receive(conn, request, read_timeout)
    except httpx.ReadError:
        if retryable:
            raise _StaleConnection from None
        raise
    if not data:
        if retryable:
            raise _StaleConnection
        raise httpx.RemoteProtocolError(
            "server disconnected without sending a response", request=request
        )
    return data


async def _next_body_event(
    conn: _Connection, request: httpx.Request, read_timeout: float
) -> _Event:
    """The next piece of the body: h11.Data, or h11.EndOfMessage when it is complete."""
    state = conn.h11
    while (event := _next_event(state, request)) is h11.NEED_DATA:
        # EOF is fed to h11 too: it ends a body delimited by close and is an error otherwise.
        state.receive_data(await _receive(conn, request, read_timeout))
    return event


def _next_event(state: h11.Connection, request: httpx.Request) -> _Event:
    try:
        return state.next_event()
    except h11.RemoteProtocolError as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc

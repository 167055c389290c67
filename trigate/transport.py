"""A lean HTTP/1.1 client transport for httpx on Trio.

httpx's default transport (httpcore over anyio) manages about 1.4k requests/s per core on
Trio; the gateway's upstream traffic is plain keep-alive HTTP/1.1 with small JSON bodies,
and for that a pool of connections over Trio sockets manages about three times as many.
Plugging it in behind ``httpx.AsyncBaseTransport`` keeps all of httpx's client API
(``AsyncClient``, streamed responses, timeout configuration, exception types) unchanged.

The framing is done here rather than by h11, with h11's rules (the same grammar for
heads and header fields, the same body framing, keep-alive and size limits): h11's event
objects and state machine cost about a sixth of a proxied request's CPU, while a client
that sends one request at a time and reads one response needs only a buffer, a few
regular expressions and a body reader.
"""

from __future__ import annotations

import abc
import math
import operator
import os
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

import httpx
import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from trigate.read_deadlines import ReadDeadlines
from trigate.sockets import FastStream

_CHUNK_SIZE = 64 * 1024
# The most plaintext one TLS record holds (RFC 8446, section 5.1).
_TLS_RECORD_SIZE = 2**14
# A request body up to this size goes out in one write with its head; a larger one is
# written on its own, in slices of this size: copying it behind the head would double
# it in memory, and TLS encrypts all of one write into a buffer before sending any.
_WRITE_SLICE = 1024 * 1024
# h11's 16 KiB default for an incomplete response head is too tight for some providers'
# header sets; httpcore allows 100 KiB as well. A chunk's header and a body's trailers
# are held to it too.
_MAX_HEAD_SIZE = 100 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A whole (non-streamed) answer is held in memory to be read and rendered: without a cap,
# one upstream (or whoever answers at its address) could make a worker hold any amount.
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
# Streams are relayed as they come, never held whole: their bodies are not capped.
_STREAM_MEDIA_TYPES = frozenset({"text/event-stream", "application/vnd.amazon.eventstream"})
_NO_TIMEOUTS: Mapping[str, float | None] = {}
# A request extension: its caller reads the answer piece by piece, never holding it
# whole (a file's content, relayed or summed line by line), so its body is not capped
# whatever its media type.
READ_AS_STREAM = "trigate.read_as_stream"

# RFC 9110/9112's grammar, as h11 writes it (h11/_abnf.py). A field value has no NUL and
# no whitespace but single spaces and tabs between its visible characters.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VALUE = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
# The same grammar for a head's fields, checked with a few passes of C over all the names
# (and all the values) joined by a newline, which none of them may contain: the count of
# newlines then proves none did. Each is first translated by a table: a name's bytes
# (`_TOKEN`'s) and the newline to themselves, any other to NUL; a value's NUL, CR, VT
# and FF (`_FIELD_VALUE` allows no other whitespace than the newline that joins them, and
# spaces and tabs inside a value) to NUL, spaces and tabs to a tab, the rest to `a`.
_TOKEN_BYTES = b"-!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NAME_TABLE = bytes(byte if byte in _TOKEN_BYTES + b"\n" else 0 for byte in range(256))
# `_NAME_TABLE` that also lower-cases, as h11 keeps names: one pass for both.
_LOWERED_NAME_TABLE = _NAME_TABLE.lower()
_VALUE_TABLE = bytes(
    0 if byte in b"\x00\r\x0b\x0c" else 9 if byte in b" \t" else byte if byte == 10 else 97
    for byte in range(256)
)
_METHOD = re.compile(_TOKEN)
_TARGET = re.compile(rb"[\x21-\x7e]+")
_STATUS_LINE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|[^\x00\s])*))?")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _FIELD_VALUE + rb")[ \t]*")
# All of a head's field lines at once: checked by one match, split by one findall.
_FIELD_LINE = re.compile(_FIELD.pattern + rb"\r?\n")
_FIELD_LINES = re.compile(rb"(?:" + _TOKEN + rb":[ \t]*" + _FIELD_VALUE + rb"[ \t]*\r?\n)*")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,20}")
_CHUNK_HEADER = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*")
# Where a chunk's header of 20 hex digits at most must have ended: its CRLF's position, +1.
_MAX_QUICK_HEADER = 22
# A head ends at a blank line; h11 accepts lines ended by a bare LF as well as by CRLF.
_BLANK_LINE = re.compile(rb"\n\r?\n")
# A body reader's answer when the buffer holds none of the body yet (None is the body's
# end): a reader never returns empty data, so the empty bytes can say it.
_MORE = b""

Origin = tuple[str, str, int]


class ResponseTooLarge(httpx.ReadError):
    """A non-stream response body went past the transport's `max_response_bytes`; the
    connection was closed without reading the rest."""


class _StaleConnection(Exception):
    """A reused connection was found dead before any of the response arrived.

    The server closed it while it sat idle in the pool, so the request can safely be sent
    again on a fresh connection.
    """


class _Connection:
    """One socket, the bytes read from it and not yet parsed, and whether it may carry
    another exchange after the current one."""

    __slots__ = (
        "buffer", "deadlines", "expects_wait", "keep_alive", "origin", "reused", "sock",
        "stream", "timed_out",
    )  # fmt: skip

    def __init__(
        self,
        origin: Origin,
        stream: trio.abc.Stream,
        sock: trio.socket.SocketType,
        deadlines: ReadDeadlines,
    ) -> None:
        self.origin = origin
        self.stream = stream
        # The raw socket, also under TLS: closing it needs no await and it answers the
        # idle-liveness check.
        self.sock = sock
        self.deadlines = deadlines
        self.buffer = bytearray()
        # False once either side asked to close, or the body is delimited by the close.
        self.keep_alive = True
        self.reused = False
        # Set when a read waited past its deadline (`ReadDeadlines`), which closed the socket.
        self.timed_out = False
        # Whether the next read will most likely find nothing yet, so that trying it before
        # waiting would cost a failed system call: just after sending a request, and, in a
        # body, after a read that had to wait for what it got (a stream's tokens, one at a
        # time).
        self.expects_wait = True

    def close(self) -> None:
        # A synchronous close of the raw socket cannot be interrupted by the cancellation that
        # often triggers it, and the peer sees EOF at once. Skipping TLS close_notify is what
        # HTTPS clients do anyway (https_compatible).
        self.sock.close()

    def time_out(self) -> None:
        """A read waited too long: closing the socket wakes it (`_receive` reads why)."""
        self.timed_out = True
        self.close()


class _Head:
    """A response's status line and header fields, and how its body is framed."""

    __slots__ = (
        "chunked",
        "content_length",
        "content_type",
        "headers",
        "http_version",
        "keep_alive",
        "reason",
        "status",
    )

    def __init__(self, status: int, http_version: bytes, reason: bytes) -> None:
        self.status = status
        self.http_version = http_version
        self.reason = reason
        # As received: (name, value), the name's case kept, for httpx's Response.
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = http_version >= b"1.1"
        self.content_type: bytes | None = None
        self.chunked = False
        self.content_length: int | None = None

    def note(self, name: bytes, value: bytes) -> None:
        """Take in a field that says how the body is framed or what it is, checked as
        h11 checks them: one Transfer-Encoding, and it chunked; one Content-Length."""
        if name == b"connection":
            if b"close" in _comma_values(value):
                self.keep_alive = False
        elif name == b"content-type":
            if self.content_type is None:
                self.content_type = value
        elif name == b"content-length":
            length = _content_length(value)
            if self.content_length is not None and self.content_length != length:
                raise httpx.RemoteProtocolError("conflicting Content-Length headers")
            self.content_length = length
        elif self.chunked:
            raise httpx.RemoteProtocolError("multiple Transfer-Encoding headers")
        elif value.lower() != b"chunked":
            raise httpx.RemoteProtocolError("Only Transfer-Encoding: chunked is supported")
        else:
            self.chunked = True


# The fields `_Head.note` takes in, by their lower-case names.
_NOTED_FIELDS = frozenset({b"connection", b"content-type", b"content-length", b"transfer-encoding"})


class HTTP11Transport(httpx.AsyncBaseTransport):
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
            event stream, or any body of a request with the ``READ_AS_STREAM``
            extension); past it, reading raises ``ResponseTooLarge``.
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
        self.read_deadlines = ReadDeadlines()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = _origin(request)
        timeouts = request.extensions.get("timeout", _NO_TIMEOUTS)
        body = _replayable_body(request)
        conn = await self._checkout(origin, request, timeouts, fresh=False)
        try:
            head, reader = await self._exchange(conn, request, body, timeouts)
        except _StaleConnection:
            conn = await self._checkout(origin, request, timeouts, fresh=True)
            head, reader = await self._exchange(conn, request, body, timeouts)
        uncapped = _is_stream(head) or request.extensions.get(READ_AS_STREAM, False)
        cap = None if uncapped else self._max_response_bytes
        read_timeout = _seconds(timeouts.get("read"))
        stream = _ResponseStream(self, conn, request, read_timeout, cap, reader)
        return httpx.Response(
            head.status,
            headers=head.headers,
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
            plain = FastStream.of(tcp)
            conn = _Connection(origin, plain, tcp.socket, self.read_deadlines)
            if scheme == "https":
                try:
                    conn.stream = await self._handshake(plain, host, request)
                except BaseException:
                    conn.close()
                    raise
            return conn
        raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}", request=request)

    async def _handshake(
        self, tcp: FastStream, host: str, request: httpx.Request
    ) -> trio.SSLStream[FastStream]:
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
    ) -> tuple[_Head, _BodyReader]:
        """Send the request and read the response head; any failure closes the socket."""
        retryable = self._retries_on_stale and conn.reused and body is not None
        try:
            await _send_request(conn, request, body, _seconds(timeouts.get("write")), retryable)
            conn.expects_wait = True
            head = await _receive_head(conn, request, _seconds(timeouts.get("read")), retryable)
            # The body often follows its head closely: its first read tries first.
            conn.expects_wait = False
            return head, _body_reader(conn, request, head)
        except BaseException:
            self._discard(conn)
            raise

    def _release(self, conn: _Connection) -> None:
        """Pool a connection whose response ended, unless it cannot carry another exchange."""
        # Leftover bytes would be misread as the next response.
        if self._closed or not conn.keep_alive or conn.buffer:
            self._discard(conn)
            return
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
        transport: HTTP11Transport,
        conn: _Connection,
        request: httpx.Request,
        read_timeout: float,
        cap: int | None,
        reader: _BodyReader,
    ) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn
        self._request = request
        self._read_timeout = read_timeout
        self._reader = reader
        # What may still be read before the body counts as too large; None: no cap.
        self._left = cap

    def waits_next(self) -> bool:
        """Whether the body's next bytes are not here yet: its last read had to wait for
        the server, and nothing read is left over."""
        conn = self._conn
        return conn is not None and conn.expects_wait and not conn.buffer

    def __aiter__(self) -> _ResponseStream:
        # The stream is its own iterator, not an async generator: a reader that stops at
        # its API's end (OpenAI's `data: [DONE]`) abandons its iterator, and trio closes an
        # abandoned generator in a task of its own (a wake-up of its run loop and a task
        # step per stream). _next_chunk and aclose hold all the state and do all the cleanup.
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def _next_chunk(self) -> bytes | None:
        conn = self._conn
        if conn is None:
            return None  # closed by aclose(), possibly from another task
        try:
            data = await self._read(conn)
        except BaseException:
            # Cancelled or failed mid-body: the rest of the response may still arrive, so the
            # socket can never carry another request.
            if self._take() is not None:
                self._transport._discard(conn)
            raise
        if data is not None:
            if self._left is not None:
                self._left -= len(data)
                if self._left < 0:
                    await self.aclose()
                    raise ResponseTooLarge(
                        "The response body is larger than the transport accepts.",
                        request=self._request,
                    )
            return data
        if self._take() is not None:
            self._transport._release(conn)
        return None

    async def read_all(self) -> bytes:
        """The rest of the body, read to its end (which hands the connection back)."""
        pieces = []
        while (chunk := await self._next_chunk()) is not None:
            pieces.append(chunk)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _read(self, conn: _Connection) -> bytes | None:
        """The body's next bytes, what the buffer holds of it before reading the socket;
        None at its end."""
        reader = self._reader
        while (data := reader.extract(conn.buffer)) is _MORE:
            received = await _receive(conn, self._request, self._read_timeout)
            if not received:
                # A body delimited by the close ends here; any other is cut short.
                conn.keep_alive = False
                return reader.at_eof()
            conn.buffer += received
        return data

    async def aclose(self) -> None:
        conn = self._take()
        if conn is None:
            return
        if _ended_already(conn, self._reader):
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


class _BodyReader(abc.ABC):
    """Takes a response body's bytes out of a connection's buffer, by the body's framing."""

    __slots__ = ()

    @abc.abstractmethod
    def extract(self, buffer: bytearray) -> bytes | None:
        """The body's bytes the buffer holds (removed from it), `_MORE` if it holds none
        yet, or None once the body is complete."""

    def at_eof(self) -> bytes | None:
        """The connection was closed before the body's end: its end, or an error."""
        raise httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body"
        )


class _LengthReader(_BodyReader):
    """A body of a Content-Length (0 for a response that cannot have a body)."""

    __slots__ = ("_left",)

    def __init__(self, length: int) -> None:
        self._left = length

    def extract(self, buffer: bytearray) -> bytes | None:
        left = self._left
        if not left:
            return None
        if not buffer:
            return _MORE
        if len(buffer) <= left:
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:left])
            del buffer[:left]
        self._left = left - len(data)
        return data

    def at_eof(self) -> bytes | None:
        raise httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body: "
            f"{self._left} bytes short of its Content-Length"
        )


class _CloseDelimitedReader(_BodyReader):
    """A body without a length, ended by the server's close (HTTP/1.0 style)."""

    __slots__ = ()

    def extract(self, buffer: bytearray) -> bytes | None:
        if not buffer:
            return _MORE
        data = bytes(buffer)
        buffer.clear()
        return data

    def at_eof(self) -> bytes | None:
        return None


# A chunked body reader's stages: at a chunk's header, in its data, at the CRLF after its
# data, in the trailer.
_HEADER, _DATA, _CRLF, _TRAILER = range(4)


class _ChunkedReader(_BodyReader):
    """A chunked body: the data of every chunk the buffer holds, or holds part of, at once.

    The buffer is walked by position and what was read is cut from it once, at the end:
    a burst of a stream's events (a chunk each) is read in one pass, without copying the
    rest of the buffer down after every chunk."""

    __slots__ = ("_ended", "_left", "_stage")

    def __init__(self) -> None:
        self._stage = _HEADER
        self._left = 0
        self._ended = False

    def extract(self, buffer: bytearray) -> bytes | None:
        if self._stage == _HEADER and not self._ended:
            if not buffer:
                return _MORE
            data = _one_whole_chunk(buffer)
            if data is not None:
                return data
        pieces: list[bytearray] = []
        if not self._ended:
            # After a failure the buffer is never read again: its connection is closed.
            read = self._walk(buffer, pieces)
            if read:
                del buffer[:read]
        if pieces:
            return b"".join(pieces)
        return None if self._ended else _MORE

    def _walk(self, buffer: bytearray, pieces: list[bytearray]) -> int:
        """Take the chunks' data from `buffer` into `pieces`, as far as it goes; the
        position reached (what was read). The stage and what is left of the current
        chunk are kept however it stops, a failure included."""
        pos = 0
        size = len(buffer)
        stage = self._stage
        left = self._left
        try:
            while True:
                if stage == _DATA:
                    if pos == size:
                        return pos
                    take = left if left < size - pos else size - pos
                    pieces.append(buffer[pos : pos + take])
                    pos += take
                    left -= take
                    if left:
                        return pos
                    stage = _CRLF
                if stage == _CRLF:
                    if size - pos < 2:
                        if pos < size and buffer[pos] != 0x0D:  # b"\r"
                            raise _malformed_chunk_end(buffer[pos:])
                        return pos
                    if buffer[pos] != 0x0D or buffer[pos + 1] != 0x0A:
                        raise _malformed_chunk_end(buffer[pos:])
                    pos += 2
                    stage = _HEADER
                if stage == _HEADER:
                    end = buffer.find(b"\r\n", pos)
                    if end < 0:
                        _check_size(size - pos, "a chunk header")
                        return pos
                    match = _CHUNK_HEADER.fullmatch(buffer, pos, end)
                    if match is None:
                        line = bytes(buffer[pos:end])
                        raise httpx.RemoteProtocolError(f"illegal chunk header: {line!r}")
                    pos = end + 2
                    left = int(match[1], 16)
                    stage = _DATA if left else _TRAILER
                    continue
                self._stage = stage
                return self._trailer(buffer, pos)
        finally:
            self._stage = stage
            self._left = left

    def _trailer(self, buffer: bytearray, pos: int) -> int:
        """The trailer's fields end at a blank line; they are read past, not kept."""
        if buffer[pos : pos + 1] == b"\n":
            self._ended = True
            return pos + 1
        if buffer[pos : pos + 2] == b"\r\n":
            self._ended = True
            return pos + 2
        found = _BLANK_LINE.search(buffer, pos)
        if found is None:
            _check_size(len(buffer) - pos, "a chunked body's trailer")
            return pos
        _fields(bytes(buffer[pos : found.start()]).split(b"\n"))
        self._ended = True
        return found.end()

    def at_eof(self) -> bytes | None:
        raise httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body (incomplete chunked read)"
        )


def _one_whole_chunk(buffer: bytearray) -> bytes | None:
    """The data of the one chunk `buffer` holds whole and alone (taken from it), as a
    stream's upstream sends each event when it comes: checked with a few calls in C where
    `_ChunkedReader._walk` steps through the chunk in Python (about 15 K instructions less
    a paced chunk). None, with the buffer untouched, for anything else, which the walk
    reads: more chunks or part of one, the last (empty) chunk, a header with an extension
    or whitespace. A header of hex digits only (`isalnum` admits no sign, space or `_`,
    which `int` would, and a `0x` prefix is refused apart) that `int` refuses is left
    to the walk to reject."""
    end = buffer.find(b"\r\n", 0, _MAX_QUICK_HEADER)
    if end <= 0:
        return None
    header = buffer[:end]
    if not header.isalnum() or header.startswith((b"0x", b"0X")):
        return None  # `int` reads a `0x` prefix in base 16 too
    try:
        size = int(header, 16)
    except ValueError:
        return None
    stop = end + 2 + size
    if not size or len(buffer) != stop + 2 or buffer[stop] != 0x0D or buffer[stop + 1] != 0x0A:
        return None
    data = bytes(buffer[end + 2 : stop])
    buffer.clear()
    return data


async def read_whole_body(response: httpx.Response) -> bytes:
    """A response's whole body. One from this transport with nothing to decode is read
    straight from its stream: httpx's `aread` would pass it through a decoder, two
    chunkers, two async generators and two context managers, about 15 us a response."""
    stream = response.stream
    if type(stream) is _ResponseStream and "content-encoding" not in response.headers:
        return await stream.read_all()
    return await response.aread()


def raw_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """A response's body as it comes, what `response.aiter_raw()` gives. One from this
    transport is iterated directly: httpx's `aiter_raw` is an async generator, which a
    reader stopping at its API's own end abandons, and trio then closes it in a task of
    its own (a wake-up of the run loop and two task steps per stream)."""
    stream = response.stream
    if type(stream) is _ResponseStream:
        return stream
    return response.aiter_raw()


def _malformed_chunk_end(buffer: bytearray) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(f"malformed chunk footer: {bytes(buffer[:2])!r}")


def _check_size(size: int, what: str) -> None:
    if size > _MAX_HEAD_SIZE:
        raise httpx.RemoteProtocolError(f"{what} is longer than {_MAX_HEAD_SIZE} bytes")


def _body_reader(conn: _Connection, request: httpx.Request, head: _Head) -> _BodyReader:
    """How the response's body is framed (RFC 9112 section 6.3, as h11 reads it); a
    response that asks to close, or whose body the close ends, ends its connection."""
    if not head.keep_alive:
        conn.keep_alive = False
    if head.status in (204, 304) or request.method == "HEAD":
        return _LengthReader(0)
    if head.chunked:
        return _ChunkedReader()
    if head.content_length is not None:
        return _LengthReader(head.content_length)
    conn.keep_alive = False
    return _CloseDelimitedReader()


def _content_length(value: bytes) -> int:
    """A Content-Length's value; a list of equal values counts as one (RFC 9110 8.6)."""
    lengths = {length.strip() for length in value.split(b",")}
    if len(lengths) != 1:
        raise httpx.RemoteProtocolError("conflicting Content-Length headers")
    (length,) = lengths
    if _CONTENT_LENGTH.fullmatch(length) is None:
        raise httpx.RemoteProtocolError("bad Content-Length")
    return int(length)


def _is_stream(head: _Head) -> bool:
    if head.content_type is None:
        return False
    media_type = head.content_type.partition(b";")[0].strip().lower().decode("latin-1")
    return media_type in _STREAM_MEDIA_TYPES


def _ended_already(conn: _Connection, reader: _BodyReader) -> bool:
    """Whether an abandoned response has in fact ended: its end is in the connection's
    buffer, or in the socket, unread. Reads only what is there, never waiting.

    A stream reader stops at its API's own end (OpenAI's `data: [DONE]`), one read
    before the body's end (`0\\r\\n\\r\\n`), which usually comes in the same packet or
    the next. Discarding the connection then cost every stream a new upstream
    connection (and, over TLS, a handshake). A TLS stream's bytes cannot be read here
    without waiting: only what the buffer already holds counts there."""
    plain = isinstance(conn.stream, FastStream)
    while True:
        try:
            data = reader.extract(conn.buffer)
        except httpx.RemoteProtocolError:
            return False
        if data is None:
            return True
        if data is not _MORE:
            continue  # the rest of a body nobody will read
        if not plain:
            return False
        try:
            # The socket is non-blocking and its stream holds no buffer of its own.
            received = os.read(conn.sock.fileno(), _CHUNK_SIZE)
        except OSError:  # BlockingIOError: nothing there yet
            return False
        if not received:
            return False  # the server closed: the connection cannot be reused anyway
        conn.buffer += received


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


class _Framing:
    """How a request's body goes out: chunked, or exactly `length` bytes; and whether the
    request asks to close the connection after its response."""

    __slots__ = ("chunked", "close", "length")

    def __init__(self) -> None:
        self.chunked = False
        self.close = False
        self.length = 0


def valid_fields(fields: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether every name and value of `fields` is as RFC 9110 (and h11) allows."""
    return field_names(fields) is not None


def field_names(fields: Sequence[tuple[bytes, bytes]]) -> list[bytes] | None:
    """The names of `fields`, lower-cased as h11 keeps them, when every name and value is
    as RFC 9110 (and h11) allows; else None.

    All the names are checked at once, joined by a newline, and so are all the values:
    a few passes of C over each (`_LOWERED_NAME_TABLE`, `_VALUE_TABLE`, the split or the
    count of newlines), where h11 runs two regular expressions per field, and one
    expression over all the fields still cost some 4 thousand instructions a field (a
    gateway's answer carries a score of them)."""
    names = b"\n".join(map(_name, fields))
    values = b"\n".join(map(_value, fields)).translate(_VALUE_TABLE)
    translated = names.translate(_LOWERED_NAME_TABLE)
    lowered = translated.split(b"\n")
    # A newline in a name makes one name more; an empty name is an empty one. A byte is
    # looked for by its value (`0 in`), which goes straight to `memchr`; `find` parses
    # its arguments as a tuple first, some 1,000 instructions more a search.
    if (
        len(lowered) != len(fields)
        or not all(lowered)
        or values.count(b"\n") != len(fields) - 1
        or _NUL in translated
        or _NUL in values
    ):
        return None
    if _TAB in values and (
        values.startswith(b"\t")
        or values.endswith(b"\t")
        or values.find(b"\n\t") >= 0
        or values.find(b"\t\n") >= 0
    ):
        return None  # a space or tab begins or ends a value
    return lowered


_name = operator.itemgetter(0)
# Bytes `field_names` looks for in the translated names and values, by their values.
_NUL = 0
_TAB = 9
_value = operator.itemgetter(1)


def _request_head(request: httpx.Request) -> tuple[bytes, _Framing]:
    """The request line and header fields, checked as h11 checks what it sends."""
    method = request.method.encode("ascii")
    target = request.url.raw_path
    raw = request.headers.raw
    if _METHOD.fullmatch(method) is None:
        raise httpx.LocalProtocolError(f"Illegal method {method!r}", request=request)
    if _TARGET.fullmatch(target) is None:
        raise httpx.LocalProtocolError(f"Illegal target characters {target!r}", request=request)
    if not valid_fields(raw):
        raise httpx.LocalProtocolError(_bad_field(raw), request=request)
    framing = _Framing()
    for name, value in raw:
        lower = name.lower()
        if lower == b"content-length":
            try:
                framing.length = _content_length(value)
            except httpx.RemoteProtocolError as error:
                raise httpx.LocalProtocolError(str(error), request=request) from None
        elif lower == b"transfer-encoding":
            if value.lower() != b"chunked":
                raise httpx.LocalProtocolError(
                    "Only Transfer-Encoding: chunked is supported", request=request
                )
            framing.chunked = True
        elif lower == b"connection" and b"close" in _comma_values(value):
            framing.close = True
    fields = b"".join([b"%s: %s\r\n" % pair for pair in raw])
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, fields), framing


def _bad_field(raw: list[tuple[bytes, bytes]]) -> str:
    if not raw:
        return "Missing mandatory Host: header"
    for name, value in raw:
        if _METHOD.fullmatch(name) is None:
            return f"Illegal header name {name!r}"
        if re.fullmatch(_FIELD_VALUE, value) is None:
            return f"Illegal header value {value!r}"
    return "Illegal header"


def _comma_values(value: bytes) -> list[bytes]:
    return [item.strip().lower() for item in value.split(b",")]


async def _send_request(
    conn: _Connection,
    request: httpx.Request,
    body: bytes | None,
    write_timeout: float,
    retryable: bool,
) -> None:
    head, framing = _request_head(request)
    if framing.close:
        conn.keep_alive = False
    if body is None:
        await _write(conn, request, head, write_timeout)
        await _send_stream(conn, request, framing, write_timeout)
        return
    if framing.chunked:
        # A body given whole but framed as chunks goes out as one chunk.
        body_parts = [b"%x\r\n" % len(body), body, b"\r\n0\r\n\r\n"] if body else [b"0\r\n\r\n"]
    else:
        _check_length(request, framing.length, len(body))
        body_parts = [body]
    if len(body) <= _WRITE_SLICE:
        # Head and body in one write: one syscall, and one TCP segment for small bodies.
        await _write(conn, request, b"".join([head, *body_parts]), write_timeout, retryable)
        return
    for part in (head, *body_parts):
        view = memoryview(part)
        for start in range(0, len(view), _WRITE_SLICE):
            await _write(
                conn, request, view[start : start + _WRITE_SLICE], write_timeout, retryable
            )


async def _send_stream(
    conn: _Connection, request: httpx.Request, framing: _Framing, write_timeout: float
) -> None:
    """A one-shot streamed body, chunk by chunk as httpx gives it."""
    # An AsyncClient's request streams are async, as httpx's own transports assert.
    assert isinstance(request.stream, httpx.AsyncByteStream)
    sent = 0
    async for chunk in request.stream:
        if not chunk:
            continue
        sent += len(chunk)
        if framing.chunked:
            await _write(conn, request, b"%x\r\n%s\r\n" % (len(chunk), chunk), write_timeout)
        else:
            if sent > framing.length:
                raise httpx.LocalProtocolError(
                    "Too much data for declared Content-Length", request=request
                )
            await _write(conn, request, chunk, write_timeout)
    if framing.chunked:
        await _write(conn, request, b"0\r\n\r\n", write_timeout)
    else:
        _check_length(request, framing.length, sent)


def _check_length(request: httpx.Request, declared: int, length: int) -> None:
    if length > declared:
        raise httpx.LocalProtocolError("Too much data for declared Content-Length", request=request)
    if length < declared:
        raise httpx.LocalProtocolError(
            "Too little data for declared Content-Length", request=request
        )


async def _write(
    conn: _Connection,
    request: httpx.Request,
    data: bytes | memoryview,
    write_timeout: float,
    retryable: bool = False,
) -> None:
    stream = conn.stream
    try:
        if type(stream) is FastStream:
            # Tried first without the timeout's cancel scope, which costs more than the
            # write itself: a scope is opened only for what the socket could not take.
            await checkpoint_if_cancelled()
            sent = stream.try_send(data)
            if sent == len(data):
                if stream.count_success():
                    await cancel_shielded_checkpoint()
                return
            data = memoryview(data)[sent:]
        with trio.move_on_after(write_timeout):
            await stream.send_all(data)
            return
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        if retryable:
            raise _StaleConnection from exc
        raise httpx.WriteError(_describe(exc), request=request) from exc
    raise httpx.WriteTimeout("timed out sending the request", request=request)


def waits_next_of(response: httpx.Response) -> Callable[[], bool]:
    """Whether the next read of `response`'s body will wait for the server, as far as the
    transport can tell: always False for a body this transport does not read."""
    stream = response.stream
    return stream.waits_next if type(stream) is _ResponseStream else _cannot_tell


def _cannot_tell() -> bool:
    return False


async def _receive(conn: _Connection, request: httpx.Request, read_timeout: float) -> bytes:
    stream = conn.stream
    try:
        if type(stream) is FastStream:
            # As in _write: the read timeout only bounds a wait for the server. A read
            # that waits first is a cancel point by its wait.
            if not conn.expects_wait:
                await checkpoint_if_cancelled()
                data = stream.try_receive(_CHUNK_SIZE)
                if data is not None:
                    if stream.count_success():
                        await cancel_shielded_checkpoint()
                    return data
            deadlines = conn.deadlines
            if deadlines.kept:
                # `_bounded` inline: a coroutine less a wait, and a paced stream's every
                # chunk waits.
                deadlines.park(conn, read_timeout)
                try:
                    waited = await stream.receive_when_ready(_CHUNK_SIZE)
                finally:
                    deadlines.unpark(conn)
            else:
                waited = bytes(
                    await _bounded(conn, stream.receive_when_ready, read_timeout, request)
                )
            # Unless the read filled the buffer (the rest is then likely there already),
            # what comes next comes later too.
            conn.expects_wait = len(waited) < _CHUNK_SIZE
            return waited
        received = await _bounded(conn, stream.receive_some, read_timeout, request)
        # Whether a TLS read waited is not told; a read short of a whole record (a
        # record holds up to 16 KiB) is all there was, and what comes next comes later.
        conn.expects_wait = len(received) < _TLS_RECORD_SIZE
        # Trio's TLS streams give bytes; any other stream may give a bytearray.
        return received if isinstance(received, bytes) else bytes(received)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        if conn.timed_out:
            raise httpx.ReadTimeout("timed out waiting for the server", request=request) from None
        raise httpx.ReadError(_describe(exc), request=request) from exc


async def _bounded(
    conn: _Connection,
    receive: Callable[[int], Awaitable[bytes | bytearray]],
    read_timeout: float,
    request: httpx.Request,
) -> bytes | bytearray:
    """`receive`, bounded by the read timeout: through the transport's `ReadDeadlines`
    when a task keeps them (a timed-out read then fails as its socket is closed), else
    in a cancel scope of its own."""
    deadlines = conn.deadlines
    if deadlines.kept:
        deadlines.park(conn, read_timeout)
        try:
            return await receive(_CHUNK_SIZE)
        finally:
            deadlines.unpark(conn)
    with trio.move_on_after(read_timeout):
        return await receive(_CHUNK_SIZE)
    raise httpx.ReadTimeout("timed out waiting for the server", request=request)


async def _receive_head(
    conn: _Connection, request: httpx.Request, read_timeout: float, retryable: bool
) -> _Head:
    """Read up to the final response head, skipping 1xx responses."""
    while True:
        # The buffer is empty until the response starts to arrive.
        head = _parse_head(conn.buffer) if conn.buffer else None
        if head is None:
            conn.buffer += await _receive_head_bytes(conn, request, read_timeout, retryable)
            # Once the server has answered anything, it has taken the request.
            retryable = False
        elif head.status >= 200:
            return head
        elif head.status == 101:
            raise httpx.RemoteProtocolError(
                "unexpected switch of protocols instead of a response", request=request
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


def _parse_head(buffer: bytearray) -> _Head | None:
    """A response head taken from the buffer; None while the buffer holds only part of it."""
    found = _BLANK_LINE.search(buffer)
    if found is None:
        _check_size(len(buffer), "a response head")
        return None
    # Through the LF ending the last field line (or the status line, if there are none).
    block = bytes(buffer[: found.start() + 1])
    del buffer[: found.end()]
    status_end = block.index(b"\n")
    status_line = block[:status_end].removesuffix(b"\r")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise httpx.RemoteProtocolError(f"illegal status line: {status_line!r}")
    head = _Head(int(match[2]), match[1], match[3] or b"")
    fields = block[status_end + 1 :]
    if (
        fields.find(b"\n ") >= 0
        or fields.find(b"\n\t") >= 0
        or _FIELD_LINES.fullmatch(fields) is None
    ):
        # A folded or malformed field: line by line, to join it or to say which it is.
        head.headers = _fields(fields.split(b"\n")[:-1])
    else:
        head.headers = _FIELD_LINE.findall(fields)
    for name, value in head.headers:
        lower = name.lower()
        if lower in _NOTED_FIELDS:
            head.note(lower, value)
    return head


def _fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Header fields from their lines (each maybe ending in CR); a line folded onto the
    next (obsolete, but h11 accepts it) is joined to it by a space."""
    fields: list[tuple[bytes, bytes]] = []
    last: bytes | None = None
    for line in lines:
        line = line.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t"):
            if last is None:
                raise httpx.RemoteProtocolError("continuation line at start of headers")
            last += b" " + line.lstrip(b" \t")
            continue
        if last is not None:
            fields.append(_field(last))
        last = line
    if last is not None:
        fields.append(_field(last))
    return fields


def _field(line: bytes) -> tuple[bytes, bytes]:
    match = _FIELD.fullmatch(line)
    if match is None:
        raise httpx.RemoteProtocolError(f"illegal header line: {line!r}")
    return match[1], match[2]

"""One worker's HTTP server: trigate's own accept loop, its lean HTTP/1.1 path for
plain requests, and hypercorn's protocols for everything else.

Each plain-socket connection is first served by `trigate.http1.LeanConnection`: a
plain HTTP/1.1 request (Content-Length body or none, one Host, fields h11's grammar
accepts, no Transfer-Encoding, Upgrade, Expect or `Connection: close`) is read and
answered there, past h11's state machine and hypercorn's protocol, stream and task
group, with the scope, events and bytes hypercorn would give. The first request
that is not plain hands the connection, with the bytes already read, to hypercorn
(`_Server`, below) for the rest of its life, at a request boundary: h11 decides every
odd case as before (400s, 431s, chunked bodies, HTTP/1.0, WebSocket and h2c
upgrades). A config with a read timeout, server names or raw header names leaves
every connection to hypercorn. The rest of this docstring is about hypercorn's path
and what both paths share (the connection cap, idle watch, departure and drain).

Hypercorn's `worker_serve` accepts every connection it is offered and lets a
connection that never sends a request live as long as its keep-alive timer
(and one that sent only an HTTP/2 preface, for ever). Exposed to the internet,
that lets anyone hold a worker's file descriptors, and a graceful stop waits on
them. Here each worker holds at most `max_connections` client connections:
when it is full, the connection idle the longest is closed to make room (as
nginx reuses keep-alive connections); only if none is idle does accepting
pause, one new connection waiting unread and the rest in the kernel's backlog.
A connection must begin a request within `first_request_timeout` (a deadline on
its scope, lifted by its first request), and is closed once idle for
`keep_alive_timeout` by one task watching the worker's idle connections in the
order they went idle (`Connections.watch_idle`), where hypercorn would start a
timer task per request; a request marks its connection busy and idle again at
the cost of a dictionary entry, not two moves of its scope's deadline. Hypercorn still speaks HTTP
on each connection (`TCPServer`), lifespan included.

A client's departure is heard where it happens: the connection's stream reports
its end-of-file (or reset) to the request being served (`DEPARTURE_EXTENSION`)
before hypercorn processes it, and yields once, so that when hundreds of
clients leave together every request hears first and hypercorn's (costlier)
teardown of each connection follows.

A relayed stream's body can skip hypercorn's path for each message (ASGI send,
HTTPStream, H11Protocol, an h11 event, the TCPServer's send): once its headers
are out, `BODY_WRITER_EXTENSION` gives the app a writer that frames each piece
as h11 would (a chunk, or raw bytes to an HTTP/1.0 client) and writes it on the
connection under hypercorn's own send lock. The response still starts and ends
through hypercorn, so `Connection: close`, keep-alive and HTTP/1.0's close stay
hypercorn's and h11's.

Each connection's socket is a `FastStream` (trigate/sockets.py), which goes back to
Trio's scheduler only when a read or write must wait; `_Server`, hypercorn's
`TCPServer` with cheaper versions of its reads, writes and task group, takes a free
send lock and passes the app its ASGI events without the schedule points trio's
`Lock` and memory channels add to calls that did not wait.

A fixed-length response is written once: hypercorn writes a head and then its body,
each in a system call of its own; the connection's stream holds a head whose body has
a Content-Length above zero and sends it with the body's first bytes.

A shutdown drains: the listeners close, idle connections close at once, and
requests in flight (streams included) may finish for `graceful_timeout`
before the gateway's own shutdown (which flushes the spend ledger) runs.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import h11
import h11._readers
import h11._writers
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import Request as StreamRequest
from hypercorn.protocol.events import Response, StreamClosed
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.task_group import TaskGroup, _handle
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import TrioSingleTask, WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import parse_socket_addr, repr_socket_addr, wrap_app
from trio.lowlevel import checkpoint_if_cancelled

from trigate.departures import DepartureWatch
from trigate.http1 import (
    BODY_WRITER_EXTENSION as BODY_WRITER_EXTENSION,
)
from trigate.http1 import (
    DEPARTURE_EXTENSION as DEPARTURE_EXTENSION,
)
from trigate.http1 import (
    MAX_JOINED_BODY as MAX_JOINED_BODY,
)
from trigate.http1 import (
    QUEUED_EVENT_EXTENSION as QUEUED_EVENT_EXTENSION,
)
from trigate.http1 import (
    REQUEST_SCOPE_EXTENSION as REQUEST_SCOPE_EXTENSION,
)
from trigate.http1 import (
    WHOLE_RESPONSE_EXTENSION as WHOLE_RESPONSE_EXTENSION,
)
from trigate.http1 import AppQueue as _AppQueue
from trigate.http1 import (
    BodyWriter as BodyWriter,
)
from trigate.http1 import CheckedTail as CheckedTail
from trigate.http1 import (
    Departure as Departure,
)
from trigate.http1 import DirectBody as _DirectBody
from trigate.http1 import (
    LeanConnection,
    response_head,
    server_fields,
)
from trigate.http1 import (
    OnDeparture as OnDeparture,
)
from trigate.http1 import (
    QueuedEvent as QueuedEvent,
)
from trigate.http1 import (
    WholeWriter as WholeWriter,
)
from trigate.http1 import send_locked as _send_locked
from trigate.http1 import vouched as vouched
from trigate.request_head import read_request_heads
from trigate.sockets import FastStream
from trigate.transport import field_names

if TYPE_CHECKING:
    from hypercorn.typing import (
        AppWrapper,
        ASGIFramework,
        ASGIReceiveCallable,
        ASGIReceiveEvent,
        ASGISendCallable,
        ASGISendEvent,
        Scope,
    )

logger = logging.getLogger("trigate")

# Accept errors that mean "out of descriptors or memory for now": wait and try again.
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
RESOURCE_PAUSE = 0.1


# No request body of the gateway's comes near this; a chunk declared larger can never be
# read whole within any body limit.
MAX_CHUNK_SIZE = 2**31


class BoundedChunkedReader(h11._readers.ChunkedReader):
    """h11's reader of a chunked body, refusing a chunk size no request could fill.

    h11 takes any size of up to 20 hex digits, then waits for that many bytes: a request
    declaring a chunk of `FFFFFFFFFFFFFFFFFFFF` held its connection until the body timeout
    answered 408, 60 s later. A size over `MAX_CHUNK_SIZE` is now a protocol error at
    once, which hypercorn answers with a 400. (h11 exposes no hook for this: the reader
    is replaced in its table, which the hypercorn and h11 upper bounds in pyproject.toml
    and `tests/test_hypercorn_overrides.py` guard.)"""

    def __call__(self, buf: Any) -> h11.Data | h11.EndOfMessage | None:
        event: h11.Data | h11.EndOfMessage | None = super().__call__(buf)
        if self._bytes_in_chunk > MAX_CHUNK_SIZE:
            raise h11.LocalProtocolError("chunk size too large")
        return event


def bound_chunk_sizes() -> None:
    """Make h11 read every chunked body, in this process, with `BoundedChunkedReader`."""
    readers = cast("dict[str, Any]", h11._readers.READERS[h11.SEND_BODY])
    readers["chunked"] = BoundedChunkedReader


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How many client connections one worker holds, and how long one may sit silent."""

    max_connections: int
    first_request_timeout: float
    keep_alive_timeout: float
    # The upstream pool's share of the open-file limit (the gateway holds the pool).
    max_upstream_connections: int = 1000


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the
    limit now in force. Many distributions start services at a soft 1,024, which
    a few hundred idle clients and the upstream pool use up."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft


def listening_sockets(config: HypercornConfig) -> list[socket.socket]:
    """The bound, listening sockets of `config.bind`, made once and shared by every worker."""
    sockets = config.create_sockets().insecure_sockets
    for listener in sockets:
        listener.listen(config.backlog)
    return sockets


class _Connection:
    """One client connection, and whether a request is being served on it."""

    __slots__ = (
        "active",
        "connections",
        "departure",
        "head_of",
        "idle_since",
        "scope",
        "served",
        "server",
        "stream",
    )

    def __init__(
        self,
        scope: trio.CancelScope,
        now: float,
        stream: FastStream,
        connections: Connections | None = None,
    ) -> None:
        self.scope = scope
        self.stream = stream
        self.connections = connections
        self.active = 0
        self.idle_since = now
        # Whether a request has begun, which lifts the deadline for beginning one.
        self.served = False
        # What the request being served wants done the moment its client goes.
        self.departure: Departure | None = None
        self.server: TCPServer | None = None
        # The body framing whose head `body_follows` last saw.
        self.head_of: object = None

    def body_writer(self) -> BodyWriter | None:
        """A direct writer for the body of the response now being sent, if its headers
        have gone out over HTTP/1.1 chunked or HTTP/1.0 framing; else None."""
        server = self.server
        protocol = getattr(server, "protocol", None)
        if server is None or protocol is None or not isinstance(protocol.protocol, H11Protocol):
            return None
        state = protocol.protocol.connection
        if not isinstance(state, h11.Connection) or state.our_state is not h11.SEND_BODY:
            return None
        framing = state._writer
        if isinstance(framing, h11._writers.ChunkedWriter):
            return _DirectBody(server.send_lock, self.stream, _closer(server), chunked=True)
        if isinstance(framing, h11._writers.Http10Writer):
            return _DirectBody(server.send_lock, self.stream, _closer(server), chunked=False)
        return None

    async def send_whole(self, status: int, fields: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """Write a fixed-length response in one piece, as h11 would have framed it, and
        move h11 and hypercorn on as if it had gone event by event; False, with nothing
        written, where the protocol's state allows no shortcut (`_H11Protocol.whole_head`).

        A plain answer otherwise costs three events through hypercorn and h11 (head,
        body, end), each built, checked and dispatched: about a tenth of a proxied
        request's instructions. The checks that matter are kept: the fields' grammar,
        the framing, keep-alive, and the connection's state."""
        server = self.server
        protocol = getattr(getattr(server, "protocol", None), "protocol", None)
        if server is None or type(protocol) is not _H11Protocol or server.stream.holds_head:
            return False
        await checkpoint_if_cancelled()  # a cancel point, as hypercorn's write is
        head = protocol.whole_head(status, fields, len(body))
        if head is None:
            return False
        try:
            if len(body) <= MAX_JOINED_BODY:
                await _send_locked(server.send_lock, self.stream, head + body, try_first=True)
            else:
                await _send_locked(server.send_lock, self.stream, body, head=head)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await server.protocol.handle(Closed())
            return True
        await protocol.whole_sent()
        return True

    def body_follows(self, data: bytes | bytearray | memoryview) -> bool:
        """Whether `data` is a response head just produced by h11 whose body has a
        Content-Length above zero, none of it written yet. HEAD, 1xx, 204 and 304
        answers, and hypercorn's own error answers, have no body bytes to wait for."""
        protocol = getattr(self.server, "protocol", None)
        if protocol is None or not isinstance(protocol.protocol, H11Protocol):
            return False
        state = protocol.protocol.connection
        if not isinstance(state, h11.Connection) or state.our_state is not h11.SEND_BODY:
            return False
        framing = state._writer
        if not isinstance(framing, h11._writers.ContentLengthWriter) or framing._length <= 0:
            return False
        # A body's first piece may be shorter than its length: only the piece that moved
        # the connection to this writer is the head.
        if framing is self.head_of:
            return False
        self.head_of = framing
        return data[:5] == b"HTTP/"

    @property
    def idle(self) -> bool:
        return self.active == 0

    def on_departure(self, departure: Departure | None) -> None:
        self.departure = departure

    def request_began(self) -> None:
        """A request began on the lean path (`trigate.http1`): the connection is busy."""
        self.active += 1
        assert self.connections is not None  # set for every served connection
        self.connections.went_busy(self)

    def request_ended(self) -> None:
        self.active -= 1
        if self.active == 0:
            assert self.connections is not None
            self.connections.went_idle(self)

    async def client_gone(self) -> None:
        """Run the request's departure callback; it may wait (for the app's teardown
        lane) before hypercorn goes on to process the end of the connection."""
        departure, self.departure = self.departure, None
        if departure is not None:
            await departure()


def _closer(server: TCPServer) -> Callable[[], Awaitable[None]]:
    """What a direct writer does when the connection breaks under it: hand hypercorn
    its `Closed`, as hypercorn's own send would."""
    return lambda: server.protocol.handle(Closed())


class _H11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol, with cheaper response heads.

    h11 checks each field it is asked to send with two regular expressions, and a
    gateway's answer carries a score of fields (its own `x-trigate-*`, LiteLLM's
    `x-litellm-*`, rate limits): about 15 thousand instructions each, more than the
    rest of writing the head; a streamed answer's head is checked three times over, as
    h11 sets its framing fields. The same grammar is checked here with a few passes over
    all the app's names and values at once (`transport.field_names`), whose names then
    tell the framing; hypercorn's own fields (Date, Server) once, as they are made.

    In the common case (`_answers_plainly`: HTTP/1.1 kept alive, not HEAD, a status
    with a body, no framing or Connection field of the app's) the head is written
    here, as h11 would write it, and h11's state is moved on as its `send` would move
    it: a streamed answer's head with `Transfer-Encoding: chunked` added (h11 then
    frames its body), a fixed-length one whole with its body (`whole_head`). Any other
    head goes to h11 as parsed, if its fields pass, which then only lowers the names
    and reads the framing fields; one that does not goes the usual way, for h11 to
    refuse. The rest is hypercorn's `stream_send` (tests/test_hypercorn_overrides.py
    guards it)."""

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, Response) and event.status_code >= 200:
            status = int(event.status_code)
            headers = [*event.headers, *server_fields(self.config)]
            names = _checked_names(event.headers)
            if names is not None and self._answers_plainly(status) and _unframed(names):
                await self.send(RawData(data=self._start_chunked(status, headers)))
                return
            if self.keep_alive_requests >= self.config.keep_alive_max_requests:
                headers.append((b"connection", b"close"))
            if names is not None:
                response = h11.Response(
                    headers=headers, status_code=status, reason=b"", _parsed=True
                )
                await self._send_h11_event(response)
                return
        await super().stream_send(event)

    def _answers_plainly(self, status: int) -> bool:
        """Whether h11 would send a response of `status` starting now as it is given:
        an HTTP/1.1 request kept alive, not HEAD, no upgrade proposed, nothing of the
        response sent yet, and a status with a body. Anything else is h11's to adjust
        (close the connection, strip the body, refuse)."""
        state = self.connection
        return (
            type(state) is h11.Connection
            and state.our_state is h11.SEND_RESPONSE
            and state.their_http_version == b"1.1"
            and state._request_method != b"HEAD"
            and state._cstate.keep_alive
            and not state._cstate.pending_switch_proposals
            and self.keep_alive_requests < self.config.keep_alive_max_requests
            and 200 <= status < 600
            and status not in _BODILESS_STATUSES
        )

    def _start_chunked(self, status: int, fields: list[tuple[bytes, bytes]]) -> bytes:
        """The head of a streamed answer, framed as h11 frames it (`Transfer-Encoding:
        chunked`, added last and title-cased as h11 adds it), with h11's state moved
        past its Response event: h11 then frames the body's pieces and its end, as
        after its own `send`."""
        state = self.connection
        assert isinstance(state, h11.Connection)
        before = dict(state._cstate.states)
        state._cstate.process_event(h11.SERVER, h11.Response)
        state.client_is_waiting_for_100_continue = False
        state._respond_to_state_changes(before, _CHUNKED_FRAMING)
        return response_head(status, [*fields, (b"Transfer-Encoding", b"chunked")])

    async def _check_protocol(self, event: h11.Request) -> None:
        """hypercorn's, which looks for an h2c upgrade or an HTTP/2 preface, asked only
        of a request that could be one: it decodes, strips and lowers every field name
        to find out, where h11 has already lowered them (and a name holds no spaces)."""
        if event.method == b"PRI" or _has_field(event, b"upgrade"):
            await super()._check_protocol(event)

    async def _create_stream(self, request: h11.Request) -> None:
        """hypercorn's for an HTTP request, without its three passes over the fields
        through h11's `Headers` sequence (each item fetched by index): a websocket
        upgrade, or raw headers asked for, take hypercorn's own way."""
        if self.config.h11_pass_raw_headers or (
            request.method.upper() == b"GET" and _has_field(request, b"upgrade")
        ):
            await super()._create_stream(request)
            return
        self.stream = HTTPStream(
            self.app,
            self.config,
            self.context,
            self.task_group,
            self.ssl,
            self.client,
            self.server,
            self.stream_send,
            STREAM_ID,
        )
        await self.stream.handle(
            StreamRequest(
                stream_id=STREAM_ID,
                headers=[(name, value) for _, name, value in request.headers._full_items],
                http_version=request.http_version.decode(),
                method=request.method.decode("ascii").upper(),
                raw_path=request.target,
                state=self.connection_state,
            )
        )
        self.keep_alive_requests += 1
        await self.context.mark_request()

    def whole_head(
        self, status: int, fields: list[tuple[bytes, bytes]], length: int
    ) -> bytes | None:
        """The head of a response of `length` bytes that goes out whole, with h11's and
        hypercorn's state moved past the response (`_Connection.send_whole`); None, with
        nothing changed, unless this is the common case: an HTTP/1.1 request kept alive,
        not HEAD, no upgrade proposed, nothing of the response sent yet, a status with a
        body, the fields valid, and one Content-Length that is `length`. Any other case
        takes hypercorn's path, which knows how to close, strip or refuse."""
        state = self.connection
        stream = self.stream
        if (
            type(stream) is not HTTPStream
            or stream.state is not ASGIHTTPState.REQUEST
            or not self._answers_plainly(status)
        ):
            return None
        assert isinstance(state, h11.Connection)
        served = server_fields(self.config)
        names = _checked_names(fields)
        if names is None or not _framed_by_length(names, fields, length):
            return None
        fields = [*fields, *served]
        # h11's `send` for the Response and EndOfMessage events, less the writing.
        before = dict(state._cstate.states)
        state._cstate.process_event(h11.SERVER, h11.Response)
        state._cstate.process_event(h11.SERVER, h11.EndOfMessage)
        state.client_is_waiting_for_100_continue = False
        state._respond_to_state_changes(before)
        # hypercorn's `HTTPStream.app_send` for the start and the last body message.
        stream.state = ASGIHTTPState.CLOSED
        stream.response = {"type": "http.response.start", "status": status, "headers": fields}
        return response_head(status, fields)

    async def whole_sent(self) -> None:
        """The rest of hypercorn's `HTTPStream._send_closed` once a whole response has
        been written: the access log, and the stream's end, which readies the
        connection for the next request."""
        stream = self.stream
        assert isinstance(stream, HTTPStream)
        await self.config.log.access(stream.scope, stream.response, time.time() - stream.start_time)
        await self.stream_send(StreamClosed(stream_id=STREAM_ID))


def _has_field(request: h11.Request, name: bytes) -> bool:
    """Whether `request` has a field called `name` (lower case, as h11 keeps names)."""
    return any(field == name for _, field, _ in request.headers._full_items)


# Statuses whose answers have no body, and so no Content-Length to frame one by.
_BODILESS_STATUSES = frozenset({204, 304})
# What h11 reads of a Response to choose its body's writer: chunked framing.
_CHUNKED_FRAMING = h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")])


def _checked_names(fields: list[tuple[bytes, bytes]]) -> list[bytes] | None:
    """The app's `fields`' names, lower-cased, when they and hypercorn's own fields
    (`server_fields`, checked as they were made) are all valid; else None."""
    if not server_fields.valid:
        return None
    return field_names(fields) if fields else []


def _unframed(names: list[bytes]) -> bool:
    """Whether fields of these (lower-cased) `names` leave a body's framing and the
    connection's fate to h11: no Content-Length, Transfer-Encoding or Connection field.
    (hypercorn's own fields, `server_fields`, are none of them.)"""
    return (
        b"content-length" not in names
        and b"transfer-encoding" not in names
        and b"connection" not in names
    )


def _framed_by_length(names: list[bytes], fields: list[tuple[bytes, bytes]], length: int) -> bool:
    """Whether `fields`, of these (lower-cased) `names`, frame a body of `length` bytes as
    h11 would send it unchanged: one Content-Length of that value, and no
    Transfer-Encoding or Connection field (either makes h11 rewrite the head, or close
    the connection after it)."""
    if names.count(b"content-length") != 1:
        return False
    if b"transfer-encoding" in names or b"connection" in names:
        return False
    return fields[names.index(b"content-length")][1] == b"%d" % length


class _Server(TCPServer):
    """Hypercorn's `TCPServer` with a cheaper path for each write and each read.

    `protocol_send` writes as hypercorn's does (under `send_lock`, shielded, a broken
    connection handed to the protocol as `Closed`) but takes a free lock without the
    schedule point of trio's `Lock.acquire`, and the stream (`FastStream` in a
    `_WatchedStream`) goes back to the scheduler only when the socket has no room. It
    stays a cancel point, as hypercorn's lock acquisition is. An empty write (h11's end
    of a fixed-length body) is skipped: trio's would only checkpoint. `_read_data` is
    hypercorn's without the cancel scope it opens around every read when no
    `read_timeout` is set."""

    stream: _WatchedStream  # type: ignore[assignment]
    # What the lean path read of the request it handed over, and how many it served
    # before (`Connections.serve`).
    taken_over: tuple[bytes, int] = (b"", 0)

    async def run(self) -> None:
        """Hypercorn's `run` for a plain (never TLS) stream, with `_TaskGroup`."""
        sock = self.stream.socket
        try:
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            async with _TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = ProtocolWrapper(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    False,
                    client,
                    server,
                    self.protocol_send,
                    "http/1.1",
                )
                if type(self.protocol.protocol) is H11Protocol:
                    self.protocol.protocol.__class__ = _H11Protocol
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                read, served = self.taken_over
                if served and isinstance(self.protocol.protocol, H11Protocol):
                    self.protocol.protocol.keep_alive_requests = served
                if read:
                    await self.protocol.handle(RawData(read))
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    async def protocol_send(self, event: Event) -> None:
        if type(event) is Updated and type(self.idle_task) is _NoIdleTimer:
            # Only restarts or stops hypercorn's keep-alive timer, which `_NoIdleTimer`
            # stands in for: a request's start and end then cost nothing here.
            return
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        try:
            await self.stream.send_all(event.data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.protocol.handle(Closed())

    async def _read_data(self) -> None:
        if self.config.read_timeout is not None:
            await super()._read_data()
            return
        protocol = self.protocol.protocol
        # A client that has sent a whole request waits for its answer: reading again
        # at once would only find nothing (a failed system call a request).
        state = protocol.connection if type(protocol) is _H11Protocol else None
        wait_first = False
        while True:
            try:
                data = await self.stream.receive_some(MAX_RECV, wait_first=wait_first)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            await self.protocol.handle(RawData(data))
            if not data:
                break
            wait_first = state is not None and state.their_state is h11.DONE
        await self.protocol.handle(Closed())


class _TaskGroup(TaskGroup):
    """Hypercorn's task group, whose apps get their ASGI events through an `_AppQueue`."""

    async def spawn_app(
        self,
        app: AppWrapper,
        config: HypercornConfig,
        scope: Scope,
        send: Callable[[ASGISendEvent | None], Awaitable[None]],
    ) -> Callable[[ASGIReceiveEvent], Awaitable[None]]:
        queue = _AppQueue(config.max_app_queue_size)
        if scope["type"] == "http":
            cast("dict[str, Any]", scope["extensions"])[QUEUED_EVENT_EXTENSION] = queue.queued
        assert self._nursery is not None  # entered
        self._nursery.start_soon(
            _handle,
            app,
            config,
            scope,
            queue.get,
            send,
            trio.to_thread.run_sync,
            trio.from_thread.run,
        )
        return queue.put


class _WatchedStream:
    """A client's socket stream as hypercorn uses it, reporting end-of-file and resets to
    the connection as they are read, and sending a fixed-length response's head and
    body in one write. Not a TLS stream: hypercorn tells the two apart by
    `do_handshake`, which this lacks as a plain `SocketStream` does. Reads and writes go
    through a `FastStream`: no schedule point after a call that did not have to wait."""

    __slots__ = ("_client_gone", "_connection", "_head", "_stream", "socket")

    def __init__(self, stream: FastStream, connection: _Connection) -> None:
        self._stream = stream
        self._connection = connection
        self.socket = stream.socket
        self._client_gone = False
        # A fixed-length response's head, held until its body is written.
        self._head: bytes | None = None

    async def receive_some(
        self, max_bytes: int | None = None, *, wait_first: bool = False
    ) -> bytes:
        """The client's next bytes; with `wait_first`, waiting for the socket before
        reading it, where nothing is expected yet."""
        try:
            if wait_first:
                data = await self._stream.receive_when_ready(max_bytes or MAX_RECV)
            else:
                data = await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError:
            self._client_gone = True
            await self._connection.client_gone()
            raise
        if not data:
            self._client_gone = True
            await self._connection.client_gone()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Hypercorn's write: a cancel point, then `data` written whole under the
        TCPServer's send lock, shielded from cancellation (`_Server.protocol_send`).

        Hypercorn writes a response's head, then each body message, each in a system
        call of its own. A head whose body is a known number of bytes (more than none) is
        held, and goes out with the first body bytes, in one write: a fixed-length answer
        is written once. A body too long to be worth copying goes out after the head."""
        await checkpoint_if_cancelled()
        head = self._head
        if head is not None:
            self._head = None
            if len(data) <= MAX_JOINED_BODY:
                data, head = head + data, None
        elif self._connection.body_follows(data):
            self._head = bytes(data)
            return
        elif not data:
            return  # h11's end of a fixed-length body: nothing to write
        server = self._connection.server
        assert server is not None  # set before the server runs
        await _send_locked(server.send_lock, self._stream, data, head=head)

    @property
    def holds_head(self) -> bool:
        return self._head is not None

    async def flush(self) -> None:
        """Send a held head whose body never came (the app failed after starting)."""
        head, self._head = self._head, None
        if head is not None:
            await self._stream.send_all(head)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Shut the sending side at once. Trio's `send_eof` checkpoints first while holding
        the stream's send slot; hypercorn closes a connection from one task (after the
        app's 408 for a body that never came) while its reader task may be writing in
        that moment (a 400 for the same body, cut short by the client): that write failed
        with BusyResourceError, logged as an error of the app. Without the checkpoint
        there is no such moment; a write after the shutdown fails as a broken stream,
        which hypercorn expects. A client that has gone needs no shutdown before the
        close that follows (one system call less per departure)."""
        sock = self.socket
        if sock.did_shutdown_SHUT_WR or self._client_gone:
            return
        await self.flush()
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            raise trio.BrokenResourceError(error) from error

    async def aclose(self) -> None:
        await self._stream.aclose()


class _ConnectionApp:
    """The app as one connection sees it: each request marks the connection busy, and
    the first one lifts the deadline for beginning a request."""

    __slots__ = ("_app", "_connection", "_connections")

    def __init__(self, app: AppWrapper, connection: _Connection, connections: Connections) -> None:
        self._app = app
        self._connection = connection
        self._connections = connections

    async def __call__(
        self,
        scope: Scope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        *rest: Callable[..., Any],  # hypercorn's sync_spawn and call_soon
    ) -> None:
        connection = self._connection
        connection.active += 1
        self._connections.went_busy(connection)
        if scope["type"] == "http":
            extensions = cast("dict[str, Any]", scope["extensions"])
            extensions[DEPARTURE_EXTENSION] = connection.on_departure
            extensions[BODY_WRITER_EXTENSION] = connection.body_writer
            extensions[WHOLE_RESPONSE_EXTENSION] = connection.send_whole
        try:
            await self._app(scope, receive, send, *rest)
        finally:
            connection.departure = None
            connection.active -= 1
            if connection.active == 0:
                self._connections.went_idle(connection)


class _NoIdleTimer(TrioSingleTask):
    """Stands in for hypercorn's keep-alive timer, which starts a task for every request;
    the worker's one watch over its idle connections (`Connections.watch_idle`) does the
    same job for the cost of a dictionary entry."""

    async def restart(self, *_: Any) -> None:
        pass

    async def stop(self) -> None:
        pass


class Connections:
    """The worker's open client connections, capped at `limits.max_connections`."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self._limits = limits
        self._open: set[_Connection] = set()
        self._changed = trio.Event()
        self._draining = False
        # The connections idle now, in the order they went idle (so by `idle_since`), and
        # the event `watch_idle` waits on while there are none.
        self._idle_order: dict[_Connection, None] = {}
        self._first_idle: trio.Event | None = None
        # `trio.current_time` of the run the worker serves in, read from its clock at once
        # (every request ends with a reading): two calls less than trio's function, some
        # 1,600 instructions.
        self._now = trio.lowlevel.current_clock().current_time

    def __len__(self) -> int:
        return len(self._open)

    def went_busy(self, connection: _Connection) -> None:
        """A request began on `connection`: it is no longer idle, and the deadline for
        beginning one is lifted (once; moving a deadline costs trio a context manager)."""
        self._idle_order.pop(connection, None)
        if not connection.served:
            connection.served = True
            connection.scope.deadline = math.inf

    def went_idle(self, connection: _Connection) -> None:
        """A connection's last request ended: it may idle for `keep_alive_timeout`
        (`watch_idle`), unless the worker is draining."""
        connection.idle_since = self._now()
        if self._draining:
            connection.scope.cancel()
        else:
            self._idle_order[connection] = None
            first_idle = self._first_idle
            if first_idle is not None:
                self._first_idle = None
                first_idle.set()
        self.changed()

    async def watch_idle(self) -> None:
        """Close each connection that has been idle for `keep_alive_timeout`, as its time
        comes: the one idle the longest is the first whose time comes, so this sleeps
        until then (and wakes for nothing while connections come and go busy)."""
        keep_alive = self._limits.keep_alive_timeout
        idle_order = self._idle_order
        while True:
            if not idle_order:
                self._first_idle = first_idle = trio.Event()
                await first_idle.wait()
                continue
            oldest = next(iter(idle_order))
            expires = oldest.idle_since + keep_alive
            if trio.current_time() < expires:
                await trio.sleep_until(expires)
                continue  # it may have gone busy (and idle again) meanwhile
            del idle_order[oldest]
            oldest.scope.cancel()

    def changed(self) -> None:
        """A connection closed or went idle: a paused accept loop may go on."""
        self._changed.set()

    async def room(self) -> None:
        """Return once a new connection can be taken: the worker is not full, or one of
        its connections is idle and can give up its place."""
        while len(self._open) >= self._limits.max_connections and not self._idle():
            await self._changed.wait()
            self._changed = trio.Event()

    def make_room(self, newcomer: _Connection) -> None:
        """Over the cap: close the connection idle the longest (if one went busy since
        `room`, the worker holds one more than its cap until a connection ends)."""
        if len(self._open) <= self._limits.max_connections:
            return
        if idle := [c for c in self._idle() if c is not newcomer]:
            min(idle, key=lambda c: c.idle_since).scope.cancel()

    def drain(self) -> None:
        """A connection with no request in flight has nothing left to wait for; the others
        close as their requests end."""
        self._draining = True
        for connection in self._idle():
            connection.scope.cancel()

    def _idle(self) -> list[_Connection]:
        return [c for c in self._open if c.idle and not c.scope.cancel_called]

    async def serve(
        self,
        stream: trio.SocketStream,
        server: Callable[..., TCPServer],
        lean: Callable[[FastStream, _Connection], LeanConnection | None] | None = None,
    ) -> None:
        """Serve one connection: its plain requests on the lean path (`trigate.http1`),
        and from the first request that is not plain on, hypercorn's."""
        now = trio.current_time()
        with trio.CancelScope(deadline=now + self._limits.first_request_timeout) as scope:
            fast = FastStream.of(stream)
            connection = _Connection(scope, now, fast, self)
            self._open.add(connection)
            self.make_room(connection)
            try:
                served = 0
                read: bytes | None = b""
                plain = lean(fast, connection) if lean is not None else None
                if plain is not None:
                    read = await plain.run()
                    served = plain.requests
                if read is not None:
                    app = lambda wrapped: _ConnectionApp(wrapped, connection, self)  # noqa: E731
                    tcp_server = server(app, _WatchedStream(fast, connection))
                    connection.server = tcp_server
                    tcp_server.idle_task = _NoIdleTimer()
                    if isinstance(tcp_server, _Server):
                        tcp_server.taken_over = (read, served)
                    await tcp_server.run()
            finally:
                self._open.discard(connection)
                self._idle_order.pop(connection, None)
                self.changed()
                with trio.CancelScope(shield=True):
                    await stream.aclose()


async def serve(
    app: ASGIFramework,
    config: HypercornConfig,
    limits: ConnectionLimits,
    *,
    sockets: list[socket.socket] | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]],
    on_drain: Callable[[], None] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `shutdown_trigger` returns, then drain and shut the app down."""
    bound_chunk_sizes()
    read_request_heads()
    wrapped = wrap_app(app, config.wsgi_max_body_size, None)
    # The lean path calls an ASGI app as it is: hypercorn's wrapper only drops the two
    # arguments a WSGI app would need, a call that cost some 2 thousand instructions a
    # request.
    lean_app = (
        app
        if isinstance(wrapped, ASGIWrapper)
        else functools.partial(
            wrapped, sync_spawn=trio.to_thread.run_sync, call_soon=trio.from_thread.run
        )
    )
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    connections = Connections(limits)
    # Made once the app has started (none to close if it fails to); None without epoll.
    departures: DepartureWatch | None = None

    def server(wrap: Callable[[AppWrapper], AppWrapper], stream: _WatchedStream) -> TCPServer:
        state = ConnectionState(lifespan_state.copy())
        # hypercorn annotates the stream as an SSLStream; it serves a plain SocketStream as
        # well, which its own `serve` hands it for a listener without TLS.
        return _Server(wrap(wrapped), config, context, state, stream)  # type: ignore[arg-type]

    def lean(stream: FastStream, connection: _Connection) -> LeanConnection | None:
        if not LeanConnection.serves(config):
            return None
        return LeanConnection(
            lean_app,
            config,
            context,
            ConnectionState(lifespan_state.copy()),
            stream,
            connection,
            departures,
        )

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        departures = DepartureWatch.made()
        if departures is not None:
            # Until the very end: requests still running while the worker drains need it.
            lifespan_nursery.start_soon(departures.run)
        sockets = sockets if sockets is not None else listening_sockets(config)
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
        async with trio.open_nursery() as server_nursery:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(
                        _accept, listener, connections, server, lean, server_nursery
                    )
                # Stops with accepting: a draining worker closes idle connections itself.
                accepting.start_soon(connections.watch_idle)
                task_status.started(_announce(sockets))
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            if on_drain is not None:
                on_drain()
            for listener in listeners:
                await listener.aclose()
            # Hypercorn closes a connection after its current answer once this is set.
            await context.terminated.set()
            connections.drain()
            server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


async def _accept(
    listener: trio.SocketListener,
    connections: Connections,
    server: Callable[..., TCPServer],
    lean: Callable[[FastStream, _Connection], LeanConnection | None],
    nursery: trio.Nursery,
) -> None:
    """Accept connections, one at a time: a connection that finds the worker full of busy
    ones waits, unread, until one ends or goes idle, and so does accepting."""
    while True:
        try:
            stream = await listener.accept()
        except OSError as error:
            if error.errno not in _RESOURCE_ERRNOS:
                raise
            logger.warning("cannot accept a connection: %s; pausing %g s", error, RESOURCE_PAUSE)
            await trio.sleep(RESOURCE_PAUSE)
            continue
        try:
            await connections.room()
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        nursery.start_soon(connections.serve, stream, server, lean)


def _announce(sockets: list[socket.socket]) -> list[str]:
    binds = [f"http://{repr_socket_addr(s.family, s.getsockname())}" for s in sockets]
    for bind in binds:
        logger.info("Running on %s (CTRL + C to quit)", bind)
    return binds

"""A lean HTTP/1.1 connection: plain requests served without hypercorn's or h11's layers.

Hypercorn serves each request through a stack of layers: h11's state machine and an
event object for each part of the exchange, hypercorn's `H11Protocol`, `HTTPStream`,
`ProtocolWrapper`, its app wrappers and task group, and a memory channel of ASGI
events. Together they were about half of a proxied request's instructions, and most of
a cached answer's. `LeanConnection` serves the plain case itself:

- an HTTP/1.1 request whose head is whole within hypercorn's `h11_max_incomplete_size`,
  every line ending CRLF, its method upper-case (not CONNECT), its fields passing h11's
  grammar (the same one-pass check as `trigate.request_head`), one Host, at most one
  Content-Length of plain digits, and no Transfer-Encoding, Upgrade, Expect or
  `Connection: close` (the request line and field lines a connection's last head had
  are looked up as they were read then, not read again: `KnownLines`);
- its body by Content-Length, handed to the app as h11 and hypercorn hand it (a
  `more_body` event for each read, then an empty closing one);
- the app's answer written as h11 would write it: a plain head (a status with a body,
  valid fields, no framing or Connection field of the app's, or one Content-Length)
  written here, anything else framed by an h11 connection made for that answer alone
  (`_H11Answer`), so h11 still decides every odd response (HEAD, 204, 1xx, the app's
  own framing fields, `Connection: close`).

The scope is the one hypercorn builds, with trigate's extensions (`DEPARTURE_EXTENSION`,
`BODY_WRITER_EXTENSION`, `WHOLE_RESPONSE_EXTENSION`, `QUEUED_EVENT_EXTENSION`). A
request whose body came whole with its head (nearly every API call) has its app run on
the connection's own task (`_Exchange.run_inline`): starting a task for it, and the
trip through Trio's scheduler to run it, cost some 80 thousand instructions, more than
a cached answer's own work. The app is stepped by hand (`trigate.stepping`), in a context
of its own, so that the first time it waits (for its upstream, say) its socket is
handed to the worker's `DepartureWatch` until it returns: a client's end-of-file, seen
while an app waits, is still that request's departure (reported to the request before
anything else, then `http.disconnect`), at the cost of two `epoll_ctl` calls, where a
reading task per connection cost a trip through Trio's scheduler per request.
An app that never waits (a cached answer) needs no reader meanwhile: nothing of its
work can outlive its client.

The connection's next request is read once an app run on its task returns, not once
its answer ends as hypercorn reads it (a task waiting in a trap cannot hand over):
an app's waits after its answer delay its client's next request. trigate's model API
and pass-through routes have none: a call is recorded before its answer ends
(`PassCall.run` holds the answer's last message until then, but for an error reply or
an answer cut short).

A request whose body is still coming has its app run in a task of its own, as under
hypercorn, while the connection's task reads on: the body, then the client's
departure, or the next request's bytes, held until the answer is done. Keep-alive,
`keep_alive_max_requests`, a draining worker (`context.terminated`), the access log
and the Date and Server fields are hypercorn's.

A request that is not plain, at a request boundary before any of it is consumed, hands
the connection (with the bytes already read) to hypercorn for the rest of its life
(`LeanConnection.run` returns them): h11 answers 400s and 431s as before, WebSocket
upgrades and h2c work as before.
"""

from __future__ import annotations

import logging
import operator
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from itertools import repeat
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

import h11
import h11._readers
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol.http_stream import ASGIHTTPState as _Answer
from hypercorn.utils import (
    UnexpectedMessageError,
    build_and_validate_headers,
    parse_socket_addr,
    suppress_body,
)
from trio.lowlevel import ParkingLot, cancel_shielded_checkpoint, checkpoint_if_cancelled

from trigate.departures import DepartureWatch
from trigate.request_head import LOWERED_NAME_TABLE, VALUE_TABLE
from trigate.sockets import FastStream
from trigate.stepping import on_this_task
from trigate.transport import field_names

if TYPE_CHECKING:
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import ASGIReceiveEvent, HTTPScope

# The ASGI scope extension through which a request learns its client has gone: a callable
# taking the request's async departure callback (or None, when the request is over).
DEPARTURE_EXTENSION = "trigate.departure"
Departure = Callable[[], Awaitable[None]]
OnDeparture = Callable[[Departure | None], None]

# The ASGI scope extension offering a streamed body's direct writer: a callable returning
# one (`BodyWriter`) once the response's headers have gone out, or None.
BODY_WRITER_EXTENSION = "trigate.body_writer"

# The ASGI scope extension offering to write a fixed-length response whole: its status,
# header fields (Content-Length among them) and body in one write. It answers False,
# having written nothing, where the usual path must be taken instead.
WHOLE_RESPONSE_EXTENSION = "trigate.whole_response"
WholeWriter = Callable[[int, list[tuple[bytes, bytes]], bytes], Awaitable[bool]]

# The ASGI scope extension handing the app a request event the server already holds:
# a callable returning the next one without waiting (no checkpoint either), or None when
# it would have to wait.
QUEUED_EVENT_EXTENSION = "trigate.queued_event"
QueuedEvent = Callable[[], "ASGIReceiveEvent | None"]

# The ASGI scope extension handing a request whose app runs on the connection's own task
# (`_Exchange.run_inline`), its body whole in its queue, the cancel scope it runs in: the
# connection's. An app may cancel it where it would enter a scope of its own to cancel
# (trio's scope costs some 45 thousand instructions to enter and leave, a fourteenth of
# a cached answer's), when its client has left: that ends the request and then the
# connection, whose stream the departure has closed already. It never sets it a deadline:
# one that passed while a shielded write waited would cancel the connection's next request.
REQUEST_SCOPE_EXTENSION = "trigate.request_scope"

logger = logging.getLogger(__name__)

# A held response head is joined to a body up to this size; a longer one is written
# after it, as copying it would cost more than the system call saved.
MAX_JOINED_BODY = 64 * 1024
# What one read asks of the socket (hypercorn's MAX_RECV).
MAX_RECV = 2**16


class CheckedTail(list[tuple[bytes, bytes]]):
    """A response's header fields, the last of which (`own`) the gateway made itself and
    vouches for: names that are tokens, values as h11 allows them (no control character,
    no space at either end), and none of them a framing field (Content-Length,
    Transfer-Encoding, Connection). The lean server checks the rest alone, as h11 would;
    should the tail no longer be `own` (changed after it was made), it checks them all.
    Any other server takes it as the list it is. Made by `vouched`."""

    __slots__ = ("own",)
    own: list[tuple[bytes, bytes]]


def vouched(fields: list[tuple[bytes, bytes]], own: list[tuple[bytes, bytes]]) -> CheckedTail:
    """`fields`, whose last are `own`, as a `CheckedTail` (not by an `__init__` of its
    own: that and its `super()` would cost more than checking a field or two)."""
    tail = CheckedTail(fields)
    tail.own = own
    return tail


class BodyWriter(Protocol):
    """Writes a streamed body's pieces straight to the client's connection."""

    async def write(self, data: bytes) -> None:
        """`data` as the body's next piece, framed, once the connection takes it."""

    def try_write(self, data: bytes) -> bytes | None:
        """`data` as the body's next piece if the connection takes it now, without
        waiting: None when none of it was written (`write` it later), else what is left
        of the framed piece (b"" when all of it went), which `write_framed` must write
        before anything else."""

    async def write_framed(self, data: bytes) -> None:
        """The rest of a piece `try_write` began, as it is."""


class ConnectionHooks(Protocol):
    """What the worker keeps of a connection: whether a request is in flight on it (for
    the idle watch and the drain), and the cancel scope it is served in."""

    @property
    def scope(self) -> trio.CancelScope: ...

    def request_began(self) -> None: ...

    def request_ended(self) -> None: ...


async def send_locked(
    lock: trio.Lock,
    stream: FastStream,
    data: bytes | bytearray | memoryview,
    *,
    try_first: bool = False,
    head: bytes | None = None,
    dropped: Callable[[], bool] | None = None,
) -> bool:
    """`data` (after `head`, if given) written whole under `lock`, the waits for room
    shielded from cancellation; whether it may have gone back to Trio on the way (False
    only where it surely did not: a cancellation can then have come no sooner).

    The lock is taken without a schedule point when it is free (trio's `acquire` yields
    even then). With `try_first`, a free lock is not taken at all for a write the socket
    takes whole at once: no other write can be under way, and none can start before it
    is done. `dropped`, asked once a lock that was held is had, says the write is no
    longer wanted."""
    if lock.locked():
        await lock.acquire()
        if dropped is not None and dropped():
            lock.release()
            return True
    elif try_first:
        sent = stream.try_send(data)
        if sent == len(data):
            if stream.count_success():
                await cancel_shielded_checkpoint()
                return True
            return False
        # Still free: nothing was awaited since `locked()`.
        lock.acquire_nowait()
        data = memoryview(data)[sent:]
    else:
        lock.acquire_nowait()
    try:
        if head is not None:
            await stream.write(head, shielded=True)
        await stream.write(data, shielded=True)
    finally:
        lock.release()
    return True


def response_head(status: int, fields: list[tuple[bytes, bytes]], lines: bytes = b"") -> bytes:
    """A response head as h11 writes it (its reason phrase left empty, as hypercorn
    leaves it), for fields already checked (`field_names`): each field joined in C, not
    formatted one by one; then `lines`, fields already written as lines (each ending
    CRLF: the server's own, `_ServerFields.lines`)."""
    if not fields:
        return b"HTTP/1.1 %d \r\n%b\r\n" % (status, lines)
    joined = b"\r\n".join(map(_FIELD_LINE, fields))
    return b"HTTP/1.1 %d \r\n%b\r\n%b\r\n" % (status, joined, lines)


_FIELD_LINE = b": ".join
# The field a chunked answer's head ends with, as a line.
_CHUNKED_LINE = b"Transfer-Encoding: chunked\r\n"


class _ServerFields:
    """hypercorn's `Config.response_headers("h11")` (Date and Server), made once a
    second rather than for every answer: formatting the date is most of its cost.
    Checked as they are made (`valid`), not with every answer's own fields, and written
    as lines then (`lines`), not joined with every answer's head."""

    __slots__ = ("_config", "_fields", "_second", "lines", "valid")

    def __init__(self) -> None:
        self._config: HypercornConfig | None = None
        self._second = -1
        self._fields: list[tuple[bytes, bytes]] = []
        self.lines = b""
        self.valid = True

    def __call__(self, config: HypercornConfig) -> list[tuple[bytes, bytes]]:
        second = int(time.time())
        if second != self._second or config is not self._config:
            self._fields = config.response_headers("h11")
            self._second = second
            self._config = config
            self.valid = not self._fields or field_names(self._fields) is not None
            self.lines = b"".join(b"%b: %b\r\n" % field for field in self._fields)
        return self._fields


server_fields = _ServerFields()


class AppQueue:
    """The ASGI events one request's app is handed (the request, its body, the
    disconnect), as hypercorn's memory channel holds them, minus what a channel costs
    a request that never waits: making one (about 40 thousand instructions), and the
    schedule point after a put or a get that did not have to wait. Both stay cancel
    points; a put waits while `size` events are queued, a get while none is."""

    __slots__ = ("_events", "_for_events", "_for_room", "_size", "ended")

    def __init__(self, size: int) -> None:
        self._events: deque[ASGIReceiveEvent] = deque()
        self._size = size
        # Once the disconnect is queued, a put no longer waits for room: the app may
        # never read again, and the reader must not wait on it for ever.
        self.ended = False
        # Tasks waiting for an event, and for room; made only when one must wait.
        self._for_events: ParkingLot | None = None
        self._for_room: ParkingLot | None = None

    async def put(self, event: ASGIReceiveEvent) -> None:
        await checkpoint_if_cancelled()
        while len(self._events) >= self._size and not self.ended:
            if self._for_room is None:
                self._for_room = ParkingLot()
            await self._for_room.park()
        self.put_nowait(event)

    def put_nowait(self, event: ASGIReceiveEvent) -> None:
        self._events.append(event)
        if self._for_events:
            self._for_events.unpark()

    def end(self) -> None:
        """Queue the disconnect, whatever the queue holds; later puts wait for nothing."""
        self.ended = True
        self.put_nowait({"type": "http.disconnect"})
        if self._for_room:
            self._for_room.unpark_all()

    async def get(self) -> ASGIReceiveEvent:
        await checkpoint_if_cancelled()
        while not self._events:
            if self._for_events is None:
                self._for_events = ParkingLot()
            await self._for_events.park()
        return self._take()

    def queued(self) -> ASGIReceiveEvent | None:
        """The next event if it is here already, else None (`QUEUED_EVENT_EXTENSION`)."""
        return self._take() if self._events else None

    def _take(self) -> ASGIReceiveEvent:
        event = self._events.popleft()
        if self._for_room:
            self._for_room.unpark()
        return event


class PlainHead:
    """A request head the lean path serves: its request line's parts, its fields as
    hypercorn gives them (lower-cased names, stripped values), its body's length."""

    __slots__ = ("fields", "head", "length", "method", "target")

    def __init__(
        self,
        head: bytes,
        method: bytes,
        target: bytes,
        fields: list[tuple[bytes, bytes]],
        length: int,
    ) -> None:
        self.head = head
        self.method = method
        self.target = target
        self.fields = fields
        self.length = length


# A look at the socket's next byte, leaving it there, without waiting.
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_REQUEST_LINE = h11._readers.request_line_re
# Where h11 ends a head (`ReceiveBuffer.maybe_extract_lines`): its first blank line.
_BLANK_LINE = re.compile(b"\n\r?\n")
# `VALUE_TABLE` that also makes a newline NUL: the values are checked joined by nothing.
_VALUE_BYTES = bytes(0 if byte == 10 else VALUE_TABLE[byte] for byte in range(256))
# Looked for as the byte's value (`0 in data`): Python 3.11's `bytes.__contains__` takes
# an integer straight to `memchr`, where a search for b"\x00" (`find`) parses its
# arguments as a tuple (some 1,200 instructions against 250), and `b"\x00" in data`
# first fails to read its operand as an integer (some 2,400).
_NUL = 0
# Names that leave a request to hypercorn and h11: a body framed otherwise than by its
# length, a protocol switch, a 100-continue.
_NOT_PLAIN_NAMES = frozenset({b"transfer-encoding", b"upgrade", b"expect"})
# h11's `_headers.CONTENT_LENGTH_MAX_DIGITS` (`PLAIN_LENGTH`'s bound).
MAX_LENGTH_DIGITS = 20


def plain_head(head: bytes, known: KnownLines | None = None) -> PlainHead | None:
    """`head` (a request head through its blank line) read as h11 reads it, when h11
    would take it and the request is plain (see the module's docstring); else None,
    for h11 to decide. Every check is one h11 makes, or stricter. Its field lines are
    looked up in `known` (the connection's, when given) before they are read."""
    lines = head[:-4].split(b"\r\n")
    parts = request_line(lines[0]) if known is None else known.request_line(lines[0])
    if parts is None:
        return None
    method, target, version = parts
    if version != b"1.1" or not method.isupper() or method == b"CONNECT":
        return None  # hypercorn upper-cases the method h11 frames by: not the same then
    del lines[0]
    read = read_fields(lines) if known is None else known.read(lines)
    if read is None:
        return None  # folded, empty or refused: h11's own reading decides
    fields, names = read
    # The fields that decide are found by the list's own searches and a set's, in C.
    if names.count(b"host") != 1 or not _NOT_PLAIN_NAMES.isdisjoint(names):
        return None
    length = 0
    lengths = names.count(b"content-length")
    if lengths:
        value = fields[names.index(b"content-length")][1]
        if lengths > 1 or not plain_length(value):
            return None
        length = int(value)
    if b"connection" in names and any(
        [value.lower().find(b"close") >= 0 for name, value in fields if name == b"connection"]
    ):
        return None
    return PlainHead(head, method, target, fields, length)


Fields = tuple[list[tuple[bytes, bytes]], list[bytes]]
RequestLine = tuple[bytes, bytes, bytes]


def request_line(line: bytes) -> RequestLine | None:
    """A request line's method, target and HTTP version, as h11 reads them; None where
    h11 would refuse it."""
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        return None
    method, target, version = match.groups()
    return method, target, version


def read_fields(lines: list[bytes]) -> Fields | None:
    """Field lines read as h11 reads them (each its lower-cased name and its value
    stripped), and their names; None where h11 would refuse one, or read it otherwise.
    Each line is read alone: what it is read as depends on no other line."""
    # By C's map and zip, not comprehensions: in Python 3.11 each of those is a function
    # made and called. Each line's name, colon and value, transposed. Not `strict`: the
    # tuples are partitions, of one length, and a keyword costs `zip` a dict per call.
    parts = list(map(bytes.partition, lines, repeat(b":")))
    names, colons, raw_values = zip(*parts) if parts else ((), (), ())  # noqa: B905
    values = list(map(bytes.strip, raw_values, repeat(b" \t")))
    # Lower-cased as h11 keeps them, and any byte no name may hold made NUL, in one pass.
    # A bare LF (h11 splits lines otherwise) is in a name, where it splits the names
    # once more, or in a value, where `_VALUE_BYTES` makes it NUL; the request line's
    # expression refuses one. `0 in`, not a search for b"\x00": see `_NUL`.
    lowered = b"\n".join(names).translate(LOWERED_NAME_TABLE)
    if (
        not all(names)
        or not all(colons)
        or _NUL in lowered
        or _NUL in b"".join(values).translate(_VALUE_BYTES)
    ):
        return None
    lowered_names = lowered.split(b"\n") if names else []
    if len(lowered_names) != len(names):
        return None
    return list(zip(lowered_names, values)), lowered_names  # noqa: B905 (one length)


# The longest request line a connection keeps read (`KnownLines.request_line`).
KNOWN_LINE_BYTES = 1024


class KnownLines:
    """A connection's field lines as its last head's reading left them: a client sends
    much the same lines with every request on a connection (its host, credentials,
    content type, its SDK's own fields), and a line read once is read alike again
    (`read_fields` reads each alone), so that only the lines that changed (a body's
    length, say) are read again. HPACK keeps a connection's fields so in HTTP/2.
    Reading a head's four lines cost some 25 thousand instructions, looking them up
    here some 3 thousand. At most one head's lines are kept (the last one that had
    new lines), and only a head of at most `KNOWN_LINES` lines: a line kept costs some
    200 bytes beside its own, and a head of thousands of short lines (16 KiB of them)
    would have a connection hold 34 times its size for as long as it is kept alive.

    The last request line is kept so too (a client asks one route again and again): its
    expression's match cost some 4,400 instructions, comparing it with the last some 100.
    Only a line of at most `KNOWN_LINE_BYTES` (a route's, with a short query): a longer
    one (up to the head's limit) would be held, with a copy of its target, for as long
    as the connection idles."""

    __slots__ = ("_fields", "_line", "_line_parts")

    def __init__(self) -> None:
        self._fields: dict[bytes, tuple[bytes, bytes]] = {}
        self._line = b""
        self._line_parts: RequestLine | None = None

    def request_line(self, line: bytes) -> RequestLine | None:
        """`request_line(line)`, the connection's last one's parts looked up."""
        if line == self._line and self._line_parts is not None:
            return self._line_parts
        parts = request_line(line)
        if parts is not None and len(line) <= KNOWN_LINE_BYTES:
            self._line, self._line_parts = line, parts
        return parts

    def read(self, lines: list[bytes]) -> Fields | None:
        """`read_fields` of `lines`, those known looked up rather than read again."""
        found: list[Any] = list(map(self._fields.get, lines))
        if not all(found):  # a field is a tuple of two, never false
            missing = [line for line, field in zip(lines, found, strict=True) if field is None]
            read = read_fields(missing)
            if read is None:
                return None
            new = iter(read[0])
            found = [field or next(new) for field in found]
            self._fields = dict(zip(lines, found, strict=True)) if len(lines) <= KNOWN_LINES else {}
        return found, list(map(_FIELD_NAME, found))


_FIELD_NAME = operator.itemgetter(0)
# The most lines of a head a connection keeps (`KnownLines`): an SDK's head has 10 to 20.
KNOWN_LINES = 32


def plain_length(value: bytes) -> bool:
    """`PLAIN_LENGTH.fullmatch(value)` (one to twenty ASCII digits), without the
    expression's call: some 1,600 instructions an answer less."""
    return value.isdigit() and len(value) <= MAX_LENGTH_DIGITS


# Statuses whose answers have no body, and so no Content-Length to frame one by.
_BODILESS_STATUSES = frozenset({204, 304})


class _H11Answer:
    """An answer h11 frames: an h11 connection that has read the request's head alone,
    so that it frames the answer (and decides whether the connection may carry another
    request) as hypercorn's h11 connection would have. Made only for an answer that is
    not plain."""

    __slots__ = ("_connection",)

    def __init__(self, head: bytes) -> None:
        self._connection = h11.Connection(h11.SERVER)
        self._connection.receive_data(head)
        request = self._connection.next_event()
        assert isinstance(request, h11.Request)  # a plain head, read before

    def send(self, event: Any) -> bytes:
        data: bytes | None = self._connection.send(event)
        assert data is not None  # not a ConnectionClosed
        return data

    @property
    def keeps_alive(self) -> bool:
        return self._connection.our_state is h11.DONE


class _ProtocolBroken(Exception):
    """The answer broke h11's rules (too much or too little body for its length)."""


class LeanConnection:
    """One client connection's plain requests (see the module's docstring)."""

    __slots__ = (
        "_app",
        "_client",
        "_config",
        "_context",
        "_departures",
        "_hooks",
        "_inline",
        "_known",
        "_lock",
        "_nursery",
        "_server",
        "_state",
        "_stream",
        "_watched",
        "requests",
    )

    def __init__(
        self,
        app: Any,
        config: HypercornConfig,
        context: WorkerContext,
        state: dict[str, Any],
        stream: FastStream,
        hooks: ConnectionHooks,
        departures: DepartureWatch | None,
    ) -> None:
        self._app = app  # an ASGI app: called with a scope, a receive and a send
        self._config = config
        self._context = context
        self._state = state
        self._stream = stream
        self._hooks = hooks
        # The client's and the server's addresses, looked up once the connection runs.
        self._client: tuple[str, int] | None = None
        self._server: tuple[str, int] | None = None
        self._lock = trio.Lock()
        # Requests served: hypercorn's `keep_alive_requests`, carried over at a hand-over.
        self.requests = 0
        self._nursery: trio.Nursery | None = None
        # The request whose app runs on the connection's task now, if one does.
        self._inline: _Exchange | None = None
        # Whether the worker's departure watch looks at the socket for that app.
        self._departures = departures
        self._watched = False
        # The field lines of the connection's last head, as they were read.
        self._known = KnownLines()

    @staticmethod
    def serves(config: HypercornConfig) -> bool:
        """Whether a server with `config` may take the lean path at all: no read
        timeout, no server names to check, raw header names not asked for."""
        return (
            config.read_timeout is None
            and not config.server_names
            and not config.h11_pass_raw_headers
        )

    async def run(self) -> bytes | None:
        """Serve the connection's plain requests; the bytes read of one that is not (for
        hypercorn to serve the connection from), or None once the connection is over."""
        sock = self._stream.socket
        try:
            self._client = parse_socket_addr(sock.family, sock.getpeername())
            self._server = parse_socket_addr(sock.family, sock.getsockname())
        except OSError:
            # Reset before it was served (ENOTCONN): over, as hypercorn's `run` ends it.
            return None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            return await self._serve(nursery)

    async def _serve(self, nursery: trio.Nursery) -> bytes | None:
        limit = self._config.h11_max_incomplete_size
        buffer = b""
        wait_first = False
        while True:
            blank = _BLANK_LINE.search(buffer)
            while blank is None:
                if buffer and (buffer[0] < 0x21 or len(buffer) > limit):
                    return buffer  # h11 refuses it, or reads it otherwise
                data = await self._read(wait_first=wait_first)
                if data is None:
                    return None
                if not data:
                    return buffer or None  # a head cut short: h11 answers it
                searched = max(0, len(buffer) - 3)
                buffer += data
                blank = _BLANK_LINE.search(buffer, searched)
                wait_first = False
            end = blank.end()
            if end > limit or buffer[end - 4 : end] != b"\r\n\r\n":
                return buffer  # too long, or a bare LF ends it: h11 decides
            head = plain_head(buffer[:end], self._known)
            if head is None:
                return buffer
            exchange = _Exchange(self, head)
            self.requests += 1
            after: bytes | None
            if len(buffer) - end >= head.length and self._departures is not None:
                after = await exchange.run_inline(buffer[end:])
            else:
                nursery.start_soon(exchange.run)
                after = await exchange.read_body(buffer[end:])
                if after is not None:
                    after = await exchange.watch(after)
            if after is None:
                return None
            buffer = after
            # The answer is whole and the connection kept: the next request's head,
            # when none of it is here yet, is waited for before any read.
            wait_first = not buffer

    async def _read(self, *, wait_first: bool = False) -> bytes | None:
        """The client's next bytes (empty at its end), or None once the socket is
        closed or broken (the client's departure is reported by the caller)."""
        try:
            if wait_first:
                return await self._stream.receive_when_ready(MAX_RECV)
            return await self._stream.receive_some(MAX_RECV)
        except trio.ClosedResourceError:
            return None
        except trio.BrokenResourceError:
            return b""

    def watch_departure(self) -> None:
        """An app run on the connection's task waits (for its upstream, say): the
        worker's `DepartureWatch` looks at the socket for it from now until the app
        returns, so that a client leaving meanwhile is that request's departure."""
        if not self._watched and self._departures is not None:
            # Not watched (`watch` could not): this request's departure is then heard
            # only once its app returns, as for an app that never waits.
            self._watched = self._departures.watch(self._stream.socket.fileno(), self)

    def unwatch_departure(self) -> None:
        if self._watched and self._departures is not None:
            self._watched = False
            self._departures.unwatch(self._stream.socket.fileno(), self)

    def readable(self) -> None:
        """The socket became readable while an app ran on the connection's task (the
        watch looks no more): the client's end (or a reset) is its request's
        departure, heard in a task of its own; bytes are the next request's, read once
        the app is done."""
        self._watched = False
        exchange = self._inline
        if exchange is None or exchange.done:
            return
        inner = getattr(self._stream.socket, "_sock", None)
        if not isinstance(inner, socket.socket):
            return  # not a socket that can be looked at: the app's end decides
        try:
            peeked = inner.recv(1, _PEEK)
        except BlockingIOError:
            self.watch_departure()  # nothing after all: look again
            return
        except OSError:
            peeked = b""
        if not peeked and self._nursery is not None:
            self._nursery.start_soon(exchange.client_left)

    async def close(self) -> None:
        """End the connection after an answer: shut the sending side (the client reads
        the answer's end) and close the socket, which wakes the reader."""
        self.unwatch_departure()
        sock = self._stream.socket
        try:
            if not sock.did_shutdown_SHUT_WR and sock.fileno() >= 0:
                sock.shutdown(trio.socket.SHUT_WR)
        except OSError:
            pass
        await self._stream.aclose()


class _Exchange:
    """One request and its answer on a `LeanConnection`: the app's task, its ASGI
    `receive` and `send`, and the connection's reading while the app runs."""

    __slots__ = (
        "_body_done",
        "_broken",
        "_chunked",
        "_closing",
        "_connection",
        "_done",
        "_finished",
        "_h11",
        "_head",
        "_held",
        "_unsent",
        "closed",
        "departure",
        "queue",
        "response",
        "scope",
        "start_time",
        "state",
    )

    def __init__(self, connection: LeanConnection, head: PlainHead) -> None:
        self._connection = connection
        self._head = head
        config = connection._config
        self.start_time = time.time()
        path, _, query_string = head.target.partition(b"?")
        self.queue = AppQueue(config.max_app_queue_size)
        self.scope: HTTPScope = {
            "type": "http",
            "http_version": "1.1",
            "asgi": {"spec_version": "2.1", "version": "3.0"},
            "method": head.method.decode("ascii"),
            "scheme": "http",
            "path": _unquote(path),
            "raw_path": path,
            "query_string": query_string,
            "root_path": config.root_path,
            "headers": head.fields,
            "client": connection._client,
            "server": connection._server,
            "state": connection._state.copy(),  # type: ignore[typeddict-item]
            "extensions": {
                DEPARTURE_EXTENSION: self.on_departure,  # type: ignore[dict-item]
                BODY_WRITER_EXTENSION: self.body_writer,  # type: ignore[dict-item]
                WHOLE_RESPONSE_EXTENSION: self.send_whole,  # type: ignore[dict-item]
                QUEUED_EVENT_EXTENSION: self.queue.queued,  # type: ignore[dict-item]
            },
        }
        self.state = _Answer.REQUEST
        self.response: Any = None
        self.departure: Departure | None = None
        # Whether the stream is closed (answered, or the client gone): hypercorn's
        # `HTTPStream.closed`.
        self.closed = False
        # Whether the request's body has all been read, the answer is done, and the
        # connection must close after it.
        self._body_done = False
        self._done = False
        self._closing = False
        # Whether the connection broke under a write, or the answer broke h11's rules.
        self._broken = False
        # The answer's framing: h11's for an odd one, else chunked or by length.
        self._h11: _H11Answer | None = None
        self._chunked = False
        self._unsent = 0  # bytes of a fixed-length body still to come
        self._held: bytes | None = None  # a fixed-length head awaiting its body
        # Made only for a reader waiting on the answer's end with the next request here.
        self._finished: trio.Event | None = None

    # The connection's reading.

    async def read_body(self, rest: bytes) -> bytes | None:
        """Hand the app the body, as h11 and hypercorn hand it; the bytes after it, or
        None if the client left before the body was whole."""
        put = self.queue.put
        remaining = self._head.length
        if remaining:
            while True:
                if rest:
                    piece, rest = rest[:remaining], rest[remaining:]
                    remaining -= len(piece)
                    await put({"type": "http.request", "body": piece, "more_body": True})
                    if not remaining:
                        break
                if self._done:
                    return None  # answered already (without the body): closing
                data = await self._connection._read()
                if not data:
                    if data is not None:
                        await self._cut_short()
                    return None
                rest = data
        await put({"type": "http.request", "body": b"", "more_body": False})
        self._body_done = True
        return rest

    async def watch(self, rest: bytes) -> bytes | None:
        """Wait for the answer's end, hearing the client's departure meanwhile; the bytes
        the next request begins with, or None when the connection is over."""
        connection = self._connection
        while not self._done:
            if rest:
                # The next request came before this answer ended (pipelined): it waits,
                # unread past what came, as h11 pauses.
                if self._finished is None:
                    self._finished = trio.Event()
                await self._finished.wait()
                break
            data = await connection._read(wait_first=True)
            if data is None:
                return None
            if not data:
                await self._client_left()
                return None
            rest = data
        if self._closing:
            return None
        return rest

    async def run_inline(self, data: bytes) -> bytes | None:
        """The request, its body whole in `data`, served with its app on the
        connection's own task (no task of its own to start, nor a trip through the
        scheduler to run it); the bytes after the body, or None when the connection
        is over. Should the app wait, the worker's departure watch looks at the
        socket until it returns, so that the client's departure is still heard."""
        length = self._head.length
        queue = self.queue
        if length:
            queue.put_nowait({"type": "http.request", "body": data[:length], "more_body": True})
        queue.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        self._body_done = True
        connection = self._connection
        connection._inline = self
        # With the next request's bytes here already, the socket's being readable says
        # nothing, and the client's end after them is no departure of this request: it
        # is read once this answer is done, as the task-per-request path reads it
        # (`watch` does not read while pipelined bytes wait).
        on_wait = connection.watch_departure if len(data) == length else _unwatched
        extensions: dict[str, Any] = self.scope["extensions"]
        extensions[REQUEST_SCOPE_EXTENSION] = connection._hooks.scope
        try:
            await on_this_task(self.run(), on_wait)
        finally:
            connection._inline = None
            connection.unwatch_departure()
        if self._closing or (self.closed and not self._done):
            return None
        return data[length:]

    @property
    def done(self) -> bool:
        return self._done

    async def client_left(self) -> None:
        """The watch's report, heard in a task of its own: nothing to do if the answer
        ended meanwhile (the next request's reading hears the end)."""
        if not self._done:
            await self._client_left()

    async def _client_left(self) -> None:
        """The client's end-of-file (or reset), read while its request is served: the
        request hears it first, then the app is handed `http.disconnect`."""
        await self._depart()
        await self._stream_closed()

    async def _cut_short(self) -> None:
        """The client ended the connection within the body: h11's 400, as hypercorn
        sends it, if nothing of the answer was; then the client's departure."""
        await self._depart()
        if self.state is _Answer.REQUEST and not self._done:
            answer = _H11Answer(self._head.head)
            fields = [(b"content-length", b"0"), (b"connection", b"close")]
            data = answer.send(
                h11.Response(
                    status_code=400, headers=[*fields, *server_fields(self._connection._config)]
                )
            )
            await self._write(data)
        # Over, whatever was answered (hypercorn's `Closed` after h11's error): closed
        # now, not once the app's task ends; any later write is dropped.
        self._done = self._closing = True
        await self._stream_closed()
        await self._connection.close()

    def on_departure(self, departure: Departure | None) -> None:
        """`DEPARTURE_EXTENSION`: what this request wants done the moment its client
        goes (kept by the request, not the connection: the next request on the
        connection may begin before this one's task ends)."""
        self.departure = departure

    async def _depart(self) -> None:
        departure, self.departure = self.departure, None
        if departure is not None:
            await departure()

    # The app's task.

    async def run(self) -> None:
        """The app on this request: hypercorn's `_handle`, with the connection marked
        busy for as long as it runs."""
        connection = self._connection
        hooks = connection._hooks
        hooks.request_began()
        config = connection._config
        try:
            try:
                await connection._app(self.scope, self.queue.get, self.send)
            except trio.Cancelled:
                raise
            except BaseExceptionGroup as error:
                _, other_errors = error.split(trio.Cancelled)
                if other_errors is None:
                    raise
                await config.log.exception("Error in ASGI Framework")
            except Exception:
                await config.log.exception("Error in ASGI Framework")
            finally:
                await self._app_ended()
        finally:
            self.departure = None
            hooks.request_ended()

    async def _app_ended(self) -> None:
        """hypercorn's `app_send(None)`: a 500 if nothing was answered, then the end."""
        if not self.closed:
            if self.state is _Answer.REQUEST and not self._broken:
                await self._error_response(500)
            elif self._held is not None:
                # Started with a length, failed before its body: the head alone.
                head, self._held = self._held, None
                await self._write(head)
            await self._stream_closed()
            if not self._done:
                # Started, never finished: the connection cannot carry another request.
                self._done = self._closing = True
                await self._end()

    async def _error_response(self, status: int) -> None:
        fields = [(b"content-length", b"0"), (b"connection", b"close")]
        await self._start(status, fields)
        await self._finish()
        # Answered: `_stream_closed` logs no second line (hypercorn's `_send_error_response`).
        self.state = _Answer.CLOSED
        await self._access({"status": status, "headers": []})

    async def _stream_closed(self) -> None:
        """hypercorn's `HTTPStream` handling `StreamClosed`: the access log of an answer
        that never ended, and `http.disconnect` for the app."""
        if self.closed:
            return
        self.closed = True
        if self.state is not _Answer.CLOSED:
            await self._access(None)
        self.queue.end()

    async def send(self, message: Any) -> None:
        """hypercorn's `HTTPStream.app_send` for HTTP/1.1."""
        kind = message["type"]
        state = self.state
        if kind == "http.response.start" and state is _Answer.REQUEST:
            self.response = message
            fields = message.get("headers", [])
            if type(fields) is not list and type(fields) is not CheckedTail:
                fields = list(fields)
            await self._start(int(message["status"]), fields)
            self.state = _Answer.RESPONSE
        elif kind == "http.response.body" and state is _Answer.RESPONSE:
            body = message.get("body", b"")
            if body != b"" and not suppress_body(
                self.scope["method"], int(self.response["status"])
            ):
                await self._send_body(bytes(body))
            if not message.get("more_body", False):
                if self.response.get("trailers", False):
                    self.state = _Answer.TRAILERS
                else:
                    await self._send_closed()
        else:
            raise UnexpectedMessageError(state, kind)

    async def send_whole(self, status: int, fields: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """`WHOLE_RESPONSE_EXTENSION`: the start and the last body message in one call."""
        if self.state is not _Answer.REQUEST:
            return False
        # `send` of the two messages, less building and dispatching them.
        self.response = {"type": "http.response.start", "status": status, "headers": fields}
        await self._start(status, fields)
        self.state = _Answer.RESPONSE
        if body and self._held is not None:
            # `_start` held a plain head (no HEAD request's, a status with a body) and
            # awaited nothing since its cancel point: no cancellation can have come, so
            # the body goes without another (some 2 thousand instructions an answer),
            # and so does the answer's end if the write went back to Trio for nothing
            # (some 2,500 more).
            waited = await self._send_length(bytes(body))
            await self._send_closed(cancel_point=waited)
            return True
        if body and not suppress_body(self.scope["method"], status):
            await self._send_body(bytes(body))
        await self._send_closed()
        return True

    async def _access(self, response: Any) -> None:
        """hypercorn's access log line for the request (None: no answer was finished),
        skipped where no access log is kept (as hypercorn's own `access` skips it)."""
        if self._logs_access():
            log = self._connection._config.log
            await log.access(self.scope, response, time.time() - self.start_time)

    def _logs_access(self) -> bool:
        """Whether an access log is kept (hypercorn's `access` skips the line where not)."""
        log = self._connection._config.log
        return getattr(log, "access_logger", log) is not None

    async def _send_closed(self, *, cancel_point: bool = True) -> None:
        """The answer's end, then `_access`, `_stream_closed` and `_end` as each would do
        it for an answer that ended: each coroutine that awaits nothing (no access log
        kept, the connection kept) cost some 1,200 instructions an answer."""
        await self._finish(cancel_point=cancel_point)
        self.state = _Answer.CLOSED
        if self._logs_access():
            await self._access(self.response)
        if not self.closed:  # `_stream_closed`, with no line to log for an answer that ended
            self.closed = True
            self.queue.end()
        if self._ended():
            await self._connection.close()
        if self._finished is not None:
            self._finished.set()

    async def _end(self) -> None:
        """The answer is done: the connection carries the next request, or closes."""
        if self._ended():
            await self._connection.close()
        if self._finished is not None:
            self._finished.set()

    def _ended(self) -> bool:
        """Mark the answer done; whether the connection must close (as hypercorn's
        `_maybe_recycle` closes it): unless the body was whole, h11 kept the connection
        alive, and the worker is not draining."""
        self._done = True
        if (
            self._closing
            or self._broken
            or not self._body_done
            or self._connection._context.terminated.is_set()
        ):
            self._closing = True
        return self._closing

    # Writing the answer.

    async def _start(self, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        """The answer's head, as hypercorn's `_H11Protocol.stream_send` and h11 write it."""
        # The cancel point comes before any state changes (here and in `_send_body` and
        # `_finish`): a send cancelled here has done nothing, and the framing holds.
        await checkpoint_if_cancelled()
        if self._broken:
            raise h11.LocalProtocolError("Can't send data when our state is ERROR")
        connection = self._connection
        config = connection._config
        served = server_fields(config)
        # Fields that pass are as hypercorn's `build_and_validate_headers` would leave
        # them (no value begins or ends with a space); others are stripped as it strips.
        # Those the gateway vouches for (`CheckedTail`) need no check, and frame nothing.
        unchecked = fields
        if type(fields) is CheckedTail:
            own = fields.own
            count = len(own)
            if count and fields[-count:] == own:  # the tail still the one vouched for
                unchecked = fields[:-count]
        names = field_names(unchecked) if unchecked else []
        if names is None:
            fields = build_and_validate_headers(fields)
        if (
            names is not None
            and server_fields.valid
            and 200 <= status < 600
            and status not in _BODILESS_STATUSES
            and self.scope["method"] != "HEAD"
            and connection.requests < config.keep_alive_max_requests
            and b"transfer-encoding" not in names
            and b"connection" not in names
        ):
            lengths = names.count(b"content-length")
            if lengths == 0:
                self._chunked = True
                lines = server_fields.lines + _CHUNKED_LINE
                await self._write(response_head(status, fields, lines))
                return
            length = fields[names.index(b"content-length")][1]
            if lengths == 1 and plain_length(length):
                head = response_head(status, fields, server_fields.lines)
                self._unsent = int(length)
                if self._unsent:
                    self._held = head  # goes out with the body's first bytes
                else:
                    await self._write(head)
                return
        headers = [*fields, *served]
        if status >= 200 and connection.requests >= config.keep_alive_max_requests:
            headers.append((b"connection", b"close"))  # not on a 1xx, as hypercorn's
        self._h11 = answer = _H11Answer(self._head.head)
        event: Any
        if status >= 200:
            event = h11.Response(status_code=status, headers=headers, reason=b"")
        else:
            event = h11.InformationalResponse(status_code=status, headers=headers, reason=b"")
        await self._write(self._framed(answer, event))

    def _framed(self, answer: _H11Answer, event: Any) -> bytes:
        try:
            return answer.send(event)
        except h11.LocalProtocolError:
            self._broken = True
            raise

    async def _send_body(self, body: bytes) -> None:
        await checkpoint_if_cancelled()
        if self._broken:
            raise h11.LocalProtocolError("Can't send data when our state is ERROR")
        answer = self._h11
        if answer is not None:
            await self._write(self._framed(answer, h11.Data(data=body)))
        elif self._chunked:
            await self._write(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            await self._send_length(body)

    async def _send_length(self, body: bytes) -> bool:
        """A piece of a body framed by its length, after its head while that is held;
        whether the write may have gone back to Trio (`_write`)."""
        if len(body) > self._unsent:
            self._broken = True
            raise h11.LocalProtocolError("Too much data for declared Content-Length")
        self._unsent -= len(body)
        head, self._held = self._held, None
        if head is None:
            return await self._write(body)
        if len(body) <= MAX_JOINED_BODY:
            return await self._write(head + body)
        return await self._write(body, head=head)

    async def _finish(self, *, cancel_point: bool = True) -> None:
        """The answer's end: a chunked body's last chunk, a fixed-length body checked.
        Without its `cancel_point` where the caller knows nothing was awaited since its
        last one."""
        if cancel_point:
            await checkpoint_if_cancelled()
        if self._broken:
            raise h11.LocalProtocolError("Can't send data when our state is ERROR")
        answer = self._h11
        if answer is not None:
            data = self._framed(answer, h11.EndOfMessage())
            if not answer.keeps_alive:
                self._closing = True
            if data:
                await self._write(data)
        elif self._chunked:
            await self._write(b"0\r\n\r\n")
        else:
            head, self._held = self._held, None
            if head is not None:
                await self._write(head)  # the app failed after starting: its head alone
            if self._unsent:
                self._broken = True
                raise h11.LocalProtocolError("Too little data for declared Content-Length")

    async def _write(self, data: bytes, *, head: bytes | None = None) -> bool:
        """`data` written under the connection's lock, shielded (a piece cut halfway
        would break the framing of all that follows); a connection that broke under it
        ends the request's stream, as hypercorn's `Closed`, and later writes are dropped
        (looked at again once the lock is had: a 500 may queue behind a 400).

        The caller's cancel point came before it changed any state. Cancelled still
        (waiting for the lock), the answer's framing is no longer sure: the connection
        closes after it. Whether it may have gone back to Trio on the way (`send_locked`)."""
        if self.closed and self._done:
            return False
        try:
            connection = self._connection
            return await send_locked(
                connection._lock,
                connection._stream,
                data,
                try_first=head is None,
                head=head,
                dropped=self._dropped,
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self._write_broke()
            return True
        except trio.Cancelled:
            self._closing = True
            raise

    def _dropped(self) -> bool:
        return self.closed and self._done

    def body_writer(self) -> BodyWriter | None:
        """`BODY_WRITER_EXTENSION`: a direct writer for a chunked body whose head is out."""
        if self.state is not _Answer.RESPONSE or not self._chunked or self._broken:
            return None
        connection = self._connection
        return DirectBody(connection._lock, connection._stream, self._write_broke, chunked=True)

    async def _write_broke(self) -> None:
        """The connection broke under a write: the client is gone, which is this
        request's departure. Heard here, as the stream is over (`_done`): neither the
        departure watch nor the reader reports a departure once it is."""
        self._done = self._closing = True
        await self._depart()
        await self._stream_closed()


class DirectBody:
    """Writes a streamed body's pieces straight to the connection, framed as h11 frames
    them, under the connection's send lock.

    A piece goes out in one non-blocking write when the socket takes it whole, as it
    nearly always does: no lock is taken (no other write can be under way when the lock
    is free) and the writer does not go back to the scheduler for the piece (`FastStream`
    yields once every `YIELD_EVERY` pieces written in a row, for fairness). What the
    socket does not take is written under the lock, shielded as hypercorn's writes are (a
    piece cut halfway would break the framing of everything after it). A connection that
    has broken is reported (`on_broken`: hypercorn's `Closed`, or the lean path's end of
    the request's stream), and later pieces are dropped, as hypercorn drops a closed
    stream's."""

    __slots__ = ("_broken", "_chunked", "_lock", "_on_broken", "_stream")

    def __init__(
        self,
        lock: trio.Lock,
        stream: FastStream,
        on_broken: Callable[[], Awaitable[None]],
        *,
        chunked: bool,
    ) -> None:
        self._lock = lock
        self._stream = stream
        self._on_broken = on_broken
        self._chunked = chunked
        self._broken = False

    async def write(self, data: bytes) -> None:
        if not data or self._broken:
            return  # an empty chunk would read as the body's end
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        await self.write_framed(data)

    def try_write(self, data: bytes) -> bytes | None:
        """One non-blocking write of the framed piece, only while no other write is under
        way (the lock is free); None, with nothing written, when the socket took none
        of it or failed (`write` then meets the failure as it would have)."""
        if not data or self._broken or self._lock.locked():
            return None
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        try:
            sent = self._stream.try_send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            return None
        if sent == 0:
            return None
        return data[sent:]

    async def write_framed(self, data: bytes) -> None:
        if not data or self._broken:
            return
        try:
            await send_locked(self._lock, self._stream, data, try_first=True)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._broken = True
            await self._on_broken()


def _unwatched() -> None:
    """An app's first wait with the next request already read: nothing to look for."""


def _unquote(path: bytes) -> str:
    """hypercorn's `unquote(path.decode("ascii"))`, skipped for a path with no escape."""
    text = path.decode("ascii")
    return unquote(text) if "%" in text else text

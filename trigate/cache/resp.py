"""The response cache's read path to Redis: GET and MGET in RESP2 over a small pool of
sockets, on the request's own task.

A hit read through coredis cost about 1.27 million instructions: some 860 Python calls
(its command and request objects, retry policy, telemetry checks, connection pool) and a
hand-off to its connection's writer and reader tasks, each a pass of Trio's scheduler.
That is more than a proxied call's whole upstream exchange, so a Redis hit cost more than
a miss. Here a read is one write and one read on a socket the request's task holds for
that time (`FastStream`: no schedule point unless the socket must be waited for), and a
reply parsed where it landed; its deadline is kept by the reader's own task, not by a
cancel scope per read, and only for a reply that must be waited for. A near Redis has
often answered by the time the reader looks: then the command is written and its reply
read in one step (`_Connection.at_once`), with no deadline to note and no checkpoint, as
a read of the worker's own memory has none. coredis keeps everything else: writes, the
probe while Redis is away, the admin routes, and the reads that find no idle connection.

The connection's settings are coredis's own, read from the pool it made of the same URL
(`RedisAddress.of_pool`): the host and port or Unix socket, the username and password,
the database, the TLS context of `rediss://`; a URL coredis reads into something else
leaves reads to coredis.

A connection is reused only after a whole reply, not an error, was read from it. An error
reply closes it: it may have been sent unasked, ahead of the command's own reply (a server
or proxy that is not quite Redis), which the next command would then read. Any failure or
cancellation while it is in use (its deadline, the client leaving, a broken socket, a
reply that is not RESP) closes it on the spot, so no later command can read the rest of
an earlier reply. A pooled connection that Redis closed while it sat idle (its `timeout`,
a restart, a proxy's idle cut) ends before any byte of a reply: it is dropped and the
command tried once more on the next idle one; a second such in a row says the pool is
older than whatever closed them, so the rest of it is closed too and the caller reads
another way. Every attempt of a command shares one deadline, from its first wait.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from trigate.sockets import FastStream, descriptor_of, stream_error

logger = logging.getLogger("trigate")
# Connections per worker; reads beyond this many at once go the caller's other way.
MAX_CONNECTIONS = 32
# Seconds between attempts to open a connection after one failed.
RECONNECT_DELAY = 1.0
# coredis's connection options the reader does not reproduce: a URL or client with any of
# them set is read through coredis.
_COREDIS_OWN = ("credential_provider", "client_name", "noreply", "noevict", "notouch")
# Redis's own cap on a bulk string (`proto-max-bulk-len`): a longer one is not Redis.
MAX_BULK = 512 * 1024 * 1024
# A reply line (type, length, simple string or error) longer than this is not Redis.
MAX_LINE = 64 * 1024
RECEIVE_SIZE = 65536
_CRLF = b"\r\n"
# `_parse`'s answer when the buffer does not hold the whole reply yet.
_INCOMPLETE: Any = object()


class RedisReadError(Exception):
    """A command that got no usable reply: the connection broke, the reply was not RESP,
    or Redis answered with an error (`-ERR ...`, `RedisErrorReply`)."""


class RedisErrorReply(RedisReadError):
    """Redis answered the command with an error (`-WRONGTYPE ...`): it is up (the reply
    was read whole, its connection closed nonetheless); `code` is the reply's first word,
    which says what kind of refusal it is."""

    def __init__(self, message: str) -> None:
        super().__init__(f"Redis answered {message}")
        self.message = message
        self.code = message.split(" ", 1)[0]


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where and how to connect, as coredis connects to the same URL."""

    host: str | None = None
    port: int = 6379
    path: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def of_pool(cls, pool: Any) -> RedisAddress | None:
        """The address of coredis's connection pool, or None where it connects in a way
        this reader does not (a location of another kind, settings it does not know)."""
        location = getattr(pool, "location", None)
        options = getattr(pool, "connection_kwargs", None)
        if not isinstance(options, dict) or any(options.get(name) for name in _COREDIS_OWN):
            return None  # credentials, a name or a connection mode of coredis's own
        host, port = getattr(location, "host", None), getattr(location, "port", None)
        path = getattr(location, "path", None)
        if not (isinstance(host, str) and isinstance(port, int)) and not isinstance(path, str):
            return None
        username, password = options.get("username"), options.get("password")
        context = options.get("ssl_context")
        return cls(
            host=host if path is None else None,
            port=port if isinstance(port, int) else 6379,
            path=path,
            username=str(username) if username else None,
            password=str(password) if password else None,
            db=int(options.get("db") or 0),
            ssl_context=context if isinstance(context, ssl.SSLContext) else None,
        )

    @property
    def authenticates(self) -> bool:
        """Whether a connection authenticates first, as coredis's does: with a password or
        a username (without a password, an empty one)."""
        return bool(self.username or self.password)

    def handshake(self) -> bytes:
        """The commands a new connection sends before any other: AUTH, SELECT."""
        commands = b""
        if self.authenticates:
            auth = [b"AUTH", (self.password or "").encode()]
            if self.username:
                auth.insert(1, self.username.encode())
            commands += command(*auth)
        if self.db:
            commands += command(b"SELECT", str(self.db).encode())
        return commands


def command(*words: bytes) -> bytes:
    """A command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(words)]
    parts.extend(b"$%d\r\n%s\r\n" % (len(word), word) for word in words)
    return b"".join(parts)


class RedisReader:
    """GET and MGET on a pool of connections to one Redis, each held by one request's
    task for the length of a command, which makes sure a command cut short leaves no
    connection behind that is half-read.

    A command that gets no whole reply within `timeout` of its first wait for one fails
    (`RedisTimeout`): a task of the reader's own (`_Watch`) closes its connection under
    it. (Before that wait the command took no time: its task did not yield.) A cancel scope with a
    deadline around each command cost about as much as the command itself (trio registers
    and removes its deadline through a context manager each time).

    Connections are opened by `run`, in the background, never on a request's task: a
    connect (a TLS handshake, a distant Redis) would otherwise count against a read's
    deadline. A read that finds no idle connection raises `NoConnection` at once, and
    asks `run` for one more (up to `max_connections`); its caller reads that once the
    way it did before."""

    def __init__(
        self,
        address: RedisAddress,
        timeout: float,
        connect_timeout: float,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.address = address
        self._watch = _Watch(timeout)
        self._connect_timeout = connect_timeout
        self._handshake = address.handshake()
        self._handshake_replies = address.authenticates + bool(address.db)
        self._max = max_connections
        self._idle: list[_Connection] = []
        self._open = 0
        # Set when a read found no idle connection: `run` opens one.
        self._wanted = trio.Event()

    @property
    def connections(self) -> int:
        """Connections open now, in use or idle."""
        return self._open

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the commands' deadlines, and open connections as reads ask for them, one
        at a time; after a failed connect, wait `RECONNECT_DELAY` before the next. The
        idle ones are closed when this ends."""
        self._wanted.set()  # one at once, for the first read
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch.run)
                task_status.started()
                while True:
                    await self._wanted.wait()
                    self._wanted = trio.Event()
                    if self._open >= self._max:
                        continue
                    if not await self._add():
                        await trio.sleep(RECONNECT_DELAY)
        finally:
            self.close_idle()

    async def get(self, key: str) -> bytes | None:
        name = key.encode()
        # `command`'s form, made in one step: a hit reads one key.
        reply = await self._command(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(name), name))
        if reply is None or isinstance(reply, bytes):
            return reply
        raise RedisReadError(f"GET answered with {type(reply).__name__}")

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        reply = await self._command(command(b"MGET", *(key.encode() for key in keys)))
        if (
            isinstance(reply, list)
            and len(reply) == len(keys)
            and all(value is None or isinstance(value, bytes) for value in reply)
        ):
            return reply
        raise RedisReadError("MGET answered with something other than its values")

    def close_idle(self) -> None:
        """Close the connections waiting for a command (Redis went away: they are dead)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            self._discard(connection)

    async def _command(self, payload: bytes) -> Any:
        """One command's reply on an idle connection. One that Redis closed while idle is
        dropped and the command tried once more on the next; `NoConnection` when none is
        left (with the deadline it had, if it waited). The deadline is watched only once
        the reply must be waited for (a reply read at once took no time: nothing else ran
        meanwhile), and is the command's, not each attempt's: a retry has what is left."""
        deadline: float | None = None
        retried = False
        while self._idle:
            connection = self._idle.pop()
            try:
                reply = connection.at_once(payload)
                if reply is _INCOMPLETE:
                    if deadline is None:
                        deadline = self._watch.start(connection)
                        reply = await connection.finish()
                    else:
                        reply = await _finished_by(connection, deadline)
            except _Stale:
                self._discard(connection)
                if retried:  # two in a row: the rest are as old, most likely as dead
                    self.close_idle()
                    break
                retried = True
                continue
            except BaseException:
                self._discard(connection)
                raise
            connection.command = 0
            if reply.__class__ is _ErrorReply:
                self._refused(connection)
                raise RedisErrorReply(reply.message)
            if connection.reusable:
                self._idle.append(connection)  # the list now: `close_idle` may replace it
            else:
                self._discard(connection)
            return reply
        if self._open < self._max:
            self._wanted.set()
        raise NoConnection(deadline)

    async def _add(self) -> bool:
        """One more idle connection, authenticated and on its database; False if it could
        not be made (logged: the reads meanwhile go the other way)."""
        self._open += 1
        connection: _Connection | None = None
        try:
            with trio.fail_after(self._connect_timeout):
                connection = await _Connection.open(self.address)
                if self._handshake:
                    replies = await connection.exchange(self._handshake, self._handshake_replies)
                    for reply in replies:
                        _value(reply)
        except (
            OSError, RedisReadError, trio.TooSlowError, trio.BrokenResourceError,
        ) as error:  # fmt: skip
            if connection is not None:
                connection.close()
            self._open -= 1
            logger.info("the response cache could not open a Redis connection: %s", error)
            return False
        except BaseException:
            if connection is not None:
                connection.close()
            self._open -= 1
            raise
        if not connection.reusable:  # more replies than the handshake's: not Redis
            self._discard(connection)
            return False
        connection.pooled = True
        self._idle.append(connection)
        return True

    def _refused(self, connection: _Connection) -> None:
        """A command answered with an error reply: its connection is closed, never pooled
        again. The error may not be this command's reply: a server or proxy that is not
        quite Redis may send one unasked on an idle connection, and the command's own reply
        come after it; pooled, the connection would give the next command (another key,
        another tenant's) that late reply as its own. Error replies are rare, and the pool
        opens another connection in the background."""
        self._discard(connection)
        self._wanted.set()

    def _discard(self, connection: _Connection) -> None:
        connection.command = 0
        connection.close()
        self._open -= 1


class _Watch:
    """The deadlines of the reader's commands, kept by one task (`run`), which closes the
    connection of a command still waiting at its deadline. Commands start in the order of
    their deadlines (one timeout for all), so they wait in a queue in that order; the
    task sleeps until the first, and only while commands have started since it last
    found the queue empty: a command costs a clock reading and an append."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pending: deque[tuple[float, int, _Connection]] = deque()
        self._serial = 0
        # While `run` waits for a command to watch, `_started` wakes it.
        self._waiting = False
        self._started = trio.Event()

    def start(self, connection: _Connection) -> float:
        """A command starts on `connection`: it must be answered within the timeout, by
        the deadline returned."""
        self._serial += 1
        connection.command = self._serial
        deadline = trio.current_time() + self.timeout
        self._pending.append((deadline, self._serial, connection))
        if self._waiting:
            self._waiting = False
            self._started.set()
        return deadline

    async def run(self) -> None:
        pending = self._pending
        while True:
            if not pending:
                self._started = trio.Event()
                self._waiting = True
                await self._started.wait()
                continue
            deadline, serial, connection = pending[0]
            if connection.command != serial:  # answered, or dropped
                pending.popleft()
                continue
            await trio.sleep_until(deadline)
            if connection.command == serial:
                connection.command = 0
                connection.timed_out = True
                connection.close()  # its task, waiting on it, fails at once


class NoConnection(Exception):
    """No idle connection for this read: the caller reads some other way, by `deadline`
    when the read already waited (a connection Redis had closed), else within a timeout
    of its own."""

    def __init__(self, deadline: float | None = None) -> None:
        super().__init__("no idle connection")
        self.deadline = deadline


async def _finished_by(connection: _Connection, deadline: float) -> Any:
    """A retried command's reply, by the deadline its first attempt started: under a
    cancel scope of its own, as a retry is rare (the watch keeps one timeout for all,
    so its queue is in the order of their deadlines, which a retry's would break)."""
    with trio.move_on_at(deadline):
        return await connection.finish()
    raise RedisTimeout("no answer in time")


class RedisTimeout(RedisReadError):
    """A command not answered whole within the reader's timeout."""


class _Stale(RedisReadError):
    """A pooled connection that ended before any byte of its reply: Redis closed it while
    it was idle, so the command never ran."""


class _ErrorReply:
    """Redis's error reply (`-ERR ...`), read whole; its connection is closed all the same
    (`RedisReader._refused`)."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _value(reply: Any) -> Any:
    """A reply's value; an error reply is raised (after it was read whole)."""
    if isinstance(reply, _ErrorReply):
        raise RedisErrorReply(reply.message)
    return reply


class _Connection:
    """One socket to Redis and what has been read from it past the last reply. A plain
    socket is written and read by `at_once` itself, and through `FastStream` when it must
    be waited for (which parks only then); a TLS one through `trio.SSLStream` over it."""

    __slots__ = (
        "_buffer", "_fileno", "_socket", "_stream", "_unsent", "command", "pooled", "timed_out",
    )  # fmt: skip

    def __init__(
        self,
        stream: trio.abc.Stream,
        socket: trio.socket.SocketType,
        fileno: Callable[[], int] | None = None,
    ) -> None:
        self._stream = stream
        self._socket = socket
        # A plain socket's descriptor, as `at_once` reads and writes it (None: TLS).
        self._fileno = fileno
        self._buffer = bytearray()
        # What `at_once` could not send of its command, for `finish` to send.
        self._unsent = b""
        # Whether it was put in the pool (its handshake done): it may have sat idle there
        # long enough for Redis, or a proxy, to close it.
        self.pooled = False
        # The command under way (`_Watch`'s serial number), 0 between commands; and
        # whether its deadline passed, which closed the connection.
        self.command = 0
        self.timed_out = False

    @classmethod
    async def open(cls, address: RedisAddress) -> _Connection:
        if address.path is not None:
            plain = await trio.open_unix_socket(address.path)
        else:
            assert address.host is not None
            plain = await trio.open_tcp_stream(address.host, address.port)
        fast = FastStream.of(plain)
        if address.ssl_context is None:
            return cls(fast, plain.socket, descriptor_of(plain.socket))
        tls = trio.SSLStream(fast, address.ssl_context, server_hostname=address.host)
        try:
            await tls.do_handshake()
        except BaseException:
            plain.socket.close()
            raise
        return cls(tls, plain.socket)

    @property
    def reusable(self) -> bool:
        """Whether the connection may serve the next command: its deadline did not close
        it (it may have passed while the reply's read yielded), and it holds no bytes
        beyond the replies read. One command is sent at a time, so such bytes cannot be
        the next command's reply; served as if they were, each later command would get
        the reply of the one before it, another tenant's cached answer among them."""
        return not self.timed_out and not self._buffer

    async def exchange(self, payload: bytes, replies: int = 0) -> Any:
        """Send `payload`, then read one reply (or, with `replies`, that many, as a list)."""
        try:
            await self._stream.send_all(payload)
            if not replies:
                return await self._reply()
            return [await self._reply() for _ in range(replies)]
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
            raise self._failure(error) from error

    def at_once(self, payload: bytes) -> Any:
        """Send `payload` and read its reply without waiting, as a plain connection to a
        near Redis mostly allows: one write and one read, the reply taken where it landed
        (a bulk string, a hit's, without `_parse`). `_INCOMPLETE` when the rest must be
        waited for (`finish`), the reply's first part kept, or any part of `payload` not
        sent. No cancel point, as no read from the worker's own memory has one: a reply
        there at once is as quick as that read."""
        fileno = self._fileno
        if fileno is None or self._buffer:  # TLS; (bytes left over: never pooled, `reusable`)
            self._unsent = payload
            return _INCOMPLETE
        try:
            descriptor = fileno()  # -1 once closed: the write fails
            sent = os.write(descriptor, payload)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            raise self._failure(stream_error(error)) from error
        if sent < len(payload):  # no room for all of it: Redis is not reading
            self._unsent = payload[sent:]
            return _INCOMPLETE
        try:
            data = os.read(descriptor, RECEIVE_SIZE)
        except BlockingIOError:
            return _INCOMPLETE  # not there yet
        except OSError as error:
            raise self._failure(stream_error(error)) from error
        if not data:
            raise self._ended()
        reply = _bulk(data)
        if reply is _INCOMPLETE:
            self._buffer += data  # any other reply: `finish` parses it (no wait if whole)
        return reply

    async def finish(self) -> Any:
        """The reply to the command `at_once` began: the rest of it sent, then read (on a
        plain socket `at_once` found empty, once it is readable: no read to fail first)."""
        unsent, self._unsent = self._unsent, b""
        try:
            if unsent:
                await self._stream.send_all(unsent)
            return await self._reply(waits=self._fileno is not None and not unsent)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
            raise self._failure(error) from error

    def _failure(self, error: Exception) -> RedisReadError:
        """What a command failed with when its connection broke or was closed under it."""
        if self.timed_out:
            return RedisTimeout("no answer in time")
        if self.pooled and not self._buffer:
            return _Stale(str(error) or type(error).__name__)
        return RedisReadError(str(error) or type(error).__name__)

    def _ended(self) -> RedisReadError:
        """What a command failed with when Redis closed the connection before its reply
        was whole: before any of it, on a pooled connection, Redis closed it while idle
        (whether or not a command had been sent on it before)."""
        if self.pooled and not self._buffer:
            return _Stale("Redis closed the connection")
        return RedisReadError("Redis closed the connection mid-reply")

    async def _reply(self, waits: bool = False) -> Any:
        """The next reply, read whole; with `waits`, the socket was just found empty, so
        it is waited for before it is read. A reply that comes in one read, as most do,
        is parsed where it landed, without going through the buffer."""
        buffer = self._buffer
        while True:
            if buffer:
                reply, end = _parse(buffer, 0)
                if reply is not _INCOMPLETE:
                    del buffer[:end]
                    return reply
            data: bytes | bytearray
            if waits:
                waits = False
                stream = self._stream
                assert isinstance(stream, FastStream)  # `waits` only on a plain socket
                # Its read after the wait resets the stream's count of reads in a row that
                # did not wait; a plain `receive_some` would count it and yield after
                # every sixteenth, with the reply read, long enough for the deadline.
                data = await stream.receive_when_ready(RECEIVE_SIZE)
            else:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise self._ended()
            if not buffer:
                reply = _bulk(data)
                if reply is not _INCOMPLETE:
                    return reply
                reply, end = _parse(data, 0)
                if reply is not _INCOMPLETE:
                    buffer += data[end:]  # the next replies of a pipeline, if any
                    return reply
            buffer += data

    def close(self) -> None:
        """Close the socket now, whatever was being read or written on it."""
        self._socket.close()


def _bulk(data: bytes | bytearray) -> Any:
    """The value of `data` when it is one whole bulk string or a null one, a GET's reply,
    read in a few calls in C; else `_INCOMPLETE` (`_parse` reads what it is)."""
    end = data.find(_CRLF)
    if data[:1] == b"$" and end > 0:
        size = data[1:end]
        if size.isdigit() and end + 4 + int(size) == len(data) and data[-2:] == _CRLF:
            return bytes(data[end + 2 : -2])  # the slice itself, when `data` is bytes
        if size == b"-1" and end + 2 == len(data):
            return None
    return _INCOMPLETE


def _parse(buffer: bytes | bytearray, start: int) -> tuple[Any, int]:
    """The RESP2 reply at `start` and where it ends, or `_INCOMPLETE` when the buffer does
    not hold all of it yet. A null bulk string or array is None (RESP3's null too)."""
    end = buffer.find(_CRLF, start)
    if end < 0:
        if len(buffer) - start > MAX_LINE:
            raise RedisReadError("Redis sent a line with no end")
        return _INCOMPLETE, start
    kind = buffer[start]
    line = bytes(buffer[start + 1 : end])
    if kind == 0x24:  # $: a bulk string
        size = _integer(line)
        if size < 0:
            return None, end + 2
        if size > MAX_BULK:
            raise RedisReadError("Redis sent a bulk string over its own maximum")
        stop = end + 2 + size
        if len(buffer) < stop + 2:
            return _INCOMPLETE, start
        if buffer[stop : stop + 2] != _CRLF:
            raise RedisReadError("Redis sent a bulk string of the wrong length")
        return bytes(buffer[end + 2 : stop]), stop + 2
    if kind == 0x2A:  # *: an array
        count = _integer(line)
        if count < 0:
            return None, end + 2
        items: list[Any] = []
        position = end + 2
        for _ in range(count):
            if position >= len(buffer):
                return _INCOMPLETE, start
            item, position = _parse(buffer, position)
            if item is _INCOMPLETE:
                return _INCOMPLETE, start
            items.append(item)
        return items, position
    if kind == 0x2B:  # +: a simple string
        return line, end + 2
    if kind == 0x2D:  # -: an error
        return _ErrorReply(line.decode("utf-8", "replace")), end + 2
    if kind == 0x3A:  # :: an integer
        return _integer(line), end + 2
    if kind == 0x5F and not line:  # _: RESP3's null
        return None, end + 2
    raise RedisReadError(f"Redis sent a reply of unknown type {bytes([kind])!r}")


def _integer(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise RedisReadError(f"Redis sent {line[:20]!r} for a number") from None

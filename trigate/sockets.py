"""A TCP stream for Trio that goes back to the scheduler only when it has to.

Trio's `SocketStream` makes every `send_all` and `receive_some` a full checkpoint: a call
whose system call succeeds at once still yields to the scheduler afterwards (trio's
`_try_sync` then `cancel_shielded_checkpoint`), so the task goes to the back of the run
queue and the run loop makes another pass (an `epoll_wait`, the batch's bookkeeping, the
resumption of the task's whole stack of coroutines) before it goes on. A proxied request
made about six such passes in the socket layer alone (a send and a receive on each side,
hypercorn's lock around its writes, an empty write at a body's end), out of about fifteen.

`FastStream` tries the system call first, as trio does, but parks only when the call
would block (`trio.lowlevel.wait_readable` / `wait_writable`); a call that succeeds checks
for cancellation without yielding (`checkpoint_if_cancelled`: a cancel point, not a
schedule point).

Fairness: a task whose calls keep succeeding would then never let others run. Each stream
counts its calls that succeeded in a row without parking, and every `YIELD_EVERY`-th yields
to the scheduler (`cancel_shielded_checkpoint`, which loses nothing: the data is already
read or written). Parking resets the count. A request's ordinary exchange parks long before
the count is reached (the client's next request, the upstream's answer are not there yet);
a reader draining a fast upstream, or a writer whose socket keeps taking everything, still
yields at least once every `YIELD_EVERY` calls.
"""

from __future__ import annotations

import errno
import os
import socket as stdlib_socket
from collections.abc import Callable

import trio
from trio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    wait_readable,
    wait_writable,
)

# Calls that may succeed in a row, on one stream, before it yields to the scheduler anyway.
YIELD_EVERY = 16
DEFAULT_RECEIVE_SIZE = 65536
# What a socket closed under a call reports (as trio's SocketStream reads them).
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


class FastStream(trio.abc.HalfCloseableStream):
    """A connected TCP socket as a Trio stream, with `SocketStream`'s errors and its
    guard against two tasks sending at once, minus the schedule point after each call
    that did not have to wait.

    Reads and writes go through `os.read`/`os.write` on the descriptor, asked of the
    socket each time: once the socket is closed (possibly by another task, which wakes a
    parked call with `ClosedResourceError`) it is -1, never a descriptor since reused.
    A write to a connection the peer reset fails with EPIPE rather than killing the
    process, as Python ignores SIGPIPE from start-up (trigate never restores it)."""

    __slots__ = ("_fileno", "_in_a_row", "_sending", "socket")

    def __init__(self, socket: trio.socket.SocketType) -> None:
        self.socket = socket
        self._fileno = descriptor_of(socket)
        self._in_a_row = 0
        # True while a send_all waits for room mid-write: another send would interleave.
        self._sending = False

    @classmethod
    def of(cls, stream: trio.SocketStream) -> FastStream:
        """The same connection as `stream` (whose socket options, TCP_NODELAY among them,
        trio has set), read and written through this class instead."""
        return cls(stream.socket)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        await checkpoint_if_cancelled()
        data = self.try_receive(max_bytes)
        if data is None:
            return await self.receive_when_ready(max_bytes)
        if self.count_success():
            await cancel_shielded_checkpoint()
        return data

    async def receive_when_ready(self, max_bytes: int) -> bytes:
        """Wait until the socket is readable, then read: for a caller whose own
        `try_receive` just found nothing, or who expects it to (no read to find
        nothing first)."""
        while True:
            await wait_readable(self._fd())
            data = self.try_receive(max_bytes)
            if data is not None:
                self._in_a_row = 0
                return data

    def try_receive(self, max_bytes: int) -> bytes | None:
        """One non-blocking read: what the socket holds (up to `max_bytes`; empty at its
        end), or None when it holds nothing yet. Not counted as a call in a row: the
        caller that goes on without waiting counts it (`count_success`)."""
        try:
            return os.read(self._fd(), max_bytes)
        except BlockingIOError:
            return None
        except OSError as error:
            raise stream_error(error) from error

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await checkpoint_if_cancelled()
        await self.write(data)

    async def write(self, data: bytes | bytearray | memoryview, *, shielded: bool = False) -> None:
        """`send_all` without its cancel point; with `shielded`, the waits for room are
        shielded from cancellation too, as a write that must not be cut halfway needs
        (hypercorn shields each of its writes: a cut one would corrupt the framing of all
        that follows on the connection)."""
        if self.socket.did_shutdown_SHUT_WR:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        if not data:
            self._fd()  # a closed socket's empty write fails, as trio's does
            return
        sent = self.try_send(data)
        if sent < len(data):
            await self._write_rest(memoryview(data)[sent:], shielded)
        elif self.count_success():
            await cancel_shielded_checkpoint()

    def try_send(self, data: bytes | bytearray | memoryview) -> int:
        """One non-blocking write of `data`: how many bytes the socket took (0 when it
        had no room). Not counted as a call in a row: the caller that goes on without
        waiting for the rest counts it (`count_success`)."""
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending data on this stream")
        try:
            return os.write(self._fd(), data)
        except BlockingIOError:
            return 0
        except OSError as error:
            raise stream_error(error) from error

    def count_success(self) -> bool:
        """Count a call that did not park; True when the caller must now yield
        (`cancel_shielded_checkpoint`) for fairness."""
        self._in_a_row += 1
        if self._in_a_row >= YIELD_EVERY:
            self._in_a_row = 0
            return True
        return False

    async def _write_rest(self, rest: memoryview, shielded: bool) -> None:
        """What the socket did not take at once, written as it makes room."""
        self._sending = True
        try:
            with trio.CancelScope(shield=shielded):
                while rest:
                    await wait_writable(self._fd())
                    try:
                        sent = os.write(self._fd(), rest)
                    except BlockingIOError:
                        continue
                    except OSError as error:
                        raise stream_error(error) from error
                    rest = rest[sent:]
        finally:
            self._sending = False
            self._in_a_row = 0

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending data on this stream")
        await wait_writable(self._fd())

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending data on this stream")
        await trio.lowlevel.checkpoint()
        if self.socket.did_shutdown_SHUT_WR:
            return
        try:
            self.socket.shutdown(stdlib_socket.SHUT_WR)
        except OSError as error:
            raise stream_error(error) from error

    async def aclose(self) -> None:
        self.socket.close()
        await trio.lowlevel.checkpoint()

    def _fd(self) -> int:
        fd = self._fileno()
        if fd < 0:
            raise trio.ClosedResourceError("this socket was already closed")
        return fd


def descriptor_of(socket: trio.socket.SocketType) -> Callable[[], int]:
    """What reads `socket`'s descriptor as the trio socket's own `fileno` does, from the
    standard socket trio wraps (which trio's `close` closes, so it reads -1 after): one
    call in C where the trio socket's method adds two Python frames, and three reads a
    relayed chunk ask. A socket of another kind is asked itself."""
    inner = getattr(socket, "_sock", None)
    return inner.fileno if isinstance(inner, stdlib_socket.socket) else socket.fileno


def stream_error(error: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    """The stream error for a failed system call, as trio's SocketStream raises them."""
    if error.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {error}")

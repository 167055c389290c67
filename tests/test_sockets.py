"""`trigate.sockets.FastStream`: trio's stream semantics (errors, cancellation, one sender
at a time, EOF) without a schedule point after a call that did not wait, and a yield at
least every `YIELD_EVERY` such calls in a row (fairness)."""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
import trustme

from trigate.sockets import YIELD_EVERY, FastStream


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FastStream, socket.socket]]:
    """A FastStream and its peer, a plain blocking socket the test drives directly."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    stream = FastStream(trio.socket.from_stdlib_socket(ours))
    yield stream, peer
    stream.socket.close()
    peer.close()


class _Ran:
    """Whether a task started beside the test has had its first step: it runs only once
    the test's task goes back to the scheduler."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.ran = False
        nursery.start_soon(self._run)

    async def _run(self) -> None:
        self.ran = True


async def test_a_receive_of_waiting_data_does_not_yield(
    nursery: trio.Nursery, pair: tuple[FastStream, socket.socket]
) -> None:
    stream, peer = pair
    peer.sendall(b"hello")
    other = _Ran(nursery)
    assert await stream.receive_some(100) == b"hello"
    assert not other.ran, "the receive went back to the scheduler though the data was there"
    await trio.testing.wait_all_tasks_blocked()
    assert other.ran


async def test_a_send_the_socket_takes_whole_does_not_yield(
    nursery: trio.Nursery, pair: tuple[FastStream, socket.socket]
) -> None:
    stream, peer = pair
    other = _Ran(nursery)
    await stream.send_all(b"hello")
    assert not other.ran
    assert peer.recv(100) == b"hello"


async def test_calls_that_keep_succeeding_still_yield_every_so_often(
    nursery: trio.Nursery, pair: tuple[FastStream, socket.socket]
) -> None:
    """A reader draining a fast peer (or a writer whose socket keeps taking everything)
    goes back to the scheduler (a full checkpoint) at least once every YIELD_EVERY calls."""
    stream, peer = pair
    peer.sendall(b"x" * (3 * YIELD_EVERY))
    other = _Ran(nursery)
    for _ in range(YIELD_EVERY - 1):
        assert await stream.receive_some(1) == b"x"
    assert not other.ran
    with trio.testing.assert_checkpoints():
        await stream.receive_some(1)
    # Writes count the same way.
    for _ in range(YIELD_EVERY - 1):
        await stream.send_all(b"y")
    with trio.testing.assert_checkpoints():
        await stream.send_all(b"y")


async def test_a_receive_waits_for_data_and_parking_restarts_the_count(
    nursery: trio.Nursery, pair: tuple[FastStream, socket.socket]
) -> None:
    stream, peer = pair
    for _ in range(YIELD_EVERY - 1):
        peer.sendall(b"x")
        await stream.receive_some(1)

    async def send_later() -> None:
        await trio.testing.wait_all_tasks_blocked()
        peer.sendall(b"late")

    nursery.start_soon(send_later)
    assert await stream.receive_some(100) == b"late"
    # The wait reset the count: the next call that succeeds does not yield.
    peer.sendall(b"now")
    other = _Ran(nursery)
    assert await stream.receive_some(100) == b"now"
    assert not other.ran


async def test_a_cancelled_call_raises_even_when_it_would_succeed(
    pair: tuple[FastStream, socket.socket],
) -> None:
    """Each call stays a cancel point, and the cancelled receive takes nothing."""
    stream, peer = pair
    peer.sendall(b"kept")
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await stream.receive_some(100)
        with pytest.raises(trio.Cancelled):
            await stream.send_all(b"not sent")
    assert await stream.receive_some(100) == b"kept"


async def test_end_of_file_reset_and_close(
    nursery: trio.Nursery, pair: tuple[FastStream, socket.socket]
) -> None:
    stream, peer = pair
    peer.shutdown(socket.SHUT_WR)
    assert await stream.receive_some(100) == b""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):  # the reset may take a write or two to be seen
            await stream.send_all(b"x" * 65536)
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some(100)
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"")


async def test_a_socket_closed_by_another_task_wakes_a_waiting_receive(
    nursery: trio.Nursery, pair: tuple[FastStream, socket.socket]
) -> None:
    stream, _ = pair

    async def close_later() -> None:
        await trio.testing.wait_all_tasks_blocked()
        stream.socket.close()

    nursery.start_soon(close_later)
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some(100)


async def test_a_socket_closed_is_never_taken_for_the_one_that_reuses_its_descriptor(
    pair: tuple[FastStream, socket.socket],
) -> None:
    """The descriptor is asked for each call, so a socket closed by its other owner (the
    trio socket's own `close`, as hypercorn closes a connection) fails the stream's calls,
    and a socket opened since under the same number never gets its bytes."""
    stream, _ = pair
    number = stream.socket.fileno()
    stream.socket.close()
    reused, other_end = socket.socketpair()
    try:
        assert number in (reused.fileno(), other_end.fileno())
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"for the closed socket")
        with pytest.raises(trio.ClosedResourceError):
            await stream.receive_some(100)
        for end in (reused, other_end):
            end.setblocking(False)
            with pytest.raises(BlockingIOError):
                end.recv(100)
    finally:
        reused.close()
        other_end.close()


async def test_the_descriptor_is_read_from_the_socket_trio_wraps(
    pair: tuple[FastStream, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relayed chunk reads the descriptor three times: from the standard socket trio
    wraps, in C, not through the trio socket's method (two Python frames). Fails when
    a trio release no longer wraps one, and the stream falls back to the method."""
    stream, peer = pair

    def asked(self: trio.socket.SocketType) -> int:
        raise AssertionError("the trio socket's fileno was called")

    monkeypatch.setattr(type(stream.socket), "fileno", asked)
    stream = FastStream(stream.socket)
    peer.sendall(b"hello")
    assert await stream.receive_some(100) == b"hello"
    await stream.send_all(b"back")
    assert peer.recv(100) == b"back"


async def _drain(peer: socket.socket, size: int, received: bytearray, done: trio.Event) -> None:
    while len(received) < size:
        received.extend(await trio.to_thread.run_sync(peer.recv, 1 << 20))
    done.set()


async def test_a_send_larger_than_the_buffer_waits_for_room_and_a_second_sender_is_refused(
    nursery: trio.Nursery, pair: tuple[FastStream, socket.socket]
) -> None:
    stream, peer = pair
    data = bytes(range(256)) * 16384  # 4 MiB: far more than the socket buffers hold
    received = bytearray()
    done = trio.Event()

    async def second_sender() -> None:
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await stream.send_all(b"interleaved")
        with pytest.raises(trio.BusyResourceError):
            stream.try_send(b"interleaved")
        await _drain(peer, len(data), received, done)

    nursery.start_soon(second_sender)
    await stream.send_all(data)
    await done.wait()
    assert received == data


async def test_a_shielded_write_finishes_under_cancellation(
    nursery: trio.Nursery, pair: tuple[FastStream, socket.socket]
) -> None:
    """A write that must not be cut halfway (hypercorn's) completes though its scope is
    cancelled while it waits for room."""
    stream, peer = pair
    data = b"z" * (4 << 20)
    received = bytearray()
    done = trio.Event()

    async def cancel_then_drain() -> None:
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await _drain(peer, len(data), received, done)

    with trio.CancelScope() as scope:
        nursery.start_soon(cancel_then_drain)
        await stream.write(data, shielded=True)
    await done.wait()
    assert received == data


async def test_send_eof_then_no_more_sends(pair: tuple[FastStream, socket.socket]) -> None:
    stream, peer = pair
    await stream.send_all(b"last")
    await stream.send_eof()
    await stream.send_eof()  # idempotent, as trio's
    assert peer.recv(100) == b"last"
    assert peer.recv(100) == b""
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"more")


async def test_tls_runs_over_it(nursery: trio.Nursery) -> None:
    """trio's SSLStream wraps a FastStream as it wraps a SocketStream (the transport's
    https connections)."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    client = trio.SSLStream(
        FastStream(trio.socket.from_stdlib_socket(ours)),
        client_context,
        server_hostname="localhost",
    )
    server = trio.SSLStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(theirs)), server_context, server_side=True
    )

    async def echo() -> None:
        await server.send_all(await server.receive_some(100))

    nursery.start_soon(echo)
    await client.send_all(b"over tls")
    assert await client.receive_some(100) == b"over tls"
    await client.aclose()
    await server.aclose()

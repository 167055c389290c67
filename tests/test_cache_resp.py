"""The response cache's Redis read path (`trigate.cache.resp`): GET and MGET in RESP2 on a
pool of sockets, with coredis's settings for the same URL; a connection cut short (a
timeout, a cancelled request, a broken or garbled reply) is closed, never read again.

Against a real Redis where the reply is Redis's own, and against a scripted server on a
real socket (replies as the RESP2 specification shapes them) where Redis cannot be made
to misbehave: a reply cut in half, garbage, a connection closed while idle."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import coredis
import pytest
import trio
import trio.testing
import trustme
from fake_redis import Closing, ScriptedRedis, bulk
from helpers import RedisServer

from trigate.cache.resp import (
    MAX_CONNECTIONS,
    NoConnection,
    RedisAddress,
    RedisErrorReply,
    RedisReader,
    RedisReadError,
    RedisTimeout,
    _Connection,
    command,
)
from trigate.sockets import FastStream, descriptor_of


async def _reader(
    nursery: trio.Nursery, address: RedisAddress, deadline: float = 60.0
) -> RedisReader:
    """A reader (its reads answered within `deadline` s) whose pool has its first connection."""
    reader = RedisReader(address, deadline, connect_timeout=5.0)
    await nursery.start(reader.run)
    await _pooled(reader)
    return reader


async def _pooled(reader: RedisReader, connections: int = 1) -> None:
    """Wait until `connections` are idle in the pool: `run` opens them in the background,
    over real sockets, which only polling can see."""
    with trio.fail_after(5):
        while True:
            if len(reader._idle) >= connections:
                return
            await trio.sleep(0.01)


# --- against Redis ---------------------------------------------------------------------------


async def test_get_and_mget_read_what_redis_holds(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB, with \r\n inside: many reads, one reply
    async with coredis.Redis.from_url(redis_url) as client:
        await client.set(redis_prefix + "a", b"one\r\ntwo")
        await client.set(redis_prefix + "big", big)
        reader = await _reader(nursery, RedisAddress.of_pool(client.connection_pool) or _absent())
        assert await reader.get(redis_prefix + "a") == b"one\r\ntwo"
        assert await reader.get(redis_prefix + "missing") is None
        assert await reader.get(redis_prefix + "big") == big
        names = [redis_prefix + name for name in ("a", "missing", "big")]
        assert await reader.mget(names) == [b"one\r\ntwo", None, big]
        await client.delete([redis_prefix + "a", redis_prefix + "big"])
    # Every read went on the one connection, each time read whole and pooled again.
    assert reader.connections == 1


async def test_a_password_and_a_database_are_sent_as_coredis_reads_them_from_the_url(
    nursery: trio.Nursery,
) -> None:
    server = RedisServer(password="s3cret")
    await server.start()
    try:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        async with coredis.Redis.from_url(url) as client:
            await client.set("k", b"in db 3")
            address = RedisAddress.of_pool(client.connection_pool)
            assert address is not None
            assert (address.password, address.db) == ("s3cret", 3)
            reader = await _reader(nursery, address)
            assert await reader.get("k") == b"in db 3"
        # A wrong password: no connection is pooled, and every read says so at once.
        wrong = RedisReader(RedisAddress(host="127.0.0.1", port=server.port, password="no"), 5, 5)
        assert not await wrong._add()
        with pytest.raises(NoConnection):
            await wrong.get("k")
    finally:
        await server.kill()


def test_the_address_is_coredis_own_reading_of_each_kind_of_url(tmp_path: Path) -> None:
    def address(url: str) -> RedisAddress | None:
        return RedisAddress.of_pool(coredis.Redis.from_url(url).connection_pool)

    assert address("redis://user:pw@cache.internal:6380/2") == RedisAddress(
        host="cache.internal", port=6380, username="user", password="pw", db=2
    )
    assert address("unix:///run/redis.sock?db=4") == RedisAddress(path="/run/redis.sock", db=4)
    secure = address("rediss://cache.internal:6390/0?ssl_cert_reqs=none")
    assert secure is not None and secure.ssl_context is not None
    assert secure.ssl_context.verify_mode == ssl.CERT_NONE
    # What the reader sends first: AUTH (with the username when there is one), SELECT.
    handshake = RedisAddress(host="h", username="user", password="pw", db=2).handshake()
    assert handshake == command(b"AUTH", b"user", b"pw") + command(b"SELECT", b"2")
    assert RedisAddress(host="h").handshake() == b""
    assert RedisAddress(host="h", password="pw").handshake() == command(b"AUTH", b"pw")
    # A client name, or coredis's connection modes, are coredis's: it reads them itself.
    named = coredis.Redis.from_url("redis://h:6379/0?client_name=worker").connection_pool
    assert RedisAddress.of_pool(named) is None


def _absent() -> RedisAddress:
    raise AssertionError("coredis's pool has no address the reader understands")


# --- a server that misbehaves ------------------------------------------------------------------


async def test_a_reply_there_when_it_is_read_costs_no_checkpoint_and_no_watched_deadline() -> None:
    """A near Redis has often answered by the time the reader looks for its reply: then the
    command is written and its reply read in one step, as a read of the worker's own
    memory is, with no deadline to watch (none can pass) and no checkpoint; a reply that
    is not whole at once is waited for under the deadline, as before."""
    reader = RedisReader(RedisAddress(host="127.0.0.1"), 60.0, connect_timeout=5.0)
    ours, redis = trio.socket.socketpair()
    reader._idle.append(_Connection(FastStream(ours), ours, descriptor_of(ours)))
    reader._open = 1
    for answer, value in ((b"$8\r\none\r\ntwo\r\n", b"one\r\ntwo"), (b"$-1\r\n", None)):
        await redis.send(answer)  # there before the command is even sent
        with trio.testing.assert_no_checkpoints():
            assert await reader.get("k") == value
        assert await redis.recv(100) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        assert not reader._watch._pending
    await redis.send(b"$3\r\nab")  # part of it: the rest is waited for, watched
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.get, "k")
            await trio.testing.wait_all_tasks_blocked()
            assert len(reader._watch._pending) == 1
            await redis.send(b"c\r\n")
    assert reader.connections == 1 and len(reader._idle) == 1
    ours.close()
    redis.close()


async def test_a_read_cancelled_mid_reply_closes_its_connection_and_the_next_gets_a_new_one(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    stalls = True

    async def script(words: list[bytes]) -> bytes | None:
        if words[0] == b"GET" and stalls:
            return b"$10\r\nhalf"  # then silence: the rest never comes
        return bulk(b"0123456789")

    server = ScriptedRedis(script)
    await server.start(nursery)
    reader = await _reader(nursery, server.address)
    with trio.move_on_after(1) as waited:
        await reader.get("k")
    assert waited.cancelled_caught
    # The half-read connection is closed (the server hears it), never pooled.
    await trio.testing.wait_all_tasks_blocked()
    assert server.closed_by_client == [True]
    assert reader.connections == 0
    with pytest.raises(NoConnection):  # nothing pooled: the caller reads another way
        await reader.get("k")
    stalls = False
    await _pooled(reader)  # meanwhile the reader opened another
    assert await reader.get("k") == b"0123456789"
    assert len(server.connections) == 2
    assert server.connections[1] == [[b"GET", b"k"]]


async def test_a_read_not_answered_in_time_fails_and_its_connection_is_closed(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    answers = [b"$3\r\nab", bulk(b"late"), bulk(b"on time")]

    async def script(words: list[bytes]) -> bytes | None:
        answer = answers.pop(0)
        if answer.startswith(b"$4"):
            await trio.sleep(1000)  # past the deadline: this one is never read
        return answer

    server = ScriptedRedis(script)
    await server.start(nursery)
    reader = await _reader(nursery, server.address, deadline=2.0)
    started = trio.current_time()
    with trio.fail_after(30), pytest.raises(RedisTimeout):  # part of a reply, then nothing
        await reader.get("a")
    assert trio.current_time() - started == pytest.approx(2.0)
    await trio.testing.wait_all_tasks_blocked()
    assert server.closed_by_client == [True] and reader.connections == 0
    with pytest.raises(NoConnection):
        await reader.get("b")
    await _pooled(reader)
    with trio.fail_after(30), pytest.raises(RedisTimeout):  # no reply at all
        await reader.get("b")
    with pytest.raises(NoConnection):
        await reader.get("c")
    await _pooled(reader)
    assert await reader.get("c") == b"on time"
    assert [len(commands) for commands in server.connections] == [1, 1, 1]


async def test_garbage_and_a_connection_closed_mid_reply_fail_the_read_and_are_dropped(
    nursery: trio.Nursery,
) -> None:
    answers = [b"HTTP/1.1 400 Bad Request\r\n\r\n", Closing(b"*2\r\n$5\r\nab")]

    async def script(words: list[bytes]) -> bytes | None:
        return answers.pop(0)

    server = ScriptedRedis(script)
    await server.start(nursery)
    reader = await _reader(nursery, server.address)
    with pytest.raises(RedisReadError, match="unknown type"):
        await reader.get("k")
    assert reader.connections == 0
    with pytest.raises(NoConnection):  # the next read asks for a new one
        await reader.get("k")
    await _pooled(reader)
    with pytest.raises(RedisReadError, match="mid-reply"):  # half a reply, then closed
        await reader.mget(["a", "b"])
    assert reader.connections == 0


async def test_an_error_reply_fails_the_read_and_its_connection_is_replaced(
    nursery: trio.Nursery,
) -> None:
    """The error may not be the command's own reply (one sent unasked, the command's
    after it): its connection is closed, and the pool opens another at once."""

    async def script(words: list[bytes]) -> bytes | None:
        if words[1] == b"list":
            return b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
        return bulk(b"fine")

    server = ScriptedRedis(script)
    await server.start(nursery)
    reader = await _reader(nursery, server.address)
    with pytest.raises(RedisReadError, match="WRONGTYPE"):
        await reader.get("list")
    assert reader.connections == 0
    await _pooled(reader)  # asked for by the refusal, not by a read that found none
    assert await reader.get("string") == b"fine"
    await trio.testing.wait_all_tasks_blocked()
    assert server.closed_by_client[0] and len(server.connections) == 2


async def test_a_connection_redis_closed_while_idle_is_replaced_without_failing_the_read(
    nursery: trio.Nursery,
) -> None:
    async def script(words: list[bytes]) -> bytes | None:
        return bulk(b"on %d" % server.last)  # which connection answered

    server = ScriptedRedis(script)
    await server.start(nursery)
    reader = RedisReader(server.address, 60.0, connect_timeout=5.0)
    await nursery.start(reader.run)
    await _pooled(reader)
    reader._wanted.set()  # a second connection
    await _pooled(reader, 2)
    used = int((await reader.get("k") or b"").split()[1])
    # Redis drops the connection just used (its `timeout`, a restart): the next read,
    # on it, finds it ended before any reply, and goes on the other one.
    server.streams[used].socket.shutdown(socket.SHUT_WR)
    await trio.testing.wait_all_tasks_blocked()
    assert await reader.get("k") == b"on %d" % (1 - used)
    assert reader.connections == 1


async def test_reads_beyond_the_pool_say_so_and_it_grows_to_its_cap(
    nursery: trio.Nursery,
) -> None:
    release = trio.Event()

    async def script(words: list[bytes]) -> bytes | None:
        await release.wait()
        return bulk(b"x")

    server = ScriptedRedis(script)
    await server.start(nursery)
    reader = await _reader(nursery, server.address)
    async with trio.open_nursery() as readers:
        readers.start_soon(reader.get, "k")
        await trio.testing.wait_all_tasks_blocked()
        # The one connection is in use: the next read goes another way, and asks for more.
        with pytest.raises(NoConnection):
            await reader.get("k")
        await _pooled(reader)
        assert reader.connections == 2
        release.set()
    for _ in range(3 * MAX_CONNECTIONS):
        reader._wanted.set()
        await trio.testing.wait_all_tasks_blocked()
    assert reader.connections == MAX_CONNECTIONS


async def test_tls_as_a_rediss_url_configures_it(nursery: trio.Nursery, tmp_path: Path) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))

    async def serve(stream: trio.SocketStream) -> None:
        secure = trio.SSLStream(stream, server_context, server_side=True)
        async with secure:
            data = await secure.receive_some(1000)
            assert data == command(b"GET", b"k")
            await secure.send_all(bulk(b"over tls"))
            await secure.receive_some(1000)

    listeners = await nursery.start(trio.serve_tcp, serve, 0)
    port = listeners[0].socket.getsockname()[1]
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca_file}"
    address = RedisAddress.of_pool(coredis.Redis.from_url(url).connection_pool)
    assert address is not None and address.ssl_context is not None
    reader = await _reader(nursery, address)
    assert await reader.get("k") == b"over tls"


# --- in the cache's Redis backend --------------------------------------------------------------


async def test_the_backend_reads_through_coredis_while_the_pool_has_no_connection(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    from trigate.cache.backends import RedisBackend

    unavailable: list[int] = []
    backend = RedisBackend(
        redis_url, redis_prefix, 2.0, lambda: unavailable.append(1), lambda code, op: None
    )
    await nursery.start(backend.run)
    await backend.set("k", b"kept", None)
    reader = backend._reader
    assert reader is not None
    await _pooled(reader)
    assert await backend.get("k") == b"kept"
    assert await backend.get_many(["k", "nothing"]) == [b"kept", None]
    reader.close_idle()  # as after an outage: nothing pooled
    assert await backend.get("k") == b"kept"  # read by coredis
    await _pooled(reader)  # and the pool has grown again
    assert await backend.get("k") == b"kept"
    assert unavailable == []
    await backend.delete(["k"])


async def test_bytes_beyond_a_reply_drop_the_connection_never_answer_the_next_command(
    nursery: trio.Nursery,
) -> None:
    """One command is sent at a time, so bytes after its reply cannot be the next one's:
    served as if they were, every later read on the connection would get the value of
    the key read before it, another tenant's cached answer among them."""

    async def script(words: list[bytes]) -> bytes | None:
        if words[1] == b"extra":
            return bulk(b"A") + bulk(b"LEAKED")  # one reply too many
        return bulk(b"v:" + words[1])

    server = ScriptedRedis(script)
    await server.start(nursery)
    reader = await _reader(nursery, server.address)
    assert await reader.get("extra") == b"A"
    assert reader.connections == 0  # closed, not pooled
    await trio.testing.wait_all_tasks_blocked()
    assert server.closed_by_client == [True]
    with pytest.raises(NoConnection):  # the next read asks for a new one
        await reader.get("g")
    await _pooled(reader)
    assert await reader.get("g") == b"v:g"
    assert await reader.get("h") == b"v:h"


async def test_a_reply_waited_for_is_not_counted_as_a_read_that_did_not_wait() -> None:
    """The stream yields after a run of reads that found data at once; a read after a wait
    is no such read. Counted as one, every sixteenth waited-for GET yielded after its
    reply was read, long enough for its deadline to close the connection, which went back
    to the pool closed and failed the next, unrelated read as Redis down."""
    reader = RedisReader(RedisAddress(host="127.0.0.1"), 60.0, connect_timeout=5.0)
    ours, redis = trio.socket.socketpair()
    stream = FastStream(ours)
    reader._idle.append(_Connection(stream, ours, descriptor_of(ours)))
    reader._open = 1
    with trio.fail_after(5):
        for n in range(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader.get, "k")
                await trio.testing.wait_all_tasks_blocked()  # parked: the reply must wait
                assert await redis.recv(100) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
                await redis.send(bulk(b"%d" % n))
            assert stream._in_a_row == 0, n
    assert reader.connections == 1 and len(reader._idle) == 1
    ours.close()
    redis.close()


# --- connections Redis closed while idle; one deadline per command -------------------------


def _port_of(connection: _Connection) -> int:
    """The local port of a pooled connection: the server's stream with it as its peer."""
    port: int = connection._socket.getsockname()[1]
    return port


@pytest.mark.parametrize("reset", [False, True])
async def test_a_pooled_connection_closed_before_its_first_command_is_no_broken_reply(
    nursery: trio.Nursery, reset: bool
) -> None:
    """The pool opens connections ahead of the reads that need them: one may sit there
    unused until Redis's `timeout`, a restart or a proxy's idle cut closes it. Its first
    command then reads the end of the connection (or is reset) before any byte of a
    reply: Redis closed it while idle, not mid-reply, and the read goes on the next."""

    async def script(words: list[bytes]) -> bytes | None:
        return bulk(b"fine")

    server = ScriptedRedis(script)
    await server.start(nursery)
    reader = await _reader(nursery, server.address)
    reader._wanted.set()  # a second connection
    await _pooled(reader, 2)
    server.drop(_port_of(reader._idle[-1]), reset)  # the one read first
    await trio.testing.wait_all_tasks_blocked()
    assert await reader.get("k") == b"fine"
    assert reader.connections == 1


async def test_two_connections_closed_while_idle_in_a_row_empty_the_pool(
    nursery: trio.Nursery,
) -> None:
    """The command is tried once more, not on every connection: a second closed in a row
    says the pool is older than what closed them (a restart cuts every connection, an idle
    timeout the least recently used first), so the rest are closed and the caller reads
    another way while `run` opens new ones."""

    async def script(words: list[bytes]) -> bytes | None:
        return bulk(b"fine")

    server = ScriptedRedis(script)
    await server.start(nursery)
    reader = await _reader(nursery, server.address)
    for count in (2, 3):
        reader._wanted.set()
        await _pooled(reader, count)
    for connection in reader._idle[1:]:  # the two used first
        server.drop(_port_of(connection))
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(NoConnection) as none:
        await reader.get("k")
    assert none.value.deadline is None  # it did not wait: the caller has the whole timeout
    assert reader.connections == 0
    await _pooled(reader)
    assert await reader.get("k") == b"fine"


async def test_a_retried_read_has_what_is_left_of_its_deadline_not_a_new_one(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    """A read whose connection Redis closes with no reply after a wait (closed while idle,
    as the command reached it) is tried on another connection, within the same deadline:
    `redis_timeout` bounds the lookup, not each connection it tries."""
    attempts: list[float] = []

    async def script(words: list[bytes]) -> bytes | None:
        if words[1] == b"warm":
            await hold.wait()
            return bulk(b"warm")
        attempts.append(trio.current_time())
        if len(attempts) == 1:
            await trio.sleep(1.5)
            return None  # closed, no reply
        await trio.sleep(1000)  # the retry is never answered
        return None

    hold = trio.Event()
    server = ScriptedRedis(script)
    await server.start(nursery)
    reader = await _reader(nursery, server.address, deadline=2.0)
    reader._wanted.set()
    await _pooled(reader, 2)
    async with trio.open_nursery() as both:  # each connection has served a command
        for _ in range(2):
            both.start_soon(reader.get, "warm")
        await trio.testing.wait_all_tasks_blocked()
        hold.set()
    started = trio.current_time()
    with trio.fail_after(30), pytest.raises(RedisTimeout):
        await reader.get("k")
    assert len(attempts) == 2 and attempts[1] - started == pytest.approx(1.5)
    assert trio.current_time() - started == pytest.approx(2.0)
    assert reader.connections == 0


# --- error replies -----------------------------------------------------------------------


async def test_an_error_reply_says_its_code_and_its_connection_is_not_used_again(
    nursery: trio.Nursery,
) -> None:
    async def script(words: list[bytes]) -> bytes | None:
        if words[1] == b"loading":
            return b"-LOADING Redis is loading the dataset in memory\r\n"
        return bulk(b"fine")

    server = ScriptedRedis(script)
    await server.start(nursery)
    reader = await _reader(nursery, server.address)
    with pytest.raises(RedisErrorReply) as refused:
        await reader.get("loading")
    assert refused.value.code == "LOADING"
    await _pooled(reader)
    assert await reader.get("k") == b"fine"
    assert server.connections[1] == [[b"GET", b"k"]]

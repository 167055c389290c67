"""The response cache's Redis misbehaving (issue 22: "a cache that does not answer within
`redis_timeout` is a miss, never a failed request; it is counted"): error replies, each
dealt with by its kind; a lookup bounded by one timeout however many connections it
tries; connections Redis closed while they sat in the pool.

The cache's backend against a scripted Redis on a real socket where the reply must be
exact (`fake_redis`), and the gateway against a Redis of the test's own where Redis
itself can be made to refuse (a key of another type, memory full, connections killed)."""

from __future__ import annotations

import itertools
import logging
from functools import partial
from string import ascii_uppercase
from typing import Any

import pytest
import trio
import trio.testing
from fake_redis import ScriptedRedis, bulk
from fakes import FakeUpstream, JSONReply, chat_completion
from helpers import RedisServer, RunningGateway, start_gateway
from prometheus_client import CollectorRegistry
from test_cache import USAGE, _chat, _post, redis_cached_config

from trigate.cache import refusals
from trigate.cache.backends import RedisBackend
from trigate.cache.metrics import CacheMetrics
from trigate.cache.resp import RedisReader

# --- the backend against a scripted Redis ----------------------------------------------------


class Counts:
    """What the backend counted: its metrics' callbacks."""

    def __init__(self) -> None:
        self.unavailable = 0
        self.errors: list[tuple[str, str]] = []

    def count_unavailable(self) -> None:
        self.unavailable += 1

    def count_error(self, code: str, operation: str) -> None:
        self.errors.append((code, operation))


async def _backend(
    nursery: trio.Nursery, server: ScriptedRedis, redis_timeout: float = 0.5
) -> tuple[RedisBackend, Counts]:
    """A backend on `server` (keys under `t:`), up, its reader with a pooled connection."""
    counts = Counts()
    url = f"redis://127.0.0.1:{server.port}/0"
    backend = RedisBackend(url, "t:", redis_timeout, counts.count_unavailable, counts.count_error)
    await nursery.start(backend.run)
    reader = backend._reader
    assert reader is not None and backend._up
    await _pooled(reader)
    return backend, counts


async def _pooled(reader: RedisReader) -> None:
    """Until the reader has an idle connection: it opens them in the background."""
    with trio.fail_after(5):  # over real sockets, which only polling sees
        while True:
            if reader._idle:
                return
            await trio.sleep(0.01)


# The key the backend's probe reads: a Redis that serves reads answers it.
PROBE = b"t:" + RedisBackend.PROBE_KEY.encode()

# Error replies to a GET (read through the reader) or a SET (written through coredis): the
# code counted, and whether Redis is still up for the cache (no probe, reads go on).
REFUSALS = [
    ("GET", b"-WRONGTYPE Operation against a key holding the wrong kind of value", True),
    ("GET", b"-LOADING Redis is loading the dataset in memory", False),
    ("GET", b"-BUSY Redis is busy running a script. You can only call SCRIPT KILL", False),
    ("GET", b"-NOAUTH Authentication required.", True),
    ("GET", b"-NOPERM User cache has no permissions to access the 't:k' key", True),
    ("GET", b"-ERR something Redis-like servers say", True),
    ("SET", b"-ERR DB index is out of range", True),  # coredis cuts `ERR ` from its message
    ("SET", b"-OOM command not allowed when used memory > 'maxmemory'.", True),
    ("SET", b"-MISCONF Redis is configured to save RDB snapshots, but it's currently unable", True),
    ("SET", b"-READONLY You can't write against a read only replica.", True),
]


@pytest.mark.parametrize(("command", "reply", "stays_up"), REFUSALS)
async def test_an_error_reply_is_a_miss_or_a_skipped_write_dealt_with_by_its_kind(
    nursery: trio.Nursery, command: str, reply: bytes, stays_up: bool
) -> None:
    """Only a Redis that cannot serve anyone for now (LOADING, BUSY) is backed off from;
    a refusal of one key, of writes, or of the cache's credentials leaves it up: the other
    reads go on, each request served either way."""
    refusing = True

    async def script(words: list[bytes]) -> bytes | None:
        if words[0] == command.encode() and words[1] == b"t:k" and refusing:
            return reply + b"\r\n"
        if words[0] == b"SET":
            return b"+OK\r\n"
        return b"$4\r\nkept\r\n"

    server = ScriptedRedis(script, coredis=True)
    await server.start(nursery)
    backend, counts = await _backend(nursery, server)
    if command == "GET":
        assert await backend.get("k") is None  # a miss: nothing served from it
    else:
        await backend.set("k", b"answer", None)  # skipped, and no failure
    code = reply[1:].split(b" ", 1)[0].decode()
    assert counts.errors == [(code, "read" if command == "GET" else "write")]
    assert backend._up is stays_up
    assert counts.unavailable == (0 if stays_up else 1)
    refusing = False
    if stays_up:  # the next read goes to Redis at once
        assert await backend.get("other") == b"kept"
        assert counts.unavailable == 0


async def test_an_error_sent_unasked_never_makes_the_next_read_get_another_keys_value(
    nursery: trio.Nursery,
) -> None:
    """A server or proxy that is not quite Redis sends an error line on an idle connection
    and keeps it open; the GET of tenant A's key reads it as its reply, and the GET's own
    reply (A's answer) arrives after. Had the connection gone back to the pool (the error
    was read whole, nothing left in its buffer), tenant B's GET would read A's answer."""

    async def script(words: list[bytes]) -> bytes | None:
        if words[0] == b"GET" and words[1] == b"t:a":
            await server.streams[server.last].send_all(b"-ERR unsolicited notice\r\n")
            await trio.sleep(0.05)
            return bulk(b"tenant A's answer")
        if words[0] == b"GET":
            return bulk(b"value of " + words[1])
        return b"+OK\r\n"

    server = ScriptedRedis(script, coredis=True)
    await server.start(nursery)
    backend, counts = await _backend(nursery, server)
    assert await backend.get("a") is None
    await trio.sleep(0.2)  # A's answer lands on the connection the error came on
    assert await backend.get("b") == b"value of t:b"
    assert counts.errors == [("ERR", "read")] and backend._up


async def test_a_refusal_is_logged_once_per_episode_and_never_with_what_redis_quotes(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock, caplog: Any
) -> None:
    """Redis quotes a command's arguments back in some errors (`unknown command`, as when
    SET is renamed away): the logged message leaves them out, the value among them. A run
    of the same refusal is one line; the credentials' is an error, the rest warnings."""

    async def script(words: list[bytes]) -> bytes | None:
        if words[0] == b"SET":
            return b"-ERR unknown command 'SET', with args beginning with: 't:k' 'SECRET' \r\n"
        if words[1] == PROBE:  # an ACL of some keys only: the probe's is among them
            return b"$-1\r\n"
        return b"-NOPERM User cache has no permissions to access the 't:k' key\r\n"

    server = ScriptedRedis(script, coredis=True)
    await server.start(nursery)
    backend, counts = await _backend(nursery, server)
    caplog.set_level(logging.WARNING, "trigate")
    for _ in range(3):
        await backend.set("k", b"SECRET", None)
        assert await backend.get("k") is None
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == [logging.WARNING, logging.ERROR]
    assert "unknown command" in lines[0][1] and "SECRET" not in lines[0][1]
    assert "NOPERM" in lines[1][1] and "t:k" not in lines[1][1]
    assert counts.errors == [("ERR", "write"), ("NOPERM", "read")] * 3
    await trio.sleep(120)  # a quiet spell ends the episode: the next is logged again
    await backend.set("k", b"SECRET", None)
    assert len(caplog.records) == 3


async def test_a_server_inventing_codes_grows_neither_the_episodes_nor_the_metric(
    nursery: trio.Nursery, caplog: Any
) -> None:
    """A Redis-like server answering each read and write with a code of its own making:
    they share a label, so the metric keeps a few series, the map of episodes a few
    entries and the log a line or two, however many codes it invents. The reader labels
    them `other`; through coredis (writes, reads while the pool reopens) a code it does
    not know reads as an `ERR`'s message, which coredis cuts `ERR ` from."""
    codes = iter("Z" + "".join(letters) for letters in itertools.product(ascii_uppercase, repeat=3))

    async def script(words: list[bytes]) -> bytes | None:
        if words[0] == b"GET" and words[1] == PROBE:
            return b"$-1\r\n"
        return b"-%s made up by the server\r\n" % next(codes).encode()

    server = ScriptedRedis(script, coredis=True)
    await server.start(nursery)
    registry = CollectorRegistry()
    metrics = CacheMetrics(registry)
    url = f"redis://127.0.0.1:{server.port}/0"
    backend = RedisBackend(url, "t:", 5, metrics.count_unavailable, metrics.count_redis_error)
    await nursery.start(backend.run)
    assert backend._reader is not None
    await _pooled(backend._reader)
    caplog.set_level(logging.WARNING, "trigate")
    for _ in range(500):  # 1,000 codes: reads through the reader or coredis, writes
        assert await backend.get("k") is None
        await backend.set("k", b"answer", None)
    series = {
        (sample.labels["code"], sample.labels["operation"]): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "trigate_cache_redis_errors_total"
    }
    assert set(series) <= {("other", "read"), ("ERR", "read"), ("ERR", "write")}
    assert series[("other", "read")] >= 1 and series[("ERR", "write")] == 500
    assert series[("other", "read")] + series.get(("ERR", "read"), 0) == 500
    assert len(backend._episodes._last) <= len(refusals.CODES) + 1
    assert len(caplog.records) == 2 and backend._up


async def _read_every_tenth_of_a_second(backend: RedisBackend, seconds: float) -> None:
    for _ in range(round(seconds * 10)):
        await backend.get("k")
        await trio.sleep(0.1)


def _warnings(caplog: Any) -> list[str]:
    return [record.getMessage().split(" (", 1)[0] for record in caplog.records]


MASTERDOWN = (
    b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n"
)
UNREACHABLE = "the response cache's Redis is unreachable"
BACK = "the response cache's Redis is back"


async def test_a_redis_answering_ping_but_refusing_reads_stays_one_outage(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock, caplog: Any
) -> None:
    """A replica cut from its primary answers PING but every GET `-MASTERDOWN` (as Redis
    does with replica-serve-stale-data no): the probe reads a key as the cache does, so
    the outage lasts as long as the refusal, one warning and one "back", and the cache's
    reads stay off Redis meanwhile."""
    refusing = False
    reads: list[bytes] = []

    async def script(words: list[bytes]) -> bytes | None:
        if words[0] == b"GET" and words[1] != PROBE:
            reads.append(words[1])
        if words[0] == b"GET" and refusing:
            return MASTERDOWN
        return b"$-1\r\n"

    server = ScriptedRedis(script, coredis=True)  # PING answered PONG throughout
    await server.start(nursery)
    backend, counts = await _backend(nursery, server, redis_timeout=10)
    caplog.set_level(logging.WARNING, "trigate")
    refusing = True  # the replica loses its primary
    await _read_every_tenth_of_a_second(backend, 5)
    assert _warnings(caplog) == [UNREACHABLE] and reads == [b"t:k"]
    refusing = False
    await _read_every_tenth_of_a_second(backend, 1)
    assert _warnings(caplog) == [UNREACHABLE, BACK] and backend._up
    assert len(reads) > 1 and counts.errors == [("MASTERDOWN", "read")]


async def test_a_refusal_of_the_cache_keys_only_is_one_warning_until_the_probe_fails_too(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock, caplog: Any
) -> None:
    """A cluster serving some slots only (`-CLUSTERDOWN Hash slot not served`): the probe's
    key may be served while the cache's are not, so the probe passes and the next read is
    refused again, over and over. That is one episode, one warning and its "back", until
    the probe is refused too: Redis is then away, and that is logged."""
    probe_refused = False

    async def script(words: list[bytes]) -> bytes | None:
        if words[0] == b"GET" and (words[1] != PROBE or probe_refused):
            return b"-CLUSTERDOWN Hash slot not served\r\n"
        return b"$-1\r\n"

    server = ScriptedRedis(script, coredis=True)
    await server.start(nursery)
    backend, counts = await _backend(nursery, server, redis_timeout=10)
    caplog.set_level(logging.WARNING, "trigate")
    await _read_every_tenth_of_a_second(backend, 5)
    assert _warnings(caplog) == [UNREACHABLE, BACK]
    assert len(counts.errors) > 2  # refused again after each probe passed
    probe_refused = True
    await _read_every_tenth_of_a_second(backend, 2)
    assert _warnings(caplog) == [UNREACHABLE, BACK, UNREACHABLE]


async def test_a_lookup_is_bounded_by_one_timeout_through_the_reader_and_coredis(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    """The reader's only connection is closed, without a reply, after most of the timeout
    (Redis closed it while idle as the GET reached it): the lookup goes on through coredis
    with what is left of the timeout, not a timeout of its own."""
    reader_gets: list[float] = []

    async def script(words: list[bytes]) -> bytes | None:
        if words[0] == b"GET" and server.connections[server.last][0][0] != b"HELLO":
            reader_gets.append(trio.current_time())
            await trio.sleep(0.4)
            return None  # closed, no reply
        if words[1] == PROBE:
            return b"$-1\r\n"
        await trio.sleep(1000)  # coredis's GET of the key: never answered
        return None

    server = ScriptedRedis(script, coredis=True)
    await server.start(nursery)
    backend, counts = await _backend(nursery, server, redis_timeout=0.5)
    started = trio.current_time()
    assert await backend.get("k") is None
    assert reader_gets == [started]
    assert trio.current_time() - started == pytest.approx(0.5)
    assert counts.unavailable == 1  # no answer in time: Redis is down for the cache


# --- through the gateway, against a Redis of the test's own ----------------------------------


async def _redis(server: RedisServer, *command: str) -> str:
    """A command to the test's Redis, as its operator would type it; its reply's text."""
    done = await trio.run_process(
        ["redis-cli", "-p", str(server.port), *command], capture_stdout=True
    )
    return done.stdout.decode()


async def _metrics(running: RunningGateway) -> str:
    async with running.client() as client:
        text: str = (await client.get("/metrics")).text
    return text


def _count(text: str, sample: str) -> float:
    """A sample's value in /metrics, by its name and labels as written; 0 if absent."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


WRONGTYPE_READS = 'trigate_cache_redis_errors_total{code="WRONGTYPE",operation="read"}'
OOM_WRITES = 'trigate_cache_redis_errors_total{code="OOM",operation="write"}'
UNAVAILABLE = "trigate_cache_unavailable_total"


async def test_a_value_of_another_type_under_a_key_is_a_miss_and_replaced(
    nursery: trio.Nursery, upstream: FakeUpstream, own_redis: RedisServer
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Fine", USAGE))
    running = await start_gateway(nursery, redis_cached_config(upstream, own_redis.url, "t:"))
    first = await _post(running, "/v1/chat/completions", _chat())
    key = "t:cache:" + first.headers["x-litellm-cache-key"]
    await _redis(own_redis, "DEL", key)
    await _redis(own_redis, "RPUSH", key, "not an answer")  # another writer's list
    refused = await _post(running, "/v1/chat/completions", _chat())
    assert refused.status_code == 200 and refused.headers["x-trigate-cache"] == "miss"
    assert refused.json()["choices"][0]["message"]["content"] == "Fine"
    text = await _metrics(running)
    assert _count(text, WRONGTYPE_READS) == 1 and _count(text, UNAVAILABLE) == 0
    # Redis stayed up for the cache: the answer's write replaced the list, and hits.
    hit = await _post(running, "/v1/chat/completions", _chat())
    assert hit.headers["x-trigate-cache"] == "hit"
    assert len(upstream.requests) == 2
    await running.stop()


async def test_redis_out_of_memory_skips_writes_and_reads_go_on(
    nursery: trio.Nursery, upstream: FakeUpstream, own_redis: RedisServer
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Fine", USAGE))
    running = await start_gateway(nursery, redis_cached_config(upstream, own_redis.url, "t:"))
    await _post(running, "/v1/chat/completions", _chat("kept"))
    await _redis(own_redis, "CONFIG", "SET", "maxmemory-policy", "noeviction")
    await _redis(own_redis, "CONFIG", "SET", "maxmemory", "1")  # full: writes refused
    for text in ("one", "one"):  # served; its write refused, so the second is a miss too
        answer = await _post(running, "/v1/chat/completions", _chat(text))
        assert answer.status_code == 200 and answer.headers["x-trigate-cache"] == "miss"
    hit = await _post(running, "/v1/chat/completions", _chat("kept"))  # reads go on
    assert hit.headers["x-trigate-cache"] == "hit"
    metrics = await _metrics(running)
    assert _count(metrics, OOM_WRITES) == 2 and _count(metrics, UNAVAILABLE) == 0
    await running.stop()


async def test_connections_redis_killed_while_idle_leave_the_cache_up(
    nursery: trio.Nursery, upstream: FakeUpstream, own_redis: RedisServer
) -> None:
    """Redis closes idle connections (its `timeout`, a restart, `CLIENT KILL`, a proxy's
    idle cut): the next lookup finds its pooled connection ended before any reply, and is
    no outage: it reads on a fresh connection, and the answer is kept."""
    upstream.handler = lambda request: JSONReply(chat_completion("Fine", USAGE))
    running = await start_gateway(nursery, redis_cached_config(upstream, own_redis.url, "t:"))
    with trio.fail_after(10):  # the reader's first connection, opened in the background
        while True:  # it, coredis's and redis-cli's own
            if len((await _redis(own_redis, "CLIENT", "LIST")).splitlines()) >= 3:
                break
            await trio.sleep(0.05)
    for text in ("before any read", "after a read"):
        await _redis(own_redis, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        miss = await _post(running, "/v1/chat/completions", _chat(text))
        assert miss.status_code == 200 and miss.headers["x-trigate-cache"] == "miss"
        hit = await _post(running, "/v1/chat/completions", _chat(text))
        assert hit.headers["x-trigate-cache"] == "hit"
    assert _count(await _metrics(running), UNAVAILABLE) == 0
    await running.stop()


async def test_a_redis_busy_with_a_script_is_backed_off_from_until_it_is_free(
    nursery: trio.Nursery, upstream: FakeUpstream, own_redis: RedisServer
) -> None:
    """A script running past `busy-reply-threshold` makes Redis answer every other command
    `-BUSY`: it cannot serve anyone, so the cache misses at once until its probe is
    answered again, and is counted both ways (the reply, and the outage's misses)."""
    upstream.handler = lambda request: JSONReply(chat_completion("Fine", USAGE))
    running = await start_gateway(nursery, redis_cached_config(upstream, own_redis.url, "t:"))
    await _post(running, "/v1/chat/completions", _chat("kept"))
    await _redis(own_redis, "CONFIG", "SET", "busy-reply-threshold", "10")
    script = ["redis-cli", "-p", str(own_redis.port), "EVAL", "while true do end", "0"]
    nursery.start_soon(partial(trio.run_process, script, capture_stdout=True, check=False))
    with trio.fail_after(10):
        while True:  # Redis says BUSY once the script has run past the threshold
            if (await _redis(own_redis, "PING")).startswith("BUSY"):
                break
            await trio.sleep(0.02)
    busy = await _post(running, "/v1/chat/completions", _chat("kept"))
    assert busy.status_code == 200 and busy.headers["x-trigate-cache"] == "miss"
    metrics = await _metrics(running)
    assert _count(metrics, 'trigate_cache_redis_errors_total{code="BUSY",operation="read"}') == 1
    assert _count(metrics, UNAVAILABLE) >= 1
    await _redis(own_redis, "SCRIPT", "KILL")
    with trio.fail_after(10):  # the probe finds it free: the kept answer is a hit again
        while True:
            hit = await _post(running, "/v1/chat/completions", _chat("kept"))
            if hit.headers["x-trigate-cache"] == "hit":
                break
            await trio.sleep(0.2)
    await running.stop()

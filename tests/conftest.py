"""Shared fixtures: the real app served by hypercorn on port 0, fake upstreams, databases.
The plumbing they use, and that tests import, is in helpers.py."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from fake_vertex import TokenServer
from fakes import FakeUpstream, JSONReply
from helpers import REDIS_URL, RedisServer, RunningGateway, openai_config, start_gateway

# Bytecode is written and read, whatever PYTHONDONTWRITEBYTECODE says: without it every
# interpreter a test spawns (each `trigate serve` process, probes, stdio MCP servers)
# compiles trigate's modules anew, a quarter of a second of CPU each, some 150 times a
# run, and this process rewrites every test module's assertions. It goes to __pycache__,
# which git ignores.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


@pytest.fixture
def virtual_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 20 ms of real idleness. pytest-trio's
    autojump_clock jumps at once, even while a database call runs in a worker
    thread, which would let time race ahead by whole budget windows."""
    return trio.testing.MockClock(autojump_threshold=0.02)


@pytest.fixture
def still_clock() -> trio.testing.MockClock:
    """Virtual time that moves only when the test jumps it, for a test whose point is
    that some time has *not* passed (a window not yet over). `virtual_clock` leaps to the
    next timer whenever a worker thread outlasts its threshold, as on a loaded machine,
    and enough leaps run out a window, or a store call's timeout, with nobody waiting."""
    return trio.testing.MockClock()


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> FakeUpstream:
    fake = FakeUpstream()
    await fake.start(nursery)
    return fake


@pytest.fixture
async def receiver(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    """An OTLP/HTTP receiver on a real socket, where a gateway started after it exports
    its spans (`tests/test_tracing.py` decodes them)."""
    collector = FakeUpstream(lambda request: JSONReply({}))
    await collector.start(nursery)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    return collector


@pytest.fixture
async def tokens(nursery: trio.Nursery) -> TokenServer:
    """A fake Google token server, for Vertex AI's service accounts (fake_vertex.py)."""
    fake = FakeUpstream()
    await fake.start(nursery)
    return TokenServer(fake)


@pytest.fixture
async def gateway(nursery: trio.Nursery, upstream: FakeUpstream) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(nursery, openai_config(upstream))
    yield running
    await running.stop()


POSTGRES_URL = os.environ.get(
    "TRIGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def _postgres_schema(action: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3) as connection:
        if action == "create":
            connection.execute(f'CREATE SCHEMA "{schema}"')
        else:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.asynccontextmanager
async def _fresh_postgres() -> AsyncIterator[str]:
    """A PostgreSQL database of its own (a schema, dropped after). Without PostgreSQL the
    test skips, except in CI, where a missing service must fail the run rather than
    hide it."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        await trio.to_thread.run_sync(_postgres_schema, "create", schema)
    except Exception as error:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}: {error}")
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    await trio.to_thread.run_sync(_postgres_schema, "drop", schema)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[str]:
    """A fresh database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/trigate.db"
        return
    async with _fresh_postgres() as url:
        yield url


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database alone: for what only PostgreSQL does (its limits, its
    errors, an outage of its server)."""
    async with _fresh_postgres() as url:
        yield url


@pytest.fixture
async def redis_url() -> str:
    """The machine's Redis, with a key prefix of the test's own (see `redis_prefix`).
    Without Redis the test skips, except in CI, where it fails."""
    import coredis

    try:
        async with coredis.Redis.from_url(REDIS_URL, connect_timeout=1.0) as client:
            await client.ping()
    except Exception as error:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {error}")
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test (or concurrent run) shares."""
    return f"trigate-test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    """A redis-server of this test's own, which it may kill and start again."""
    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.kill()

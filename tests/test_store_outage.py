"""A database that goes away, or stays locked, makes every route answer fast: admin
calls and stored responses a 503 `store_unavailable`, as the key check already does;
a response that could not be stored is answered with `"store": false`, never with an
id the gateway does not hold; a stream ends after its final event.

PostgreSQL is reached through a relay on a real socket that the test cuts: open
connections die and new ones are refused, as when the database host goes down."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import trio
from helpers import RunningGateway, mock_config, start_gateway

from trigate.spend import RequestRecord, SpendLedger
from trigate.spend.ledger import _row
from trigate.store import MAX_CONCURRENT_CALLS, SpendFilter, Store, StoreUnavailable, backends

RESPONSE = {"model": "mock", "input": "hi"}


class Relay:
    """A TCP relay to the real database that can be cut."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self._target = target
        self._scope = trio.CancelScope()
        self.port = port  # 0: any free port

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        with self._scope:
            [listener] = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listener.socket.getsockname()[1]
            task_status.started()
            await trio.serve_listeners(self._relay, [listener])

    async def _relay(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream(*self._target)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, nursery.cancel_scope)

    @staticmethod
    async def _pump(
        source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            async for data in source:
                await sink.send_all(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()

    def cut(self) -> None:
        """Every relayed connection closes, and the port refuses new ones."""
        self._scope.cancel()

    async def restored(self, nursery: trio.Nursery) -> Relay:
        """A relay again, on the port this one was cut from: the database is back."""
        relay = Relay(self._target, self.port)
        await nursery.start(relay.run)
        return relay


@pytest.fixture
async def relayed_postgres(
    nursery: trio.Nursery, postgres_url: str
) -> AsyncIterator[tuple[str, Relay]]:
    parts = urlsplit(postgres_url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    await nursery.start(relay.run)
    netloc = f"{parts.username}@127.0.0.1:{relay.port}"
    yield urlunsplit(parts._replace(netloc=netloc)), relay


def _config(database_url: str) -> dict[str, Any]:
    config = mock_config(mock_response="Hello from mock.")
    config["general_settings"] = {"database_url": database_url}
    return config


async def _stream(client: httpx.AsyncClient) -> list[str]:
    async with client.stream("POST", "/v1/responses", json={**RESPONSE, "stream": True}) as reply:
        assert reply.status_code == 200
        return [line async for line in reply.aiter_lines() if line.startswith("event:")]


def _unavailable(reply: httpx.Response) -> bool:
    return reply.status_code == 503 and reply.json()["error"]["code"] == "store_unavailable"


async def test_a_postgres_outage_answers_every_route_fast(
    nursery: trio.Nursery, relayed_postgres: tuple[str, Relay]
) -> None:
    database_url, relay = relayed_postgres
    gateway: RunningGateway = await start_gateway(nursery, _config(database_url))
    async with gateway.client(timeout=30) as client:
        stored = await client.post("/v1/responses", json=RESPONSE)
        assert stored.status_code == 200 and stored.json()["store"] is True
        response_id = stored.json()["id"]
        relay.cut()
        assert _unavailable(await client.post("/key/generate", json={}))
        assert _unavailable(await client.get(f"/v1/responses/{response_id}"))
        assert _unavailable(await client.delete(f"/v1/responses/{response_id}"))
        follow_up = {**RESPONSE, "previous_response_id": response_id}
        assert _unavailable(await client.post("/v1/responses", json=follow_up))
        new_model = {"model_name": "m2", "litellm_params": {"model": "mock/x"}}
        assert _unavailable(await client.post("/model/new", json=new_model))
        # Answered, since the client paid for it, but not as stored.
        unstored = await client.post("/v1/responses", json=RESPONSE)
        assert unstored.status_code == 200, unstored.text
        assert unstored.json()["store"] is False
        with trio.fail_after(20):  # a bound on a hang, not a timing assertion
            events = await _stream(client)
        assert events[-1] == "event: response.completed"


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's busy timeout at 0.2 s, not 2 s: the tests wait it out for each write."""
    monkeypatch.setattr(backends, "SQLITE_BUSY_TIMEOUT_MS", 200)


async def test_a_sqlite_lock_makes_admin_writes_a_503(
    nursery: trio.Nursery, tmp_path: Path, short_busy_timeout: None
) -> None:
    """Another process holds SQLite's write lock: a write waits its busy timeout, then is
    a 503 the admin may retry; reads go on (WAL), and the gateway serves."""
    path = tmp_path / "locked.db"
    gateway = await start_gateway(nursery, _config(f"sqlite:///{path}"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        async with gateway.client(timeout=30) as client:
            assert _unavailable(await client.post("/key/generate", json={}))
            assert (await client.get("/key/list")).status_code == 200
            unstored = await client.post("/v1/responses", json=RESPONSE)
            assert unstored.status_code == 200 and unstored.json()["store"] is False
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    async with gateway.client() as client:
        assert (await client.post("/key/generate", json={})).status_code == 200


async def test_a_locked_write_is_store_unavailable_and_leaves_no_transaction_open(
    tmp_path: Path, short_busy_timeout: None
) -> None:
    path = tmp_path / "trigate.db"
    store = await Store.open(f"sqlite:///{path}")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable):
            await store.insert("users", {"user_id": "u1", "created_at": 1.0, "updated_at": 1.0})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await store.insert("users", {"user_id": "u1", "created_at": 1.0, "updated_at": 1.0})
    assert await store.get("users", "u1") is not None
    await store.close()


async def test_outage_memory_fails_at_once(relayed_postgres: tuple[str, Relay]) -> None:
    """After a lost connection, the next calls fail without waiting to find out again."""
    database_url, relay = relayed_postgres
    store = await Store.open(database_url)
    relay.cut()
    with pytest.raises(StoreUnavailable):
        await store.get("users", "u1")
    with trio.CancelScope() as scope:
        scope.deadline = trio.current_time()  # any wait at all would be cancelled
        with pytest.raises(StoreUnavailable):
            await store.get("users", "u1")
    assert not scope.cancelled_caught
    await store.close()


async def test_a_write_to_a_read_only_database_is_an_outage(postgres_url: str) -> None:
    """A write PostgreSQL refuses as the transaction is read-only (SQLSTATE 25006, as
    on a standby after a failover: an InternalError) is an outage, a 503: not a bug of
    ours, a 500 with a traceback logged at every retry. That call's alone: the next is
    served at once, on a new connection (the old one may be to the standby). It turned
    every call away for the outage memory's 2 s, and the pool kept the connection."""
    connections: list[int] = []

    def backend_pid(cursor: Any) -> int:
        pid = int(cursor.query("SELECT pg_backend_pid() AS pid")[0]["pid"])
        connections.append(pid)
        return pid

    def read_only_write(cursor: Any) -> int:
        backend_pid(cursor)
        cursor.execute("SET TRANSACTION READ ONLY")
        return int(cursor.execute("INSERT INTO trigate_users (user_id) VALUES ('u1')"))

    store = await Store.open(postgres_url)
    with pytest.raises(StoreUnavailable):
        await store._run(read_only_write)
    assert await store.get("users", "u1") is None, "served, not turned away"
    # More calls than the pool holds connections, each borrowing the idle one returned
    # longest ago: the old connection would be met again.
    for _ in range(2 * MAX_CONCURRENT_CALLS):
        await store._run(backend_pid)
    assert connections[0] not in connections[1:], "the old connection replaced"
    await store.close()


async def test_a_failed_statement_is_no_outage(postgres_url: str) -> None:
    """A statement PostgreSQL cancels (as it fails a deadlock or a serialization
    conflict: all `OperationalError`s) fails its own call as a 503; the next call is
    served, not turned away for the outage memory's 2 s."""

    def cancelled_statement(cursor: Any) -> int:
        cursor.execute("SET LOCAL statement_timeout = 1")
        return int(cursor.execute("SELECT pg_sleep(1)"))

    store = await Store.open(postgres_url)
    with pytest.raises(StoreUnavailable):
        await store._run(cancelled_statement)
    await store.insert("users", {"user_id": "u2", "created_at": 1.0, "updated_at": 1.0})
    assert await store.get("users", "u2") is not None
    await store.close()


def _spend_record(request_id: str, prompt_tokens: int = 5) -> RequestRecord:
    return RequestRecord(
        request_id, "k", "hash", None, None, None, "g", "d0", "m", 200, False,
        prompt_tokens, 2, "reported", 1.0, 0.0, 0.0, 1.0, None, False,
    )  # fmt: skip


async def _queue_with_a_refused_row(store: Store) -> SpendLedger:
    """A ledger with three rows queued, the middle one past what a database column holds
    (an integer past 64 bits: SQLite's driver and PostgreSQL's INTEGER refuse it)."""
    ledger = SpendLedger(store)
    for request_id, tokens in (("r0", 5), ("r1", 2**63), ("r2", 5)):
        await ledger.write(_spend_record(request_id, tokens))
    return ledger


async def _written_once_back(store: Store, ledger: SpendLedger) -> None:
    """Once the database is back (a lost connection is remembered for 2 s), the rows it
    takes are written and the refused one is dropped."""
    for _ in range(60):  # the writer's retries, 0.5 s apart: at most 30 s
        if await ledger.flush():
            break
        await trio.sleep(0.5)
    assert ledger.queued == 0 and ledger.refused == 1
    rows = await store.spend_logs(SpendFilter())
    assert {row["request_id"] for row in rows} == {"r0", "r2"}


async def test_a_postgres_outage_drops_no_spend_row_not_even_a_refused_one(
    nursery: trio.Nursery, relayed_postgres: tuple[str, Relay]
) -> None:
    """The database is down (connections lost, then refused): a batch holding a row the
    database would refuse fails as an outage, every row of it kept; none is dropped for
    the outage's errors."""
    database_url, relay = relayed_postgres
    store = await Store.open(database_url)
    ledger = await _queue_with_a_refused_row(store)
    relay.cut()
    for _ in range(3):
        assert not await ledger.flush()
        await trio.sleep(0.1)
    assert ledger.queued == 3 and ledger.refused == 0
    # An outage, not a refusal: the ledger would keep rows refused by a store refusing
    # every row too, so only the store's own answer shows which this is.
    with pytest.raises(StoreUnavailable):
        await store.record_spend([_row(_spend_record("probe"))])
    relay = await relay.restored(nursery)
    await _written_once_back(store, ledger)
    await store.close()


async def test_a_sqlite_lock_drops_no_spend_row_not_even_a_refused_one(
    tmp_path: Path, short_busy_timeout: None
) -> None:
    """Another process holds SQLite's write lock: a batch holding a row the database
    would refuse fails as an outage, every row of it kept; none is dropped for it."""
    path = tmp_path / "trigate.db"
    store = await Store.open(f"sqlite:///{path}")
    ledger = await _queue_with_a_refused_row(store)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert not await ledger.flush()
        assert ledger.queued == 3 and ledger.refused == 0
        # An outage, not a refusal (which the ledger would keep too, with nothing taken).
        with pytest.raises(StoreUnavailable):
            await store.record_spend([_row(_spend_record("probe"))])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await _written_once_back(store, ledger)
    await store.close()

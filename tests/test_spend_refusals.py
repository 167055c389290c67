"""Spend rows the database refuses for what they hold, on both backends: the refused row
is dropped (an error in the log, counted) and no other row is held back; an outage, or
a bug of ours, keeps every row queued."""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol, cast

import pytest
import trio
import trio.lowlevel
import trio.testing
from fakes import FakeUpstream, JSONReply, ReceivedRequest, chat_completion
from helpers import RunningGateway, start_gateway

from trigate.spend import RequestRecord, SpendLedger
from trigate.spend.ledger import _row
from trigate.store import Refused, Row, SpendFilter, Store, StoreUnavailable

# Past 64 bits' signed range: SQLite's driver refuses it (OverflowError), and PostgreSQL
# refuses it for an INTEGER column (SQLSTATE 22003, numeric value out of range).
UNSTORABLE_TOKENS = 2**63
# What the refused row holds, which no log line may repeat.
SECRET_USER = "s3cret-customer"
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def record(request_id: str, *, prompt_tokens: int = 5, model: Any = "m") -> RequestRecord:
    return RequestRecord(
        request_id, "k", "hash", None, None, None, "g", "d0", model, 200, False,
        prompt_tokens, 2, "reported", 1.0, 0.0, 0.0, 1.0, None, False, end_user=SECRET_USER,
    )  # fmt: skip


async def stored_ids(store: Store) -> set[str]:
    return {row["request_id"] for row in await store.spend_logs(SpendFilter())}


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every line logged, with any traceback."""
    handler = caplog.handler
    return "\n".join(handler.format(record) for record in caplog.records)


class RecordSpend(Protocol):
    """The store's writer of spend rows, as `Store.record_spend` is called."""

    def __call__(
        self, rows: Sequence[Row], also_users: Sequence[str] = ()
    ) -> Coroutine[Any, Any, int]: ...


def down_after(store: Store, writes: int) -> RecordSpend:
    """Make `store` go down (StoreUnavailable) after `writes` writes of spend rows;
    returns its real writer, to put back when it is up again."""
    real = store.record_spend
    calls = 0

    async def going_down(rows: Sequence[Row], also_users: Sequence[str] = ()) -> int:
        nonlocal calls
        calls += 1
        if calls > writes:
            raise StoreUnavailable("the store is down")
        return await real(rows, also_users)

    # The store's writer replaced on this one store, as an outage would stop it.
    store.record_spend = going_down  # type: ignore[method-assign]
    return real


async def test_a_row_the_database_refuses_is_dropped_and_holds_back_no_other(
    nursery: trio.Nursery,
    database_url: str,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An upstream reports more prompt tokens than a database column holds: that request's
    row is dropped, an error naming its request id and what refused it (not the row), and
    counted; the rows before and after it are written. It used to fail its batch at every
    retry, with every row queued behind it: no spend was recorded again."""

    def answer(request: ReceivedRequest) -> JSONReply:
        huge = request.json["messages"][0]["content"] == "huge"
        usage = {**USAGE, "prompt_tokens": UNSTORABLE_TOKENS} if huge else USAGE
        return JSONReply(chat_completion(usage=usage))

    upstream.handler = answer
    params = {
        "model": "openai/upstream-model", "api_base": upstream.base_url, "api_key": "k",
        "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6,
    }  # fmt: skip
    config = {
        "model_list": [{"model_name": "g", "litellm_params": params}],
        "general_settings": {"database_url": database_url},
    }
    gateway = await start_gateway(nursery, config)
    caplog.set_level(logging.INFO, logger="trigate")  # not the usage log's DEBUG records
    ids = []
    async with gateway.client() as client:
        for content in ("hi", "huge", "hi", "hi"):
            body = {"model": "g", "messages": [{"role": "user", "content": content}]}
            reply = await client.post("/v1/chat/completions", json={**body, "user": SECRET_USER})
            assert reply.status_code == 200, reply.text
            ids.append(reply.headers["x-trigate-request-id"])
    await gateway.records.wait_for(len(ids))
    ledger = gateway.gateway.ledger
    assert await ledger.flush()
    assert ledger.queued == 0 and ledger.refused == 1 and ledger.dropped == 0
    async with gateway.client() as client:
        rows = [(await client.get(f"/spend/logs?request_id={id_}")).json() for id_ in ids]
        metrics = (await client.get("/metrics")).text
    assert [len(found) for found in rows] == [1, 0, 1, 1]
    assert "trigate_spend_log_refused_rows_total 1.0" in metrics
    [dropped] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert dropped.name == "trigate.spend" and ids[1] in dropped.getMessage()
    postgresql = database_url.startswith("postgresql")
    refusal = "NumericValueOutOfRange 22003" if postgresql else "OverflowError"
    assert f"the database refuses it ({refusal})" in dropped.getMessage()
    text = logged(caplog)
    assert SECRET_USER not in text and str(UNSTORABLE_TOKENS) not in text


async def test_a_refused_batch_is_written_in_halves_down_to_the_rows_refused(
    database_url: str,
) -> None:
    """Two refused rows among five the store takes, in one batch: one flush writes the
    five and drops the two; the rows after them are written as ever."""
    store = await Store.open(database_url)
    ledger = SpendLedger(store)
    refused = {"r2", "r5"}
    for n in range(7):
        tokens = UNSTORABLE_TOKENS if f"r{n}" in refused else 5
        await ledger.write(record(f"r{n}", prompt_tokens=tokens))
    assert await ledger.flush()
    assert await stored_ids(store) == {"r0", "r1", "r3", "r4", "r6"}
    assert ledger.queued == 0 and ledger.refused == 2
    await ledger.write(record("r7"))
    assert await ledger.flush()
    assert "r7" in await stored_ids(store) and ledger.refused == 2
    await store.close()


async def test_a_row_refused_alone_is_kept_until_the_store_takes_another(
    database_url: str,
) -> None:
    """A row refused alone, with no other row written, may be refused for a fault that is
    not its own (a schema no row fits): it is kept, until a row after it is written."""
    store = await Store.open(database_url)
    ledger = SpendLedger(store)
    await ledger.write(record("bad", prompt_tokens=UNSTORABLE_TOKENS))
    assert not await ledger.flush()
    assert ledger.queued == 1 and ledger.refused == 0
    assert not await ledger.flush(), "kept again"
    await ledger.write(record("good"))
    assert await ledger.flush()
    assert ledger.queued == 0 and ledger.refused == 1
    assert await stored_ids(store) == {"good"}
    await store.close()


async def test_an_outage_met_while_halving_keeps_every_row_not_written(
    database_url: str,
) -> None:
    """The store goes down while a refused batch is being written in halves: the rows it
    took are written, every other row (the refused one too) stays queued, and all are
    written, the refused one dropped, once the store is back."""
    store = await Store.open(database_url)
    # The whole batch, its first half, its first quarter; then down.
    real = down_after(store, 3)
    ledger = SpendLedger(store)
    for n in range(8):
        tokens = UNSTORABLE_TOKENS if n == 3 else 5
        await ledger.write(record(f"r{n}", prompt_tokens=tokens))
    assert not await ledger.flush()
    assert await stored_ids(store) == {"r0", "r1"}
    assert ledger.queued == 6 and ledger.refused == 0
    store.record_spend = real  # type: ignore[method-assign]
    assert await ledger.flush()
    assert await stored_ids(store) == {f"r{n}" for n in range(8)} - {"r3"}
    assert ledger.queued == 0 and ledger.refused == 1
    await store.close()


async def test_an_outage_keeps_a_row_refused_alone_at_the_head_of_the_queue(
    database_url: str,
) -> None:
    """A row refused alone, held until the store takes another, when the store goes down
    instead: it is kept, in its place, with every row after it."""
    store = await Store.open(database_url)
    real = down_after(store, 2)  # the batch, its refused first row alone; then down
    ledger = SpendLedger(store, batch_size=2)
    for n in range(4):
        await ledger.write(record(f"r{n}", prompt_tokens=UNSTORABLE_TOKENS if n == 0 else 5))
    assert not await ledger.flush()
    assert ledger.queued == 4 and ledger.refused == 0
    store.record_spend = real  # type: ignore[method-assign]
    written: list[list[str]] = []

    async def recording(rows: Sequence[Row], also_users: Sequence[str] = ()) -> int:
        written.append([row["request_id"] for row in rows])
        return await real(rows, also_users)

    store.record_spend = recording  # type: ignore[method-assign]
    assert await ledger.flush()
    assert written[0] == ["r0", "r1"], "the queue's order kept"
    assert await stored_ids(store) == {"r1", "r2", "r3"}
    assert ledger.queued == 0 and ledger.refused == 1
    await store.close()


async def test_a_bug_of_ours_drops_no_row(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A value no driver binds (a dict where text goes) is a bug of ours, not a refusal of
    the database's: every row stays queued, and the error is logged as one."""
    store = await Store.open(database_url)
    ledger = SpendLedger(store)
    await ledger.write(record("r0"))
    # Off-type on purpose: a dict where the record holds text.
    await ledger.write(dataclasses.replace(record("r1"), model=cast(str, {"not": "text"})))
    await ledger.write(record("r2"))
    assert not await ledger.flush()
    assert ledger.queued == 3 and ledger.refused == 0 and ledger.dropped == 0
    assert await stored_ids(store) == set()
    [failed] = [r for r in caplog.records if r.name == "trigate.spend"]
    assert failed.levelno == logging.ERROR and failed.exc_info is not None
    await store.close()


def _gateway_config(database_url: str, upstream: FakeUpstream) -> dict[str, Any]:
    params = {
        "model": "openai/upstream-model", "api_base": upstream.base_url, "api_key": "k",
        "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6,
    }  # fmt: skip
    return {
        "model_list": [{"model_name": "g", "litellm_params": params}],
        "general_settings": {"database_url": database_url},
    }


async def _chat(gateway: RunningGateway, contents: Sequence[str]) -> list[dict[str, Any]]:
    """Each content asked in turn; every row then flushed, and each request's row."""
    ids = []
    async with gateway.client() as client:
        for content in contents:
            body = {"model": "g", "messages": [{"role": "user", "content": content}]}
            reply = await client.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
            ids.append(reply.headers["x-trigate-request-id"])
    await gateway.records.wait_for(len(ids))
    ledger = gateway.gateway.ledger
    assert await ledger.flush(), "every row written"
    assert ledger.queued == 0 and ledger.refused == 0
    async with gateway.client() as client:
        found = [(await client.get(f"/spend/logs?request_id={id_}")).json() for id_ in ids]
    assert [len(rows) for rows in found] == [1] * len(ids)
    return [rows[0] for rows in found]


async def test_an_upstream_id_of_any_length_is_stored_cut(
    nursery: trio.Nursery, database_url: str, upstream: FakeUpstream
) -> None:
    """An upstream answers with a 4 KB id: its row is written with the id cut to 512
    characters, as a client's texts are. PostgreSQL refuses an index entry past 2,704
    bytes (`response_id` is indexed) with SQLSTATE 54000, which psycopg files under
    OperationalError: it was taken for an outage, and no spend was written again."""
    long_id = "chatcmpl-" + secrets.token_urlsafe(3072)  # 4 KB, which no compression fits

    def answer(request: ReceivedRequest) -> JSONReply:
        body = chat_completion(usage=USAGE)
        if request.json["messages"][0]["content"] == "long":
            body["id"] = long_id
        return JSONReply(body)

    upstream.handler = answer
    gateway = await start_gateway(nursery, _gateway_config(database_url, upstream))
    rows = await _chat(gateway, ["hi", "long", "hi"])
    assert rows[1]["response_id"] == long_id[:512]


async def test_a_value_past_postgresqls_index_limit_is_refused_not_an_outage(
    postgres_url: str,
) -> None:
    """SQLSTATE 54000 (an index entry too long) is the row's fault, at every try: a
    `Refused`, which the ledger drops, not an outage it retries for ever."""
    store = await Store.open(postgres_url)
    row = {**_row(record("r0")), "response_id": secrets.token_urlsafe(3072)}
    with pytest.raises(Refused) as refused:
        await store.record_spend([row])
    assert str(refused.value) == "ProgramLimitExceeded 54000"
    await store.close()


async def test_an_upstreams_boolean_token_count_is_no_count(
    nursery: trio.Nursery, database_url: str, upstream: FakeUpstream
) -> None:
    """An upstream reports `"prompt_tokens": true`: no count (a bool is an int to
    isinstance), so the prompt is counted, and its row written. PostgreSQL refused a
    boolean for an INTEGER column (SQLSTATE 42804), taken for a bug of ours: the batch
    was retried for ever, and no spend was written again."""

    def answer(request: ReceivedRequest) -> JSONReply:
        bad = request.json["messages"][0]["content"] == "bad"
        return JSONReply(chat_completion(usage={**USAGE, "prompt_tokens": bad or 5}))

    upstream.handler = answer
    gateway = await start_gateway(nursery, _gateway_config(database_url, upstream))
    rows = await _chat(gateway, ["hi", "bad", "hi"])
    assert [row["prompt_tokens"] for row in rows[::2]] == [5, 5]
    assert rows[1]["prompt_tokens"] > 1, "counted, not the bool's 1"


async def test_a_boolean_count_in_a_record_is_written_as_an_integer(database_url: str) -> None:
    """Whatever made a record's count a bool, its row is written, as 0 or 1."""
    store = await Store.open(database_url)
    ledger = SpendLedger(store)
    await ledger.write(record("r0", prompt_tokens=True))
    assert await ledger.flush()
    [row] = await store.spend_logs(SpendFilter())
    assert row["prompt_tokens"] == 1 and type(row["prompt_tokens"]) is int
    await store.close()


class RefusingStore:
    """A stand-in store that refuses every row given in `refused` (all, if None), as a
    schema no row fits would, and takes the others."""

    def __init__(self, refused: set[str] | None = None) -> None:
        self.refused = refused
        self.calls = 0
        self.stored: list[str] = []

    async def record_spend(self, rows: Sequence[Row], also_users: Sequence[str] = ()) -> int:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        ids = [row["request_id"] for row in rows]
        if self.refused is None or self.refused & set(ids):
            raise Refused(ValueError("refused"))
        self.stored += ids
        return len(ids)


class GatedStore(RefusingStore):
    """A RefusingStore whose write of the row `gate` alone waits for `release`: a flush
    held there, under way, while the test writes more."""

    def __init__(self, gate: str, refused: set[str] | None = None) -> None:
        super().__init__(refused)
        self.gate = gate
        self.release = trio.Event()

    async def record_spend(self, rows: Sequence[Row], also_users: Sequence[str] = ()) -> int:
        if [row["request_id"] for row in rows] == [self.gate]:
            await self.release.wait()
        return await super().record_spend(rows, also_users)


def _ledger(store: RefusingStore, **options: Any) -> SpendLedger:
    return SpendLedger(cast(Store, store), **options)


async def test_a_store_refusing_every_row_costs_a_flush_one_batch_of_tries() -> None:
    """A store that refuses every row: a flush writes one batch, in halves down to each
    row, and ends there, every row kept. It went on through the whole queue, two
    transactions a row (2,000 rows: 4,000 transactions per attempt)."""
    store = RefusingStore()
    ledger = _ledger(store, batch_size=50)
    for n in range(2000):
        await ledger.write(record(f"r{n}"))
    assert not await ledger.flush()
    assert store.calls <= 2 * 50, "the batch in halves, and one row behind it"
    assert ledger.queued == 2000 and ledger.refused == 0 and store.stored == []


async def test_the_queue_bound_holds_while_a_store_refuses_every_row() -> None:
    """While a flush holds rows refused alone out of the queue, they are still queued
    (the depth gauge reads them) and the queue's bound counts them: the oldest rows are
    dropped, and the bound holds once they are back. They were dropped one per append
    only once the queue alone was past its bound: it stayed past it for ever."""
    store = GatedStore(gate="a99")
    ledger = _ledger(store, max_queued=100)
    for n in range(100):
        await ledger.write(record(f"a{n}"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ledger.flush)
        await trio.testing.wait_all_tasks_blocked()
        assert ledger.queued == 100, "rows held out of the queue still wait"
        for n in range(100):
            await ledger.write(record(f"b{n}"))
            assert ledger.queued == 100
        store.release.set()
    assert ledger.queued == 100 and ledger.dropped == 100
    assert [row["request_id"] for row in ledger._queue] == [f"b{n}" for n in range(100)]
    await ledger.write(record("c"))
    assert ledger.queued == 100


async def test_a_lone_refused_row_neither_backs_the_writer_off_nor_alerts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A row refused alone, with no other row to write, is kept; tried again, it is no
    news of the store: the writer waits for the next row, at its usual pace, and nothing
    tells of a store failing. It backed off up to 30 s, an alert at every try."""
    store = RefusingStore(refused={"bad"})
    ledger = _ledger(store)
    failures: list[str] = []
    ledger.on_failure = failures.append
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ledger.run)
        await ledger.write(record("bad"))
        await trio.sleep(300)
        assert store.calls == 1 and failures == []
        await ledger.write(record("good"))
        await trio.sleep(1)
        assert store.stored == ["good"] and ledger.refused == 1 and ledger.queued == 0
        nursery.cancel_scope.cancel()


async def test_a_store_refusing_every_row_is_told_under_light_traffic(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A store that refuses every row, one request at a time: a lone row refused tells
    nothing, but the next row refused with it, and none taken, is a failure of the
    store's, told (the alerts' `db_exceptions`) and backed off from."""
    store = RefusingStore()
    ledger = _ledger(store)
    failures: list[str] = []
    ledger.on_failure = failures.append
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ledger.run)
        await ledger.write(record("r0"))
        await trio.sleep(60)
        assert failures == []
        await ledger.write(record("r1"))
        await trio.sleep(60)
        assert failures and ledger.queued == 2 and ledger.refused == 0
        nursery.cancel_scope.cancel()


async def test_a_dropped_rows_cost_is_no_longer_counted_against_budgets(
    database_url: str,
) -> None:
    """A row the database refuses is dropped, and its cost with it: the store will never
    count it. A wild one (an upstream's 2**63 tokens) counted against the key's budget
    in this worker until it restarted, turning the key's every request away."""
    store = await Store.open(database_url)
    ledger = SpendLedger(store)
    await ledger.write(record("good"))
    wild = dataclasses.replace(record("bad", prompt_tokens=UNSTORABLE_TOKENS), cost=1e13)
    await ledger.write(wild)
    assert ledger.unflushed("keys", "hash") == 1e13 + 1.0
    assert await ledger.flush()
    assert ledger.refused == 1 and ledger.unflushed("keys", "hash") == 0.0
    await store.close()


async def test_a_full_batch_of_refused_rows_holds_back_no_row_behind_it(
    database_url: str,
) -> None:
    """A whole batch of rows refused alone at the queue's head, rows the store takes
    behind it: one flush writes those and drops the refused. The flush stopped after the
    batch, none of it taken, and the next read the same batch: no row behind it was
    ever written."""
    store = await Store.open(database_url)
    ledger = SpendLedger(store, batch_size=20)
    for n in range(20):
        await ledger.write(record(f"bad{n}", prompt_tokens=UNSTORABLE_TOKENS))
    for n in range(5):
        await ledger.write(record(f"good{n}"))
    assert await ledger.flush()
    assert await stored_ids(store) == {f"good{n}" for n in range(5)}
    assert ledger.queued == 0 and ledger.refused == 20
    await store.close()


async def test_a_run_of_refused_rows_longer_than_a_batch_holds_back_no_row() -> None:
    """Two batches' worth of rows refused alone, then rows the store takes: one flush
    writes these and drops the refused, however long the run."""
    store = RefusingStore(refused={f"bad{n}" for n in range(45)})
    ledger = _ledger(store, batch_size=20)
    for n in range(45):
        await ledger.write(record(f"bad{n}"))
    for n in range(5):
        await ledger.write(record(f"good{n}"))
    assert await ledger.flush()
    assert sorted(store.stored) == [f"good{n}" for n in range(5)]
    assert ledger.queued == 0 and ledger.refused == 45


async def test_a_flush_from_outside_leaves_the_writer_awake_to_new_rows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A row refused alone is kept, and the writer waits for the next row; a flush called
    from outside (a test's, a shutdown's) that keeps it too leaves the writer waiting on
    what a new row sets. That flush replaced the Event the writer waits on, and the
    writer, waiting on the old one, never wrote a row again."""
    store = RefusingStore(refused={"bad"})
    ledger = _ledger(store)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ledger.run)
        await ledger.write(record("bad"))
        await trio.sleep(5)
        assert store.calls == 1, "kept; the writer waits for another row"
        assert not await ledger.flush()
        await ledger.write(record("good"))
        await trio.sleep(60)
        assert store.stored == ["good"] and ledger.refused == 1 and ledger.queued == 0
        nursery.cancel_scope.cancel()


async def test_a_long_upstream_id_finds_its_row(
    nursery: trio.Nursery, database_url: str, upstream: FakeUpstream
) -> None:
    """`/spend/logs?request_id=` with the id the client's answer carried, longer than a
    row keeps (609 characters): its row is found, the id matched as stored (cut to 512).
    It found none, the id compared whole."""
    long_id = "chatcmpl-" + "x" * 600
    upstream.handler = lambda request: JSONReply({**chat_completion(usage=USAGE), "id": long_id})
    gateway = await start_gateway(nursery, _gateway_config(database_url, upstream))
    async with gateway.client() as client:
        body = {"model": "g", "messages": [{"role": "user", "content": "hi"}]}
        reply = await client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200 and reply.json()["id"] == long_id
    await gateway.records.wait_for(1)
    assert await gateway.gateway.ledger.flush()
    async with gateway.client() as client:
        found = (await client.get("/spend/logs", params={"request_id": long_id})).json()
    assert [row["response_id"] for row in found] == [long_id[:512]]


async def test_a_refused_row_the_queue_bound_drops_no_longer_counts_against_budgets() -> None:
    """A row refused alone, kept at the queue's head or held by a flush under way, that
    the queue's bound drops: its cost is settled, as a row dropped as refused is (it may
    be what the database refuses, a wild cost). It counted against the key's budget in
    this worker until it restarted."""
    store = GatedStore(gate="held", refused={"kept", "held", "x"})
    ledger = _ledger(store, max_queued=2)
    await ledger.write(dataclasses.replace(record("kept"), cost=1e13))
    assert not await ledger.flush()
    assert ledger.queued == 1 and ledger.unflushed("keys", "hash") == 1e13
    await ledger.write(record("a"))
    await ledger.write(record("b"))
    assert ledger.dropped == 1 and ledger.unflushed("keys", "hash") == 2.0, "kept: settled"
    await ledger.write(record("c"))
    assert ledger.dropped == 2 and ledger.unflushed("keys", "hash") == 3.0, "a: still counts"
    assert await ledger.flush()
    assert ledger.unflushed("keys", "hash") == 1.0, "a's, the spend made"

    await ledger.write(record("x"))
    await ledger.write(dataclasses.replace(record("held"), cost=1e13))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ledger.flush)
        await trio.testing.wait_all_tasks_blocked()
        assert [row["request_id"] for row, _ in ledger._held] == ["x"]
        await ledger.write(record("d"))
        assert ledger.dropped == 3 and not ledger._held
        assert ledger.unflushed("keys", "hash") == 1e13 + 2.0, "x: settled"
        store.release.set()
    assert ledger.queued == 0 and ledger.unflushed("keys", "hash") == 1.0

"""The store on SQLite and PostgreSQL alike: migrations, rows, spend and budget windows."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import trio

from trigate.store import Conflict, Row, SpendFilter, Store, next_reset


async def stored(store: Store, kind: str, key: str) -> Row:
    """The row the test expects to be there."""
    row = await store.get(kind, key)
    assert row is not None, (kind, key)
    return row


def key_row(token_hash: str, **fields: object) -> dict[str, Any]:
    return {
        "token_hash": token_hash,
        "key_name": "sk-...abcd",
        "created_at": 1000.0,
        "updated_at": 1000.0,
        **fields,
    }


def spend_row(request_id: str, cost: float, **fields: object) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "key_hash": "h1",
        "team_id": "t1",
        "user_id": "u1",
        "model_group": "gpt",
        "deployment": "d0",
        "model": "gpt-4o",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost": cost,
        "status": 200,
        "stream": False,
        "cancelled_by_client": False,
        "start_time": 2000.0,
        "end_time": 2001.0,
        "ttft_ms": None,
        **fields,
    }


async def test_migrations_are_idempotent(database_url: str) -> None:
    store = await Store.open(database_url)
    await store.close()
    store = await Store.open(database_url)  # a second start finds the schema current
    await store.insert("keys", key_row("h1"))
    assert (await stored(store, "keys", "h1"))["key_name"] == "sk-...abcd"
    await store.close()


async def test_rows_round_trip_with_json_and_booleans(database_url: str) -> None:
    store = await Store.open(database_url)
    await store.insert(
        "keys",
        key_row("h1", models=["gpt-4o"], metadata={"team": "ml"}, blocked=True, max_budget=2.5),
    )
    row = await stored(store, "keys", "h1")
    assert row["models"] == ["gpt-4o"] and row["metadata"] == {"team": "ml"}
    assert row["blocked"] is True and row["max_budget"] == 2.5 and row["spend"] == 0
    assert await store.update("keys", "h1", {"blocked": False, "rpm_limit": 5})
    assert (await stored(store, "keys", "h1"))["rpm_limit"] == 5
    assert not await store.update("keys", "nope", {"rpm_limit": 1})
    assert await store.delete("keys", "token_hash", ["h1", "h2"]) == 1
    assert await store.get("keys", "h1") is None
    await store.close()


async def test_a_uniqueness_conflict_is_the_callers_not_a_store_failure(
    database_url: str,
) -> None:
    store = await Store.open(database_url)
    await store.insert("keys", key_row("h1", key_alias="one"))
    await store.insert("keys", key_row("h2", key_alias="two"))
    with pytest.raises(Conflict):
        await store.insert("keys", key_row("h1"))
    with pytest.raises(Conflict):
        await store.update("keys", "h2", {"key_alias": "one"})
    assert (await stored(store, "keys", "h2"))["key_alias"] == "two"
    await store.close()


async def test_unknown_columns_are_refused(database_url: str) -> None:
    store = await Store.open(database_url)
    with pytest.raises(ValueError, match="unknown keys columns"):
        await store.insert("keys", key_row("h1", evil="x; DROP TABLE"))
    await store.close()


async def test_spend_is_recorded_once_and_counted_atomically(database_url: str) -> None:
    store = await Store.open(database_url)
    await store.insert("keys", key_row("h1", team_id="t1", user_id="u1"))
    await store.insert("teams", {"team_id": "t1", "created_at": 0.0, "updated_at": 0.0})
    await store.insert("users", {"user_id": "u1", "created_at": 0.0, "updated_at": 0.0})
    rows = [spend_row("r1", 0.25), spend_row("r2", 0.5)]
    assert await store.record_spend(rows) == 2
    assert await store.record_spend(rows) == 0, "a retried batch adds nothing"
    for table, key in (("keys", "h1"), ("teams", "t1"), ("users", "u1")):
        assert (await stored(store, table, key))["spend"] == pytest.approx(0.75)
    logs = await store.spend_logs(SpendFilter(key_hash="h1"))
    assert {log["request_id"] for log in logs} == {"r1", "r2"}
    assert logs[0]["stream"] is False
    await store.close()


async def test_spend_log_filters(database_url: str) -> None:
    store = await Store.open(database_url)
    await store.record_spend(
        [
            spend_row("a", 1, start_time=100.0),
            spend_row("b", 1, start_time=200.0, team_id="t2"),
            spend_row("c", 1, start_time=300.0, user_id="u9"),
        ]
    )

    def ids(rows: Iterable[Row]) -> list[str]:
        return sorted(r["request_id"] for r in rows)

    assert ids(await store.spend_logs(SpendFilter(team_id="t2"))) == ["b"]
    assert ids(await store.spend_logs(SpendFilter(user_id="u9"))) == ["c"]
    assert ids(await store.spend_logs(SpendFilter(start=150.0, end=300.0))) == ["b"]
    assert ids(await store.spend_logs(SpendFilter(request_id="c"))) == ["c"]
    assert await store.spend_logs(SpendFilter(request_id="nope")) == []
    await store.close()


async def test_spend_totals_group_by_day_team_key_and_model(database_url: str) -> None:
    store = await Store.open(database_url)
    await store.insert(
        "teams", {"team_id": "t1", "team_alias": "ml", "created_at": 0.0, "updated_at": 0.0}
    )
    day = 86400.0
    await store.record_spend(
        [
            spend_row("a", 1.0, start_time=10.0),
            spend_row("b", 2.0, start_time=20.0),
            spend_row("c", 4.0, start_time=30.0, model_group="other"),
            spend_row("d", 8.0, start_time=day + 5, team_id=None),
        ]
    )
    totals = await store.spend_totals(SpendFilter(start=0.0, end=2 * day))
    by = {(t["day"], t["team_id"], t["model_group"]): t for t in totals}
    assert by["1970-01-01", "t1", "gpt"]["spend"] == 3.0
    assert by["1970-01-01", "t1", "gpt"]["requests"] == 2
    assert by["1970-01-01", "t1", "gpt"]["prompt_tokens"] == 20
    assert by["1970-01-01", "t1", "gpt"]["team_alias"] == "ml"
    assert by["1970-01-01", "t1", "other"]["spend"] == 4.0
    assert by["1970-01-02", None, "gpt"]["team_alias"] is None
    assert len(await store.spend_totals(SpendFilter(start=0.0, end=day))) == 2
    assert len(await store.spend_totals(SpendFilter(start=0.0, end=2 * day, team_id="t1"))) == 2
    await store.close()


async def test_team_members_and_model_aliases(database_url: str) -> None:
    store = await Store.open(database_url)
    await store.insert(
        "teams",
        {"team_id": "t1", "model_aliases": {"fast": "gpt"}, "created_at": 0.0, "updated_at": 0.0},
    )
    assert (await stored(store, "teams", "t1"))["model_aliases"] == {"fast": "gpt"}
    member = {"team_id": "t1", "user_id": "u1", "role": "admin", "created_at": 1.0}
    await store.add_members([member, {**member, "user_id": "u2", "role": "user"}])
    with pytest.raises(Conflict):
        await store.add_members([{**member, "user_id": "u3"}, member])
    assert [m["user_id"] for m in await store.team_members("t1")] == ["u1", "u2"], (
        "a batch with a duplicate adds nobody"
    )
    assert await store.member_teams("u1") == [{"team_id": "t1", "role": "admin"}]
    assert await store.set_member_role("t1", "u2", "admin")
    assert not await store.set_member_role("t1", "nobody", "admin")
    assert await store.remove_member("t1", "u1")
    assert not await store.remove_member("t1", "u1")
    await store.add_members([{**member, "team_id": "t2", "user_id": "u2"}])
    await store.insert("keys", key_row("h1", team_id="t1"))
    await store.insert("keys", key_row("h2", user_id="u2"))
    assert await store.delete_with_keys("teams", ["t1"]) == (1, ["h1"])
    assert await store.member_teams("u2") == [{"team_id": "t2", "role": "admin"}], (
        "a deleted team takes its memberships"
    )
    await store.insert("users", {"user_id": "u2", "created_at": 0.0, "updated_at": 0.0})
    assert await store.delete_with_keys("users", ["u2", "u9"]) == (1, ["h2"])
    assert await store.member_teams("u2") == [] and await store.select("keys", {}) == []
    with pytest.raises(ValueError, match="own no keys"):
        await store.delete_with_keys("keys", ["h1"])
    await store.close()


async def test_budget_windows_reset_on_schedule(database_url: str) -> None:
    store = await Store.open(database_url)
    await store.insert(
        "keys", key_row("h1", spend=9.0, budget_duration="1h", budget_reset_at=3600.0)
    )
    assert await store.reset_due_budgets("keys", now=3599.0) == 0
    assert await store.reset_due_budgets("keys", now=3600.0 * 3.5) == 1
    row = await stored(store, "keys", "h1")
    assert row["spend"] == 0 and row["budget_reset_at"] == 3600.0 * 4
    await store.close()


def test_next_reset_keeps_the_schedule() -> None:
    assert next_reset(100.0, "10s", 100.0) == 110.0
    assert next_reset(100.0, "10s", 135.0) == 140.0
    assert next_reset(100.0, None, 135.0) is None


async def test_sqlite_reads_do_not_wait_on_another_writer(tmp_path: Path) -> None:
    """Another process holding SQLite's write lock (a long flush, say) must not stall key
    lookups: reads are deferred transactions, which WAL lets run beside a writer."""
    path = tmp_path / "trigate.db"
    store = await Store.open(f"sqlite:///{path}")
    await store.insert("keys", key_row("h1"))
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        # A read that waited on the lock would fail with "database is locked" once
        # SQLite's busy timeout ran out; the deadline only guards against a hang.
        with trio.fail_after(10):
            assert (await stored(store, "keys", "h1"))["token_hash"] == "h1"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        await store.close()


def _stored_response(response_id: str, previous: str | None, expires_at: float) -> dict[str, Any]:
    return {
        "response_id": response_id,
        "response": {"id": response_id, "output": [{"type": "message", "role": "assistant"}]},
        "input_items": [{"type": "message", "role": "user", "content": response_id}],
        "model_group": "mock",
        "deployment": "d1",
        "key_hash": "k1",
        "team_id": None,
        "previous_response_id": previous,
        "native": False,
        "created_at": 1.0,
        "expires_at": expires_at,
    }


async def test_response_chains_stop_at_expiry_and_deletion(database_url: str) -> None:
    store = await Store.open(database_url)
    await store.save_response(_stored_response("resp_a", None, 100.0))
    await store.save_response(_stored_response("resp_b", "resp_a", 200.0))
    await store.save_response(_stored_response("resp_c", "resp_b", 200.0))
    chain = await store.response_chain("resp_c", 50.0)
    assert [row["response_id"] for row in chain] == ["resp_c", "resp_b", "resp_a"]
    assert chain[0]["input_items"][0]["content"] == "resp_c" and chain[0]["native"] is False
    assert [row["response_id"] for row in await store.response_chain("resp_c", 50.0, 1)] == [
        "resp_c"
    ]
    assert len(await store.response_chain("resp_c", 150.0)) == 2
    assert await store.delete_expired_responses(150.0) == 1
    assert await store.delete_response("resp_b", "k1") is True
    assert await store.delete_response("resp_b", "k1") is False
    assert [row["response_id"] for row in await store.response_chain("resp_c", 50.0)] == ["resp_c"]
    await store.close()

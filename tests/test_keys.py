"""Virtual keys, teams and users: the admin API, every limit, and spend, as clients see them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import openai
import orjson
import pytest
import trio
import trio.testing
from asgi_driver import Harness, chat_request, harness
from fakes import FakeUpstream, JSONReply, StreamReply, chat_completion, chunk, stream_of
from helpers import openai_config, pass_time, sdk, start_gateway
from openai.types.chat import ChatCompletionMessageParam
from scripted import Step, group_config
from scripted import error as upstream_error

from trigate.auth import Caller, generate_key, hash_key
from trigate.clock import wall_time
from trigate.errors import AuthenticationFailed
from trigate.gateway import UNKNOWN_OUTPUT_ALLOWANCE
from trigate.spend import RequestRecord, SpendLedger
from trigate.spend.prices import PriceTable
from trigate.store import SpendFilter

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
# $1 per million tokens each way: 5 prompt + 2 completion tokens cost 7e-6.
PRICED: dict[str, Any] = {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6}
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


async def priced(nursery: trio.Nursery, **router: Any) -> Harness:
    config = group_config(["d0"], router=router, **PRICED)
    return await harness(nursery, config, {"d0": [Step()]})


async def new_key(h: Harness, **fields: Any) -> str:
    reply = await h.admin("/key/generate", fields)
    assert reply.status == 200, reply.body
    key: str = reply.json["key"]
    return key


async def test_a_taken_alias_is_a_400_however_it_is_asked_for(nursery: trio.Nursery) -> None:
    """An empty alias is an alias too, and an update racing past the route's own check
    meets the store's unique rule: both are the caller's 400, never a 500."""
    h = await priced(nursery)
    await new_key(h, key_alias="")
    assert (await h.admin("/key/generate", {"key_alias": ""})).status == 400
    await new_key(h, key_alias="a")
    other = await new_key(h, key_alias="b")
    taken = await h.admin("/key/update", {"key": other, "key_alias": "a"})
    assert taken.status == 400 and taken.json["error"]["type"] == "invalid_request_error"


async def flush(h: Harness) -> None:
    assert await h.gateway.ledger.flush()


# The admin API.


async def test_generated_keys_are_stored_only_as_hashes(nursery: trio.Nursery) -> None:
    h = await priced(nursery)
    reply = await h.admin("/key/generate", {"key_alias": "ci", "duration": "30d", "models": ["g"]})
    key = reply.json["key"]
    assert key.startswith("sk-") and len(key) >= 3 + 32
    assert reply.json["expires"] is not None and reply.json["key_alias"] == "ci"
    rows = await h.gateway.store.select("keys", {})
    assert len(rows) == 1 and key not in str(rows)
    info = await h.admin(f"/key/info?key={key}")
    assert info.status == 200 and key not in info.body.decode()
    assert info.json["info"]["models"] == ["g"] and info.json["info"]["spend"] == 0
    assert (await h.admin(f"/key/info?key={reply.json['token']}")).status == 200


async def test_caller_chosen_keys_must_be_strong(nursery: trio.Nursery) -> None:
    h = await priced(nursery)
    assert (await h.admin("/key/generate", {"key": "sk-short"})).status == 400
    chosen = "sk-" + "a" * 40
    assert (await h.admin("/key/generate", {"key": chosen})).json["key"] == chosen
    assert (await h.chat(key=chosen)).status == 200


async def test_admin_needs_an_admin(nursery: trio.Nursery) -> None:
    """A key without a user's role may not make keys (tests/test_roles.py has the roles)."""
    h = await priced(nursery)
    key = await new_key(h)
    exchange = chat_request(h.nursery, h.app, {}, path="/key/generate", key=key)
    assert (await exchange.start())["status"] == 403


async def test_update_list_regenerate_delete(nursery: trio.Nursery) -> None:
    h = await priced(nursery)
    first = await new_key(h, key_alias="one")
    await new_key(h, key_alias="two")
    listed = await h.admin("/key/list")
    assert listed.json["total_count"] == 2
    updated = (await h.admin("/key/update", {"key": first, "rpm_limit": 7})).json
    assert updated["rpm_limit"] == 7 and updated["key"] == updated["token"] != first
    regenerated = await h.admin("/key/regenerate", {"key": first})
    fresh = regenerated.json["key"]
    assert fresh != first and regenerated.json["rpm_limit"] == 7
    assert (await h.chat(key=first)).status == 401
    assert (await h.chat(key=fresh)).status == 200
    deleted = await h.admin("/key/delete", {"key_aliases": ["two"]})
    assert len(deleted.json["deleted_keys"]) == 1
    assert (await h.admin("/key/list")).json["total_count"] == 1
    assert (await h.admin("/key/delete", {"keys": [fresh]})).status == 200
    assert (await h.chat(key=fresh)).status == 401, "a deleted key stops at once"


async def test_bad_admin_input_is_400(nursery: trio.Nursery) -> None:
    h = await priced(nursery)
    assert (await h.admin("/key/generate", {"duration": "soon"})).status == 400
    assert (await h.admin("/key/generate", {"max_budget": "lots"})).json["error"][
        "param"
    ] == "max_budget"
    assert (await h.admin("/key/generate", {"team_id": "nope"})).status == 404
    assert (await h.admin("/key/info")).status == 400
    assert (await h.admin("/key/update", {"key": "sk-" + "x" * 40})).status == 404


# Enforcement.


async def test_invalid_expired_and_blocked_keys_are_401(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    h = await priced(nursery)
    assert (await h.chat(key="sk-" + "z" * 40)).status == 401
    short = await new_key(h, duration="1h")
    assert (await h.chat(key=short)).status == 200
    await pass_time(virtual_clock, 3601)
    expired = await h.chat(key=short)
    assert expired.status == 401 and expired.json["error"]["code"] == "key_expired"
    key = await new_key(h)
    await h.admin("/key/block", {"key": key})
    assert (await h.chat(key=key)).json["error"]["code"] == "key_blocked"
    await h.admin("/key/unblock", {"key": key})
    assert (await h.chat(key=key)).status == 200


async def test_model_denied_is_403(nursery: trio.Nursery) -> None:
    h = await priced(nursery)
    key = await new_key(h, models=["other"])
    reply = await h.chat(key=key)
    assert reply.status == 403 and reply.json["error"]["type"] == "permission_error"
    assert h.upstreams.served == []


async def test_budget_exhausted_by_real_spend_then_reset_by_its_window(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    h = await priced(nursery)
    key = await new_key(h, max_budget=1e-5, budget_duration="1h")
    assert (await h.chat(key=key)).status == 200  # 7e-6 spent
    assert (await h.chat(key=key)).status == 200  # 1.4e-5: now over
    rejected = await h.chat(key=key)
    assert rejected.status == 400 and rejected.json["error"]["type"] == "budget_exceeded"
    assert len(h.upstreams.served) == 2, "no upstream call once the budget is gone"
    await flush(h)
    info = await h.admin(f"/key/info?key={key}")
    assert info.json["info"]["spend"] == pytest.approx(1.4e-5)
    await pass_time(virtual_clock, 3600)
    assert (await h.chat(key=key)).status == 200, "a new window, a fresh budget"


# A binary fraction of a dollar per token, so that sums of costs are exact.
UNIT = 2.0**-20


async def test_sequential_requests_stop_exactly_at_the_budget(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    """Flushes between requests move spend into the store under a cached key row: the
    budget must hold anyway (each request costs 7 units; the budget is 5 requests)."""
    config = group_config(["d0"], input_cost_per_token=UNIT, output_cost_per_token=UNIT)
    h = await harness(nursery, config, {"d0": [Step()]})
    key = await new_key(h, max_budget=35 * UNIT)
    statuses = []
    for _ in range(12):
        statuses.append((await h.chat(key=key)).status)
        await flush(h)
        await trio.sleep(0.7)
    assert statuses == [200] * 5 + [400] * 7
    assert (await h.gateway.store.select("keys", {}))[0]["spend"] == 35 * UNIT


async def outputs_priced(nursery: trio.Nursery, gate: trio.Event) -> Harness:
    """Output at one unit a token, prompts free: a request with `max_tokens` 10 reserves
    exactly 10 units and, answering 2 tokens, costs 2."""
    config = group_config(["d0"], input_cost_per_token=0.0, output_cost_per_token=UNIT)
    return await harness(nursery, config, {"d0": [Step(gate=gate)]})


async def test_concurrent_requests_are_admitted_only_as_far_as_the_budget_goes(
    nursery: trio.Nursery,
) -> None:
    release = trio.Event()
    h = await outputs_priced(nursery, release)
    key = await new_key(h, max_budget=30 * UNIT)
    statuses: list[int] = []
    answered = trio.Event()

    async def one() -> None:
        statuses.append((await h.chat(key=key, max_tokens=10)).status)
        if len(statuses) == 27:
            answered.set()

    async with trio.open_nursery() as burst:
        for _ in range(30):
            burst.start_soon(one)
        with trio.move_on_after(10):
            await answered.wait()
        assert statuses == [400] * 27 and len(h.upstreams.served) == 3
        release.set()
    assert statuses == [400] * 27 + [200] * 3
    await flush(h)
    assert (await h.gateway.store.select("keys", {}))[0]["spend"] == 6 * UNIT


async def test_requests_with_no_known_output_limit_run_side_by_side_under_a_budget(
    nursery: trio.Nursery,
) -> None:
    """A priced model without `max_output_tokens`, asked without `max_tokens`: each
    request reserves its prompt and `UNKNOWN_OUTPUT_ALLOWANCE` tokens of output, not all
    the budget has left, so others made meanwhile are admitted as far as it goes."""
    release = trio.Event()
    h = await outputs_priced(nursery, release)
    key = await new_key(h, max_budget=3 * UNKNOWN_OUTPUT_ALLOWANCE * UNIT)
    statuses: list[int] = []
    refused = trio.Event()

    async def one() -> None:
        statuses.append((await h.chat(key=key)).status)
        if statuses == [400]:
            refused.set()

    async with trio.open_nursery() as burst:
        for _ in range(4):
            burst.start_soon(one)
        with trio.fail_after(10):
            await refused.wait()
            await h.upstreams.wait_for(lambda: len(h.upstreams.served) == 3)
        release.set()
    assert sorted(statuses) == [200, 200, 200, 400]


async def test_a_failed_or_cancelled_request_releases_its_reservation(
    nursery: trio.Nursery,
) -> None:
    release = trio.Event()
    h = await outputs_priced(nursery, release)
    key = await new_key(h, max_budget=10 * UNIT)
    body = {"model": "g", "messages": MESSAGES, "max_tokens": 10}
    leaving = chat_request(h.nursery, h.app, body, key=key)
    await h.upstreams.wait_for(lambda: h.upstreams.served)
    with trio.fail_after(5):  # admitted, it would wait on the held upstream
        refused = await h.chat(key=key, max_tokens=10)
    assert refused.status == 400 and "reserved" in refused.json["error"]["message"]
    leaving.disconnect()
    await h.records.wait_for(2)
    h.upstreams.scripts["d0"] = [upstream_error(500)]
    assert (await h.chat(key=key, max_tokens=10)).status == 502, "admitted: nothing held"
    h.upstreams.scripts["d0"] = [Step()]
    assert (await h.chat(key=key, max_tokens=10)).status == 200, "the failure held nothing"


async def test_rpm_limit_and_headers(nursery: trio.Nursery) -> None:
    h = await priced(nursery)
    key = await new_key(h, rpm_limit=2, tpm_limit=10_000)
    first = await h.chat(key=key)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "10000"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 10_000
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert (await h.chat(key=key)).status == 200
    third = await h.chat(key=key)
    assert third.status == 429 and 1 <= int(third.headers["retry-after"]) <= 60
    assert "rpm_limit" in third.json["error"]["message"]
    unlimited = await h.chat()  # the master key passes every check
    assert unlimited.status == 200 and "x-ratelimit-limit-requests" not in unlimited.headers


async def test_tpm_counts_the_prompt_up_front(nursery: trio.Nursery) -> None:
    h = await priced(nursery)
    key = await new_key(h, tpm_limit=50)
    long = [{"role": "user", "content": "word " * 100}]
    exchange = chat_request(h.nursery, h.app, {"model": "g", "messages": long}, key=key)
    assert (await exchange.start())["status"] == 429
    assert h.upstreams.served == []
    assert (await h.chat(key=key)).status == 200  # a short prompt fits


async def test_tpm_settles_actual_usage(nursery: trio.Nursery) -> None:
    h = await priced(nursery)
    key = await new_key(h, tpm_limit=20)
    assert (await h.chat(key=key)).status == 200  # 7 tokens actually used
    assert (await h.chat(key=key)).status == 200  # 14
    assert (await h.chat(key=key)).status == 429  # 14 + this prompt's 8 > 20


async def test_parallel_limit(nursery: trio.Nursery) -> None:
    release = trio.Event()
    config = group_config(["d0"], **PRICED)
    h = await harness(nursery, config, {"d0": [Step(gate=release), Step()]})
    key = await new_key(h, max_parallel_requests=1)
    statuses: list[int] = []

    async def one() -> None:
        statuses.append((await h.chat(key=key)).status)

    async with trio.open_nursery() as burst:
        burst.start_soon(one)
        await h.upstreams.wait_for(lambda: h.upstreams.served)
        await one()  # while the first is in flight
        assert statuses == [429]
        release.set()
    assert statuses == [429, 200]
    assert (await h.chat(key=key)).status == 200, "the slot is free again"


async def test_team_limits_bind_member_keys(nursery: trio.Nursery) -> None:
    h = await priced(nursery)
    team = (await h.admin("/team/new", {"team_alias": "ml", "models": ["g"], "rpm_limit": 2})).json
    a = await new_key(h, team_id=team["team_id"])
    b = await new_key(h, team_id=team["team_id"], models=[])
    assert (await h.chat(key=a)).status == 200
    assert (await h.chat(key=b)).status == 200
    assert (await h.chat(key=a)).status == 429, "the team's rpm counts both keys"
    await h.admin("/team/update", {"team_id": team["team_id"], "models": ["other"]})
    info = await h.admin(f"/team/info?team_id={team['team_id']}")
    assert len(info.json["keys"]) == 2
    assert (await h.chat(key=b)).status == 403, "a team change applies at once"


async def test_deleting_a_team_deletes_its_keys(nursery: trio.Nursery) -> None:
    """As LiteLLM does; a key must never outlive the team whose limits bound it."""
    h = await priced(nursery)
    team = (await h.admin("/team/new", {"models": ["other"]})).json["team_id"]
    key = await new_key(h, team_id=team)
    bystander = await new_key(h)
    assert (await h.chat(key=key)).status == 403
    deleted = await h.admin("/team/delete", {"team_ids": [team]})
    assert deleted.status == 200 and len(deleted.json["deleted_keys"]) == 1
    assert (await h.chat(key=key)).status == 401
    assert (await h.admin(f"/key/info?key={key}")).status == 404
    assert (await h.chat(key=bystander)).status == 200


async def test_a_key_whose_team_row_is_gone_is_refused(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    """Defence in depth, for a team removed behind the gateway's back (another worker, SQL)."""
    h = await priced(nursery)
    team = (await h.admin("/team/new", {"models": ["other"]})).json["team_id"]
    key = await new_key(h, team_id=team)
    assert (await h.chat(key=key)).status == 403
    await h.gateway.store.delete("teams", "team_id", [team])
    await trio.sleep(6)  # past the cache's TTL
    refused = await h.chat(key=key)
    assert refused.status == 401 and refused.json["error"]["code"] == "team_deleted"
    assert h.upstreams.served == []


async def test_team_and_user_budgets(nursery: trio.Nursery) -> None:
    h = await priced(nursery)
    team = (await h.admin("/team/new", {"max_budget": 5e-6})).json
    key = await new_key(h, team_id=team["team_id"])
    assert (await h.chat(key=key)).status == 200
    assert (await h.chat(key=key)).json["error"]["type"] == "budget_exceeded"
    user = (await h.admin("/user/new", {"user_email": "a@b.c", "max_budget": 5e-6})).json
    assert (await h.chat(key=user["key"])).status == 200
    assert (await h.chat(key=user["key"])).status == 400
    await flush(h)
    info = await h.admin(f"/user/info?user_id={user['user_id']}")
    assert info.json["user_info"]["spend"] == pytest.approx(7e-6)
    assert len(info.json["keys"]) == 1


async def test_sdk_sees_each_rejection_as_its_exception_class(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    config = openai_config(upstream, **PRICED)
    upstream.handler = lambda request: JSONReply(chat_completion("hi", USAGE))
    running = await start_gateway(nursery, config)
    async with running.client() as admin:
        limited = (await admin.post("/key/generate", json={"rpm_limit": 1})).json()["key"]
        denied = (await admin.post("/key/generate", json={"models": ["x"]})).json()["key"]
        broke = (await admin.post("/key/generate", json={"max_budget": 0})).json()["key"]

    async def ask(key: str) -> None:
        async with sdk(running, key) as client:
            await client.chat.completions.create(model="gpt-test", messages=MESSAGES)

    await ask(limited)
    for key, error in (
        ("sk-" + "q" * 40, openai.AuthenticationError),
        (denied, openai.PermissionDeniedError),
        (limited, openai.RateLimitError),
        (broke, openai.BadRequestError),
    ):
        with pytest.raises(error):
            await ask(key)
    await running.stop()


# Spend, on both backends.


async def test_spend_rows_and_counters(
    nursery: trio.Nursery, upstream: FakeUpstream, database_url: str
) -> None:
    config = openai_config(upstream, **PRICED)
    config["general_settings"] = {"database_url": database_url}
    running = await start_gateway(nursery, config)
    async with running.client() as admin:
        team = (await admin.post("/team/new", json={})).json()["team_id"]
        key = (await admin.post("/key/generate", json={"team_id": team})).json()["key"]
    client = running.client(key)

    upstream.handler = lambda request: JSONReply(chat_completion("hi", USAGE))
    assert (
        await client.post("/v1/chat/completions", json={"model": "gpt-test", "messages": MESSAGES})
    ).status_code == 200
    upstream.handler = lambda request: stream_of(["a", "b"], usage=(5, 2))
    streamed = await client.post(
        "/v1/chat/completions", json={"model": "gpt-test", "messages": MESSAGES, "stream": True}
    )
    assert streamed.status_code == 200
    upstream.handler = lambda request: JSONReply({"error": {"message": "down"}}, status=500)
    assert (
        await client.post("/v1/chat/completions", json={"model": "gpt-test", "messages": MESSAGES})
    ).status_code == 502
    upstream.handler = lambda request: StreamReply(
        [chunk("x ")], tail=chunk("y "), tail_interval=0.01
    )
    async with client.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "gpt-test", "messages": MESSAGES, "stream": True},
    ) as response:
        async for _ in response.aiter_bytes():
            break
    await client.aclose()
    with trio.fail_after(5):
        await running.records.wait_for(4)
        await upstream.wait_for(lambda: upstream.aborted == 1)
    assert await running.gateway.ledger.flush()
    rows = await running.gateway.store.spend_logs(SpendFilter())
    by_status = sorted((r["status"], r["stream"], r["cancelled_by_client"]) for r in rows)
    assert by_status == [
        (200, False, False),
        (200, True, False),
        (499, True, True),
        (502, False, False),
    ]
    costs = {r["status"]: r["cost"] for r in rows if not r["stream"]}
    assert costs[200] == pytest.approx(7e-6) and costs[502] == 0
    cancelled = next(r for r in rows if r["cancelled_by_client"])
    assert cancelled["completion_tokens"] >= 1 and cancelled["cost"] > 0
    total = sum(r["cost"] for r in rows)
    key_row = (await running.gateway.store.select("keys", {"team_id": team}))[0]
    assert key_row["spend"] == pytest.approx(total)
    team_row = await running.gateway.store.get("teams", team)
    assert team_row is not None and team_row["spend"] == pytest.approx(total)
    async with running.client() as admin:
        report = (await admin.get("/global/spend/report")).json()
        logs = (await admin.get("/spend/logs", params={"api_key": key})).json()
    spent = sum(team["total_spend"] for day in report for team in day["teams"])
    assert spent == pytest.approx(total)
    assert len(logs) == 4
    await running.stop()


async def test_a_database_outage_loses_no_spend_rows(nursery: trio.Nursery) -> None:
    h = await priced(nursery)
    key = await new_key(h)
    store = h.gateway.store
    real = store.record_spend
    failures = 0

    async def failing(rows: Sequence[dict[str, Any]], also_users: Sequence[str] = ()) -> int:
        nonlocal failures
        failures += 1
        raise ConnectionError("database is down")

    # The store's writer replaced by one that fails (mypy: a method reassigned).
    store.record_spend = failing  # type: ignore[method-assign]
    for _ in range(3):
        assert (await h.chat(key=key)).status == 200, "serving goes on without the database"
    assert not await h.gateway.ledger.flush()
    assert h.gateway.ledger.queued == 3 and failures >= 1
    # The database is back (mypy: a method reassigned).
    store.record_spend = real  # type: ignore[method-assign]
    assert await h.gateway.ledger.flush()
    assert h.gateway.ledger.queued == 0
    rows = await store.select("keys", {})
    assert rows[0]["spend"] == pytest.approx(3 * 7e-6)


async def test_a_reused_client_request_id_bills_every_request(nursery: trio.Nursery) -> None:
    """The client's x-request-id is for correlation: ten requests sharing one are ten spend
    rows and ten costs, keyed by the gateway's own ids."""
    h = await priced(nursery)
    key = await new_key(h, max_budget=1.0)
    reused = ((b"x-request-id", b"same-id"),)
    replies = [await h.chat(key=key, headers=reused) for _ in range(10)]
    assert {reply.headers["x-request-id"] for reply in replies} == {"same-id"}
    await flush(h)
    rows = await h.gateway.store.spend_logs(SpendFilter())
    assert len(rows) == 10 and {row["client_request_id"] for row in rows} == {"same-id"}
    ours = {reply.headers["x-trigate-request-id"] for reply in replies}
    assert {row["request_id"] for row in rows} == ours
    assert (await h.gateway.store.select("keys", {}))[0]["spend"] == pytest.approx(10 * 7e-6)


async def test_a_store_outage_serves_known_keys_and_fails_unknown_ones_fast(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    h = await priced(nursery)
    key = await new_key(h)
    assert (await h.chat(key=key)).status == 200, "the last good lookup"
    lookups = 0

    async def unreachable(kind: str, key: str) -> dict[str, Any] | None:
        nonlocal lookups
        lookups += 1
        raise ConnectionError("connection refused")

    # The store's lookup replaced by one that fails (mypy: a method reassigned).
    h.gateway.store.get = unreachable  # type: ignore[method-assign]
    await trio.sleep(10)  # the cached row is past its TTL
    for _ in range(20):
        assert (await h.chat(key=key)).status == 200
    started = trio.current_time()
    unknown = await h.chat(key="sk-" + "u" * 40)
    assert unknown.status == 503 and unknown.json["error"]["code"] == "store_unavailable"
    assert trio.current_time() - started < 0.1
    assert lookups == 1, "an outage is remembered, not rediscovered per request"
    await trio.sleep(6)
    assert (await h.chat(key=key)).status == 200 and lookups == 2


async def test_a_hanging_store_does_not_stall_requests(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    h = await priced(nursery)
    key = await new_key(h)
    assert (await h.chat(key=key)).status == 200

    async def hanging(kind: str, key: str) -> dict[str, Any] | None:
        await trio.sleep_forever()

    # The store's lookup replaced by one that never answers (mypy: a method reassigned).
    h.gateway.store.get = hanging  # type: ignore[method-assign]
    await trio.sleep(10)
    with trio.fail_after(2.5):
        assert (await h.chat(key=key)).status == 200
        assert (await h.chat(key="sk-" + "u" * 40)).status == 503


def spend_record(cost: float = 1.0) -> RequestRecord:
    return RequestRecord(
        "id", "k", "hash", None, None, None, "g", "d0", "m", 200, False, 1, 1, "reported",
        cost, 0.0, 0.0, 1.0, None, False,
    )  # fmt: skip


async def test_the_spend_writer_backs_off_however_many_rows_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Full batches keep arriving while the store is down; they must not bring the
    writer's next attempt forward (back-off 1, 2, 4, 8, 16, 30 s)."""
    attempts = 0

    class DownStore:
        async def record_spend(
            self, rows: Sequence[dict[str, Any]], also_users: Sequence[str] = ()
        ) -> int:
            nonlocal attempts
            attempts += 1
            raise ConnectionError("database is down")

    # DownStore has only the one method the ledger calls, not a whole Store.
    ledger = SpendLedger(DownStore())  # type: ignore[arg-type]
    async with trio.open_nursery() as writer:
        writer.start_soon(ledger.run)
        for _ in range(10_000):
            await ledger.write(spend_record())
        for _ in range(600):  # a minute of traffic
            await ledger.write(spend_record())
            await trio.sleep(0.1)
        writer.cancel_scope.cancel()
    assert attempts <= 9 and ledger.queued == 10_600


async def test_models_lists_only_what_a_key_may_use(nursery: trio.Nursery) -> None:
    config = {**group_config(["d0"], **PRICED)}
    config["model_list"].append({**config["model_list"][0], "model_name": "other"})
    h = await harness(nursery, config, {"d0": [Step()]})
    key = await new_key(h, models=["other"])
    exchange = chat_request(h.nursery, h.app, None, path="/v1/models", method="GET", key=key)
    await exchange.start()
    listed = orjson.loads(await exchange.read_body())
    assert [m["id"] for m in listed["data"]] == ["other"]


async def test_cost_comes_from_the_price_table(nursery: trio.Nursery) -> None:
    """No configured prices: gpt-4o is priced from LiteLLM's table, cached tokens cheaper."""
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "total_tokens": 1100,
        "prompt_tokens_details": {"cached_tokens": 400},
    }
    config = {
        "model_list": [
            {
                "model_name": "g",
                "litellm_params": {"model": "openai/gpt-4o", "api_base": "http://d0.test/v1"},
                "model_info": {"id": "d0"},
            }
        ]
    }
    h = await harness(nursery, config, {"d0": [Step(body=chat_completion("hi", usage))]})
    assert (await h.chat()).status == 200
    price = PriceTable.load().lookup("openai", "gpt-4o")
    assert price is not None and price.input is not None and price.output is not None
    assert price.cache_read is not None and price.cache_read < price.input
    expected = 600 * price.input + 400 * price.cache_read + 100 * price.output
    [record] = h.records.records
    assert record.cost == pytest.approx(expected)


async def test_every_write_to_a_key_team_or_user_is_seen_at_once(nursery: trio.Nursery) -> None:
    """Caches hear of changes from the store's write path, whichever call writes: each
    kind of write, made straight through the store, is seen by the next lookup, well
    inside the cache's TTL."""
    h = await priced(nursery)
    store, auth = h.gateway.store, h.gateway.auth

    async def caller(key: str) -> Caller:
        return await auth.authenticate({"authorization": f"Bearer {key}"})

    async def refused(key: str) -> str:
        with pytest.raises(AuthenticationFailed) as failure:
            await caller(key)
        return failure.value.code

    key = await new_key(h, key_alias="written")
    written = (await caller(key)).key
    assert written is not None and written["rpm_limit"] is None  # cached from here on
    await store.update("keys", hash_key(key), {"rpm_limit": 7})
    written = (await caller(key)).key
    assert written is not None and written["rpm_limit"] == 7
    fresh = generate_key()
    await refused(fresh)  # cached as absent
    row = await store.get("keys", hash_key(key))
    assert row is not None
    await store.replace_key(hash_key(key), {**row, "token_hash": hash_key(fresh)})
    assert await refused(key) == "invalid_api_key"
    assert (await caller(fresh)).key_alias == "written"
    assert await store.delete("keys", "key_alias", ["written"]) == 1
    assert await refused(fresh) == "invalid_api_key"

    team = (await h.admin("/team/new", {})).json["team_id"]
    member = await new_key(h, team_id=team)
    assert (await caller(member)).team is not None
    await store.update("teams", team, {"blocked": True})
    assert await refused(member) == "team_blocked"
    await store.delete_with_keys("teams", [team])
    assert await refused(member) == "invalid_api_key"

    own = await new_key(h, user_id="written-user")
    assert (await caller(own)).user is None  # no such user yet: cached as absent
    now = wall_time()
    user = {"user_id": "written-user", "models": [], "metadata": {}}
    await store.insert("users", {**user, "created_at": now, "updated_at": now})
    assert (await caller(own)).user is not None
    await store.update("users", "written-user", {"rpm_limit": 3})
    user_row = (await caller(own)).user
    assert user_row is not None and user_row["rpm_limit"] == 3
    await store.delete_with_keys("users", ["written-user"])
    assert await refused(own) == "invalid_api_key"

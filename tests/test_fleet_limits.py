"""Key, team and user limits shared through Redis: the admission and settle scripts, as
several workers of a fleet use them (each a `Limits` with its own Redis link), and the
local shares a worker falls back to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import coredis
import pytest
import trio
from helpers import RedisServer, mock_config, start_gateway

import trigate.limits
from trigate.auth import Caller
from trigate.clock import wall_time
from trigate.fleet import Fleet
from trigate.limits import BudgetExceeded, Limits, RateLimited

TEAM = "team-a"
# Far past a loaded machine's stalls (a full garbage collection has taken 2.3 s), so
# that a Redis that is up always answers in time: an outage is one a test makes, by
# killing Redis (refused at once) or stopping it (`RedisServer.pause`).
REDIS_TIMEOUT = 30.0


def caller(
    key: dict[str, Any] | None = None,
    team: dict[str, Any] | None = None,
    key_hash: str = "hash-of-key",
) -> Caller:
    key_row = {"team_id": TEAM if team is not None else None, "user_id": None, **(key or {})}
    return Caller("k", False, key_hash, key_row, team, None)


def tokens(n: int) -> Any:
    async def count() -> int:
        return n

    return count


def cost(amount: float) -> Any:
    async def most() -> float:
        return amount

    return most


FREE = cost(0.0)


async def workers(
    nursery: trio.Nursery,
    url: str,
    prefix: str,
    count: int = 2,
    redis_timeout: float = REDIS_TIMEOUT,
) -> list[Limits]:
    """`count` workers' limits over one Redis, each with its own connection."""
    limits = []
    for slot in range(count):
        environ = {"TRIGATE_WORKERS": str(count), "TRIGATE_WORKER_SLOT": str(slot)}
        fleet = Fleet(url, timeout=redis_timeout, prefix=prefix, environ=environ)
        limits.append(Limits(fleet, lambda table, key: 0.0))
        await nursery.start(fleet.run)
        nursery.start_soon(limits[-1].run)
        assert fleet.reachable
    return limits


@pytest.fixture
async def fleet(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> AsyncIterator[list[Limits]]:
    yield await workers(nursery, redis_url, redis_prefix)


async def minute_with_room(seconds: float = 5.0) -> None:
    """Rate windows are wall-clock minutes: start a test that counts in one only when
    the minute has `seconds` left, so its requests all fall in the same window."""
    left = 60.0 - wall_time() % 60.0
    if left < seconds:
        await trio.sleep(left + 0.01)


async def admitted(limits: Limits, who: Caller, prompt: int = 0, most: float = 0.0) -> bool:
    try:
        await limits.admit(who, tokens(prompt), cost(most))
    except (RateLimited, BudgetExceeded):
        return False
    return True


async def test_rpm_admits_exactly_the_limit_whichever_worker_asks(fleet: list[Limits]) -> None:
    await minute_with_room()
    who = caller({"rpm_limit": 10})
    answers = [await admitted(fleet[i % 2], who) for i in range(40)]
    assert answers == [True] * 10 + [False] * 30


async def test_concurrent_admissions_share_calls_and_stay_exact(fleet: list[Limits]) -> None:
    """Forty requests at once over two workers: their admissions go to Redis in batches,
    each still checked and taken on its own."""
    await minute_with_room()
    who = caller({"rpm_limit": 10, "max_parallel_requests": 6})
    answers: list[bool] = []

    async def one(i: int) -> None:
        answers.append(await admitted(fleet[i % 2], who))

    async with trio.open_nursery() as requests:
        for i in range(40):
            requests.start_soon(one, i)
    assert answers.count(True) == 6  # parallel slots run out before the rpm does


async def test_headers_count_the_whole_fleets_window(fleet: list[Limits]) -> None:
    await minute_with_room()
    who = caller({"rpm_limit": 5, "tpm_limit": 100})
    first = await fleet[0].admit(who, tokens(10), FREE)
    second = await fleet[1].admit(who, tokens(10), FREE)
    assert first.headers["x-ratelimit-remaining-requests"] == "4"
    assert second.headers["x-ratelimit-remaining-requests"] == "3"
    assert second.headers["x-ratelimit-remaining-tokens"] == "80"
    assert second.headers["x-ratelimit-limit-requests"] == "5"


async def test_tpm_admits_on_the_prompt_and_settles_actual_usage(fleet: list[Limits]) -> None:
    await minute_with_room()
    who = caller({"tpm_limit": 100})
    taken = [await fleet[i % 2].admit(who, tokens(30), FREE) for i in range(3)]
    assert not await admitted(fleet[0], who, prompt=30)  # 90 + 30 > 100
    await taken[0].settle(10, 0.0)  # it used 10 tokens, not 30: 70 counted
    assert await admitted(fleet[1], who, prompt=30)
    assert not await admitted(fleet[0], who, prompt=1)


async def test_parallel_slots_are_given_back_when_requests_end(fleet: list[Limits]) -> None:
    who = caller({"max_parallel_requests": 2})
    first = await fleet[0].admit(who, tokens(0), FREE)
    await fleet[1].admit(who, tokens(0), FREE)
    with pytest.raises(RateLimited, match="already has 2 requests in flight"):
        await fleet[0].admit(who, tokens(0), FREE)
    await first.settle(0, 0.0)
    await first.settle(0, 0.0)  # settling twice gives back one slot, not two
    assert await admitted(fleet[1], who)
    assert not await admitted(fleet[0], who)


async def test_a_dead_workers_slots_expire_by_themselves(
    fleet: list[Limits], monkeypatch: pytest.MonkeyPatch, still_clock: trio.testing.MockClock
) -> None:
    # Time (the leases' wall-clock expiry follows Trio's clock) passes only as the test
    # jumps it: a loaded machine's stall cannot expire the leases before the first check.
    monkeypatch.setattr(trigate.limits, "LEASE_TTL", 0.3)
    who = caller({"max_parallel_requests": 2})
    for limits in fleet:  # taken and never settled: their worker "died"
        await limits.admit(who, tokens(0), FREE)
    assert not await admitted(fleet[0], who)
    still_clock.jump(0.4)
    assert await admitted(fleet[0], who)


async def test_a_refusal_takes_nothing(fleet: list[Limits]) -> None:
    """The team's limit refuses; the key's own window must not count the request."""
    await minute_with_room()
    team = {"team_id": TEAM, "rpm_limit": 1}
    who = caller({"rpm_limit": 3}, team)
    assert await admitted(fleet[0], who)
    assert not await admitted(fleet[1], who)
    assert not await admitted(fleet[0], who)
    alone = caller({"rpm_limit": 3})  # the same key, were it out of the team
    assert [await admitted(fleet[1], alone) for _ in range(3)] == [True, True, False]


async def test_a_team_budget_holds_across_workers_with_reservations(fleet: list[Limits]) -> None:
    team = {"team_id": TEAM, "max_budget": 1.0, "spend": 0.0}
    who = caller({}, team)
    a = await fleet[0].admit(who, tokens(0), cost(0.4))
    await fleet[1].admit(who, tokens(0), cost(0.4))
    await fleet[0].admit(who, tokens(0), cost(0.4))  # reserves the 0.2 left
    with pytest.raises(BudgetExceeded, match="reserved by requests in flight"):
        await fleet[1].admit(who, tokens(0), cost(0.4))
    await a.settle(0, 0.1)  # cost 0.1 of its 0.4: 0.3 comes free
    b = await fleet[1].admit(who, tokens(0), cost(0.4))
    await b.settle(0, 0.3)
    with pytest.raises(BudgetExceeded, match=r"Current cost: 0\.400000 \(\+0\.600000 reserved"):
        await fleet[0].admit(who, tokens(0), cost(0.01))


async def test_budget_counters_start_from_the_stores_spend(fleet: list[Limits]) -> None:
    """A counter Redis does not have (first use, or lost) is rebuilt from the spend the
    row carries; a later, larger spend from the store raises it again."""
    team = {"team_id": TEAM, "max_budget": 1.0, "spend": 0.95}
    who = caller({}, team)
    admission = await fleet[0].admit(who, tokens(0), cost(0.5))  # reserves the 0.05 left
    assert not await admitted(fleet[1], who, most=0.01)
    await admission.settle(0, 0.01)
    assert await admitted(fleet[1], who, most=0.01)  # 0.96 spent
    fresher = caller({}, {**team, "spend": 0.999999999999})
    with pytest.raises(BudgetExceeded, match=r"Current cost: 1\.000000"):
        await fleet[1].admit(fresher, tokens(0), cost(0.0))


async def test_a_new_budget_window_starts_the_counter_afresh(fleet: list[Limits]) -> None:
    now = wall_time()
    team = {"team_id": TEAM, "max_budget": 1.0, "spend": 0.0, "budget_duration": "1h"}
    old = caller({}, {**team, "budget_reset_at": now + 10})
    spend_all = await fleet[0].admit(old, tokens(0), cost(1.0))
    await spend_all.settle(0, 1.0)
    assert not await admitted(fleet[1], old)
    # The window ended: its row (not yet reset by the store) shows the old spend.
    ended = caller({}, {**team, "spend": 1.0, "budget_reset_at": now - 1})
    assert await admitted(fleet[1], ended, most=0.5)
    assert await admitted(fleet[0], old)  # a worker still on the old window joins the new


async def test_unlimited_callers_touch_nothing(fleet: list[Limits]) -> None:
    admission = await fleet[0].admit(caller(), tokens(0), FREE)
    assert admission is trigate.limits.UNLIMITED
    assert admission.headers == {}


def unshared(workers: int) -> list[Limits]:
    """An instance's workers without Redis."""
    return [
        Limits(
            Fleet(None, timeout=0.05, environ={"TRIGATE_WORKERS": str(workers),
                                               "TRIGATE_WORKER_SLOT": str(slot)}),
            lambda table, key: 0.0,
        )
        for slot in range(workers)
    ]  # fmt: skip


async def test_without_redis_each_worker_enforces_its_share() -> None:
    """Two workers of one instance, no Redis: an rpm_limit of 10 admits 5 on each, and
    3 parallel slots are 2 on one and 1 on the other."""
    await minute_with_room()
    limits = unshared(2)
    who = caller({"rpm_limit": 10})
    assert [await admitted(limits[i % 2], who) for i in range(40)].count(True) == 10
    busy = caller({"max_parallel_requests": 3}, key_hash="another-key")
    assert [await admitted(limits[0], busy) for _ in range(4)] == [True, True, False, False]
    assert [await admitted(limits[1], busy) for _ in range(4)] == [True, False, False, False]


async def test_a_lone_worker_without_redis_has_the_whole_limit() -> None:
    who = caller({"rpm_limit": 10})
    await minute_with_room()
    [limits] = unshared(1)
    answers = [await admitted(limits, who) for _ in range(12)]
    assert answers == [True] * 10 + [False] * 2


async def test_redis_lost_and_found_falls_back_to_shares_and_back(
    nursery: trio.Nursery, own_redis: RedisServer, redis_prefix: str
) -> None:
    await minute_with_room(10)
    # Killed, Redis refuses at once: no short timeout is needed to see it gone.
    fleet = await workers(nursery, own_redis.url, redis_prefix)
    who = caller({"rpm_limit": 10})
    held = [await fleet[0].admit(who, tokens(0), FREE) for _ in range(4)]
    await own_redis.kill()
    # Requests keep flowing on local shares (5 each), whatever Redis had counted.
    local = [await admitted(fleet[i % 2], who) for i in range(14)]
    assert local.count(True) == 10
    assert not fleet[0].fleet.reachable and not fleet[1].fleet.reachable
    for admission in held:  # settling against a Redis that is gone neither waits nor fails
        with trio.fail_after(REDIS_TIMEOUT / 2):  # less than a wait on Redis would take
            await admission.settle(0, 0.0)
    await own_redis.start()  # an empty Redis: its window starts over
    with trio.fail_after(30):  # against a hang: a probe comes every half second
        for limits in fleet:
            await limits.fleet.wait_reachable()
    shared = [await admitted(fleet[i % 2], who) for i in range(14)]
    assert shared == [True] * 10 + [False] * 4


async def test_what_a_worker_did_while_redis_paused_reaches_it_once(
    nursery: trio.Nursery, own_redis: RedisServer, redis_prefix: str
) -> None:
    """A Redis that stops answering for a moment keeps its counters. When it answers
    again, a worker settles what it could not (once, though Redis may have run it
    late), gives back what an unconfirmed admission may have reserved, and bills what
    its local admissions spent meanwhile."""
    # A stopped Redis is the outage; the timeout, shorter than the default only to
    # keep the test short, is still past any stall of the live Redis before it.
    [limits] = await workers(nursery, own_redis.url, redis_prefix, count=1, redis_timeout=5.0)
    who = caller({}, {"team_id": TEAM, "max_budget": 1.0, "spend": 0.0})
    held = await limits.admit(who, tokens(0), cost(0.5))  # 0.5 reserved in Redis
    own_redis.pause()
    # Unconfirmed, and run by Redis once it resumes: it reserves 0.2 there.
    local = await limits.admit(who, tokens(0), cost(0.2))
    # The admission gave up at its timeout; the link's call, timed alike, flips the
    # worker to local shares a moment later: the settles below are never sent.
    with trio.fail_after(30):  # against a hang, not a timing assertion
        while limits.fleet.reachable:  # noqa: ASYNC110 - the link's own pace
            await trio.sleep(0.01)
    await held.settle(0, 0.3)  # never sent: kept for Redis's return
    await local.settle(0, 0.1)  # billed here, and to Redis on its return
    own_redis.resume()
    with trio.fail_after(30):  # against a hang: a probe comes every half second
        await limits.fleet.wait_reachable()
    # Spent 0.3 + 0.1, nothing reserved: an admission may reserve the 0.6 left.
    assert await admitted(limits, who, most=0.9)
    with pytest.raises(BudgetExceeded, match=r"Current cost: 0\.400000 \(\+0\.600000 reserved"):
        await limits.admit(who, tokens(0), cost(0.01))


async def test_a_changed_budget_restarts_its_shared_counter(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    """A team moved to a shorter budget window: the fleet's counter, still counting the
    old window, is dropped with the change, and the next request counts the new one."""
    config = mock_config(input_cost_per_token=1e-6, output_cost_per_token=0.0)
    # Not a test of an outage: a loaded machine must not pass for a Redis that is down.
    config["router_settings"] = {
        "redis_url": redis_url,
        "redis_key_prefix": redis_prefix,
        "redis_timeout": REDIS_TIMEOUT,
    }
    running = await start_gateway(nursery, config)
    async with running.client() as admin:
        team = await admin.post("/team/new", json={"max_budget": 10, "budget_duration": "30d"})
        team_id = team.json()["team_id"]
        key = (await admin.post("/key/generate", json={"team_id": team_id})).json()["key"]
        counter = f"{redis_prefix}budget:teams:{team_id}"
        async with running.client(key) as client, coredis.Redis.from_url(redis_url) as redis:
            chat = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
            assert (await client.post("/v1/chat/completions", json=chat)).status_code == 200
            thirty_days = float(await redis.hget(counter, "window") or 0)
            changed = await admin.post(
                "/team/update", json={"team_id": team_id, "budget_duration": "1d"}
            )
            assert changed.status_code == 200
            with trio.fail_after(10):  # against a hang, not a timing assertion
                while await redis.exists([counter]):  # noqa: ASYNC110 - Redis has no event
                    await trio.sleep(0.01)
            assert (await client.post("/v1/chat/completions", json=chat)).status_code == 200
            # The request's reservation reaches Redis with the worker's next batch.
            with trio.fail_after(10):  # against a hang, not a timing assertion
                while not await redis.hexists(counter, "window"):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            one_day = float(await redis.hget(counter, "window") or 0)
    assert 0 < one_day < thirty_days
    await running.stop()

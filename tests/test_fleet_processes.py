"""A fleet as operators run it: `trigate serve --workers 2` instances, sharing one Redis
and one database, each a real process tree; and the same without Redis.

Requests go out on a fresh connection each, so they spread over every worker of an
instance; each test alternates between instances.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
from fakes import FakeUpstream, JSONReply, ReceivedRequest, chat_completion
from helpers import CLIENT_TLS, RedisServer
from test_cli import Served, clean_env, serve

from trigate.auth import CACHE_TTL
from trigate.clock import wall_time

MASTER = "sk-fleet-master-0123456789"
HEADERS = {"authorization": f"Bearer {MASTER}"}
CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


class CountingUpstream(FakeUpstream):
    """A slow upstream: each answer takes `delay` after its request arrives, so requests
    overlap exactly when one arrives within `delay` of another."""

    def __init__(self, delay: float) -> None:
        super().__init__(self._answer)
        self.delay = delay
        self.arrivals: list[float] = []

    def _answer(self, request: ReceivedRequest) -> JSONReply:
        self.arrivals.append(trio.current_time())
        return JSONReply(chat_completion(), delay=self.delay)

    @property
    def most_in_flight(self) -> int:
        return max(
            sum(1 for other in self.arrivals if other <= start < other + self.delay)
            for start in self.arrivals
        )


def write_config(tmp_path: Path, prefix: str, upstream: str = "") -> Path:
    """A priced mock model (a dollar a prompt token, so one request spends a small budget)
    and, given `upstream`, a model served by it. A generous `redis_timeout`: two cores
    shared by four workers must not make a slow answer look like a lost Redis (a full
    garbage collection has taken 2.3 s on a loaded machine). No test here needs a short
    one: a killed Redis refuses connections at once."""
    path = tmp_path / "config.yaml"
    slow = (
        f"  - model_name: slow\n    litellm_params: {{model: openai/upstream-model, "
        f"api_base: '{upstream}', api_key: sk-upstream}}\n"
        if upstream
        else ""
    )
    path.write_text(
        "model_list:\n"
        "  - model_name: mock\n"
        "    litellm_params: {model: mock/gpt-4o, input_cost_per_token: 1.0,"
        " output_cost_per_token: 0.0}\n"
        f"{slow}"
        f"router_settings: {{redis_key_prefix: '{prefix}', redis_timeout: 30,"
        " num_retries: 0}\n"
    )
    return path


async def start_instance(config: Path, database: Path, redis: str | None) -> Served:
    env = clean_env(TRIGATE_MASTER_KEY=MASTER, TRIGATE_DATABASE_URL=f"sqlite:///{database}")
    if redis is not None:
        env["TRIGATE_REDIS_URL"] = redis
    served = await serve("--workers", "2", "--config", str(config), env=env)
    try:
        with trio.fail_after(60):
            await served.wait_ready(workers=2)
    except BaseException:
        # An instance that never came up is stopped here: no test may leave one running.
        with trio.CancelScope(shield=True):
            await served.stop()
        raise
    return served


async def call(
    served: Served, path: str, body: dict[str, Any], key: str = MASTER
) -> httpx.Response:
    """One request on a connection of its own, so it may land on any worker."""
    url = f"http://127.0.0.1:{served.port}"
    async with httpx.AsyncClient(base_url=url, timeout=30, verify=CLIENT_TLS) as client:
        return await client.post(path, json=body, headers={"authorization": f"Bearer {key}"})


async def new_key(served: Served, **fields: Any) -> str:
    response = await call(served, "/key/generate", fields)
    assert response.status_code == 200, response.text
    return str(response.json()["key"])


async def minute_with_room(seconds: float = 15.0) -> None:
    """Rate windows are wall-clock minutes: count in one only with `seconds` left of it."""
    left = 60.0 - wall_time() % 60.0
    if left < seconds:
        await trio.sleep(left + 0.01)


async def statuses_in_one_minute(
    instances: list[Served], count: int, **key_fields: Any
) -> list[int]:
    """A new key's answers to `count` requests, made while the wall clock stays in one
    minute (rate windows are its minutes). A round that ran into the next minute is
    asked again with another new key: rarely, where waiting for a minute with room
    enough beforehand cost 15 s a time in one case of four."""
    while True:
        minute = wall_time() // 60
        key = await new_key(instances[0], **key_fields)
        answers = await statuses(instances, key, count)
        if wall_time() // 60 == minute:
            return answers


async def statuses(
    instances: list[Served], key: str, count: int, body: dict[str, Any] = CHAT
) -> list[int]:
    return [
        (await call(instances[i % len(instances)], "/v1/chat/completions", body, key)).status_code
        for i in range(count)
    ]


async def stop_all(instances: list[Served]) -> None:
    for served in instances:
        await served.stop()


async def test_two_instances_share_rate_limits(
    tmp_path: Path, redis_url: str, redis_prefix: str, nursery: trio.Nursery
) -> None:
    upstream = CountingUpstream(delay=0.3)
    await upstream.start(nursery)
    config = write_config(tmp_path, redis_prefix, upstream.base_url)
    database = tmp_path / "fleet.db"
    instances: list[Served] = []
    try:
        for _ in range(2):
            instances.append(await start_instance(config, database, redis_url))  # noqa: PERF401 - one by one, each listed for stopping as it starts
        answers = await statuses_in_one_minute(instances, 40, rpm_limit=10)
        assert answers.count(200) == 10 and answers.count(429) == 30, answers

        key = await new_key(instances[1], max_parallel_requests=2)
        slow = {**CHAT, "model": "slow"}
        results: list[int] = []

        async def one(i: int) -> None:
            response = await call(instances[i % 2], "/v1/chat/completions", slow, key)
            results.append(response.status_code)

        for _ in range(3):  # waves of eight at once
            async with trio.open_nursery() as wave:
                for i in range(8):
                    wave.start_soon(one, i)
        assert upstream.most_in_flight == 2
        assert results.count(200) == 6 and results.count(429) == 18, results
    finally:
        await stop_all(instances)


async def test_two_instances_share_key_changes_and_budgets(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    config = write_config(tmp_path, redis_prefix)
    database = tmp_path / "fleet.db"
    instances: list[Served] = []
    try:
        for _ in range(2):
            instances.append(await start_instance(config, database, redis_url))  # noqa: PERF401 - one by one, each listed for stopping as it starts
        a, b = instances
        await blocked_everywhere(a, b)

        # A dollar a prompt token: "hi" costs a few dollars, the long prompt hundreds.
        team = await call(a, "/team/new", {"team_alias": "t", "max_budget": 100.0})
        key = await new_key(a, team_id=team.json()["team_id"])
        for _ in range(4):  # B's workers cache the team's row while its spend is small
            assert (await call(b, "/v1/chat/completions", CHAT, key)).status_code == 200
        long = {**CHAT, "messages": [{"role": "user", "content": "word " * 300}]}
        assert (await call(a, "/v1/chat/completions", long, key)).status_code == 200
        spent = await call(b, "/v1/chat/completions", CHAT, key)
        assert spent.status_code == 400, spent.text
        assert spent.json()["error"]["type"] == "budget_exceeded"
    finally:
        await stop_all(instances)


async def test_redis_killed_mid_run(
    tmp_path: Path, own_redis: RedisServer, redis_prefix: str
) -> None:
    """Requests keep flowing on local shares while Redis is away, readiness says so
    without failing, and the fleet shares state again once Redis is back."""
    config = write_config(tmp_path, redis_prefix)
    served = await start_instance(config, tmp_path / "fleet.db", own_redis.url)
    try:
        await minute_with_room()
        key = await new_key(served, rpm_limit=10)
        await own_redis.kill()
        answers = await statuses([served], key, 30)
        assert set(answers) <= {200, 429} and 5 <= answers.count(200) <= 10, answers
        assert (await call(served, "/v1/chat/completions", CHAT)).status_code == 200
        await ready_as(served, "local (redis unreachable)")
        await own_redis.start()
        await ready_as(served, "shared")
        await blocked_everywhere(served, served)  # the workers follow key changes again
        answers = await statuses_in_one_minute([served], 30, rpm_limit=10)
        assert answers.count(200) == 10, answers
    finally:
        await served.stop()


async def blocked_everywhere(a: Served, b: Served) -> None:
    """A key blocked through `a` is refused by every worker of `b` though each had it
    cached as it was: six requests in a row, each on a connection of its own, are
    refused, the first of them before any worker's cached copy could have expired
    (`CACHE_TTL` after the first request that could have cached it), so the block
    reached them over Redis. (Each worker hears of the block on its own: one may refuse
    a moment before another.) The bound is the cache's, not a guess at how fast the
    machine is: a loaded one only eats into the seconds the priming took."""
    key = await new_key(a)
    primed_at = trio.current_time()
    for _ in range(6):
        assert (await call(b, "/v1/chat/completions", CHAT, key)).status_code == 200
    assert (await call(a, "/key/block", {"key": key})).status_code == 200
    refused: list[float] = []  # when each refusal of the current run arrived
    with trio.fail_after(30):  # guards against a hang; the cache itself expires in 5 s
        while len(refused) < 6:
            answer = await call(b, "/v1/chat/completions", CHAT, key)
            if answer.status_code == 200:
                refused.clear()
                continue
            assert answer.json()["error"]["code"] == "key_blocked", answer.text
            refused.append(trio.current_time())
    assert refused[0] - primed_at < CACHE_TTL, "refused only once the cache expired"


async def ready_as(served: Served, state: str) -> None:
    """Wait until several readiness answers in a row (from either worker) report `state`;
    readiness stays 200 throughout."""
    in_a_row = 0
    with trio.fail_after(30):  # only against a hang: probes come every half second
        while in_a_row < 6:
            url = f"http://127.0.0.1:{served.port}"
            async with httpx.AsyncClient(base_url=url, verify=CLIENT_TLS) as client:
                response = await client.get("/health/readiness")
            assert response.status_code == 200
            in_a_row = in_a_row + 1 if response.json()["fleet"]["state"] == state else 0
            if not in_a_row:
                await trio.sleep(0.1)


async def test_workers_without_redis_never_admit_more_than_the_limit(tmp_path: Path) -> None:
    config = write_config(tmp_path, "unused:")
    served = await start_instance(config, tmp_path / "alone.db", None)
    try:
        answers = await statuses_in_one_minute([served], 40, rpm_limit=10)
        assert 5 <= answers.count(200) <= 10 and answers.count(429) >= 30, answers
    finally:
        await served.stop()
    assert b"each of the 2 workers enforces its share" in served.output

"""Router state shared by the fleet through a real Redis.

Two gateways in one process, each with its own app, router and Redis link, stand for
instances A and B; fake upstreams on real sockets count which deployment each one
calls. Every test here fails if the instances kept their router state to themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from fakes import FakeUpstream, JSONReply, ReceivedRequest, chat_completion
from helpers import MASTER_KEY, UPSTREAM_KEY, RedisServer, RunningGateway, start_gateway
from test_cli import clean_env, serve

from trigate.errors import Failure, UpstreamError
from trigate.router.deployments import Deployment
from trigate.router.fleet_sync import SYNC_INTERVAL
from trigate.router.state import CircuitBreaker

MESSAGES = [{"role": "user", "content": "hello"}]
SERVER_ERROR = JSONReply({"error": {"message": "boom", "type": "server_error"}}, status=500)


def fleet_config(
    redis_url: str,
    prefix: str,
    upstreams: dict[str, FakeUpstream],
    *,
    router: dict[str, Any] | None = None,
    ordered: bool = True,
    **params: Any,
) -> dict[str, Any]:
    """Model group `g`: one deployment per upstream, its id the upstream's name; when
    `ordered`, in priority tiers as given, so every strategy tries them in turn."""
    return {
        "model_list": [
            {
                "model_name": "g",
                "litellm_params": {
                    "model": "openai/upstream-model",
                    "api_base": upstream.base_url,
                    "api_key": UPSTREAM_KEY,
                    **({"order": order} if ordered else {}),
                    **params,
                },
                "model_info": {"id": name},
            }
            for order, (name, upstream) in enumerate(upstreams.items(), start=1)
        ],
        "router_settings": {
            "num_retries": 0,
            "redis_url": redis_url,
            "redis_key_prefix": prefix,
            # Past any stall of a test's event loop, so that Redis always answers in time
            # and no instance goes local (routing alone, probing alone) unless a test kills
            # Redis: on a loaded machine a full garbage collection (0.2 s of CPU) took 2.3 s,
            # and at 1 s the half-open test's instances each sent a probe.
            "redis_timeout": 30.0,
            **(router or {}),
        },
    }


async def upstreams(nursery: trio.Nursery, *names: str) -> dict[str, FakeUpstream]:
    started = {}
    for name in names:
        started[name] = FakeUpstream()
        await started[name].start(nursery)
    return started


async def chat(gateway: RunningGateway) -> int:
    async with gateway.client() as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "g", "messages": MESSAGES}, timeout=30
        )
    return response.status_code


async def chat_all(gateways: list[RunningGateway], statuses: list[int] | None = None) -> list[int]:
    """One request per entry of `gateways`, all at once; each status goes to `statuses`
    as it comes."""
    statuses = [] if statuses is None else statuses

    async def one(gateway: RunningGateway) -> None:
        statuses.append(await chat(gateway))

    async with trio.open_nursery() as nursery:
        for gateway in gateways:
            nursery.start_soon(one, gateway)
    return statuses


def deployment(gateway: RunningGateway, name: str) -> Deployment:
    return next(d for d in gateway.gateway.groups.deployments("g") if d.id == name)


async def until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait for another instance's news: it arrives with a sync, a fraction of a second
    (the bound is for a loaded machine's stalls, not a measure of speed)."""
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - the sync's own pace
            await trio.sleep(0.02)


def available(gateway: RunningGateway, name: str) -> bool:
    return deployment(gateway, name).available(trio.current_time())


async def cool_on(a: RunningGateway, failing: FakeUpstream) -> None:
    """One request on A, which `order` sends to the failing first deployment."""
    assert await chat(a) == 502
    assert len(failing.requests) == 1


async def test_a_deployment_cooled_on_one_instance_is_skipped_by_another(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    ups = await upstreams(nursery, "one", "two")
    ups["one"].handler = lambda request: SERVER_ERROR
    config = fleet_config(
        redis_url, redis_prefix, ups, router={"allowed_fails": 0, "cooldown_time": 30}
    )
    a = await start_gateway(nursery, config)
    b = await start_gateway(nursery, fleet_config(redis_url, redis_prefix, ups))
    assert available(b, "one")
    await cool_on(a, ups["one"])
    await until(lambda: not available(b, "one"))
    assert [await chat(b) for _ in range(5)] == [200] * 5
    assert len(ups["one"].requests) == 1 and len(ups["two"].requests) == 5


async def test_one_half_open_probe_across_the_fleet(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    ups = await upstreams(nursery, "one", "two")
    probe_held = trio.Event()

    def fails_then_answers_when_released(request: ReceivedRequest) -> JSONReply:
        if len(ups["one"].requests) == 1:
            return SERVER_ERROR
        # Held until the other nineteen have been routed while it runs.
        return JSONReply(chat_completion(), gate=probe_held)

    ups["one"].handler = fails_then_answers_when_released
    router = {"allowed_fails": 0, "cooldown_time": 1}
    a = await start_gateway(nursery, fleet_config(redis_url, redis_prefix, ups, router=router))
    b = await start_gateway(nursery, fleet_config(redis_url, redis_prefix, ups, router=router))
    await cool_on(a, ups["one"])
    await until(lambda: not available(b, "one"))
    # The cooldown passes: both see the circuit half-open, and `order` tries it first.
    await until(lambda: available(a, "one") and available(b, "one"))
    statuses: list[int] = []
    async with trio.open_nursery() as requests:
        requests.start_soon(chat_all, [a, b] * 10, statuses)
        # Every other request goes on to `two` while the one probe is still running.
        await until(lambda: len(statuses) >= 19)
        assert len(ups["one"].requests) == 2 and len(ups["two"].requests) == 19
        probe_held.set()
    assert statuses == [200] * 20
    # The probe's success closed the circuit for B too.
    await until(lambda: not deployment(b, "one").state.breaker.half_open(trio.current_time()))
    assert await chat(b) == 200
    assert len(ups["one"].requests) == 3


async def _clear_of_minute_end() -> None:
    """Deployment rpm windows are Redis's minutes; a test must not straddle two."""
    left = 60 - time.time() % 60
    if left < 5:
        await trio.sleep(left + 0.1)


async def test_a_deployment_rpm_cap_holds_across_instances(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    ups = await upstreams(nursery, "one")
    config = fleet_config(redis_url, redis_prefix, ups, rpm=3)
    a = await start_gateway(nursery, config)
    b = await start_gateway(nursery, fleet_config(redis_url, redis_prefix, ups, rpm=3))
    await _clear_of_minute_end()
    statuses = await chat_all([a, b] * 4)
    assert sorted(statuses) == [200] * 3 + [429] * 5
    assert len(ups["one"].requests) == 3
    # Both instances now know the minute's requests are spent, without asking again.
    await until(lambda: not available(a, "one") and not available(b, "one"))


async def test_a_busy_instance_takes_a_deployment_cap_a_few_requests_at_a_time(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    ups = await upstreams(nursery, "one")
    a = await start_gateway(nursery, fleet_config(redis_url, redis_prefix, ups, rpm=40))
    b = await start_gateway(nursery, fleet_config(redis_url, redis_prefix, ups, rpm=40))
    fleet_sync = a.gateway.router.fleet_sync
    claims = 0
    claim = fleet_sync.claim

    async def counted_claim(deployment: Deployment, now: float) -> bool:
        nonlocal claims
        claims += 1
        return await claim(deployment, now)

    fleet_sync.claim = counted_claim  # type: ignore[method-assign]
    await _clear_of_minute_end()
    assert [await chat(a) for _ in range(30)] == [200] * 30
    assert claims < 30
    # What A was granted and did not spend goes back to the fleet with its next sync,
    # so B gets all the rest of the cap, and not one more.
    await until(lambda: deployment(b, "one").state.requests_used(trio.current_time()) == 30)
    statuses = [await chat(b) for _ in range(15)]
    assert statuses == [200] * 10 + [429] * 5
    assert len(ups["one"].requests) == 40


async def test_least_busy_counts_requests_in_flight_on_other_instances(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    ups = await upstreams(nursery, "one", "two")
    for upstream in ups.values():
        upstream.handler = lambda request: JSONReply(chat_completion(), delay=1.0)
    # A fills `one` (its first in order); B balances by load.
    a = await start_gateway(nursery, fleet_config(redis_url, redis_prefix, ups))
    router = {"routing_strategy": "least-busy"}
    config = fleet_config(redis_url, redis_prefix, ups, router=router, ordered=False)
    b = await start_gateway(nursery, config)
    async with trio.open_nursery() as requests:
        requests.start_soon(chat_all, [a, a])
        await until(lambda: deployment(b, "one").state.busy == 2)
        assert await chat_all([b, b]) == [200, 200]
    assert len(ups["one"].requests) == 2 and len(ups["two"].requests) == 2


async def test_latency_measured_on_other_instances_guides_another(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    ups = await upstreams(nursery, "slow", "fast")
    slow_held = trio.Event()
    ups["slow"].handler = lambda request: JSONReply(chat_completion(), gate=slow_held)
    # One instance serves only `slow`, another only `fast`; B balances by latency.
    a_slow = await start_gateway(
        nursery, fleet_config(redis_url, redis_prefix, {"slow": ups["slow"]})
    )
    a_fast = await start_gateway(
        nursery, fleet_config(redis_url, redis_prefix, {"fast": ups["fast"]})
    )
    router_b = {"routing_strategy": "latency-based-routing"}
    config = fleet_config(redis_url, redis_prefix, ups, router=router_b, ordered=False)
    b = await start_gateway(nursery, config)
    slow_statuses: list[int] = []
    async with trio.open_nursery() as requests:
        requests.start_soon(chat_all, [a_slow, a_slow], slow_statuses)
        await until(lambda: len(ups["slow"].requests) == 2)
        # Both `fast` requests begin after the `slow` ones began and end before they end,
        # so every `slow` sample is longer than every `fast` one, however loaded the
        # machine: no margin of seconds decides which deployment is the faster.
        assert await chat_all([a_fast, a_fast]) == [200, 200]
        slow_held.set()
    assert slow_statuses == [200, 200]
    await until(lambda: all(deployment(b, name).state.latency for name in ups))
    # B's four requests are all routed before any is answered, so B's own samples
    # cannot reorder the two: each choice is the fleet's figures alone.
    routed = trio.Event()

    def held_until_all_routed(request: ReceivedRequest) -> JSONReply:
        if len(ups["slow"].requests) + len(ups["fast"].requests) == 8:
            routed.set()
        return JSONReply(chat_completion(), gate=routed)

    for upstream in ups.values():
        upstream.handler = held_until_all_routed
    assert await chat_all([b] * 4) == [200] * 4
    assert len(ups["slow"].requests) == 2 and len(ups["fast"].requests) == 6


async def test_routing_goes_on_without_redis_and_shares_again_when_it_returns(
    nursery: trio.Nursery, own_redis: RedisServer, redis_prefix: str
) -> None:
    ups = await upstreams(nursery, "one", "two")
    ups["one"].handler = lambda request: SERVER_ERROR
    router = {"allowed_fails": 0, "cooldown_time": 30}
    config = fleet_config(own_redis.url, redis_prefix, ups, router=router)
    a = await start_gateway(nursery, config)
    b = await start_gateway(nursery, fleet_config(own_redis.url, redis_prefix, ups, router=router))
    await own_redis.kill()
    await until(lambda: not a.gateway.fleet.reachable and not b.gateway.fleet.reachable)
    # Each instance learns of the failing deployment alone now: B's own failure cools it.
    await cool_on(a, ups["one"])
    assert available(b, "one")
    assert await chat(b) == 502
    assert len(ups["one"].requests) == 2
    assert [await chat(b) for _ in range(3)] == [200] * 3

    await own_redis.start()
    await until(lambda: a.gateway.fleet.reachable and b.gateway.fleet.reachable)
    # A new cooldown on A reaches B through Redis again; B's own has long to run, so
    # clear it to see whose news B acts on.
    deployment(b, "one").state.breaker.succeeded()
    deployment(a, "one").state.breaker.succeeded()
    await until(lambda: available(b, "one"))
    await chat(a)
    await until(lambda: not available(b, "one"))
    assert [await chat(b) for _ in range(3)] == [200] * 3
    assert len(ups["one"].requests) == 3


@pytest.mark.parametrize(("slot", "admitted"), [("0", 2), ("1", 1)])
async def test_without_redis_a_worker_keeps_to_its_share_of_a_deployment_cap(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, slot: str, admitted: int
) -> None:
    monkeypatch.setenv("TRIGATE_WORKERS", "2")
    monkeypatch.setenv("TRIGATE_WORKER_SLOT", slot)
    ups = await upstreams(nursery, "one")
    config = fleet_config("", "", ups, rpm=3)
    del config["router_settings"]["redis_url"]
    gateway = await start_gateway(nursery, config)
    statuses = [await chat(gateway) for _ in range(4)]
    assert statuses.count(200) == admitted and len(ups["one"].requests) == admitted


async def test_workers_of_one_instance_share_a_cooldown(
    nursery: trio.Nursery, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """`trigate serve --workers 2`: a cooldown one worker starts holds in the other."""
    ups = await upstreams(nursery, "one", "two")
    ups["one"].handler = lambda request: SERVER_ERROR
    config = fleet_config(
        redis_url, redis_prefix, ups, router={"allowed_fails": 0, "cooldown_time": 60}
    )
    config["general_settings"] = {"master_key": MASTER_KEY}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    served = await serve("--workers", "2", "--config", str(path), env=clean_env())
    try:
        with trio.fail_after(60):
            await served.wait_ready(workers=2)
        auth = {"authorization": f"Bearer {MASTER_KEY}", "connection": "close"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
            body = {"model": "g", "messages": MESSAGES}
            response = await client.post("/v1/chat/completions", json=body, headers=auth)
            assert response.status_code == 502 and len(ups["one"].requests) == 1

            async def reports_one_cooling() -> bool:
                health = (await client.get("/health", headers=auth)).json()
                return any(e["deployment"] == "one" for e in health["unhealthy_endpoints"])

            # New connections land on either worker, though not evenly: wait until a run
            # of answers says cooling, then a few syncs more, so that a worker the run
            # happened to miss has heard of it too if it ever will.
            with trio.fail_after(30):  # against a hang: twelve answers of a loaded process pair
                streak = 0
                while streak < 12:
                    streak = streak + 1 if await reports_one_cooling() else 0
            await trio.sleep(5 * SYNC_INTERVAL)
            for _ in range(12):
                response = await client.post("/v1/chat/completions", json=body, headers=auth)
                assert response.status_code == 200
        assert len(ups["one"].requests) == 1 and len(ups["two"].requests) == 12
    finally:
        await served.stop()


async def test_a_capped_deployment_serves_on_when_redis_dies(
    nursery: trio.Nursery, own_redis: RedisServer, redis_prefix: str
) -> None:
    """A claim that finds Redis gone falls back to the local view: no request fails."""
    ups = await upstreams(nursery, "one")
    gateway = await start_gateway(nursery, fleet_config(own_redis.url, redis_prefix, ups, rpm=5))
    await _clear_of_minute_end()
    assert await chat(gateway) == 200
    await own_redis.kill()
    assert [await chat(gateway) for _ in range(5)] == [200] * 4 + [429]
    assert not gateway.gateway.fleet.reachable


def test_a_breakers_news_waits_for_the_next_sync() -> None:
    """What a breaker tells the fleet, and why the fleet's older word does not undo it."""
    told = []
    breaker = CircuitBreaker(allowed_fails=0, cooldown_time=5)
    breaker.notify = lambda: told.append(True)
    breaker.succeeded()
    assert breaker.take_verdict() is None and not told, "a closed circuit has no news"
    breaker.failed(UpstreamError("x", kind=Failure.SERVER), 0)
    assert told
    # A sync read before the news arrived says the circuit is closed: the news wins.
    breaker.adopt(1, cooling=0, is_open=False, probed_elsewhere=False)
    assert breaker.cooling(1)
    assert breaker.take_verdict() == "opened"
    breaker.restore_verdict("opened")  # that sync failed: the news goes with the next
    assert breaker.take_verdict() == "opened"
    # The fleet says the cooldown is over and another process probes.
    breaker.adopt(2, cooling=0, is_open=True, probed_elsewhere=True)
    assert breaker.half_open(2) and not breaker.available(2)
    breaker.adopt(3, cooling=0, is_open=True, probed_elsewhere=False)
    assert breaker.available(3)
    breaker.admit(3)
    breaker.abandoned()
    assert breaker.take_verdict() == "released"
    breaker.admit(3)
    breaker.succeeded()
    assert breaker.take_verdict() == "closed"
    # Another process's probe succeeded: the circuit closes here too.
    breaker.failed(UpstreamError("x", kind=Failure.RATE_LIMIT), 4)
    breaker.take_verdict()
    breaker.adopt(5, cooling=0, is_open=False, probed_elsewhere=False)
    assert breaker.available(5) and not breaker.half_open(5)

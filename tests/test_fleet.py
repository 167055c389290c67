"""The fleet link: local shares that never add up past a limit, and a worker that keeps
serving when Redis goes away and shares state again when it returns."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from helpers import RedisServer

import trigate
from trigate import lua
from trigate.config import parse_config
from trigate.fleet import Fleet, RedisUnavailable, _redacted, local_share, worker_slot


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 7, 10, 101])
@pytest.mark.parametrize("workers", [1, 2, 3, 4, 8])
def test_local_shares_add_up_to_the_limit(limit: int, workers: int) -> None:
    shares = [local_share(limit, slot, workers) for slot in range(workers)]
    assert sum(shares) == limit
    assert max(shares) - min(shares) <= 1


def test_worker_slot_comes_from_the_supervisor() -> None:
    assert worker_slot({}) == (0, 1)
    assert worker_slot({"TRIGATE_WORKERS": "4", "TRIGATE_WORKER_SLOT": "3"}) == (3, 4)


async def test_without_redis_state_is_local() -> None:
    fleet = Fleet(None, timeout=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
    assert not fleet.reachable
    assert fleet.status()["state"] == "local"
    with pytest.raises(RedisUnavailable):
        await fleet.call(lambda redis: redis.ping())


async def test_shared_through_a_running_redis(redis_url: str, redis_prefix: str) -> None:
    fleet = Fleet(redis_url, timeout=0.5, prefix=redis_prefix)
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
        assert fleet.reachable
        assert fleet.status()["state"] == "shared"
        key = fleet.key("probe")
        assert key == f"{redis_prefix}probe"
        assert await fleet.call(lambda redis: redis.incr(key)) == 1
        await fleet.call(lambda redis: redis.delete([key]))
        nursery.cancel_scope.cancel()


async def test_every_script_is_loaded_when_redis_is_reached(own_redis: RedisServer) -> None:
    """The fleet registers each .lua file with Redis as it connects, and again with a
    Redis that came back empty, so no request pays for loading one."""
    fleet = Fleet(own_redis.url, timeout=0.2)
    shas = [lua.script(name).sha for name in lua.NAMES]
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
        assert await fleet.call(lambda redis: redis.script_exists(shas)) == (True,) * len(shas)
        await own_redis.kill()
        with pytest.raises(RedisUnavailable):
            await fleet.call(lambda redis: redis.ping())
        await own_redis.start()
        await fleet.wait_reachable()
        assert await fleet.call(lambda redis: redis.script_exists(shas)) == (True,) * len(shas)
        nursery.cancel_scope.cancel()


def test_lua_lives_in_lua_files() -> None:
    """Scripts are package data (trigate/lua/*.lua), never Python strings."""
    sources = Path(trigate.__file__).parent.rglob("*.py")
    assert [path.name for path in sources if "redis.call(" in path.read_text()] == []
    assert {path.stem for path in Path(lua.__file__).parent.glob("*.lua")} == set(lua.NAMES)


async def test_redis_lost_and_found(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    restored = 0

    async def rebuild() -> None:
        nonlocal restored
        restored += 1

    caplog.set_level(logging.INFO, "trigate.fleet")
    fallbacks: list[None] = []
    # Killed, Redis refuses at once: a generous timeout (a loaded machine's stall must
    # not fail the first probe), and calls that would wait for it fail the bound below.
    fleet = Fleet(own_redis.url, timeout=30.0, on_fallback=lambda: fallbacks.append(None))
    fleet.on_restore(rebuild)

    def reachable() -> bool:
        # Read through a call: mypy keeps an asserted `fleet.reachable` narrowed across
        # the awaits that change it.
        return fleet.reachable

    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
        assert reachable() and restored == 1
        await own_redis.kill()
        for _ in range(3):
            with trio.fail_after(10):
                with pytest.raises(RedisUnavailable):
                    await fleet.call(lambda redis: redis.ping())
        assert not reachable()
        assert fleet.status()["state"] == "local (redis unreachable)"
        await own_redis.start()
        with trio.fail_after(30):  # against a hang: a probe comes every half second
            while not reachable():  # noqa: ASYNC110 - the probe's own pace
                await trio.sleep(0.05)
        assert restored == 2
        assert await fleet.call(lambda redis: redis.ping()) == b"PONG"
        nursery.cancel_scope.cancel()
    lost = [r for r in caplog.records if "unreachable" in r.getMessage()]
    back = [r for r in caplog.records if "is back" in r.getMessage()]
    assert len(lost) == 1 and len(back) == 1
    assert len(fallbacks) == 1


async def test_redis_absent_at_start_up() -> None:
    server = RedisServer()  # never started: nothing listens on its port
    fleet = Fleet(server.url, timeout=0.1)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):  # start-up does not wait for an absent Redis
            await nursery.start(fleet.run)
        assert not fleet.reachable
        nursery.cancel_scope.cancel()


def test_redis_password_stays_out_of_logs() -> None:
    assert _redacted("redis://:hunter22@cache:6379/0") == "redis://:***@cache:6379/0"
    assert _redacted("redis://cache:6379/0") == "redis://cache:6379/0"


def test_redis_settings_as_litellm_names_them() -> None:
    settings = {"redis_host": "cache", "redis_port": 6380, "redis_password": "p@ss"}
    config = parse_config({"router_settings": settings}, {})
    assert config.router.redis == "redis://:p%40ss@cache:6380/0"
    assert parse_config({}, {}).router.redis is None
    overridden = parse_config({"router_settings": settings}, {"TRIGATE_REDIS_URL": "redis://x/1"})
    assert overridden.router.redis == "redis://x/1"
    assert overridden.router.redis_timeout == 0.05

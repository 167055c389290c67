"""The change channel: admin changes announced by one process reach every other over
Redis, and an announcement Redis did not take is sent again once it answers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from trigate.changes import Changes
from trigate.fleet import Fleet, RedisUnavailable


async def until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not predicate():  # noqa: ASYNC110 - another process's pace
            await trio.sleep(0.01)


async def test_an_announcement_redis_missed_is_sent_once_it_answers(
    nursery: trio.Nursery,
    redis_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One process's Redis call times out while it announces a change (its link flips
    to local shares); the other, still subscribed, hears the change all the same once
    the first finds Redis again. A lost announcement would leave its model list stale
    for good: with Redis nobody polls."""
    fleets = [Fleet(redis_url, timeout=2.0, prefix=redis_prefix) for _ in range(2)]
    announcer, follower = Changes(), Changes()
    heard: list[str] = []
    subscribed = 0

    def resync() -> None:
        nonlocal subscribed
        subscribed += 1

    follower.listen(["models"], lambda kind, ident: heard.append(ident), resync)
    for fleet, changes in zip(fleets, (announcer, follower), strict=True):
        await nursery.start(fleet.run)
        nursery.start_soon(changes.run, fleet)
    await until(lambda: subscribed == 1)
    announcer.announce("models", "first")
    await until(lambda: heard == ["first"])

    publish = announcer._publish
    failed = False

    async def times_out_once(fleet: Fleet, kind: str, ident: str) -> None:
        nonlocal failed
        if not failed:
            failed = True
            fleet._lose("no answer in time (the test's)")
            raise RedisUnavailable("no answer in time")
        await publish(fleet, kind, ident)

    monkeypatch.setattr(announcer, "_publish", times_out_once)
    announcer.announce("models", "second")
    await until(lambda: heard == ["first", "second"])
    assert failed and subscribed == 1  # heard as announced, not by resyncing
    nursery.cancel_scope.cancel()

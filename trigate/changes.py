"""How an admin change reaches every other process of the gateway: one Redis channel.

A write to a key, team, user or stored deployment is announced as `(kind, id)` on
the fleet's `changes` channel (under `redis_key_prefix`); every worker of every
instance hears it, and the listener of that kind acts on it: the authenticator drops
its cached row, the model catalog reads the stored deployments again. Messages are
nudges, never the data: a listener reads what changed from the store.

A worker that is not subscribed (Redis away, or not yet reached) hears nothing, so
each (re)subscription tells every listener to resync as if everything had changed.
Without Redis there is no channel and no process hears another: the authenticator's
cache expires within seconds, and the catalog polls the store instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import orjson
import trio

from trigate.fleet import PROBE_INTERVAL, Fleet, RedisUnavailable

logger = logging.getLogger("trigate")

# The channel, under the fleet's prefix.
CHANNEL = "changes"

OnChange = Callable[[str, str], None]
# The Redis keys derived from a changed row, deleted before the change is announced
# (budget counters rebuilt from the store): `stale(fleet, kind, id)`.
Stale = Callable[[Fleet, str, str], list[str]]


def _nothing_stale(fleet: Fleet, kind: str, ident: str) -> list[str]:
    return []


class Changes:
    """One worker's side of the channel: what it announces, and who hears what comes."""

    def __init__(self, stale: Stale = _nothing_stale) -> None:
        self._stale = stale
        self._listeners: dict[str, list[OnChange]] = {}
        self._resyncs: list[Callable[[], None]] = []
        self._outbox, self._to_send = trio.open_memory_channel[tuple[str, str]](math.inf)

    def listen(self, kinds: Iterable[str], on_change: OnChange, resync: Callable[[], None]) -> None:
        """Call `on_change(kind, id)` for each change of `kinds` another process (or this
        one) announces, and `resync()` whenever changes may have gone unheard."""
        for kind in kinds:
            self._listeners.setdefault(kind, []).append(on_change)
        self._resyncs.append(resync)

    def announce(self, kind: str, ident: str) -> None:
        """Tell every process that `kind` `ident` changed (without Redis, no one hears)."""
        self._outbox.send_nowait((kind, ident))

    async def run(self, fleet: Fleet) -> None:
        """Carry announcements over `fleet` and follow everyone's, until cancelled.
        Without Redis, announcements are dropped: there is no one to tell."""
        if not fleet.configured:
            async for _ in self._to_send:
                pass
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send, fleet)
            nursery.start_soon(self._follow, fleet)

    async def _send(self, fleet: Fleet) -> None:
        """Publish each announcement in order; one Redis did not take is sent again once
        Redis answers, so no process misses a change for good (the key cache's TTL
        bounds a stale key meanwhile; nothing else would bound a stale model list)."""
        async for kind, ident in self._to_send:
            while True:
                try:
                    await self._publish(fleet, kind, ident)
                    break
                except RedisUnavailable:
                    logger.warning(
                        "Redis unreachable: other processes hear of a change to %s once it answers",
                        kind,
                    )
                    await fleet.wait_reachable()

    async def _publish(self, fleet: Fleet, kind: str, ident: str) -> None:
        stale = self._stale(fleet, kind, ident)
        if stale:
            await fleet.call(lambda redis: redis.delete(stale))
        message = orjson.dumps([kind, ident])
        await fleet.call(lambda redis: redis.publish(fleet.key(CHANNEL), message))

    async def _follow(self, fleet: Fleet) -> None:
        """Hear every process's announcements; each (re)subscription resyncs."""
        channel = fleet.key(CHANNEL)
        while True:
            await fleet.wait_reachable()
            try:
                async with fleet.client.pubsub(
                    channels=[channel], ignore_subscribe_messages=True, retry_policy=None
                ) as messages:
                    for resync in self._resyncs:
                        resync()
                    async for message in messages:
                        data = message["data"]
                        assert isinstance(data, bytes)
                        kind, ident = orjson.loads(data)
                        for listener in self._listeners.get(kind, ()):
                            listener(kind, ident)
            except* Exception as lost:  # whatever ends the feed, the worker serves on
                logger.debug("change feed lost, resubscribing: %r", lost.exceptions)
            await trio.sleep(PROBE_INTERVAL)

"""Where MCP's older SSE transport delivers its answers, whichever process made them.

An SSE client holds one stream open (`GET /mcp/sse`) and posts each message elsewhere
(`POST /mcp/sse/messages?session_id=...`): with `--workers N` or several instances the
post may reach another process than the stream. So the post is served where it lands,
statelessly, as `/mcp` serves a request, and only its answer travels: to the stream's
queue in this process, or over Redis (the fleet's link, one channel per session) to
the process that holds the stream. Without Redis only this process's streams are
reachable. A session is its caller's: its channel is named by the caller's identity
and the session id, so another key's post finds no stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from trigate.fleet import Fleet, RedisUnavailable

logger = logging.getLogger("trigate")

# Answers a stream may have waiting; a client that reads none of them is not waited for.
QUEUED = 64


def channel_of(identity: str, session_id: str) -> str:
    return f"mcp_sse:{identity}:{session_id}"


class SSEHub:
    def __init__(self) -> None:
        self._streams: dict[str, trio.MemorySendChannel[bytes]] = {}

    @asynccontextmanager
    async def stream(
        self, fleet: Fleet, identity: str, session_id: str
    ) -> AsyncIterator[trio.MemoryReceiveChannel[bytes]]:
        """The answers for one session, from this process and (with Redis) every other."""
        channel = channel_of(identity, session_id)
        sender, receiver = trio.open_memory_channel[bytes](QUEUED)
        self._streams[channel] = sender
        try:
            async with trio.open_nursery() as nursery:
                if fleet.configured:
                    await nursery.start(self._follow, fleet, channel, sender)
                yield receiver
                nursery.cancel_scope.cancel()
        finally:
            del self._streams[channel]

    async def deliver(self, fleet: Fleet, identity: str, session_id: str, answer: bytes) -> bool:
        """Send `answer` to the session's stream; False when no process holds it."""
        channel = channel_of(identity, session_id)
        local = self._streams.get(channel)
        if local is not None:
            try:
                local.send_nowait(answer)
            except trio.WouldBlock:
                logger.warning("MCP SSE session %s is not reading its answers", session_id)
            return True
        if not fleet.configured:
            return False
        try:
            heard = await fleet.call(lambda redis: redis.publish(fleet.key(channel), answer))
        except RedisUnavailable:
            return False
        return bool(heard)

    async def _follow(
        self,
        fleet: Fleet,
        channel: str,
        sender: trio.MemorySendChannel[bytes],
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        """Other processes' answers for this session, until the stream ends."""
        started = False
        try:
            async with fleet.client.pubsub(
                channels=[fleet.key(channel)], ignore_subscribe_messages=True, retry_policy=None
            ) as messages:
                task_status.started()
                started = True
                async for message in messages:
                    data = message["data"]
                    if isinstance(data, bytes):
                        try:
                            sender.send_nowait(data)
                        except trio.WouldBlock:
                            logger.warning("MCP SSE session %s is not reading its answers", channel)
        except Exception as lost:  # Redis gone: this process's own answers still arrive
            logger.warning("MCP SSE session feed lost: %r", lost)
            if not started:
                task_status.started()

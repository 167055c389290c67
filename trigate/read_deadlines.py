"""Read timeouts for upstream connections, kept by one task instead of a cancel scope
per read.

A read that has to wait for the upstream is bounded by the read timeout. A cancel
scope around each such wait costs more than the rest of relaying the chunk that ends
it (about 8 µs to enter and leave, where a relayed chunk of a stream costs some 60 µs
in all); a stream whose tokens arrive one at a time waits once per token. So a waiting
read only notes its deadline here (`park`), and one task (`run`, in the app's
nursery) wakes at the earliest deadline noted: a read still waiting then has its
connection timed out (`TimedOut.time_out`: marked, and its socket closed, which
wakes the read with `ClosedResourceError`, read by the transport as the timeout).

The task does not wake per read: reads that end take their entry away, and as every
deadline is a read's start plus its timeout, the entries noted after the task went to
sleep end no earlier than the one it sleeps until, unless a shorter timeout is used:
only such a deadline wakes it early. A transport whose deadlines are not kept (no task
running, as outside the gateway) opens a scope per wait, as before.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio


class TimedOut(Protocol):
    """What waits on a read: told when its deadline has passed."""

    def time_out(self) -> None: ...


class ReadDeadlines:
    """The deadlines of the reads now waiting, and the task that enforces them."""

    __slots__ = ("_parked", "_wake", "_wake_at")

    def __init__(self) -> None:
        self._parked: dict[TimedOut, float] = {}
        # When the task wakes next (inf: only when woken); None while it does not run.
        self._wake_at = math.inf
        self._wake: trio.Event | None = None

    @property
    def kept(self) -> bool:
        """Whether the task runs, so that `park` may be used instead of a cancel scope."""
        return self._wake is not None

    def park(self, waiter: TimedOut, timeout: float) -> None:
        """`waiter` waits for a read now, for at most `timeout` seconds; `unpark` it
        when the read ends, however it ends."""
        deadline = trio.current_time() + timeout
        self._parked[waiter] = deadline
        if deadline < self._wake_at:
            self._wake_at = deadline
            assert self._wake is not None, "park() needs the task: check `kept` first"
            self._wake.set()

    def unpark(self, waiter: TimedOut) -> None:
        self._parked.pop(waiter, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Time out the reads whose deadline passes, until cancelled."""
        self._wake = trio.Event()
        try:
            task_status.started()
            while True:
                with trio.move_on_at(self._wake_at):
                    await self._wake.wait()
                self._wake = trio.Event()
                self._expire(trio.current_time())
        finally:
            self._wake = None
            self._wake_at = math.inf

    def _expire(self, now: float) -> None:
        """Time out what is due and sleep until the earliest deadline left."""
        earliest = math.inf
        for waiter, deadline in list(self._parked.items()):
            if deadline <= now:
                del self._parked[waiter]
                waiter.time_out()
            elif deadline < earliest:
                earliest = deadline
        self._wake_at = earliest

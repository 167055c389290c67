"""Wall-clock time that follows Trio's clock.

Expiry dates, budget windows and spend timestamps are wall-clock facts, but
tests must be able to move them with `autojump_clock`. Within a Trio run, the
wall clock is the epoch time at the run's first reading plus Trio's clock
since then, so virtual time moves it exactly as real time would.
"""

from __future__ import annotations

import time

import trio
from trio.lowlevel import RunVar

_offset: RunVar[float] = RunVar("trigate_epoch_offset")


def wall_time(now: float | None = None) -> float:
    """Seconds since the epoch, advancing with Trio's clock; `now`, when given, is Trio's
    clock as the caller read it (one reading then serves both)."""
    try:
        offset = _offset.get()
    except LookupError:
        offset = time.time() - trio.current_time()
        _offset.set(offset)
    return offset + (trio.current_time() if now is None else now)
